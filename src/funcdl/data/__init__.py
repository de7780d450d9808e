"""funcdl.data: datasets, a prefetching resumable DataLoader, text tools and bundled real data.

Stands beside the model code and imports none of it; JAX is imported only where a function needs
it (device placement, ``text.mask_tokens``), so DataLoader worker processes start light.

- ``funcdl.data``: ``Dataset``, ``IterableDataset``, ``ConcatDataset``, ``ArrayDataset``,
  ``Subset``, ``random_split``, ``DataLoader``, ``default_collate``, length bucketing.
- ``funcdl.data.text``: ``get_tokenizer``, ``ngrams``, ``Vocab``, ``build_vocab``, ``one_hot``,
  ``pad_batch``, ``pad_collate``, ``mask_tokens``, ``train_bpe``.
- ``funcdl.data.datasets``: ``digits``, ``python_docs_corpus``, file readers, ``mnist``.
- ``edit_distance``, ``error_rate`` (PER, WER, CER): ``funcdl.data.metrics``.
"""

from funcdl.data import datasets, text
from funcdl.data.dataset import (
    ArrayDataset,
    ConcatDataset,
    Dataset,
    IterableDataset,
    Subset,
    random_split,
)
from funcdl.data.loader import (
    BucketBatchSampler,
    DataLoader,
    bucket_by_length,
    default_collate,
    epoch_permutation,
    padding_fraction,
)
from funcdl.data.metrics import edit_distance, error_rate

__all__ = [
    "Dataset",
    "IterableDataset",
    "ConcatDataset",
    "ArrayDataset",
    "Subset",
    "random_split",
    "DataLoader",
    "default_collate",
    "epoch_permutation",
    "bucket_by_length",
    "BucketBatchSampler",
    "padding_fraction",
    "edit_distance",
    "error_rate",
    "text",
    "datasets",
]
