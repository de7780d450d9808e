"""Map-style and iterable datasets, concatenation, subsets and seeded random splits.

A map-style ``Dataset`` maps an index to one sample (``__getitem__`` + ``__len__``), as in
``torch.utils.data``; an ``IterableDataset`` streams samples (``__iter__``) where random reads are
expensive or impossible.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

__all__ = [
    "Dataset",
    "IterableDataset",
    "ConcatDataset",
    "ArrayDataset",
    "Subset",
    "random_split",
]


class Dataset:
    """A map-style dataset: subclasses define ``__getitem__(index)`` and ``__len__()``.

    ``a + b`` is ``ConcatDataset([a, b])``, as in the course slides.
    """

    def __getitem__(self, index: int) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define __getitem__(index)")

    def __len__(self) -> int:
        raise NotImplementedError(f"{type(self).__name__} must define __len__()")

    def __add__(self, other: Dataset) -> ConcatDataset:
        return ConcatDataset([self, other])


class IterableDataset:
    """A stream of samples: subclasses define ``__iter__``. Read once per epoch, in order."""

    def __iter__(self) -> Iterator[Any]:
        raise NotImplementedError(f"{type(self).__name__} must define __iter__()")


def _check_index(index: Any, n: int) -> int:
    if isinstance(index, bool) or not isinstance(index, int | np.integer):
        raise TypeError(f"dataset indices must be integers, not {type(index).__name__}")
    index = int(index)
    if not -n <= index < n:
        raise IndexError(f"index {index} is out of range for a dataset of size {n}")
    return index + n if index < 0 else index


class ConcatDataset(Dataset):
    """The samples of several map-style datasets one after another."""

    def __init__(self, datasets: Sequence[Dataset]):
        self.datasets = list(datasets)
        if not self.datasets:
            raise ValueError("ConcatDataset needs at least one dataset")
        for d in self.datasets:
            if isinstance(d, IterableDataset):
                raise TypeError("ConcatDataset does not support IterableDataset")
        self.cumulative_sizes = list(np.cumsum([len(d) for d in self.datasets]).tolist())

    def __len__(self) -> int:
        return self.cumulative_sizes[-1]

    def __getitem__(self, index: int) -> Any:
        index = _check_index(index, len(self))
        which = bisect.bisect_right(self.cumulative_sizes, index)
        start = self.cumulative_sizes[which - 1] if which else 0
        return self.datasets[which][index - start]


class ArrayDataset(Dataset):
    """Rows of equally long arrays: ``ArrayDataset(x, y)[i] == (x[i], y[i])``.

    With a single array a sample is the row itself, not the 1-tuple torch's ``TensorDataset``
    gives.
    """

    def __init__(self, *arrays: Any):
        if not arrays:
            raise ValueError("ArrayDataset needs at least one array")
        self.arrays = tuple(np.asarray(a) for a in arrays)
        sizes = [a.shape[0] if a.ndim else None for a in self.arrays]
        if None in sizes:
            raise ValueError("ArrayDataset arrays need a leading sample dimension, got a 0-d array")
        if len(set(sizes)) != 1:
            raise ValueError(f"Size mismatch between arrays: leading dimensions are {sizes}")

    def __len__(self) -> int:
        return self.arrays[0].shape[0]

    def __getitem__(self, index: int) -> Any:
        index = _check_index(index, len(self))
        if len(self.arrays) == 1:
            return self.arrays[0][index]
        return tuple(a[index] for a in self.arrays)

    def get_batch(self, indices: Sequence[int]) -> Any:
        """Many rows at once with one fancy-indexing call (the DataLoader's fast path)."""
        idx = np.asarray(indices, dtype=np.int64)
        if len(self.arrays) == 1:
            return self.arrays[0][idx]
        return tuple(a[idx] for a in self.arrays)


class Subset(Dataset):
    """The samples of ``dataset`` at ``indices``, in that order."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]):
        self.dataset = dataset
        self.indices = [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[self.indices[_check_index(index, len(self))]]

    @property
    def get_batch(self) -> Callable[[Sequence[int]], Any]:
        """The base dataset's batched fetch, when it has one (so random_split keeps it fast)."""
        base = getattr(self.dataset, "get_batch", None)
        if base is None:
            raise AttributeError(f"{type(self.dataset).__name__} has no get_batch")
        indices = np.asarray(self.indices, dtype=np.int64)
        return lambda batch: base(indices[np.asarray(batch, dtype=np.int64)])


def _split_lengths(lengths: Sequence[float], n: int) -> list[int]:
    """Integer lengths; fractions summing to 1 are turned into counts as torch does."""
    if not lengths:
        raise ValueError("random_split needs at least one length")
    if any(x < 0 for x in lengths):
        raise ValueError(f"random_split lengths must be non-negative, got {list(lengths)}")
    all_int = all(isinstance(x, int | np.integer) for x in lengths)
    if not all_int and math.isclose(sum(lengths), 1.0) and sum(lengths) <= 1 + 1e-9:
        counts = [int(math.floor(n * frac)) for frac in lengths]
        # torch: hand the remainder out one by one, round-robin from the first split
        for i in range(n - sum(counts)):
            counts[i % len(counts)] += 1
        return counts
    if not all_int:
        raise ValueError(
            f"random_split lengths must be integers summing to the dataset size ({n}) or "
            f"fractions summing to 1, got {list(lengths)} (sum {sum(lengths)})")
    counts = [int(x) for x in lengths]
    if sum(counts) != n:
        raise ValueError(
            f"Sum of input lengths ({sum(counts)}) does not equal the length of the input "
            f"dataset ({n}); pass lengths that add up to {n}, or fractions that add up to 1")
    return counts


def random_split(dataset: Dataset, lengths: Sequence[float], seed: int = 0) -> list[Subset]:
    """Split ``dataset`` into non-overlapping ``Subset``s of the given lengths, seeded.

    ``lengths`` are counts that add up to ``len(dataset)``, or fractions that add up to 1 (counts
    are floored and the remainder handed out round-robin, as in ``torch.utils.data.random_split``).
    The same seed always gives the same split (numpy's generator, not torch's).
    """
    n = len(dataset)
    counts = _split_lengths(lengths, n)
    order = np.random.default_rng(seed).permutation(n)
    bounds = np.cumsum([0, *counts])
    return [Subset(dataset, order[a:b].tolist()) for a, b in zip(bounds[:-1], bounds[1:])]
