"""Every example runs (in --smoke mode) and prints the numbers the slides or the maths predict.

The examples run in this process through their ``main(argv)`` (importing JAX once), with their
outputs under pytest's tmp_path.
"""

from __future__ import annotations

import importlib
import math
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
NAMES = sorted(p.stem for p in EXAMPLES.glob("*.py") if not p.stem.startswith("_"))


@pytest.fixture
def example(monkeypatch, capsys, tmp_path):
    """``example(name, *argv) -> stdout`` of ``examples/name.py --out TMP ARGV`` (exit status 0)."""
    monkeypatch.syspath_prepend(str(EXAMPLES))

    def run(name: str, *argv: str) -> str:
        module = importlib.import_module(name)
        out_dir = [] if name == "strides_walkthrough" else ["--out", str(tmp_path / name)]
        code = module.main([*out_dir, *argv])
        out = capsys.readouterr().out
        assert code == 0, out
        return out

    return run


@pytest.mark.parametrize("name", NAMES)
def test_every_example_has_help_with_smoke_and_out(name, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    module = importlib.import_module(name)
    with pytest.raises(SystemExit) as stop:
        module.main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "--smoke" in out
    assert "--out" in out or name == "strides_walkthrough"  # the one example that writes nothing
    assert module.__doc__.split("\n")[0] in " ".join(out.split())  # the one-line description


def test_strides_walkthrough_reproduces_the_slides(example):
    out = example("strides_walkthrough", "--smoke")
    # 3x3 of 0.1..0.9 (slides): column sums 1.2 1.5 1.8, row sums 0.6 1.5 2.4
    assert "result: [1.2, 1.5, 1.8]" in out and "result: [0.6, 1.5, 2.4]" in out
    assert "1*3 + 0*1 = 3, x[3]=0.4" in out
    # 2x2x3x2 over dim 2 (slides): offsets 0,2,4 -> 1; 1,3,5 -> 5; 6,8,10 -> 3
    assert "strides (12, 6, 2, 1)" in out
    assert "result: [1, 5, 3," in out
    # views: transpose swaps strides, select moves the offset, a step doubles a stride, expand 0
    assert "strides (1, 3), offset 0" in out
    assert "shape (3,), strides (1,), offset 3" in out
    assert "strides (3, 2)" in out and "strides (3, 0)" in out
    assert "same storage: False" not in out and "same storage array as x: True" in out


def test_autograd_walkthrough_gives_the_slides_gradient(example, tmp_path):
    out = example("autograd_walkthrough", "--smoke")
    sigma = 1 / (1 + math.exp(-1.0))
    expected = f"{2 * sigma * (1 - sigma):.4f}"  # 0.3932, the slides' 0.39
    assert f"x: data 1.0000 | grad {expected} | grad_fn None | requires_grad True | is_leaf True" \
        in out
    assert "grad_fn SigmoidBackward0" in out and "grad_fn MulBackward0" in out
    assert "AccumulateGrad" in out
    values = re.findall(r":\s+(0\.\d{6})$", out, flags=re.M)
    assert len(values) == 4 and all(abs(float(v) - 2 * sigma * (1 - sigma)) < 1e-6
                                    for v in values)
    assert (tmp_path / "autograd_walkthrough" / "graph.dot").read_text().startswith("digraph")
