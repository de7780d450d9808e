"""Fault injection: kill -9 during checkpoint saves (at random moments and inside the swap that
replaces a checkpoint of the same step), every kind of checkpoint file corrupted (bit flip and
truncation, metadata included), a full disk and a read-only disk (small tmpfs mounts; skipped where
this process may not mount), a checkpoint_dir that turns read-only mid-run. Every resume must
equal the uninterrupted run bit for bit, or restore exactly a checkpoint that was written.

The shared small run is ``tests/_train_worker.py`` (3 epochs of 6 batches). ``FAULTS`` counts what
was injected and survived; the module's last test prints it for the closing note.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import warnings

import _train_worker as worker
import numpy as np
import pytest

from funcdl.train import Checkpointer, CheckpointError
from funcdl.train.run import RunState

WORKER = os.path.join(os.path.dirname(__file__), "_train_worker.py")
FAULTS: collections.Counter = collections.Counter()


@pytest.fixture(scope="module")
def uninterrupted():
    model, history = worker.train()
    return worker.params_of(model), history["train_loss"]


def _same_run(model, history, uninterrupted) -> None:
    expected, losses = uninterrupted
    got = worker.params_of(model)
    for k in expected:
        assert np.array_equal(got[k], expected[k]), k
    assert history["train_loss"] == losses


def _child(ckpt, *args: str) -> subprocess.Popen:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    return subprocess.Popen([sys.executable, WORKER, "save", str(ckpt), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _resume_quietly(ckpt):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a corrupt one moved aside
        return worker.train(checkpoint_dir=ckpt, resume=True)


@pytest.mark.parametrize("delay", np.random.default_rng(15).uniform(0.05, 0.9, 1).round(3))
def test_kill_9_at_a_random_moment_of_the_saves_then_resume_is_bitwise_equal(
        tmp_path, uninterrupted, delay):
    ckpt = tmp_path / "ckpt"
    child = _child(ckpt)
    deadline = time.monotonic() + 240
    while not (ckpt / "1").is_dir() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # a checkpoint every step: from here on most of the time is saving
    time.sleep(float(delay))
    child.kill()
    out = child.communicate()[0]
    assert child.returncode in (-9, 0), out[-2000:]
    FAULTS["kill -9 during saves"] += child.returncode == -9
    _same_run(*_resume_quietly(ckpt), uninterrupted)
    FAULTS["kill -9 during saves: survived"] += child.returncode == -9


def test_kill_9_between_the_two_renames_of_a_checkpoint_swap(tmp_path, uninterrupted):
    ckpt = tmp_path / "ckpt"
    child = _child(ckpt, "2")  # old one moved aside, the new one not yet in place
    out = child.communicate(timeout=240)[0]
    assert child.returncode == -9, out[-2000:]
    assert (ckpt / "6.replaced").is_dir() and not (ckpt / "6").exists()
    FAULTS["kill -9 inside a checkpoint swap"] += 1
    _same_run(*_resume_quietly(ckpt), uninterrupted)
    FAULTS["kill -9 inside a checkpoint swap: survived"] += 1


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A run's checkpoints (steps 6, 12, 18) and what each one restores to."""
    ckpt = tmp_path_factory.mktemp("written") / "ckpt"
    worker.train(checkpoint_dir=ckpt)
    templates = _templates()
    c = Checkpointer(ckpt)
    restored = {s: c.restore(s, templates) for s in c.steps()}
    c.close()
    return ckpt, restored


def _templates():
    from funcdl.train.loop import _split

    _, _, state = _split(worker.Net(), worker.optimizer(), 3, "fp32")
    return RunState(state, {}).arrays()


def _file_kinds(step_dir) -> dict[str, str]:
    """One file of each kind in a step directory: hashed names become ``*``."""
    kinds = {}
    for root, _, files in os.walk(step_dir):
        for f in sorted(files):
            rel = os.path.relpath(os.path.join(root, f), step_dir)
            kinds.setdefault(re.sub(r"[0-9a-f]{32}", "*", rel), rel)
    return kinds


def _flip(path) -> None:
    data = bytearray(path.read_bytes())
    digits = [i for i, b in enumerate(data) if chr(b).isdigit()]
    i = digits[len(digits) // 2] if path.name in ("metadata", "_CHECKPOINT_METADATA") and digits \
        else len(data) // 2
    data[i] = ord("1") + (data[i] - ord("0")) % 9 if i in digits else data[i] ^ 0x10
    path.write_bytes(bytes(data))


def _truncate(path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _equal(a, b) -> bool:
    import jax

    la, lb = jax.tree.leaves(a[0]), jax.tree.leaves(b[0])
    same = all(np.array_equal(np.asarray(jax.random.key_data(x) if _is_key(x) else x),
                              np.asarray(jax.random.key_data(y) if _is_key(y) else y))
               for x, y in zip(la, lb))
    return same and json.dumps(a[1], sort_keys=True) == json.dumps(b[1], sort_keys=True)


def _is_key(x) -> bool:
    from funcdl.devices import is_key

    return is_key(x)


def test_every_kind_of_checkpoint_file_corrupted_restores_only_what_was_written(
        tmp_path, written):
    src, restored = written
    kinds = _file_kinds(src / "18")
    assert {"meta/metadata", "state/_METADATA", "state/manifest.ocdbt"} <= set(kinds)
    for i, (kind, rel) in enumerate(kinds.items()):
        for damage in (_flip, _truncate):
            ckpt = tmp_path / f"{damage.__name__}{i}"
            shutil.copytree(src, ckpt)
            damage(ckpt / "18" / rel)
            c = Checkpointer(ckpt)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                got = c.restore_latest(_templates())
            c.close()
            step = got[1]["step"]
            FAULTS["corrupted checkpoint files"] += 1
            assert _equal(got, restored[step]), (kind, damage.__name__)
            if step != 18:  # refused: moved aside with a warning, the previous one restored
                assert step == 12 and (ckpt / "18.corrupt").is_dir()
                assert any("corrupt" in str(w.message) or "unreadable" in str(w.message)
                           for w in caught), (kind, damage.__name__)
            FAULTS["corrupted checkpoint files: survived"] += 1
    assert FAULTS["corrupted checkpoint files"] >= 2 * 8


def test_a_flipped_epoch_digit_in_the_metadata_then_resume_is_bitwise_equal(
        tmp_path, written, uninterrupted):
    src, _ = written
    ckpt = tmp_path / "ckpt"
    shutil.copytree(src, ckpt)
    meta = ckpt / "18" / "meta" / "metadata"
    text = meta.read_text()
    assert '"epoch": 3' in text
    meta.write_text(text.replace('"epoch": 3', '"epoch": 2'))  # would train an extra epoch
    FAULTS["metadata digit flips"] += 1
    with pytest.warns(RuntimeWarning, match="do not match the checksum"):
        model, history = worker.train(checkpoint_dir=ckpt, resume=True)
    _same_run(model, history, uninterrupted)
    FAULTS["metadata digit flips: survived"] += 1


@pytest.fixture
def tmpfs(tmp_path):
    """A mount function for small tmpfs filesystems under tmp_path, unmounted afterwards."""
    mounted = []

    def mount(name: str, size: str = "1m", options: str = "") -> str:
        path = tmp_path / name
        path.mkdir()
        opts = f"size={size}" + (f",{options}" if options else "")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                           capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or 'not permitted'}): "
                        "the disk-full and read-only faults need one")
        mounted.append(path)
        return str(path)

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _remount_ro(path: str) -> None:
    subprocess.run(["mount", "-o", "remount,ro", path], check=True, capture_output=True)


def test_a_read_only_checkpoint_dir_is_refused_before_training(tmpfs):
    path = tmpfs("ro")
    _remount_ro(path)
    with pytest.raises(OSError, match="cannot write checkpoints to .*Read-only file system"):
        worker.train(checkpoint_dir=path)
    FAULTS["read-only checkpoint_dir"] += 1
    FAULTS["read-only checkpoint_dir: survived"] += 1


def _one_clear_error(path: str, loader, caplog) -> CheckpointError:
    caplog.set_level(logging.WARNING)
    with pytest.raises(CheckpointError, match=r"could not write checkpoint \d+ to .*the "
                                              r"checkpoints already there are intact") as e:
        worker.train(loader, checkpoint_dir=path, checkpoint_every=1)
    noise = [r for r in caplog.records if "Event loop is closed" in r.getMessage()
             or r.exc_info is not None]
    assert noise == [], [r.getMessage()[:200] for r in noise]
    return e.value


def test_a_disk_turning_read_only_mid_run_gives_one_clear_error(tmpfs, caplog):
    path = tmpfs("midrun", size="4m")
    _one_clear_error(path, worker.Before(worker.loader(), 3, lambda: _remount_ro(path)), caplog)
    steps = sorted(int(n) for n in os.listdir(path) if n.isdigit())
    assert steps == [1, 2, 3]
    FAULTS["read-only mid-run"] += 1
    FAULTS["read-only mid-run: survived"] += 1


def test_a_full_disk_gives_one_clear_error_and_keeps_the_checkpoints_written(tmpfs, caplog,
                                                                            tmp_path):
    path = tmpfs("full", size="96k")
    _one_clear_error(path, worker.loader(), caplog)
    FAULTS["disk full"] += 1
    copy = tmp_path / "copy"  # the full tmpfs itself cannot hold the writability probe
    shutil.copytree(path, copy, ignore=shutil.ignore_patterns("*.orbax-checkpoint-tmp*"))
    c = Checkpointer(copy)
    arrays, meta = c.restore_latest(_templates())
    c.close()
    assert meta["step"] >= 1
    FAULTS["disk full: survived"] += 1


def test_report_the_faults(capsys):
    """Not a check: prints what this module injected, for the closing note."""
    with capsys.disabled():
        print("\nfaults injected / survived:", dict(FAULTS))
    injected = {k: v for k, v in FAULTS.items() if not k.endswith("survived")}
    for k, v in injected.items():
        assert FAULTS[f"{k}: survived"] == v, k
