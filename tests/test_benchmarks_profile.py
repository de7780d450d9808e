"""``python -m benchmarks.profile``: per-operation times of a jitted step from the JAX profiler."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _python(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=300)


def test_the_profile_of_a_gru_step_counts_its_loop_body_once_per_frame():
    """The quick GRU step reads 20 frames: the scan's body operations run 20 times a step (an
    independent count: the sequence length), in the forward and again in the backward."""
    out = _python("-m", "benchmarks.profile", "gru", "--quick", "--top", "40", "--runs", "2")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("gru training step, gradients by jax: ")
    rows = [line.split() for line in lines[2:]]
    assert len(rows) == 40 and all(float(r[0]) >= 0 and r[1].endswith("%") for r in rows)
    counts = [float(r[2]) for r in rows]
    assert counts.count(20.0) >= 4 and set(counts) <= {1.0, 2.0, 20.0}, counts


def test_profiling_what_runs_no_xla_program_is_a_clear_error():
    code = ("from benchmarks.profile import profile\n"
            "try:\n    profile(lambda: 1.0, runs=1)\n"
            "except RuntimeError as e:\n    print(e)\n")
    out = _python("-c", code)
    assert out.returncode == 0, out.stderr
    assert "no XLA:CPU operations" in out.stdout, out.stdout


@pytest.mark.parametrize("flag", ["--runs", "--top"])
def test_a_count_below_one_is_refused_before_anything_runs(flag, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks.profile import main

    with pytest.raises(SystemExit) as stop:
        main(["gru", flag, "0"])
    assert stop.value.code == 2 and "positive count" in capsys.readouterr().err
