"""Arrays between the host and the devices: the rules ``funcdl.data`` and ``funcdl.train`` share.

The DataLoader places its batches with ``place``; ``fit`` shards batches and replicates its state
with it and reads arrays back with ``to_host``; checkpoints store keys as ``is_key`` finds them.
``cpu_devices`` splits the host CPU into several JAX devices (an explicit opt-in, before JAX
starts). This module imports only JAX and numpy, so the data pipeline can use it without the model
code.
"""

from __future__ import annotations

import os
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


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def _reuse_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse; False where the C library is not glibc.

    XLA:CPU allocates a program's temporary buffer (tens of MB for a training step) on every
    execution, from the executing thread. A block that large, in a thread's arena, glibc always
    maps fresh with ``mmap`` and unmaps on free, so every step touches new pages: an encoder
    layer's step (B=16, T=128, D=256) took 19,000 page faults and ~40 ms of kernel time per
    step. One arena, no ``mmap`` for large blocks and no trimming make the step reuse the same
    memory (under 600 faults a step). The process keeps its peak heap instead of returning it.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        # glibc only: other C libraries number mallopt's parameters differently, or lack it
        mallopt, _ = libc.mallopt, libc.gnu_get_libc_version
    except (OSError, TypeError, AttributeError):
        return False
    return all(mallopt(param, value) == 1 for param, value in
               ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 1 << 30)))


def cpu_devices(n: int | None = None, *, reuse_memory: bool = False) -> int:
    """Set JAX's CPU backend up for training before it starts; returns the device count ``n``.

    - ``n`` CPU devices (default: one per core this process may use), for data-parallel steps
      (``fit(..., mesh="auto")`` splits each batch over them).
    - ``reuse_memory=True``: glibc's malloc keeps freed memory in one arena for reuse, so XLA's
      per-step temporary buffers stop costing fresh pages every step (see
      ``_reuse_freed_memory``). Measure it on your program before keeping it: on 2 cores it made
      ``fit`` on ``benchmarks/bench_train.py``'s classifier 1.25-1.55x faster, but
      ``funcdl demo``'s training 1.5x slower (20 -> 30 s; the single arena is what costs
      there). Process-wide, and a no-op where the C library is not glibc.

    It sets JAX's ``jax_num_cpu_devices``, which only takes effect before JAX starts its backend
    (and malloc's arenas are set per thread as threads start), so call it first, right after the
    imports. Once JAX has started, the count it has is accepted (only ``reuse_memory`` then
    takes effect, partly: threads already running keep their arenas); any other count is an
    error. On a machine with an accelerator it changes only the CPU backend
    (``jax.devices("cpu")``).
    """
    if n is None:
        n = _cores()
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"cpu_devices needs a positive number of devices, got {n!r}")
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # JAX's backend is already running
        have = len(jax.devices("cpu"))
        if have != n:
            raise RuntimeError(
                f"funcdl.cpu_devices({n}) was called after JAX started its CPU backend with "
                f"{have} device(s); the count cannot change now. Call funcdl.cpu_devices({n}) at "
                "the top of the program, right after the imports and before any JAX array is "
                "created or any computation runs (a new process starts afresh).") from None
    if reuse_memory:  # late too: malloc's large-block and trim settings are process-wide
        _reuse_freed_memory()
    return n


__all__ = ["cpu_devices", "is_key", "place", "to_host"]
