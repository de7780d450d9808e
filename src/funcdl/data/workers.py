"""What runs the batches besides the caller's thread: worker processes and the prefetch thread.

Worker processes import only this module (and the user's dataset), not JAX: the functions they
run, and the failures they send back, live here.
"""

from __future__ import annotations

import pickle
import queue
import random
import threading
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from typing import Any

import numpy as np

from funcdl.data.collate import default_collate


class _KeyErrorMessage(str):
    """KeyError repr()s its message; keep the newlines readable (torch does the same)."""

    def __repr__(self) -> str:
        return str(self)


class Failure:
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


def fetch(dataset: Any, collate_fn: Callable | None, indices: np.ndarray,
           where: str = "worker") -> Any:
    """One batch, or a ``Failure`` naming the index that raised."""
    if collate_fn is None and hasattr(dataset, "get_batch"):
        try:
            return dataset.get_batch(indices)
        except Exception as e:
            return Failure(e, f"{where} while loading the batch of indices {indices.tolist()}")
    samples = []
    for i in indices.tolist():
        try:
            samples.append(dataset[i])
        except Exception as e:
            return Failure(e, f"{where} while loading index {i}")
    try:
        return (collate_fn or default_collate)(samples)
    except Exception as e:
        return Failure(e, f"{where} while collating the batch of indices {indices.tolist()}")


_WORKER: dict[str, Any] = {}


def worker_init(payload: bytes) -> None:
    _WORKER["dataset"], _WORKER["collate_fn"] = pickle.loads(payload)


def seed_rngs(seed: int, epoch: int, first_index: int) -> None:
    """Seed Python's ``random`` and numpy's global RNG for the batch starting at dataset index
    ``first_index`` of epoch ``epoch`` of a loader seeded ``seed``."""
    state = np.random.SeedSequence([int(seed), int(epoch), int(first_index)]).generate_state(2)
    random.seed(int(state[0]) << 32 | int(state[1]))
    np.random.seed(state)


def worker_fetch(indices: np.ndarray, *, seed: int = 0, epoch: int = 0) -> Any:
    seed_rngs(seed, epoch, int(indices[0]) if len(indices) else 0)
    return fetch(_WORKER["dataset"], _WORKER["collate_fn"], indices, "worker process")


class Prefetcher:
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


def preload_in_forkserver(ctx: Any) -> None:
    """Let forked workers start with this module imported, unless the user set a preload list."""
    from multiprocessing import forkserver  # POSIX only: imported when forkserver is in use

    server = getattr(forkserver, "_forkserver", None)
    if getattr(server, "_preload_modules", None) == ["__main__"]:
        ctx.set_forkserver_preload(["__main__", "funcdl.data.workers"])


def shutdown(executor: Executor) -> None:
    executor.shutdown(wait=True, cancel_futures=True)
