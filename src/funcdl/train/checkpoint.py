"""Checkpoints with orbax-checkpoint: the whole train state plus the loop's position, verified.

Layout of ``checkpoint_dir`` (one orbax step directory per checkpoint, named by the global step)::

    checkpoint_dir/
      120/                 written to a temporary name by orbax and renamed when complete
        state/             arrays: {"params": {...}, "rest": {...}, "opt_state": {...}, ...}
        meta/metadata      JSON: step, epoch, batch, loader.state_dict(), history, early-stopping
                           and scheduler state, and a SHA-256 of every array and of the metadata

Arrays are stored as flat dicts of leaves ("000", "001", ...) and put back into the tree
structure of a freshly initialised state, so any optax state round-trips; RNG keys are stored as
their raw uint32 data. The checksum covers everything a resume reads (arrays and metadata): a
checkpoint that fails it, or cannot be read, is refused with ``CheckpointError``;
``restore_latest`` then renames it ``<step>.corrupt``, warns, and falls back to the previous one.
A sound checkpoint of a different model or optimizer (or of an older format) raises
``CheckpointMismatchError`` and is left as it is: it is the user's run, not damage.

A checkpoint is never lost to a crash: a new step is written under a temporary name; a step that
already exists is replaced by writing the new one beside it (``.replacing/``) and swapping the two
by renames, the old one kept as ``<step>.replaced`` until the new one is in place (an interrupted
swap is finished when the directory is next opened).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcdl.devices import is_key, to_host

FORMAT = 2  # 1: the checksum covered the arrays only; 2: the metadata too
_STAGING = ".replacing"
_REPLACED = ".replaced"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, partial or corrupt, or could not be written."""


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


def checksum(flat: dict[str, dict[str, np.ndarray]], meta: dict[str, Any] | None = None) -> str:
    """SHA-256 of the arrays (names, dtypes, shapes, bytes) and, when given, of ``meta`` as
    canonical JSON (without its ``checksum`` entry)."""
    h = hashlib.sha256()
    for group in sorted(flat):
        for name in sorted(flat[group]):
            a = np.ascontiguousarray(flat[group][name])
            h.update(f"{group}/{name}:{a.dtype}:{a.shape};".encode())
            h.update(a.tobytes())
    if meta is not None:
        body = {k: v for k, v in meta.items() if k != "checksum"}
        h.update(b"meta;" + json.dumps(body, sort_keys=True, allow_nan=True).encode())
    return h.hexdigest()


def _as_json(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` as it reads back from JSON (tuples as lists, keys as strings), so the checksum
    taken before writing is the one recomputed after reading."""
    return json.loads(json.dumps(meta, allow_nan=True))


def _require_finite(step: int, arrays: dict[str, Any], flat: dict[str, dict[str, np.ndarray]],
                    groups: tuple[str, ...]) -> None:
    for group in groups:
        paths = [jax.tree_util.keystr(p) for p, _ in
                 jax.tree_util.tree_flatten_with_path(arrays[group])[0]]
        for path, a in zip(paths, flat[group].values()):
            if np.issubdtype(a.dtype, np.inexact) and not np.isfinite(a).all():
                raise FloatingPointError(
                    f"refusing to write checkpoint {step}: {group}{path} holds NaN or inf (the "
                    "checkpoints already written are untouched)")


def check_writable(directory: str) -> None:
    """Create ``directory`` if needed and write a probe file in it, so that a directory that
    cannot hold checkpoints is refused before training, not at the first save."""
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise NotADirectoryError(f"checkpoint_dir {directory} is a file, not a directory; pass a "
                                 "directory (it is created if missing)")
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory) as f:
            f.write(b"funcdl")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise type(e)(e.errno, f"cannot write checkpoints to {directory} ({e.strerror}); pass a "
                      "checkpoint_dir that is writable") from None


def _finish_swaps(directory: str) -> None:
    """Complete a replacement that a crash interrupted: keep the new step if it is in place,
    else put the old one back; drop the staging directory."""
    for name in os.listdir(directory):
        if not name.endswith(_REPLACED):
            continue
        old, final = os.path.join(directory, name), os.path.join(directory, name[:-len(_REPLACED)])
        if os.path.isdir(final):
            shutil.rmtree(old)
        else:
            os.replace(old, final)
    shutil.rmtree(os.path.join(directory, _STAGING), ignore_errors=True)


class Checkpointer:
    """Keeps the last ``keep`` checkpoints of a run in ``directory`` (orbax CheckpointManager)."""

    def __init__(self, directory: str | os.PathLike, keep: int = 3):
        import orbax.checkpoint as ocp

        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.directory = os.path.abspath(os.fspath(directory))
        self.keep = keep
        self._ocp = ocp
        self.created = not os.path.exists(self.directory)
        if jax.process_index() == 0:
            check_writable(self.directory)
            _finish_swaps(self.directory)
        self._manager = self._open(self.directory, keep)

    def _open(self, directory: str, keep: int | None):
        ocp = self._ocp
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=False,
            cleanup_tmp_directories=True)  # what a kill during a save left behind
        handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
        return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, arrays: dict[str, Any], meta: dict[str, Any], *,
             finite: tuple[str, ...] = ()) -> None:
        """Write ``arrays`` (a dict of pytrees) and JSON-able ``meta`` as checkpoint ``step``.

        The groups named in ``finite`` must hold no NaN or inf (FloatingPointError otherwise,
        nothing written). A failed write raises one ``CheckpointError`` and leaves the earlier
        checkpoints as they were."""
        flat = {k: flatten(v) for k, v in arrays.items()}
        _require_finite(step, arrays, flat, finite)
        meta = _as_json(dict(meta, step=int(step), format=FORMAT))
        meta["checksum"] = checksum(flat, meta)
        ocp = self._ocp
        args = ocp.args.Composite(state=ocp.args.StandardSave(flat), meta=ocp.args.JsonSave(meta))
        try:
            with _quiet_orbax():
                if int(step) in self._manager.all_steps():  # the epoch ended on a step ckpt
                    self._replace(int(step), args)
                else:
                    self._write(self._manager, int(step), args)
        except Exception as e:  # orbax raises many types (and logs more) for a failed write
            raise CheckpointError(
                f"could not write checkpoint {step} to {self.directory} ({type(e).__name__}: "
                f"{_first_line(e)}); the checkpoints already there are intact: free space or fix "
                "the directory, then resume") from e

    @staticmethod
    def _write(manager: Any, step: int, args: Any) -> None:
        manager.save(step, args=args, force=True)
        manager.wait_until_finished()
        manager.check_for_errors()

    def _replace(self, step: int, args: Any) -> None:
        """Write checkpoint ``step`` beside the existing one, then swap them by renames."""
        staging = os.path.join(self.directory, _STAGING)
        manager = self._open(staging, None)
        try:
            self._write(manager, step, args)
        finally:
            manager.close()
        if jax.process_index() == 0:
            final = os.path.join(self.directory, str(step))
            os.replace(final, final + _REPLACED)
            os.replace(os.path.join(staging, str(step)), final)
            shutil.rmtree(final + _REPLACED)
            shutil.rmtree(staging, ignore_errors=True)
        _barrier("funcdl_checkpoint_replace")
        self._manager.reload()

    def restore(self, step: int, templates: dict[str, Any]) -> tuple[dict[str, Any], dict]:
        """``(arrays, meta)`` of checkpoint ``step``, arrays shaped like ``templates``; raises
        ``CheckpointError`` if it is partial, unreadable or fails its checksum. ``templates`` may
        name a subset of the saved groups (e.g. only ``"params"``); all are read and verified."""
        ocp = self._ocp
        path = os.path.join(self.directory, str(step))
        try:
            with _quiet_orbax():
                saved = self._manager.item_metadata(int(step))["state"].tree
                target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), saved)
                out = self._manager.restore(int(step), args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
            flat = {g: {n: np.asarray(a) for n, a in d.items()} for g, d in out["state"].items()}
            meta = dict(out["meta"])
        except Exception as e:  # orbax raises many types for missing or damaged files
            raise CheckpointError(
                f"checkpoint {path} is partial or unreadable ({type(e).__name__}: "
                f"{_first_line(e)}); delete it or restore an earlier step") from e
        _verify(path, flat, meta)
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
                _barrier("funcdl_checkpoint_corrupt")
                self._manager.reload()
        return None

    def close(self) -> None:
        self._manager.close()


def _verify(path: str, flat: dict[str, dict[str, np.ndarray]], meta: dict[str, Any]) -> None:
    """CheckpointError unless the arrays and metadata match the checksum written with them."""
    saved = meta.get("checksum")
    if saved == checksum(flat, meta):
        return
    if meta.get("format") == 1 and saved == checksum(flat):
        raise CheckpointMismatchError(
            f"checkpoint {path} was written by an earlier funcdl (format 1: its metadata has no "
            "checksum and its state no fault counter); resume it with that version, or start a "
            "new run in another checkpoint_dir (it is left as it is)")
    raise CheckpointError(
        f"checkpoint {path} is corrupt: its arrays or metadata do not match the checksum written "
        "with them; delete it or restore an earlier step")


class _OrbaxErrors(logging.Filter):
    """Drops orbax's error records (tracebacks logged by its worker threads): the failure they
    report reaches the caller as one CheckpointError."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and "orbax" in record.pathname)


@contextlib.contextmanager
def _quiet_orbax():
    """Silence orbax's own error logging and asyncio's "Event loop is closed" noise around one
    save or restore, whose errors funcdl raises itself."""
    absl, errors, hook = logging.getLogger("absl"), _OrbaxErrors(), sys.unraisablehook

    def unraisable(info):
        if not (isinstance(info.exc_value, RuntimeError)
                and "Event loop is closed" in str(info.exc_value)):
            hook(info)

    absl.addFilter(errors)
    sys.unraisablehook = unraisable
    try:
        yield
    finally:
        absl.removeFilter(errors)
        sys.unraisablehook = hook


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _barrier(name: str) -> None:
    """Wait for every process (a no-op with one): renames by process 0 must be seen by all."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
