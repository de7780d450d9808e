"""Checkpoints with orbax-checkpoint: the whole train state plus the loop's position, verified.

Layout of ``checkpoint_dir`` (one orbax step directory per checkpoint, named by the global step)::

    checkpoint_dir/
      120/                 written to a temporary name by orbax and renamed when complete
        state/             arrays: {"params": {...}, "rest": {...}, "opt_state": {...}, ...}
        meta/metadata      JSON: step, epoch, batch, loader.state_dict(), history, early-stopping
                           and scheduler state, and a SHA-256 of every array for verification

Arrays are stored as flat dicts of leaves ("000", "001", ...) and put back into the tree
structure of a freshly initialised state, so any optax state round-trips; RNG keys are stored as
their raw uint32 data. A checkpoint whose arrays do not match its checksum, or that cannot be
read, is refused with ``CheckpointError``; ``restore_latest`` then renames it ``<step>.corrupt``,
warns, and falls back to the previous one. A sound checkpoint of a different model or optimizer
raises ``CheckpointMismatchError`` and is left as it is: it is the user's run, not damage.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcdl.devices import is_key, to_host

FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, partial or corrupt."""


class CheckpointMismatchError(ValueError):
    """A sound checkpoint whose arrays do not fit the model and optimizer restoring it."""


def flatten(tree: Any) -> dict[str, np.ndarray]:
    return {f"{i:03d}": to_host(x) for i, x in enumerate(jax.tree.leaves(tree))}


def unflatten(flat: dict[str, Any], template: Any) -> Any:
    leaves, treedef = jax.tree.flatten(template)
    if len(flat) != len(leaves):
        raise CheckpointMismatchError(
            f"checkpoint holds {len(flat)} arrays where the model and optimizer have "
            f"{len(leaves)}; was it written for a different model or optimizer?")
    out = []
    for i, t in enumerate(leaves):
        v = np.asarray(flat[f"{i:03d}"])
        if is_key(t):
            out.append(jax.random.wrap_key_data(jnp.asarray(v), impl=jax.random.key_impl(t)))
            continue
        if v.shape != t.shape or v.dtype != t.dtype:
            raise CheckpointMismatchError(
                f"checkpoint array {i} has shape {v.shape} {v.dtype}, the model expects "
                f"{t.shape} {t.dtype}; was it written for a different model?")
        out.append(jnp.asarray(v))
    return jax.tree.unflatten(treedef, out)


def checksum(flat: dict[str, dict[str, np.ndarray]]) -> str:
    h = hashlib.sha256()
    for group in sorted(flat):
        for name in sorted(flat[group]):
            a = np.ascontiguousarray(flat[group][name])
            h.update(f"{group}/{name}:{a.dtype}:{a.shape};".encode())
            h.update(a.tobytes())
    return h.hexdigest()


class Checkpointer:
    """Keeps the last ``keep`` checkpoints of a run in ``directory`` (orbax CheckpointManager)."""

    def __init__(self, directory: str | os.PathLike, keep: int = 3):
        import orbax.checkpoint as ocp

        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.directory = os.path.abspath(os.fspath(directory))
        self.keep = keep
        self._ocp = ocp
        self._manager = self._open()

    def _open(self):
        ocp = self._ocp
        options = ocp.CheckpointManagerOptions(
            max_to_keep=self.keep, create=True, enable_async_checkpointing=False)
        handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
        return ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, arrays: dict[str, Any], meta: dict[str, Any]) -> None:
        """Write ``arrays`` (a dict of pytrees) and JSON-able ``meta`` as checkpoint ``step``."""
        ocp = self._ocp
        flat = {k: flatten(v) for k, v in arrays.items()}
        meta = dict(meta, step=int(step), format=FORMAT, checksum=checksum(flat))
        if int(step) in self._manager.all_steps():  # the epoch ended on a step checkpoint
            self._manager.delete(int(step))  # replaced by the end-of-epoch one (older ones kept)
        self._manager.save(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardSave(flat), meta=ocp.args.JsonSave(meta)), force=True)
        self._manager.wait_until_finished()

    def restore(self, step: int, templates: dict[str, Any]) -> tuple[dict[str, Any], dict]:
        """``(arrays, meta)`` of checkpoint ``step``, arrays shaped like ``templates``; raises
        ``CheckpointError`` if it is partial, unreadable or fails its checksum. ``templates`` may
        name a subset of the saved groups (e.g. only ``"params"``); all are read and verified."""
        ocp = self._ocp
        path = os.path.join(self.directory, str(step))
        try:
            saved = self._manager.item_metadata(int(step))["state"].tree
            target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), saved)
            out = self._manager.restore(int(step), args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
            flat = {g: {n: np.asarray(a) for n, a in d.items()} for g, d in out["state"].items()}
            meta = dict(out["meta"])
        except Exception as e:  # orbax raises many types for missing or damaged files
            raise CheckpointError(
                f"checkpoint {path} is partial or unreadable ({type(e).__name__}: {e}); delete "
                "it or restore an earlier step") from e
        if meta.get("checksum") != checksum(flat):
            raise CheckpointError(
                f"checkpoint {path} is corrupt: its arrays do not match the checksum written "
                "with them; delete it or restore an earlier step")
        missing = set(templates) - set(flat)
        if missing:
            raise CheckpointMismatchError(
                f"checkpoint {path} has no {sorted(missing)}; was it written with other "
                "training options (precision)?")
        try:
            return {k: unflatten(flat[k], templates[k]) for k in templates}, meta
        except CheckpointMismatchError as e:
            raise CheckpointMismatchError(f"checkpoint {path}: {e}") from None

    def restore_latest(self, templates: dict[str, Any]) -> tuple[dict[str, Any], dict] | None:
        """The newest checkpoint that restores cleanly, or None if there is none. A bad one is
        renamed ``<step>.corrupt`` (so later saves and restores skip it) with a warning; one of a
        different model or optimizer raises ``CheckpointMismatchError`` and stays untouched."""
        for step in reversed(self.steps()):
            try:
                return self.restore(step, templates)
            except CheckpointError as e:
                src = os.path.join(self.directory, str(step))
                dst = f"{src}.corrupt"
                if jax.process_index() == 0 and os.path.isdir(src) and not os.path.exists(dst):
                    os.replace(src, dst)
                warnings.warn(f"{e}; moved it to {dst} and trying the previous checkpoint",
                              RuntimeWarning, stacklevel=2)
                self._manager.close()
                self._manager = self._open()
        return None

    def close(self) -> None:
        self._manager.close()
