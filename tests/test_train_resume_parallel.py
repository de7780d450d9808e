"""Runs that cross process boundaries: a run killed mid-epoch and resumed ends bitwise equal to an
uninterrupted one; 8 simulated devices and 2 processes (gloo over loopback) train to the same
parameters as one device. The shared run is ``tests/_train_worker.py``."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import textwrap

import _train_worker as worker
import numpy as np
import pytest

WORKER = os.path.join(os.path.dirname(__file__), "_train_worker.py")


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env.update(JAX_PLATFORMS="cpu", **extra)
    return env


def _worker(*args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, WORKER, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(p: subprocess.Popen, timeout: int = 240) -> tuple[int, str]:
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
        pytest.fail(f"worker timed out:\n{out[-3000:]}")
    return p.returncode, out


@pytest.fixture(scope="module")
def uninterrupted():
    model, history = worker.train()
    return worker.params_of(model), history


def test_killed_mid_epoch_then_resumed_ends_bitwise_equal(tmp_path, uninterrupted):
    from funcdl.train import Checkpointer

    ckpt = tmp_path / "ckpt"
    # 6 batches per epoch, a checkpoint every 4 steps and at each epoch's end: killed before
    # batch 11 (epoch 2, batch 5), the newest checkpoint is step 8, mid-epoch 2.
    code, out = _finish(_worker("kill", str(ckpt), "10", env=_env()))
    assert code == 17, out[-3000:]
    assert Checkpointer(ckpt).steps() == [4, 6, 8]
    model, history = worker.train(checkpoint_dir=ckpt, resume=True, checkpoint_every=4)
    expected, full_history = uninterrupted
    got = worker.params_of(model)
    assert got.keys() == expected.keys()
    for k in expected:
        assert np.array_equal(got[k], expected[k]), k
    # the epoch that was cut in two reports the same mean loss as the uninterrupted run's
    assert history["train_loss"] == full_history["train_loss"]
    assert history["train_accuracy"] == full_history["train_accuracy"]
    assert Checkpointer(ckpt).steps() == [12, 16, 18]  # the last keep=3


def test_eight_devices_train_like_one():
    out = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"mesh8_{os.getpid()}.npz")
    code, log = _finish(_worker("mesh8", out, env=_env(
        XLA_FLAGS="--xla_force_host_platform_device_count=8")))
    assert code == 0, log[-3000:]
    saved = dict(np.load(out))
    os.remove(out)
    names = [k[len("mesh/"):] for k in saved if k.startswith("mesh/")]
    assert len(names) == 4
    for k in names:
        np.testing.assert_allclose(saved[f"mesh/{k}"], saved[f"single/{k}"], rtol=1e-5,
                                   atol=1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_checkpoint_killed_and_resumed_train_like_one(tmp_path, uninterrupted):
    """Two processes (gloo over loopback) train like one device, also when both save
    checkpoints, are killed mid-epoch and resume."""
    out, ckpt = str(tmp_path / "dist.npz"), str(tmp_path / "ckpt")
    for kill_at in ("9", "-1"):  # killed before batch 9 (a checkpoint at step 8), then resumed
        port = str(_free_port())
        procs = [_worker("dist", out, port, str(pid), ckpt, kill_at, env=_env())
                 for pid in (0, 1)]
        results = [_finish(p) for p in procs]
        for code, log in results:
            assert code == (17 if kill_at == "9" else 0), log[-3000:]
    got = dict(np.load(out))
    expected, _ = uninterrupted
    for k in expected:
        np.testing.assert_allclose(got[k], expected[k], rtol=1e-5, atol=1e-6)


_FAULTS_A_STEP = """
    import resource, warnings
    import jax, jax.numpy as jnp

    @jax.jit
    def step(a, b, c):  # a 96 MB temporary (4096 x 6144 float32), then a scalar
        return jnp.sum(jnp.tanh(a @ b) @ c)

    a, b, c = jnp.ones((4096, 16)), jnp.ones((16, 6144)), jnp.ones((6144, 1))
    for _ in range(3):
        step(a, b, c).block_until_ready()
    per_step = []
    for _ in range(7):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        step(a, b, c).block_until_ready()
        per_step.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    # the median step: a step on which the heap happens to grow once (seen in CI) maps afresh
    faults = sorted(per_step)[3]
"""


def _run_fresh(*parts: str) -> str:
    """The standard output of a new Python running ``parts`` (each dedented) in turn."""
    code = "\n".join(textwrap.dedent(part) for part in parts)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, timeout=120, env={**env, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stderr
    return out.stdout


def test_cpu_devices_sets_the_device_count_and_memory_reuse_before_jax_starts():
    """``funcdl.cpu_devices`` in a fresh process: n devices, and with ``reuse_memory`` programs
    run on the calling thread and a step's 96 MB temporary stops costing fresh pages (glibc: the
    median step faults under a tenth of the pages of the default's, which maps it anew each
    step); a repeat with n is accepted; another count once JAX runs is a clear error; a bad count
    a ValueError. Another process, which started JAX by itself (one CPU device), may ask for its
    count late, but for reuse_memory only gets a warning."""
    reused = _run_fresh("""
        import funcdl, jax
        assert funcdl.cpu_devices(3, reuse_memory=True) == 3
        assert jax.device_count() == 3
        assert not jax.config.read('jax_cpu_enable_async_dispatch')
        """, _FAULTS_A_STEP, """
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert funcdl.cpu_devices(3, reuse_memory=True) == 3  # on already: no warning
        try:
            funcdl.cpu_devices(2)
        except RuntimeError as e:
            assert "after JAX started" in str(e) and "cpu_devices(2)" in str(e), e
        else:
            raise AssertionError("no error")
        for bad in (0, -1, 1.5, True):
            try:
                funcdl.cpu_devices(bad)
            except ValueError:
                pass
            else:
                raise AssertionError(bad)
        print("ok", faults)
    """)
    default = _run_fresh("""
        import funcdl, jax
        assert jax.config.read('jax_cpu_enable_async_dispatch')
        """, _FAULTS_A_STEP, """
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert funcdl.cpu_devices(1, reuse_memory=True) == 1  # JAX's own count: accepted
        assert any("changes nothing" in str(w.message) for w in caught), caught
        assert jax.config.read('jax_cpu_enable_async_dispatch')
        print("ok", faults)
    """)
    if platform.libc_ver()[0] == "glibc":
        faults_reused, faults_default = int(reused.split()[1]), int(default.split()[1])
        assert faults_default > 10_000 and faults_reused < faults_default / 10, (
            faults_reused, faults_default)
