"""Arrays between the host and the devices: the rules ``funcdl.data`` and ``funcdl.train`` share.

The DataLoader places its batches with ``place``; ``fit`` shards batches and replicates its state
with it and reads arrays back with ``to_host``; checkpoints store keys as ``is_key`` finds them.
``cpu_devices`` splits the host CPU into several JAX devices (an explicit opt-in, before JAX
starts). This module imports only JAX and numpy, so the data pipeline can use it without the model
code.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Sharding, SingleDeviceSharding


def is_key(x: Any) -> bool:
    """Whether ``x`` is an array of typed PRNG keys (``jax.random.key``), which have no numpy
    form: they travel as their raw ``uint32`` data (``jax.random.key_data``)."""
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def to_host(x: Any) -> np.ndarray:
    """The value of an array in numpy (replicated arrays of a multi-process run included); keys
    come back as their raw data, a numpy array as it is."""
    if isinstance(x, np.ndarray):
        return x
    if is_key(x):
        x = jax.random.key_data(x)
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        x = x.addressable_shards[0].data  # replicated: every shard holds the whole value
    return np.asarray(jax.device_get(x))


def place(x: Any, target: Sharding | jax.Device, *, process_local: bool = False) -> jax.Array:
    """``x`` as a ``jax.Array`` laid out by ``target`` (a ``Sharding``, or one ``Device``).

    By default ``x`` is the whole value, the same in every process, and each device takes its
    slice of it. With ``process_local`` it is this process's rows only, and the global array is
    the processes' rows stacked in process order (a ``DataLoader`` with ``process_count > 1``).
    """
    sharding = target if isinstance(target, Sharding) else SingleDeviceSharding(target)
    if is_key(x):
        data = place(jax.random.key_data(x), sharding, process_local=process_local)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    host = to_host(x)
    # a global shape equal to the local one tells JAX every process holds the whole value
    global_shape = None if process_local else host.shape
    return jax.make_array_from_process_local_data(sharding, host, global_shape)


def _backend_started() -> bool:
    """Whether JAX has started its backends (after which their settings are fixed)."""
    from jax._src import xla_bridge  # JAX has no public way to ask

    return getattr(xla_bridge, "backends_are_initialized", lambda: False)()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def _keep_freed_memory() -> bool:
    """Make glibc's malloc serve large blocks from the heap and keep freed memory there; False
    where the C library is not glibc (other C libraries number mallopt's parameters
    differently, or lack it)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt, _ = libc.mallopt, libc.gnu_get_libc_version
    except (OSError, TypeError, AttributeError):
        return False
    return all(mallopt(param, value) == 1
               for param, value in ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 1 << 30)))


def _reuse_memory() -> None:
    """Run XLA:CPU programs on the calling thread and keep freed memory for reuse.

    XLA:CPU allocates a program's temporary buffer (tens of MB for a training step) on every
    execution. By default it executes (and allocates) on a worker thread, whose malloc arena
    glibc maps such a block for with ``mmap`` and unmaps on free: every step touches fresh pages
    (an encoder layer's step, B=16 T=128 D=256: 19,000 page faults and ~30 ms of a ~100 ms
    step). Executed on the calling thread (``jax_cpu_enable_async_dispatch`` off), the block
    comes from the main heap, which keeps freed memory once ``mmap`` and trimming are off: under
    1,000 faults a step. The process keeps its peak heap instead of returning it, and Python no
    longer runs ahead of the device, which costs op-by-op (eager) code ~10-25 us an op. Nothing
    changes where the C library is not glibc.
    """
    if _keep_freed_memory():
        jax.config.update("jax_cpu_enable_async_dispatch", False)


def cpu_devices(n: int | None = None, *, reuse_memory: bool = False) -> int:
    """Set JAX's CPU backend up for training before it starts; returns the device count ``n``.

    - ``n`` CPU devices (default: one per core this process may use), for data-parallel steps
      (``fit(..., mesh="auto")`` splits each batch over them).
    - ``reuse_memory=True``: each program runs on the calling thread and glibc's malloc keeps
      freed memory, so XLA's per-step temporary buffers stop costing fresh pages every step (see
      ``_reuse_memory``). For jitted training: on 2 cores it made the encoder-layer step and
      ``fit`` on ``benchmarks/bench_train.py``'s classifier 1.4-1.5x faster, and left
      ``funcdl demo`` as fast. Not for op-by-op code (the eager tape's MLP gradient took
      1.2-1.6x as long: Python can no longer run ahead of the device), steps of a few
      milliseconds, or steps split over several CPU devices (they then take turns).
      Process-wide, and a no-op (it returns ``n`` all the same) where the C library is not
      glibc.

    Both settings take effect only before JAX starts its backend, so call it first, right after
    the imports. Once JAX has started, the count it has is accepted (``reuse_memory``, if not
    already on, then changes nothing and says so in a warning); any other count is an
    error. On a machine with an accelerator it changes only the CPU backend
    (``jax.devices("cpu")``).
    """
    if n is None:
        n = _cores()
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"cpu_devices needs a positive number of devices, got {n!r}")
    started = _backend_started()
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # JAX's backend is already running, maybe with another count
        have = len(jax.devices("cpu"))
        if have != n:
            raise RuntimeError(
                f"funcdl.cpu_devices({n}) was called after JAX started its CPU backend with "
                f"{have} device(s); the count cannot change now. Call funcdl.cpu_devices({n}) "
                "at the top of the program, right after the imports and before any JAX array "
                "is created or any computation runs (a new process starts afresh).") from None
    # already on: only an earlier call made dispatch synchronous
    if reuse_memory and jax.config.read("jax_cpu_enable_async_dispatch"):
        if started:
            warnings.warn(
                "funcdl.cpu_devices(reuse_memory=True) was called after JAX started its CPU "
                "backend, so it changes nothing: call it at the top of the program, before any "
                "JAX array is created", RuntimeWarning, stacklevel=3)  # funcdl.cpu_devices' caller
        else:
            _reuse_memory()
    return n


__all__ = ["cpu_devices", "is_key", "place", "to_host"]
