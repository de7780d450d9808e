"""Every example runs (in --smoke mode) and prints the numbers the slides or the maths predict.

The examples run in this process through their ``main(argv)`` (importing JAX once), with their
outputs under pytest's tmp_path. The training examples must reach, on their --smoke settings, the
accuracies stated beside each test (set below what seed 0 reaches, far above what a broken model
does); the README's figures are for the full runs.
"""

from __future__ import annotations

import importlib
import json
import math
import pathlib
import re
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
NAMES = sorted(p.stem for p in EXAMPLES.glob("*.py") if not p.stem.startswith("_"))


@pytest.mark.parametrize("name", NAMES)
def test_every_example_has_help_with_smoke_and_out(name, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    module = importlib.import_module(name)
    with pytest.raises(SystemExit) as stop:
        module.main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "--smoke" in out
    assert "--out" in out
    assert module.__doc__.split("\n")[0] in " ".join(out.split())  # the one-line description


def test_strides_walkthrough_reproduces_the_slides(example, tmp_path):
    out = example("strides_walkthrough", "--smoke")
    assert (tmp_path / "strides_walkthrough" / "walk.txt").read_text() in out
    # 3x3 of 0.1..0.9 (slides): column sums 1.2 1.5 1.8, row sums 0.6 1.5 2.4
    assert "result: [1.2, 1.5, 1.8]" in out and "result: [0.6, 1.5, 2.4]" in out
    assert "1*3 + 0*1 = 3, x[3]=0.4" in out
    # 2x2x3x2 over dim 2 (slides): offsets 0,2,4 -> 1; 1,3,5 -> 5; 6,8,10 -> 3
    assert "strides (12, 6, 2, 1)" in out
    assert "result: [[[1, 5],\n          [3, " in out  # the (2, 2, 2) result, row-major
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
    # forward mode accumulates the same slope from x outwards (dual numbers)
    assert "y = 0.7311, dy/dx = 0.1966" in out and f"z = 1.4621, dz/dx = {expected}" in out
    # both modes' Jacobians were checked against jax.jacobian inside the example
    assert re.search(r"64 -> 2\s+64\s+2\s", out) and re.search(r"2 -> 64\s+2\s+64\s", out)


def percentages(out: str, label: str) -> list[float]:
    return [float(v) / 100 for v in re.findall(rf"{label}.*?(\d+\.\d)%", out)]


def test_mlp_digits_trains_both_ways(example):
    out = example("mlp_digits", "--smoke")
    assert "== 1. the manual tape loop" in out and "== 2. funcdl.layers.MLP" in out
    manual, fitted = percentages(out, "test accuracy:")
    # smoke (6 epochs; seed 0 reached 69.4% and 95.3%); the full 20 epochs reach over 95% each
    assert manual > 0.6 and fitted > 0.88, out  # chance is 10%


def test_sequence_classifier_reports_accuracy_with_and_without_the_mask(example):
    out = example("sequence_classifier", "--smoke")
    assert "test accuracy with key_padding_mask" in out
    assert "test accuracy if the mask is dropped" in out
    assert "chance:" in out and "12.5%" in out  # q = 8 classes
    (with_mask,), (without,) = percentages(out, "with key_padding"), percentages(out, "dropped")
    # smoke (1,024 sequences, 4 epochs; seed 0 reached 76.2% with the mask, 18.0% without)
    assert with_mask > 0.6, out
    assert with_mask - without > 0.3, out  # the padding, left in, misleads the model


def test_sequence_data_padding_is_adversarial_and_masked():
    import sys

    sys.path.insert(0, str(EXAMPLES))
    try:
        from sequence_classifier import Q, make_sequences
    finally:
        sys.path.remove(str(EXAMPLES))
    import numpy as np

    data = make_sequences(200, 64, seed=3)
    lengths = (~data.padding).sum(axis=1)
    assert lengths.min() >= 16 and lengths.max() <= 64
    assert (data.padding == (np.arange(64)[None] >= lengths[:, None])).all()  # a suffix
    for ids, pad, label in zip(data.ids, data.padding, data.labels):
        filler = set(ids[pad].tolist())
        assert len(filler) <= 1 and label not in filler  # one repeated wrong token
    # the planted token is the most frequent real token in most sequences
    majority = [np.bincount(i[~p], minlength=Q).argmax() for i, p in zip(data.ids, data.padding)]
    assert np.mean(np.array(majority) == data.labels) > 0.8


def test_mlm_pretrain_writes_outputs_and_compares_engines(example, tmp_path, monkeypatch):
    run = tmp_path / "mlm_pretrain"
    out = example("mlm_pretrain", "--smoke")
    assert (run / "history.png").stat().st_size > 0 and (run / "history.json").exists()
    assert any((run / "checkpoints").iterdir())
    (accuracy,), (baseline,) = percentages(out, "accuracy"), percentages(out, "baseline")
    # smoke (6 epochs, 1 layer; seed 0 reached 12.3% against the baseline's 8.2%)
    assert accuracy > baseline + 0.02, out
    diff = float(re.search(r"max \|difference\| ([-+.e\d]+),", out).group(1))
    assert diff < 1e-4  # tape and jax.grad agree on the trained model
    # resuming the finished run trains nothing and reports the same model (the engines, compared
    # above, are not compared again: compiling both gradients would double this test's time)
    saved = json.loads((run / "result.json").read_text())
    monkeypatch.setattr(sys.modules["mlm_pretrain"], "tape_vs_jax", lambda *_: saved)
    again = example("mlm_pretrain", "--smoke", "--resume")
    assert "nothing left to train" in again and "trained in" not in again
    assert again.split("\n\n")[-1].splitlines()[1:3] == out.split("\n\n")[-1].splitlines()[1:3]


def test_tape_vs_jax_runs_both_engines_step_for_step(example):
    out = example("tape_vs_jax", "--smoke")
    rows = [line.split() for line in out.splitlines() if re.match(r"\s+\d+\s+\d", line)]
    assert len(rows) == 3  # --smoke: 3 steps
    for row in rows:
        loss_jax, loss_tape, grad_diff = float(row[1]), float(row[2]), float(row[3])
        assert abs(loss_jax - loss_tape) < 1e-4 and grad_diff < 1e-4
    assert "median step after that" in out
