"""Datasets, concatenation, subsets and random_split against torch.utils.data."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from funcdl.data import ArrayDataset, ConcatDataset, Dataset, Subset, random_split


class Squares(Dataset):
    def __init__(self, n, offset=0):
        self.n, self.offset = n, offset

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return (i + self.offset) ** 2


def test_add_concatenates_like_torch():
    a, b = Squares(3), Squares(4, offset=10)
    ours = a + b
    theirs = torch.utils.data.ConcatDataset([list(map(a.__getitem__, range(3))),
                                             list(map(b.__getitem__, range(4)))])
    assert isinstance(ours, ConcatDataset) and len(ours) == len(theirs) == 7
    assert [ours[i] for i in range(-7, 7)] == [theirs[i] for i in range(-7, 7)]
    assert ours.cumulative_sizes == theirs.cumulative_sizes
    with pytest.raises(IndexError, match="out of range"):
        ours[7]
    with pytest.raises(ValueError, match="at least one"):
        ConcatDataset([])


def test_array_dataset_matches_tensor_dataset():
    x, y = np.arange(12.0).reshape(4, 3), np.array([3, 1, 4, 1])
    ours, theirs = ArrayDataset(x, y), torch.utils.data.TensorDataset(torch.tensor(x),
                                                                      torch.tensor(y))
    assert len(ours) == len(theirs)
    for i in range(-4, 4):
        (ox, oy), (tx, ty) = ours[i], theirs[i]
        np.testing.assert_array_equal(ox, tx.numpy())
        assert oy == ty.item()
    np.testing.assert_array_equal(ArrayDataset(x)[2], x[2])  # one array: the row itself
    with pytest.raises(ValueError, match="Size mismatch"):
        ArrayDataset(x, y[:3])
    with pytest.raises(TypeError, match="integers"):
        ours[1.0]


def test_subset_of_arrays_fetches_batches_like_rows():
    x = np.arange(20).reshape(10, 2)
    sub = Subset(ArrayDataset(x, -x[:, 0]), [9, 2, 5])
    bx, by = sub.get_batch([2, 0])
    np.testing.assert_array_equal(bx, [x[5], x[9]])
    np.testing.assert_array_equal(by, [-10, -18])
    assert not hasattr(Subset(Squares(3), [0]), "get_batch")


def test_subset_matches_torch():
    base = Squares(10)
    idx = [9, 0, 4, 4]
    ours, theirs = Subset(base, idx), torch.utils.data.Subset(base, idx)
    assert [ours[i] for i in range(4)] == [theirs[i] for i in range(4)] == [81, 0, 16, 16]


@pytest.mark.parametrize("n,lengths", [(10, [0.33, 0.33, 0.34]), (7, [0.5, 0.5]),
                                       (101, [0.8, 0.1, 0.1]), (5, [0.2, 0.2, 0.2, 0.2, 0.2])])
def test_random_split_fraction_sizes_match_torch(n, lengths):
    ours = random_split(Squares(n), lengths, seed=0)
    theirs = torch.utils.data.random_split(range(n), lengths,
                                           generator=torch.Generator().manual_seed(0))
    assert [len(s) for s in ours] == [len(s) for s in theirs]


@given(sizes=st.lists(st.integers(0, 20), min_size=1, max_size=4), seed=st.integers(0, 10**6))
def test_random_split_partitions_and_is_seeded(sizes, seed):
    n = sum(sizes)
    parts = random_split(Squares(n), sizes, seed=seed)
    assert [len(p) for p in parts] == sizes
    got = sorted(i for p in parts for i in p.indices)
    assert got == list(range(n))
    again = random_split(Squares(n), sizes, seed=seed)
    assert [p.indices for p in parts] == [p.indices for p in again]


def test_random_split_bad_lengths():
    with pytest.raises(ValueError, match=r"Sum of input lengths \(9\) does not equal"):
        random_split(Squares(10), [4, 5])
    with pytest.raises(ValueError, match="fractions summing to 1"):
        random_split(Squares(10), [0.5, 0.2])
    with pytest.raises(ValueError, match="non-negative"):
        random_split(Squares(10), [11, -1])
