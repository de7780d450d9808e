"""Data parallelism with jax.sharding: one 'data' mesh axis, batch sharded, state replicated.

Works the same with one process (several local devices) and with several processes started by
``jax.distributed.initialize``: every process reads the same global batch from its loader and
each device takes its own rows of it (``funcdl.devices.place``), so a run's numbers do not depend
on how many devices or processes share it (up to the order of the gradient all-reduce).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from funcdl.devices import place

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


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every array of ``tree`` copied whole onto every device of ``mesh``."""
    sharding = replicated_sharding(mesh)
    return jax.tree.map(lambda x: place(x, sharding), tree)


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Split every array of ``batch`` along its first axis over the mesh's 'data' axis."""
    n = mesh.shape[AXIS]
    sharding = NamedSharding(mesh, PartitionSpec(AXIS))

    def put(x):
        rows = np.shape(x)[0]
        if rows % n:
            raise ValueError(
                f"a batch of {rows} rows cannot be split evenly over {n} devices; use a "
                f"batch size divisible by {n} (and drop_last=True in the DataLoader)")
        return place(x, sharding)

    return jax.tree.map(put, batch)


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where ``fit`` keeps its arrays: without a mesh, where JAX puts them; with one, batches
    split over its 'data' axis and everything else replicated."""

    mesh: Mesh | None = None

    def batch(self, batch: Any) -> Any:
        return batch if self.mesh is None else shard_batch(batch, self.mesh)

    def replicate(self, tree: Any) -> Any:
        return tree if self.mesh is None else replicate(tree, self.mesh)

    @property
    def jit_kwargs(self) -> dict[str, Any]:
        """What the jitted steps need to return replicated outputs."""
        return {} if self.mesh is None else {"out_shardings": replicated_sharding(self.mesh)}


__all__ = ["AXIS", "Placement", "make_mesh", "replicate", "replicated_sharding", "shard_batch"]
