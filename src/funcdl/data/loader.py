"""DataLoader: seeded per-epoch order, collation, background prefetch, workers, resumable state.

Which machinery runs the batches (all of it stops and is joined when iteration ends, raises, or the
consumer breaks out and drops the iterator):

- ``num_workers=0, prefetch=0``: everything in the caller's thread, one batch at a time.
- ``num_workers=0, prefetch=k`` (default k=2): one background thread prepares up to ``k`` batches
  ahead. This overlaps data work with the device step whenever either side releases the GIL:
  a jitted step does (XLA runs outside Python), and so do numpy's large-array kernels and file I/O.
- ``num_workers=n`` with ``worker_type="process"`` (default): ``n`` worker processes, started with
  ``forkserver`` (or ``spawn`` where that is missing), never ``fork``: forking a process where JAX
  has started its threads can deadlock. Use this when ``__getitem__`` is pure-Python work that holds
  the GIL. The dataset and ``collate_fn`` must be picklable (defined at module top level) and the
  main script needs the usual ``if __name__ == "__main__":`` guard. The pool lives for one epoch
  unless ``persistent_workers=True`` (then until ``close()`` or garbage collection).
- ``num_workers=n`` with ``worker_type="thread"``: ``n`` threads, for GIL-releasing work.
"""

from __future__ import annotations

import collections
import functools
import math
import multiprocessing
import pickle
import queue
import threading
import traceback
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np

from funcdl.data.dataset import IterableDataset

__all__ = [
    "DataLoader",
    "default_collate",
    "epoch_permutation",
    "bucket_by_length",
    "BucketBatchSampler",
    "padding_fraction",
]


# ----------------------------------------------------------------------------------------------
# Collation


def _ragged_message(shapes: list[tuple[int, ...]]) -> str:
    return (
        f"default_collate: cannot stack samples of different shapes {sorted(set(shapes))[:4]}. "
        "Sequences of different lengths need padding: pass "
        "collate_fn=funcdl.data.text.pad_collate(pad_id) to the DataLoader, or pad them yourself "
        "with funcdl.data.text.pad_batch(sequences, pad_id)")


def default_collate(samples: Sequence[Any]) -> Any:
    """Stack a list of samples into a batch, recursing into tuples, lists and dicts.

    Arrays (numpy, JAX, anything with ``__array__``) and scalars are stacked along a new leading
    axis into numpy arrays (Python ints give int64, floats float64, as torch's default_collate);
    tuples/lists/named tuples give the same container of batches; dicts give a dict of batches;
    strings give a list of strings.
    """
    if len(samples) == 0:
        raise ValueError("default_collate got an empty list of samples")
    first = samples[0]
    if isinstance(first, str | bytes):
        return list(samples)
    if isinstance(first, Mapping):
        return {k: default_collate([s[k] for s in samples]) for k in first}
    if isinstance(first, tuple | list):
        sizes = {len(s) for s in samples}
        if len(sizes) != 1:
            raise ValueError(
                f"default_collate: samples are sequences of different lengths {sorted(sizes)}; "
                "each element of a batch must have the same structure. If these are token "
                "sequences, pad them: collate_fn=funcdl.data.text.pad_collate(pad_id)")
        if isinstance(first, list) and all(isinstance(v, int | float | np.number) for v in first):
            return np.asarray(samples)  # a list of numbers is one 1-D sample
        columns = [default_collate(list(col)) for col in zip(*samples)]
        if hasattr(first, "_fields"):  # named tuple
            return type(first)(*columns)
        return type(first)(columns) if isinstance(first, list) else tuple(columns)
    arrays = [np.asarray(s) for s in samples]
    shapes = [a.shape for a in arrays]
    if len(set(shapes)) != 1:
        raise ValueError(_ragged_message(shapes))
    return np.stack(arrays)


class _KeyErrorMessage(str):
    """KeyError repr()s its message; keep the newlines readable (torch does the same)."""

    def __repr__(self) -> str:
        return str(self)


class _Failure:
    """A picklable record of an exception raised while loading one sample or batch."""

    def __init__(self, exc: BaseException, where: str):
        self.exc = exc
        self.exc_type = type(exc)
        self.where = where
        self.text = "".join(traceback.format_exception(exc))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__, exc=None)
        try:
            pickle.dumps(self.exc_type)
        except Exception:
            state["exc_type"] = RuntimeError
        return state

    def reraise(self) -> None:
        msg = f"Caught {self.exc_type.__name__} in DataLoader {self.where}.\nOriginal {self.text}"
        if issubclass(self.exc_type, KeyError):
            msg = _KeyErrorMessage(msg)
        try:
            err = self.exc_type(msg)
        except Exception:
            err = RuntimeError(msg)
        raise err from self.exc


def _fetch(dataset: Any, collate_fn: Callable | None, indices: np.ndarray,
           where: str = "worker") -> Any:
    """One batch, or a ``_Failure`` naming the index that raised."""
    if collate_fn is None and hasattr(dataset, "get_batch"):
        try:
            return dataset.get_batch(indices)
        except Exception as e:
            return _Failure(e, f"{where} while loading the batch of indices {indices.tolist()}")
    samples = []
    for i in indices.tolist():
        try:
            samples.append(dataset[i])
        except Exception as e:
            return _Failure(e, f"{where} while loading index {i}")
    try:
        return (collate_fn or default_collate)(samples)
    except Exception as e:
        return _Failure(e, f"{where} while collating the batch of indices {indices.tolist()}")


_WORKER: dict[str, Any] = {}


def _worker_init(payload: bytes) -> None:
    _WORKER["dataset"], _WORKER["collate_fn"] = pickle.loads(payload)


def _worker_fetch(indices: np.ndarray) -> Any:
    return _fetch(_WORKER["dataset"], _WORKER["collate_fn"], indices, "worker process")


# ----------------------------------------------------------------------------------------------
# Orders


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled order of epoch ``epoch``: a function of ``(seed, epoch)`` only."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def _shard(items: Sequence[Any] | np.ndarray, index: int, count: int, drop_last: bool) -> Any:
    """This process's share: every ``count``-th item, evened out as DistributedSampler does.

    Without ``drop_last`` the list is padded by wrapping around so every process gets the same
    number of items (and batches), which collective device steps need; with it the tail is cut.
    """
    if count == 1:
        return items
    n = len(items)
    if drop_last:
        items = items[: n - n % count]
    elif n % count:
        extra = count - n % count
        reps = math.ceil(extra / max(n, 1))
        pad = (list(items) * reps)[:extra] if not isinstance(items, np.ndarray) else \
            np.tile(items, reps)[:extra]
        items = np.concatenate([items, pad]) if isinstance(items, np.ndarray) else \
            list(items) + pad
    return items[index::count]


def bucket_by_length(lengths: Sequence[int], batch_size: int, *, seed: int = 0, epoch: int = 0,
                     bucket_size: int | None = None, drop_last: bool = False) -> list[np.ndarray]:
    """Batches of indices with similar lengths, to cut padding; seeded by ``(seed, epoch)``.

    Shuffle all indices, cut them into buckets of ``bucket_size`` (default ``50 * batch_size``),
    sort each bucket by length, cut it into batches, and shuffle the batch order. Every index
    appears once (``drop_last`` drops the incomplete batches).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size should be a positive integer, got {batch_size}")
    lengths = np.asarray(lengths)
    bucket = bucket_size or 50 * batch_size
    bucket = max(batch_size, bucket - bucket % batch_size)
    rng = np.random.default_rng([int(seed), int(epoch), 1])
    order = rng.permutation(len(lengths))
    batches: list[np.ndarray] = []
    for start in range(0, len(order), bucket):
        chunk = order[start:start + bucket]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        for b in range(0, len(chunk), batch_size):
            if len(chunk[b:b + batch_size]) == batch_size or not drop_last:
                batches.append(chunk[b:b + batch_size])
    return [batches[i] for i in rng.permutation(len(batches))]


def padding_fraction(lengths: Sequence[int], batches: Iterable[Sequence[int]]) -> float:
    """Share of the padded batch cells that are padding (each batch padded to its longest)."""
    lengths = np.asarray(lengths)
    real = cells = 0
    for b in batches:
        lb = lengths[np.asarray(b, dtype=np.int64)]
        real += int(lb.sum())
        cells += int(lb.max()) * len(lb) if len(lb) else 0
    return 0.0 if cells == 0 else 1.0 - real / cells


class BucketBatchSampler:
    """A ``batch_sampler`` for ``DataLoader`` that groups similar lengths (see bucket_by_length)."""

    def __init__(self, lengths: Sequence[int], batch_size: int, *, seed: int = 0,
                 bucket_size: int | None = None, drop_last: bool = False):
        self.lengths = np.asarray(lengths)
        self.batch_size, self.seed = batch_size, seed
        self.bucket_size, self.drop_last = bucket_size, drop_last
        self.epoch = 0
        bucket_by_length([], batch_size)  # validates batch_size early

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(bucket_by_length(self.lengths, self.batch_size, seed=self.seed,
                                     epoch=self.epoch, bucket_size=self.bucket_size,
                                     drop_last=self.drop_last))

    def __len__(self) -> int:
        return len(bucket_by_length(self.lengths, self.batch_size, seed=self.seed,
                                    epoch=self.epoch, bucket_size=self.bucket_size,
                                    drop_last=self.drop_last))


# ----------------------------------------------------------------------------------------------
# Background thread


class _Prefetcher:
    """Runs an iterator in a daemon thread, ``size`` items ahead; ``close()`` stops and joins it."""

    def __init__(self, source: Callable[[], Iterator[Any]], size: int):
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(source,), daemon=True,
                                        name="funcdl-DataLoader-prefetch")
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def _run(self, source: Callable[[], Iterator[Any]]) -> None:
        it = None
        try:
            it = source()
            for item in it:
                if not self._put(("item", item)):
                    return
            self._put(("end", None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self._put(("error", e))
        finally:
            if hasattr(it, "close"):
                it.close()

    def get(self) -> tuple[str, Any]:
        while True:
            try:
                return self._queue.get(timeout=0.1)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError("DataLoader prefetch thread stopped unexpectedly") from None

    def close(self) -> None:
        self._stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join()


# ----------------------------------------------------------------------------------------------
# The loader


class _Progress:
    """Where one iterator stands: the epoch it runs and how many batches it has yielded."""

    def __init__(self, epoch: int, position: int):
        self.epoch, self.position, self.done, self.active = epoch, position, False, True


def _preload_loader_in_forkserver(ctx: Any) -> None:
    """Let forked workers start with this module imported, unless the user set a preload list."""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    if getattr(server, "_preload_modules", None) == ["__main__"]:
        ctx.set_forkserver_preload(["__main__", "funcdl.data.loader"])


def _shutdown(executor: Executor) -> None:
    executor.shutdown(wait=True, cancel_futures=True)


class DataLoader:
    """Batches of a dataset, epoch after epoch, reproducibly and without making the step wait.

    Args:
        dataset: a map-style dataset (``__getitem__``/``__len__``) or an ``IterableDataset``.
        batch_size: samples per batch (>= 1).
        shuffle: draw a fresh permutation each epoch; epoch ``k``'s order depends only on
            ``(seed, k)`` (``epoch_permutation``).
        seed: the shuffling seed.
        drop_last: drop the last incomplete batch (and, across processes, the uneven tail).
        collate_fn: list of samples -> batch; default ``default_collate``.
        num_workers: worker processes (or threads, see ``worker_type``); 0 = none.
        prefetch: batches prepared ahead (per worker when ``num_workers > 0``); 0 = synchronous.
        sampler: an iterable of indices used instead of ``shuffle`` (``set_epoch(k)`` is called
            on it when it has one, so it can be seeded per epoch too).
        batch_sampler: an iterable of index lists (e.g. ``BucketBatchSampler``); mutually
            exclusive with ``batch_size``, ``shuffle``, ``sampler`` and ``drop_last``.
        device / sharding: place each batch there (numpy leaves only, ``funcdl.devices.place``).
            With ``process_count > 1`` and a sharding, the per-process batches are assembled into
            one global array (``jax.make_array_from_process_local_data``).
        process_index, process_count: this process's share of each epoch (every
            ``process_count``-th index of the global order, padded by wrap-around to equal
            shares unless ``drop_last``). Pass ``jax.process_index()``/``jax.process_count()``.
        worker_type: ``"process"`` (work that holds the GIL) or ``"thread"``.
        multiprocessing_context: start method for worker processes; default ``forkserver``
            (``spawn`` where missing); ``"fork"`` only when asked for (unsafe once JAX runs).
        persistent_workers: keep the worker pool between epochs (until ``close()``).

    Each ``iter(loader)`` runs the next epoch; ``state_dict()``/``load_state_dict()`` resume one
    mid-epoch at the exact batch.
    """

    def __init__(self, dataset: Any, batch_size: int = 1, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False, collate_fn: Callable[[list[Any]], Any] | None = None,
                 num_workers: int = 0, prefetch: int = 2, sampler: Iterable[int] | None = None,
                 *, batch_sampler: Iterable[Sequence[int]] | None = None, device: Any = None,
                 sharding: Any = None, process_index: int = 0, process_count: int = 1,
                 worker_type: str = "process", multiprocessing_context: str | None = None,
                 persistent_workers: bool = False):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size should be a positive integer value, but got "
                             f"batch_size={batch_size!r}")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError("num_workers option should be non-negative; use num_workers=0 to "
                             "disable multiprocessing.")
        if not isinstance(prefetch, int) or prefetch < 0:
            raise ValueError(f"prefetch must be a non-negative integer, got {prefetch!r}")
        if worker_type not in ("process", "thread"):
            raise ValueError(f"worker_type must be 'process' or 'thread', got {worker_type!r}")
        if not (isinstance(process_count, int) and process_count >= 1
                and 0 <= process_index < process_count):
            raise ValueError(f"need 0 <= process_index < process_count, got process_index="
                             f"{process_index}, process_count={process_count}")
        if seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed}")
        if device is not None and sharding is not None:
            raise ValueError("pass either device= or sharding=, not both")
        self.iterable = isinstance(dataset, IterableDataset) or (
            not hasattr(dataset, "__getitem__") and hasattr(dataset, "__iter__"))
        if self.iterable:
            if shuffle:
                raise ValueError("DataLoader with IterableDataset: expected unspecified shuffle "
                                 f"option, but got shuffle={shuffle}")
            if sampler is not None or batch_sampler is not None:
                raise ValueError("DataLoader with IterableDataset: expected unspecified sampler "
                                 "and batch_sampler options")
            if num_workers > 0:
                raise ValueError("DataLoader with IterableDataset reads the stream in one "
                                 "background thread; num_workers > 0 is not supported (shard "
                                 "the stream inside the dataset, or use prefetch=)")
        else:
            if len(dataset) == 0:
                raise ValueError("DataLoader got an empty dataset (len(dataset) == 0); there is "
                                 "nothing to batch")
            if sampler is not None and shuffle:
                raise ValueError("sampler option is mutually exclusive with shuffle")
            if batch_sampler is not None and (batch_size != 1 or shuffle or sampler is not None
                                              or drop_last):
                raise ValueError("batch_sampler option is mutually exclusive with batch_size, "
                                 "shuffle, sampler, and drop_last")
        method = multiprocessing_context or (
            "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn")
        self.dataset, self.batch_size, self.shuffle, self.seed = dataset, batch_size, shuffle, seed
        self.drop_last, self.collate_fn = drop_last, collate_fn
        self.num_workers, self.prefetch = num_workers, prefetch
        self.sampler, self.batch_sampler = sampler, batch_sampler
        self.device, self.sharding = device, sharding
        self.process_index, self.process_count = process_index, process_count
        self.worker_type, self.multiprocessing_context = worker_type, method
        self.persistent_workers = persistent_workers
        self._next_epoch = 0
        self._latest: _Progress | None = None
        self._resume: tuple[int, int] | None = None
        self._pool: Executor | None = None
        self._pool_finalizer: weakref.finalize | None = None

    # -- epochs and state -----------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """The epoch in progress, or the one the next ``iter()`` runs when none is."""
        if self._latest is not None and self._latest.active:
            return self._latest.epoch
        return self._resume[0] if self._resume else self._next_epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` run epoch ``epoch`` from its start."""
        self._next_epoch, self._resume, self._latest = int(epoch), None, None

    def state_dict(self) -> dict[str, Any]:
        """``{"epoch": k, "position": n, ...}``: ``n`` batches of epoch ``k`` were yielded.

        Taken after a finished epoch it points at the start of the next one.
        """
        if self._resume is not None:
            epoch, position = self._resume
        elif self._latest is None:
            epoch, position = self._next_epoch, 0
        elif self._latest.done:
            epoch, position = self._latest.epoch + 1, 0
        else:
            epoch, position = self._latest.epoch, self._latest.position
        state = {"epoch": epoch, "position": position, "seed": self.seed,
                 "shuffle": self.shuffle, "batch_size": self.batch_size,
                 "drop_last": self.drop_last, "process_index": self.process_index,
                 "process_count": self.process_count}
        if not self.iterable:
            state["num_samples"] = len(self.dataset)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Make the next ``iter()`` continue epoch ``state["epoch"]`` at ``state["position"]``.

        The settings that decide the order (seed, shuffle, batch size, drop_last, dataset size,
        process split) must match the saved ones, or the resumed batches would differ.
        """
        for key in ("epoch", "position"):
            if key not in state:
                raise KeyError(f"DataLoader state_dict is missing {key!r}")
        mine = self.state_dict()
        for key in ("seed", "shuffle", "batch_size", "drop_last", "num_samples",
                    "process_index", "process_count"):
            if key in state and key in mine and state[key] != mine[key]:
                raise ValueError(f"cannot resume: the saved DataLoader had {key}={state[key]!r} "
                                 f"but this one has {key}={mine[key]!r}; the batch order would "
                                 "differ")
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or position < 0:
            raise ValueError(f"epoch and position must be >= 0, got {epoch}, {position}")
        if not self.iterable and position > len(self):
            raise ValueError(f"position {position} is past the end of an epoch of {len(self)} "
                             "batches")
        self._resume, self._latest = (epoch, position), None

    # -- batch plans ------------------------------------------------------------------------

    def _num_local_samples(self) -> int:
        n, pc = len(self.dataset), self.process_count
        return n // pc if self.drop_last else math.ceil(n / pc)

    def __len__(self) -> int:
        """Batches per epoch (for this process)."""
        if self.iterable:
            n = len(self.dataset)  # TypeError for streams without a length, as torch
            n = n // self.process_count if self.drop_last else math.ceil(n / self.process_count)
        elif self.batch_sampler is not None:
            nb, pc = len(self.batch_sampler), self.process_count
            return nb // pc if self.drop_last else math.ceil(nb / pc)
        else:
            n = len(self.dataset) if self.sampler is None else len(self.sampler)
            pc = self.process_count
            n = n // pc if self.drop_last else math.ceil(n / pc)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _index_batches(self, epoch: int) -> list[np.ndarray]:
        """Epoch ``epoch``'s batches of indices for this process."""
        pi, pc = self.process_index, self.process_count
        if self.batch_sampler is not None:
            if hasattr(self.batch_sampler, "set_epoch"):
                self.batch_sampler.set_epoch(epoch)
            batches = [np.asarray(b, dtype=np.int64) for b in self.batch_sampler]
            return list(_shard(batches, pi, pc, self.drop_last))
        if self.sampler is not None:
            if hasattr(self.sampler, "set_epoch"):
                self.sampler.set_epoch(epoch)
            order = np.fromiter((int(i) for i in self.sampler), dtype=np.int64)
        elif self.shuffle:
            order = epoch_permutation(len(self.dataset), self.seed, epoch)
        else:
            order = np.arange(len(self.dataset))
        order = _shard(order, pi, pc, self.drop_last)
        bs = self.batch_size
        stop = len(order) - len(order) % bs if self.drop_last else len(order)
        return [order[i:i + bs] for i in range(0, stop, bs)]

    def _stream_batches(self, start: int) -> Iterator[Any]:
        """Collated batches of an iterable dataset, skipping the first ``start`` batches."""
        import itertools

        it = iter(self.dataset)
        if self.process_count > 1:
            it = itertools.islice(it, self.process_index, None, self.process_count)
        it = itertools.islice(it, start * self.batch_size, None)
        collate = self.collate_fn or default_collate
        count = start * self.batch_size
        while True:
            samples = []
            try:
                for _ in range(self.batch_size):
                    samples.append(next(it))
                    count += 1
            except StopIteration:
                pass
            except Exception as e:
                yield _Failure(e, f"while reading sample {count} of the stream")
                return
            if not samples or (self.drop_last and len(samples) < self.batch_size):
                return
            try:
                yield collate(samples)
            except Exception as e:
                yield _Failure(e, f"while collating samples {count - len(samples)}..{count - 1} "
                                  "of the stream")
                return
            if len(samples) < self.batch_size:
                return

    # -- placement and workers ---------------------------------------------------------------

    def _place(self, batch: Any) -> Any:
        if self.device is None and self.sharding is None:
            return batch
        # imported here, not above: worker processes import this module and start without JAX
        import jax

        from funcdl.devices import place

        target = self.sharding if self.sharding is not None else self.device
        process_local = self.sharding is not None and self.process_count > 1

        def put(x: Any) -> Any:
            if not isinstance(x, np.ndarray | np.generic):
                return x
            return place(x, target, process_local=process_local)

        return jax.tree.map(put, batch)

    def _get_pool(self) -> Executor:
        if self._pool is not None:
            return self._pool
        if self.worker_type == "thread":
            pool: Executor = ThreadPoolExecutor(self.num_workers,
                                                thread_name_prefix="funcdl-DataLoader-worker")
        else:
            try:
                payload = pickle.dumps((self.dataset, self.collate_fn))
            except Exception as e:
                raise TypeError(
                    "num_workers > 0 runs worker processes, which receive the dataset and "
                    f"collate_fn by pickling, and pickling failed: {e}. Define them at module top "
                    "level (no lambdas or local classes), or use worker_type='thread'") from e
            ctx = multiprocessing.get_context(self.multiprocessing_context)
            if self.multiprocessing_context == "forkserver":
                _preload_loader_in_forkserver(ctx)
            pool = ProcessPoolExecutor(self.num_workers, mp_context=ctx,
                                       initializer=_worker_init, initargs=(payload,))
        if self.persistent_workers:
            self._pool = pool
            self._pool_finalizer = weakref.finalize(self, _shutdown, pool)
        return pool

    def close(self) -> None:
        """Shut down a persistent worker pool (a no-op otherwise)."""
        if self._pool_finalizer is not None:
            self._pool_finalizer()
        self._pool, self._pool_finalizer = None, None

    def __enter__(self) -> DataLoader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- iteration ----------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Any]:
        if self._resume is not None:
            epoch, position = self._resume
        else:
            epoch, position = self._next_epoch, 0
        self._resume, self._next_epoch = None, epoch + 1
        progress = _Progress(epoch, position)
        self._latest = progress
        return self._run(progress)

    def _run(self, progress: _Progress) -> Iterator[Any]:
        try:
            if self.iterable:
                produce = functools.partial(self._stream_batches, progress.position)
            else:
                batches = self._index_batches(progress.epoch)[progress.position:]
                if self.num_workers > 0:
                    yield from self._run_pool(progress, batches)
                    progress.done = True
                    return
                produce = functools.partial(self._fetch_all, batches)
            if self.prefetch == 0:
                for batch in produce():
                    if isinstance(batch, _Failure):
                        batch.reraise()
                    progress.position += 1
                    yield self._place(batch)
            else:
                yield from self._run_prefetch(progress, produce)
            progress.done = True
        finally:
            progress.active = False

    def _fetch_all(self, batches: list[np.ndarray]) -> Iterator[Any]:
        where = "prefetch thread" if self.prefetch else "main thread"
        for idx in batches:
            out = _fetch(self.dataset, self.collate_fn, idx, where)
            yield out if isinstance(out, _Failure) else self._place(out)

    def _run_prefetch(self, progress: _Progress, produce: Callable[[], Iterator[Any]]
                      ) -> Iterator[Any]:
        if self.iterable:
            def placed() -> Iterator[Any]:
                for b in produce():
                    yield b if isinstance(b, _Failure) else self._place(b)
            source = placed
        else:
            source = produce
        prefetcher = _Prefetcher(source, self.prefetch)
        try:
            while True:
                kind, item = prefetcher.get()
                if kind == "end":
                    return
                if kind == "error":
                    raise item
                if isinstance(item, _Failure):
                    item.reraise()
                progress.position += 1
                yield item
        finally:
            prefetcher.close()

    def _run_pool(self, progress: _Progress, batches: list[np.ndarray]) -> Iterator[Any]:
        pool = self._get_pool()
        if self.worker_type == "thread":
            task = functools.partial(_fetch, self.dataset, self.collate_fn, where="worker thread")
        else:
            task = _worker_fetch
        pending: collections.deque = collections.deque()
        todo = iter(batches)
        try:
            for idx in todo:
                pending.append(pool.submit(task, idx))
                if len(pending) >= max(1, self.prefetch) * self.num_workers:
                    break
            while pending:
                try:
                    out = pending.popleft().result()
                except BrokenProcessPool as e:
                    raise RuntimeError(
                        "a DataLoader worker process died unexpectedly (killed, out of memory, "
                        "or the dataset failed to unpickle in the worker); see the error above"
                    ) from e
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(pool.submit(task, nxt))
                if isinstance(out, _Failure):
                    out.reraise()
                progress.position += 1
                yield self._place(out)
        finally:
            for f in pending:
                f.cancel()
            if pool is not self._pool:
                _shutdown(pool)
