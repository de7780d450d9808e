"""The ``funcdl`` command: subcommands, their output, and their errors on bad input."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from funcdl import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE_NAMES = sorted(p.stem for p in (ROOT / "examples").glob("*.py")
                       if not p.stem.startswith("_"))


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """``funcdl ARGV`` in this process: (exit status, stdout, stderr)."""
    try:
        code = cli.main(list(argv))
    except SystemExit as stop:  # argparse's errors and --help
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def test_no_subcommand_and_unknown_subcommand_list_the_valid_names(capsys):
    code, _, err = run(capsys)
    assert code == 2 and "required: COMMAND" in err
    code, _, err = run(capsys, "frobnicate")
    assert code == 2
    assert "invalid choice: 'frobnicate'" in err
    for name in ("demo", "examples", "check", "bench", "explain", "info"):
        assert f"'{name}'" in err


def test_explain_reproduces_the_slides_3x3_walks(capsys):
    code, out, _ = run(capsys, "explain", "sum", "--shape", "3,3", "--dim", "0")
    assert code == 0
    # the slides: offsets 0, 3, 6 read 0.1, 0.4, 0.7 and sum to 1.2; then 1.5 and 1.8
    assert "x[0]=0.1" in out and "x[3]=0.4" in out and "x[6]=0.7" in out
    assert "result: [1.2, 1.5, 1.8]" in out
    code, out, _ = run(capsys, "explain", "sum", "--shape", "3,3", "--dim", "1")
    assert code == 0 and "result: [0.6, 1.5, 2.4]" in out


def test_explain_transposed_view_walks_storage_with_stride_one(capsys):
    code, out, _ = run(capsys, "explain", "sum", "--shape", "3,3", "--dim", "0", "--transpose")
    assert code == 0
    assert "strides (1, 3)" in out
    assert "result: [0.6, 1.5, 2.4]" in out  # column sums of the transpose = row sums of x


@pytest.mark.parametrize("argv, flag, words", [
    (("explain", "sum", "--shape", "3,x"), "--shape", "is not a shape"),
    (("explain", "sum", "--shape", "3,0"), "--shape", "must be positive"),
    (("explain", "sum", "--dim", "one"), "--dim", "invalid int value"),
    (("explain", "median"), "op", "invalid choice: 'median'"),
    (("check", "--tol", "tiny"), "--tol", "invalid float value"),
])
def test_bad_flag_values_are_argparse_errors_naming_the_flag(capsys, argv, flag, words):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert f"argument {flag}" in err and words in err


def test_explain_out_of_range_dim_uses_pytorchs_words(capsys):
    code, _, err = run(capsys, "explain", "sum", "--shape", "3,3", "--dim", "2")
    assert code == 2
    assert ("funcdl explain: error: argument --dim: Dimension out of range (expected to be in "
            "range of [-2, 1], but got 2)") in err


def test_examples_lists_every_example_with_its_description(capsys):
    code, out, _ = run(capsys, "examples")
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip()}
    assert sorted(lines) == EXAMPLE_NAMES
    for name, line in lines.items():
        assert len(line.split(maxsplit=1)) == 2, f"{name} has no description"
    assert "_common" not in out


def test_unknown_example_lists_valid_names(capsys):
    code, _, err = run(capsys, "examples", "mnist_gan")
    assert code == 2
    assert "unknown example 'mnist_gan'" in err
    for name in EXAMPLE_NAMES:
        assert name in err


def test_examples_runs_an_example_with_arguments_after_double_dash(capsys, tmp_path):
    # NAME.py (as the README's table spells it) names the same example as NAME
    code, out, _ = run(capsys, "examples", "strides_walkthrough.py", "--", "--smoke",
                       "--out", str(tmp_path))
    assert code == 0
    assert "result: [1.2, 1.5, 1.8]" in out and "strides (12, 6, 2, 1)" in out
    assert "result: [1.2, 1.5, 1.8]" in (tmp_path / "walk.txt").read_text()


@pytest.mark.parametrize("argv", [("demo", "--resum"), ("explain", "sum", "--dim=1", "--tr"),
                                  ("examples", "strides_walkthrough", "--", "--smok")])
def test_option_prefixes_are_refused(capsys, argv):
    code, _, err = run(capsys, *argv)
    assert code == 2 and "unrecognized arguments: " + argv[-1] in err


def test_example_argument_errors_pass_through(capsys):
    code, _, err = run(capsys, "examples", "strides_walkthrough", "--", "--no-such-flag")
    assert code == 2 and "--no-such-flag" in err


def test_ctrl_c_in_an_example_exits_130(capsys, monkeypatch):
    def interrupted(path, args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_example", interrupted)
    code, _, err = run(capsys, "examples", "strides_walkthrough")
    assert code == 130 and "interrupted" in err


def test_bench_delegates_to_the_benchmark_runner_from_the_repo_root(capsys, monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd, cwd: calls.append((cmd, cwd)) or 0)
    names = sorted(p.stem.removeprefix("bench_") for p in (ROOT / "benchmarks").glob("bench_*.py"))
    chosen = names[:1]
    code, _, _ = run(capsys, "bench", *chosen, "--quick", "--json", str(tmp_path / "b.json"))
    assert code == 0
    assert calls == [([sys.executable, "-m", "benchmarks", *chosen, "--quick", "--json",
                       str(tmp_path / "b.json")], ROOT)]


def test_bench_unknown_name_lists_valid_names(capsys):
    code, _, err = run(capsys, "bench", "nope")
    assert code == 2 and "unknown benchmark 'nope'" in err and "valid names:" in err


def test_non_editable_install_gets_a_clear_message(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(cli, "__file__", str(tmp_path / "site-packages" / "funcdl" / "cli.py"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="source checkout.*pip install -e"):
        cli.main(["examples"])


def test_info_via_the_console_script_reports_versions_and_devices():
    exe = pathlib.Path(sys.executable).with_name("funcdl")
    cmd = [str(exe), "info"] if exe.exists() else [sys.executable, "-m", "funcdl.cli", "info"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120).stdout
    for dist in ("jax", "flax", "optax", "numpy"):
        assert f"{dist} " in out and importlib.metadata.version(dist) in out
    assert "backend  cpu" in out or "backend  gpu" in out or "backend  tpu" in out
    assert "devices  " in out


def test_check_compares_tape_and_jax_gradients_and_torch(capsys):
    code, out, _ = run(capsys, "check", "--only", "softmax")
    assert code == 0
    rows = [line for line in out.splitlines() if "softmax (" in line]
    assert len(rows) == 2 and all(line.endswith("ok") for line in rows)  # softmax, log_softmax
    assert all(line.split()[-2] != "-" for line in rows)  # both compared with torch
    assert "2 of 2 cases pass: relative <= 1e-05" in out


def test_check_fails_with_exit_1_when_the_tape_disagrees(capsys, monkeypatch):
    from funcdl import check, tape

    def two_faced(a):  # d/da is 2 on the tape but 3 for jax.grad: the check must catch it
        return tape.mul(a, 2.0) if isinstance(a, tape.Tensor) else a * 3.0

    case = check.GradCase("two-faced", lambda: (two_faced, (np.ones((2, 3), np.float32),)))
    monkeypatch.setattr(check, "gradient_cases", lambda: [case])
    code, out, _ = run(capsys, "check")
    assert code == 1
    assert "FAIL (relative > 1e-05)" in out and "0 of 1 cases" in out


def test_check_fails_when_an_op_differs_from_torch(capsys, monkeypatch):
    from funcdl import check
    from funcdl.tape import registry

    exp = registry.OPS["exp"]  # compared with torch.expm1: values differ by 1, gradients agree
    monkeypatch.setitem(registry.OPS, "exp", dataclasses.replace(exp, torch="torch.expm1"))
    code, out, _ = run(capsys, "check", "--only", "exp (")
    assert code == 1 and "FAIL (differs from torch)" in out
    monkeypatch.setattr(check, "gradient_cases", lambda: [])
    code, _, err = run(capsys, "check", "--only", "nosuch")
    assert code == 2 and "no case name contains 'nosuch'" in err


def test_ctrl_c_during_demo_exits_130_with_the_resume_command(capsys, monkeypatch, tmp_path):
    import funcdl.data.datasets

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C while the demo reads its corpus

    monkeypatch.setattr(funcdl.data.datasets, "python_docs_corpus", interrupted)
    code, _, err = run(capsys, "demo", "--out", str(tmp_path))
    assert code == 130
    assert f"resume with: funcdl demo --out {tmp_path} --resume" in err
