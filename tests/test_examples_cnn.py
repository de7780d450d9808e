"""examples/cnn_digits.py runs (--smoke) and trains its CNN by both engines, and
strides_walkthrough.py's unfold section (the rest of the examples: tests/test_examples.py)."""

from __future__ import annotations

import re


def test_cnn_digits_trains_by_jax_grad_and_by_the_tape(example, tmp_path):
    out = example("cnn_digits", "--smoke")
    diff, scale = map(float, re.search(r"max \|difference\| ([-+.e\d]+) over 14 arrays "
                                       r"\(largest gradient ([-+.e\d]+)\)", out).groups())
    assert diff <= 1e-6 * scale, out  # seed 0: 8.9e-08 of 0.40
    jax_acc, tape_acc = (float(v) / 100 for v in re.findall(r"test accuracy: (\d+\.\d)%", out))
    # smoke: 3 epochs; seed 0 reached 98.3% (jax.grad) and 97.8% (tape); chance is 10%, and the
    # full 30 epochs reach 99.4% each
    assert jax_acc > 0.95 and tape_acc > 0.95, out
    assert (tmp_path / "cnn_digits" / "jax" / "history.json").exists()
    assert (tmp_path / "cnn_digits" / "tape" / "history.png").exists()


def test_strides_walkthrough_shows_a_convolutions_windows(example):
    out = example("strides_walkthrough")
    section = out[out.index("== 4. unfold"):]
    assert "shape (1, 1, 3, 3, 2, 2), strides (16, 16, 4, 1, 4, 1)" in section
    assert "same storage array as x: True" in section
    assert "out[0, 0, 1, 1]: 5, 6, 9, 10" in section  # the window at row 1, column 1
    # the 2x2 window sums of 0.1 .. 1.6, as torch.nn.functional.conv2d with a kernel of ones
    assert "sum(dim=(-2, -1)) = [[[[1.4, 1.8, 2.2], [3.0, 3.4, 3.8], [4.6, 5.0, 5.4]]]]" in section
