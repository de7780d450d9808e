"""Data parallelism with jax.sharding: one 'data' mesh axis, batch sharded, state replicated.

Works the same with one process (several local devices) and with several processes started by
``jax.distributed.initialize``: every process reads the same global batch from its loader and
``jax.make_array_from_callback`` hands each device its own rows, so a run's numbers do not depend
on how many devices or processes share it (up to the order of the gradient all-reduce).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .checkpoint import _is_key

AXIS = "data"


def make_mesh(mesh: Mesh | str | None) -> Mesh | None:
    """None: no sharding; "auto": a 1-D mesh over every device of every process; or a Mesh
    with a 'data' axis."""
    if mesh is None:
        return None
    if isinstance(mesh, str):
        if mesh != "auto":
            raise ValueError(f"mesh must be None, 'auto' or a jax.sharding.Mesh; got {mesh!r}")
        return Mesh(np.array(jax.devices()), (AXIS,))
    if not isinstance(mesh, Mesh) or AXIS not in mesh.axis_names:
        raise ValueError(f"a mesh for fit needs a {AXIS!r} axis to shard the batch along; got "
                         f"{mesh!r}")
    return mesh


def _place(x: Any, sharding: NamedSharding) -> jax.Array:
    if _is_key(x):
        impl = jax.random.key_impl(x)
        return jax.random.wrap_key_data(_place(jax.random.key_data(x), sharding), impl=impl)
    host = np.asarray(jax.device_get(x)) if not isinstance(x, np.ndarray) else x
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every array of ``tree`` copied whole onto every device of ``mesh``."""
    sharding = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(lambda x: _place(x, sharding), tree)


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Split every array of ``batch`` along its first axis over the mesh's 'data' axis."""
    n = mesh.shape[AXIS]
    sharding = NamedSharding(mesh, PartitionSpec(AXIS))

    def put(x):
        x = np.asarray(x)
        if x.shape[0] % n:
            raise ValueError(
                f"a batch of {x.shape[0]} rows cannot be split evenly over {n} devices; use a "
                f"batch size divisible by {n} (and drop_last=True in the DataLoader)")
        return _place(x, sharding)

    return jax.tree.map(put, batch)


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def is_fully_replicated(tree: Any) -> bool:
    return all(getattr(x, "sharding", None) is None or x.sharding.is_fully_replicated
               for x in jax.tree.leaves(tree))


__all__ = ["AXIS", "make_mesh", "replicate", "shard_batch", "replicated_sharding"]
