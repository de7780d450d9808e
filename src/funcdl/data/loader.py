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

A worker process seeds Python's ``random`` and numpy's global RNG before each batch from the
loader's ``seed``, the epoch and the batch's first index (``workers.seed_rngs``): workers never
repeat each other's random augmentations, and a seeded loader gives the same values on every run
whatever the start method and whichever worker runs the batch (torch seeds per worker, and its
batches go to workers in a fixed order; a process pool hands them to whichever is free).
"""

from __future__ import annotations

import collections
import functools
import math
import multiprocessing
import pickle
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np

from funcdl.data.collate import default_collate
from funcdl.data.dataset import IterableDataset
from funcdl.data.sampling import (
    BucketBatchSampler,
    bucket_by_length,
    epoch_permutation,
    padding_fraction,
    shard,
)
from funcdl.data.workers import (
    Failure,
    Prefetcher,
    fetch,
    preload_in_forkserver,
    shutdown,
    worker_fetch,
    worker_init,
)

__all__ = [
    "DataLoader",
    "default_collate",
    "epoch_permutation",
    "bucket_by_length",
    "BucketBatchSampler",
    "padding_fraction",
]


# ----------------------------------------------------------------------------------------------
# The loader


class _Progress:
    """Where one iterator stands: the epoch it runs and how many batches it has yielded."""

    def __init__(self, epoch: int, position: int):
        self.epoch, self.position, self.done, self.active = epoch, position, False, True


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
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
            raise TypeError(f"seed must be an integer, got {seed!r}")
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
            return list(shard(batches, pi, pc, self.drop_last))
        if self.sampler is not None:
            if hasattr(self.sampler, "set_epoch"):
                self.sampler.set_epoch(epoch)
            order = np.fromiter((int(i) for i in self.sampler), dtype=np.int64)
        elif self.shuffle:
            order = epoch_permutation(len(self.dataset), self.seed, epoch)
        else:
            order = np.arange(len(self.dataset))
        order = shard(order, pi, pc, self.drop_last)
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
                yield Failure(e, f"while reading sample {count} of the stream")
                return
            if not samples or (self.drop_last and len(samples) < self.batch_size):
                return
            try:
                yield collate(samples)
            except Exception as e:
                yield Failure(e, f"while collating samples {count - len(samples)}..{count - 1} "
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
                preload_in_forkserver(ctx)
            pool = ProcessPoolExecutor(self.num_workers, mp_context=ctx,
                                       initializer=worker_init, initargs=(payload,))
        if self.persistent_workers:
            self._pool = pool
            self._pool_finalizer = weakref.finalize(self, shutdown, pool)
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
                    if isinstance(batch, Failure):
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
            out = fetch(self.dataset, self.collate_fn, idx, where)
            yield out if isinstance(out, Failure) else self._place(out)

    def _run_prefetch(self, progress: _Progress, produce: Callable[[], Iterator[Any]]
                      ) -> Iterator[Any]:
        if self.iterable:
            def placed() -> Iterator[Any]:
                for b in produce():
                    yield b if isinstance(b, Failure) else self._place(b)
            source = placed
        else:
            source = produce
        prefetcher = Prefetcher(source, self.prefetch)
        try:
            while True:
                kind, item = prefetcher.get()
                if kind == "end":
                    return
                if kind == "error":
                    raise item
                if isinstance(item, Failure):
                    item.reraise()
                progress.position += 1
                yield item
        finally:
            prefetcher.close()

    def _run_pool(self, progress: _Progress, batches: list[np.ndarray]) -> Iterator[Any]:
        pool = self._get_pool()
        if self.worker_type == "thread":  # threads share one RNG: seeding it would race
            task = functools.partial(fetch, self.dataset, self.collate_fn, where="worker thread")
        else:
            task = functools.partial(worker_fetch, seed=self.seed, epoch=progress.epoch)
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
                if isinstance(out, Failure):
                    out.reraise()
                progress.position += 1
                yield self._place(out)
        finally:
            for f in pending:
                f.cancel()
            if pool is not self._pool:
                shutdown(pool)
