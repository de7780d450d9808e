"""The data pipeline refuses what it would otherwise turn silently into something else (pad_batch,
mask_tokens, Vocab, default_collate, DataLoader's seed), and its worker processes draw distinct,
reproducible random numbers. Imports no JAX at module level: worker processes import it."""

from __future__ import annotations

import random

import numpy as np
import pytest

from funcdl.data import DataLoader
from funcdl.data.collate import default_collate
from funcdl.data.text import Vocab, mask_tokens, pad_batch


@pytest.mark.parametrize("sequences, error, message", [
    ([[1, 2**40]], ValueError, "holds id 1099511627776, which does not fit int32"),
    ([[1.7, 2.0]], TypeError, "has dtype float64 .* token ids must be integers"),
    ([np.ones((2, 3), np.int64)], ValueError, r"has shape \(2, 3\); each sequence must be 1-D"),
])
def test_pad_batch_refuses_what_it_would_wrap_round_or_flatten(sequences, error, message):
    with pytest.raises(error, match=message):
        pad_batch(sequences, 0)


def test_pad_batch_still_pads_ids_and_empty_sequences():
    ids, mask = pad_batch([[5, 2**31 - 1], [], np.array([3], np.uint8)], 0)
    assert ids.tolist() == [[5, 2**31 - 1], [0, 0], [3, 0]]
    assert mask.tolist() == [[False, False], [True, True], [False, True]]


@pytest.mark.parametrize("kw, message", [
    ({"rate": 1.5}, "rate must be a probability"), ({"rate": -0.1}, "rate must be"),
    ({"rate": float("nan")}, "rate must be"), ({"mask_id": 6}, r"mask_id 6 is not an id"),
    ({"vocab_size": 0}, "vocab_size must be a positive int"),
])
def test_mask_tokens_validates_its_options(kw, message):
    import jax

    args = dict(mask_id=1, vocab_size=6, special_ids=[0], rate=0.15) | kw
    with pytest.raises(ValueError, match=message):
        mask_tokens(np.array([[2, 3, 4]]), jax.random.key(0), **args)


def test_vocab_default_index_must_be_an_index_of_the_vocabulary():
    vocab = Vocab(["<unk>", "a", "b", "c", "d", "e"])
    with pytest.raises(IndexError, match="default index 999 is out of range for a vocabulary of 6"):
        vocab.set_default_index(999)
    with pytest.raises(IndexError):
        vocab.set_default_index(-1)
    vocab.set_default_index(0)
    assert vocab["zzz"] == 0


@pytest.mark.parametrize("batch, found", [([1, "a"], "str"), ([None, None], "NoneType")])
def test_default_collate_refuses_strings_among_numbers_and_none_like_torch(batch, found):
    from torch.utils.data import default_collate as torch_collate

    with pytest.raises(TypeError):
        torch_collate(batch)
    with pytest.raises(TypeError, match=f"found <class '{found}'>"):
        default_collate(batch)


def test_dataloader_seed_must_be_an_integer():
    with pytest.raises(TypeError, match="seed must be an integer, got 1.5"):
        DataLoader([1, 2], seed=1.5)
    with pytest.raises(TypeError):
        DataLoader([1, 2], seed=True)


class RandomDraws:
    """Each sample is a fresh draw from numpy's and Python's global RNGs, as augmentations are."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> np.ndarray:
        return np.array([np.random.random(), random.random()])


def _draws(context: str, seed: int) -> np.ndarray:
    loader = DataLoader(RandomDraws(), batch_size=2, num_workers=2, prefetch=1, seed=seed,
                        multiprocessing_context=context)
    return np.concatenate(list(loader))


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # the fork case asks for it
@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_worker_processes_draw_distinct_numbers_reproducibly(context):
    a, b = _draws(context, 1), _draws(context, 1)
    assert len(np.unique(a[:, 0])) == 8 and len(np.unique(a[:, 1])) == 8  # no worker repeats
    np.testing.assert_array_equal(a, b)  # the same seed gives the same draws
    assert not np.array_equal(a, _draws(context, 2))
