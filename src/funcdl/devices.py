"""Arrays between the host and the devices: the rules ``funcdl.data`` and ``funcdl.train`` share.

The DataLoader places its batches with ``place``; ``fit`` shards batches and replicates its state
with it and reads arrays back with ``to_host``; checkpoints store keys as ``is_key`` finds them.
This module imports only JAX and numpy, so the data pipeline can use it without the model code.
"""

from __future__ import annotations

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


__all__ = ["is_key", "place", "to_host"]
