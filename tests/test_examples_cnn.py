"""examples/cnn_digits.py runs (--smoke) and trains its CNN by both engines (the rest of the
examples: tests/test_examples.py)."""

from __future__ import annotations

import importlib
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_cnn_digits_trains_by_jax_grad_and_by_the_tape(monkeypatch, capsys, tmp_path):
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    module = importlib.import_module("cnn_digits")
    assert module.main(["--smoke", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    diff, scale = map(float, re.search(r"max \|difference\| ([-+.e\d]+) over 14 arrays "
                                       r"\(largest gradient ([-+.e\d]+)\)", out).groups())
    assert diff <= 1e-6 * scale, out  # seed 0: 8.9e-08 of 0.40
    jax_acc, tape_acc = (float(v) / 100 for v in re.findall(r"test accuracy: (\d+\.\d)%", out))
    # smoke: 3 epochs; seed 0 reached 98.3% (jax.grad) and 97.8% (tape); chance is 10%, and the
    # full 30 epochs reach 99.4% each
    assert jax_acc > 0.95 and tape_acc > 0.95, out
    assert (tmp_path / "jax" / "history.json").exists()
    assert (tmp_path / "tape" / "history.png").exists()
