"""DataLoader: epochs, order, resume, prefetch/workers, errors, threads; checked against torch."""

import threading

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from funcdl.data import (
    ArrayDataset,
    BucketBatchSampler,
    ConcatDataset,
    DataLoader,
    Dataset,
    IterableDataset,
    Subset,
    bucket_by_length,
    default_collate,
    padding_fraction,
)


def ids_of(loader):
    """The sample ids of each batch of one epoch (datasets below store the id in column 0)."""
    return [np.asarray(b[0] if isinstance(b, tuple) else b).reshape(-1).tolist() for b in loader]


def id_dataset(n):
    return ArrayDataset(np.arange(n), np.arange(n) * 10.0)


def live_threads():
    return {t for t in threading.enumerate() if t.is_alive()}


# ---------------------------------------------------------------- order and epochs


@given(n=st.integers(1, 40), batch_size=st.integers(1, 7), drop_last=st.booleans(),
       shuffle=st.booleans(), count=st.integers(1, 3), seed=st.integers(0, 2**31))
def test_each_index_once_per_epoch_across_processes(n, batch_size, drop_last, shuffle, count,
                                                    seed):
    ds = id_dataset(n)
    seen = []
    for rank in range(count):
        loader = DataLoader(ds, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
                            prefetch=0, process_index=rank, process_count=count)
        batches = ids_of(loader)
        assert len(batches) == len(loader)
        assert all(len(b) == batch_size for b in batches[:-1])
        if drop_last:
            assert all(len(b) == batch_size for b in batches)
        seen += sum(batches, [])
    counts = np.bincount(seen, minlength=n)
    if count == 1 and not drop_last:
        assert counts.tolist() == [1] * n
    elif not drop_last:  # wrap-around padding: everything once, a few twice, equal shares
        assert counts.min() == 1 and len(seen) == count * -(-n // count)
    else:  # dropped tails are excluded, the rest is seen exactly once
        assert counts.max() <= 1
        per_rank = n // count
        assert len(seen) == count * (per_rank - per_rank % batch_size)


def test_same_seed_and_epoch_same_order_and_epochs_differ():
    a = DataLoader(id_dataset(50), 8, shuffle=True, seed=3, prefetch=0)
    b = DataLoader(id_dataset(50), 8, shuffle=True, seed=3)
    epochs_a = [ids_of(a) for _ in range(3)]
    b.set_epoch(2)
    assert ids_of(b) == epochs_a[2]
    assert b.epoch == 3
    assert epochs_a[0] != epochs_a[1] != epochs_a[2]
    for e in epochs_a:
        assert sorted(sum(e, [])) == list(range(50))
    c = DataLoader(id_dataset(50), 8, shuffle=True, seed=4)
    assert ids_of(c) != epochs_a[0]


def test_epoch_counter_follows_contract():
    loader = DataLoader(id_dataset(10), 4, prefetch=0)
    assert loader.epoch == 0
    it = iter(loader)
    next(it)
    assert loader.epoch == 0
    list(it)
    assert loader.epoch == 1 and loader.state_dict()["epoch"] == 1


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("n,batch_size", [(10, 3), (12, 4), (5, 8)])
def test_unshuffled_batches_match_torch(n, batch_size, drop_last):
    x, y = np.arange(n * 2).reshape(n, 2).astype(np.float32), np.arange(n)
    ours = DataLoader(ArrayDataset(x, y), batch_size, drop_last=drop_last)
    theirs = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size,
        drop_last=drop_last)
    assert len(ours) == len(theirs)
    got, want = list(ours), list(theirs)
    assert len(got) == len(want)
    for (gx, gy), (wx, wy) in zip(got, want):
        np.testing.assert_array_equal(gx, wx.numpy())
        np.testing.assert_array_equal(gy, wy.numpy())


@pytest.mark.parametrize("drop_last", [False, True])
def test_sampler_batches_match_torch(drop_last):
    order = [7, 3, 3, 0, 9, 1, 4]
    ours = DataLoader(id_dataset(10), 3, sampler=order, drop_last=drop_last)
    theirs = torch.utils.data.DataLoader(np.arange(10), 3, sampler=order, drop_last=drop_last)
    assert len(ours) == len(theirs)
    assert ids_of(ours) == [b.tolist() for b in theirs]
    with pytest.raises(ValueError, match="mutually exclusive with shuffle"):
        DataLoader(id_dataset(10), 3, sampler=order, shuffle=True)


def test_default_collate_matches_torch_on_nested_samples():
    samples = [{"x": np.full((2,), i, np.float32), "pair": (i, float(i) / 2)} for i in range(3)]
    ours = default_collate(samples)
    theirs = torch.utils.data.default_collate(samples)
    np.testing.assert_array_equal(ours["x"], theirs["x"].numpy())
    np.testing.assert_array_equal(ours["pair"][0], theirs["pair"][0].numpy())
    assert ours["pair"][0].dtype == np.int64 and ours["pair"][1].dtype == np.float64
    np.testing.assert_array_equal(ours["pair"][1], theirs["pair"][1].numpy())
    assert default_collate(["a", "b"]) == ["a", "b"]


# ---------------------------------------------------------------- resume


@pytest.mark.parametrize("kw", [dict(prefetch=0), dict(prefetch=3),
                                dict(num_workers=2, worker_type="thread")])
def test_resume_mid_epoch_continues_exactly(kw):
    reference = DataLoader(id_dataset(37), 5, shuffle=True, seed=9, prefetch=0)
    reference.set_epoch(2)
    full = ids_of(reference)
    loader = DataLoader(id_dataset(37), 5, shuffle=True, seed=9, **kw)
    loader.set_epoch(2)
    it = iter(loader)
    head = [next(it)[0].tolist() for _ in range(3)]
    state = loader.state_dict()
    del it
    assert state["epoch"] == 2 and state["position"] == 3
    assert head == full[:3]
    fresh = DataLoader(id_dataset(37), 5, shuffle=True, seed=9, **kw)
    fresh.load_state_dict(state)
    assert fresh.epoch == 2
    assert ids_of(fresh) == full[3:]
    assert fresh.state_dict()["epoch"] == 3 and fresh.state_dict()["position"] == 0


def test_load_state_dict_refuses_a_different_order():
    state = DataLoader(id_dataset(10), 2, shuffle=True, seed=1).state_dict()
    with pytest.raises(ValueError, match="seed"):
        DataLoader(id_dataset(10), 2, shuffle=True, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(id_dataset(10), 5, shuffle=True, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="past the end"):
        DataLoader(id_dataset(10), 2, shuffle=True, seed=1).load_state_dict(
            {"epoch": 0, "position": 6})


# ---------------------------------------------------------------- iterable datasets


class Stream(IterableDataset):
    def __init__(self, n):
        self.n = n

    def __iter__(self):
        return iter(np.arange(self.n, dtype=np.int64) * 3)


class TorchStream(torch.utils.data.IterableDataset):
    def __iter__(self):
        return iter(np.arange(11, dtype=np.int64) * 3)


@pytest.mark.parametrize("drop_last", [False, True])
def test_iterable_dataset_batches_match_torch_and_resume(drop_last):
    ours = DataLoader(Stream(11), 4, drop_last=drop_last)
    theirs = torch.utils.data.DataLoader(TorchStream(), 4, drop_last=drop_last)
    want = [b.numpy().tolist() for b in theirs]
    assert [b.tolist() for b in ours] == want
    it = iter(ours)
    next(it)
    state = ours.state_dict()
    del it
    again = DataLoader(Stream(11), 4, drop_last=drop_last)
    again.load_state_dict(state)
    assert [b.tolist() for b in again] == want[1:]
    with pytest.raises(ValueError, match="shuffle"):
        DataLoader(Stream(3), 2, shuffle=True)


class BrokenStream(IterableDataset):
    def __iter__(self):
        for i in range(10):
            if i == 5:
                raise OSError("connection reset")
            yield np.int64(i)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_stream_error_names_the_sample_and_stops_the_thread(prefetch):
    before = live_threads()
    loader = DataLoader(BrokenStream(), 2, prefetch=prefetch)
    got = []
    with pytest.raises(OSError, match="while reading sample 5 of the stream") as info:
        for b in loader:
            got.append(b.tolist())
    assert got == [[0, 1], [2, 3]] and "connection reset" in str(info.value)
    assert live_threads() <= before


# ---------------------------------------------------------------- workers and threads


def faulty_dataset():
    """40 samples; sample 13 points past the end of its source, so loading it raises."""
    return ConcatDataset([id_dataset(13), Subset(id_dataset(1), [5]), id_dataset(26)])


@pytest.mark.parametrize("kw", [dict(prefetch=0), dict(prefetch=2),
                                dict(num_workers=2, worker_type="thread"),
                                dict(num_workers=2, worker_type="process")])
def test_worker_error_names_the_failing_index(kw):
    before = live_threads()
    loader = DataLoader(faulty_dataset(), 4, **kw)
    with pytest.raises(IndexError, match=r"while loading index 13\b") as info:
        for _ in loader:
            pass
    assert "index 5 is out of range for a dataset of size 1" in str(info.value)
    assert live_threads() <= before


def test_process_workers_give_the_same_batches_and_clean_up():
    import multiprocessing

    before = live_threads()
    ds = Subset(id_dataset(30), list(range(29, -1, -1)))
    ref = ids_of(DataLoader(ds, 4, shuffle=True, seed=5, prefetch=0))
    loader = DataLoader(ds, 4, shuffle=True, seed=5, num_workers=2)
    assert ids_of(loader) == ref  # epoch 0: the same batches in the same order ...
    second = ids_of(loader)
    assert second != ref and sorted(sum(second, [])) == list(range(30))  # ... then epoch 1
    assert live_threads() <= before
    assert multiprocessing.active_children() == []


@pytest.mark.parametrize("kw", [dict(prefetch=2), dict(num_workers=2, worker_type="thread"),
                                dict(num_workers=1, worker_type="process")])
def test_breaking_out_leaves_no_live_threads(kw):
    before = live_threads()
    loader = DataLoader(id_dataset(200), 2, shuffle=True, **kw)
    for i, _ in enumerate(loader):
        if i == 3:
            break
    assert live_threads() <= before
    assert loader.state_dict()["position"] == 4
    it = iter(loader)  # an iterator closed explicitly, too
    next(it)
    it.close()
    assert live_threads() <= before


def test_persistent_workers_live_until_close():
    loader = DataLoader(id_dataset(20), 4, num_workers=2, worker_type="thread",
                        persistent_workers=True)
    before = live_threads()
    assert ids_of(loader) == [list(range(i, min(i + 4, 20))) for i in range(0, 20, 4)]
    assert any(t.name.startswith("funcdl-DataLoader-worker") for t in live_threads())
    loader.close()
    assert live_threads() <= before


def test_unpicklable_dataset_for_processes_says_what_to_do():
    class Local(Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return i

    with pytest.raises(TypeError, match="worker_type='thread'"):
        list(DataLoader(Local(), 2, num_workers=1))
    assert [b.tolist() for b in DataLoader(Local(), 2, num_workers=1, worker_type="thread")] == [
        [0, 1], [2]]


# ---------------------------------------------------------------- placement


def test_device_and_sharding_placement():
    import jax

    dev = jax.devices()[0]
    for kw in (dict(device=dev), dict(sharding=jax.sharding.SingleDeviceSharding(dev))):
        batch = next(iter(DataLoader(id_dataset(6), 3, **kw)))
        assert all(isinstance(x, jax.Array) and x.devices() == {dev} for x in batch)
        np.testing.assert_array_equal(np.asarray(batch[0]), [0, 1, 2])


# ---------------------------------------------------------------- bucketing


def test_bucketing_cuts_padding_and_keeps_every_index_once():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 200, size=3000)
    buckets = bucket_by_length(lengths, 32, seed=1)
    assert sorted(np.concatenate(buckets).tolist()) == list(range(3000))

    def manual_padding(batches):  # padded cells minus real tokens, over padded cells
        cells = sum(lengths[b].max() * len(b) for b in batches)
        return (cells - lengths.sum()) / cells

    plain = [np.arange(3000)[i:i + 32] for i in range(0, 3000, 32)]
    random_batches = [rng.permutation(3000)[i:i + 32] for i in range(0, 3000, 32)]
    assert padding_fraction(lengths, buckets) == pytest.approx(manual_padding(buckets))
    assert manual_padding(random_batches) > 0.4  # ~ half the cells are padding at random
    assert manual_padding(buckets) < 0.05  # bucketed: almost none
    assert manual_padding(plain) > 0.4
    sampler = BucketBatchSampler(lengths, 32, seed=1)
    loader = DataLoader(ArrayDataset(np.arange(3000)), batch_sampler=sampler, prefetch=0)
    first = ids_of(loader)
    assert [list(b) for b in first] == [b.tolist() for b in buckets]  # epoch 0
    assert ids_of(loader) != first  # epoch 1 reshuffles


# ---------------------------------------------------------------- bad input


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="empty dataset"):
        DataLoader(ArrayDataset(np.zeros((0, 2))), 2)
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="batch_size should be a positive integer"):
            DataLoader(id_dataset(4), bad)
    with pytest.raises(ValueError, match="num_workers"):
        DataLoader(id_dataset(4), 2, num_workers=-1)
    with pytest.raises(ValueError, match="mutually exclusive"):
        DataLoader(id_dataset(4), 2, batch_sampler=[[0, 1]])
    with pytest.raises(ValueError, match="process_index"):
        DataLoader(id_dataset(4), 2, process_index=2, process_count=2)


def test_ragged_samples_say_how_to_pad():
    from funcdl.data.text import pad_collate

    seqs = [np.arange(k) + 1 for k in (3, 1, 2)]

    class Ragged(Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return seqs[i], i

    with pytest.raises(ValueError, match="pad_collate"):
        list(DataLoader(Ragged(), 3, prefetch=0))
    ids, mask, labels = next(iter(DataLoader(Ragged(), 3, collate_fn=pad_collate(0))))
    np.testing.assert_array_equal(ids, [[1, 2, 3], [1, 0, 0], [1, 2, 0]])
    np.testing.assert_array_equal(mask, [[0, 0, 0], [0, 1, 1], [0, 0, 1]])
    np.testing.assert_array_equal(labels, [0, 1, 2])


def test_importing_funcdl_data_does_not_import_jax():
    """Worker processes import funcdl.data; keeping JAX out of that import keeps them light."""
    import subprocess
    import sys

    code = "import sys, funcdl.data; print('jax' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
