"""explain(): the slides' walks, line by line (expected lines copied from the slides)."""

import ast

import jax
import numpy as np
import pytest

from funcdl import ops

X = np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8, 0.9]], np.float32)


def test_sum_dim_0_reproduces_the_slides():
    text = ops.explain(ops.from_array(X), "sum", 0)
    lines = [line.strip() for line in text.splitlines()]
    # slides: "0*3+ 0*1=0, x[0]=0.1", "1*3+ 0*1=3, x[3]=0.4", "2*3+ 0*1=6, x[6]=0.7", "=1.2"
    walk = [line.split(": ", 1)[1] for line in lines if line.startswith("(")]
    assert walk == [
        "0*3 + 0*1 = 0, x[0]=0.1", "1*3 + 0*1 = 3, x[3]=0.4", "2*3 + 0*1 = 6, x[6]=0.7",
        "0*3 + 1*1 = 1, x[1]=0.2", "1*3 + 1*1 = 4, x[4]=0.5", "2*3 + 1*1 = 7, x[7]=0.8",
        "0*3 + 2*1 = 2, x[2]=0.3", "1*3 + 2*1 = 5, x[5]=0.6", "2*3 + 2*1 = 8, x[8]=0.9",
    ]
    assert [line for line in lines if line.startswith("sum =")] == [
        "sum = 1.2", "sum = 1.5", "sum = 1.8"]
    assert lines[-1] == "result: [1.2, 1.5, 1.8]"
    assert "shape (3, 3), strides (3, 1)" in lines[0]
    assert "Range:d0={0, 1, 2}" in lines and "offset = d0*3 + d1*1" in lines
    assert any(line.startswith("since sum is across dim:0, vary dim:0") for line in lines)


def test_sum_dim_1_reproduces_the_slides():
    lines = [line.strip() for line in ops.explain(X, "sum", 1).splitlines()]
    walk = [line.split(": ", 1)[1] for line in lines if line.startswith("(")]
    assert walk[:6] == [  # slides: 0*3+ 0*1=0 ... and the second row from offset 3
        "0*3 + 0*1 = 0, x[0]=0.1", "0*3 + 1*1 = 1, x[1]=0.2", "0*3 + 2*1 = 2, x[2]=0.3",
        "1*3 + 0*1 = 3, x[3]=0.4", "1*3 + 1*1 = 4, x[4]=0.5", "1*3 + 2*1 = 5, x[5]=0.6",
    ]
    assert lines[-1] == "result: [0.6, 1.5, 2.4]"


def test_2x2x3x2_walk_over_dim_2():
    # slides: index 0+0+0+0=0, 0+0+2+0, 0+0+4+0 (sum 1); 0+0+0+1=1, 3, 5 (sum 5); 6, 8, 10 (sum 3)
    storage = np.array([0, 2, 1, 1, 0, 2, 1, 0, 1, 0, 1, 0] + [0] * 12, np.float32)
    s = ops.as_strided(storage, (2, 2, 3, 2), (12, 6, 2, 1))
    lines = [line.strip() for line in ops.explain(s, "sum", 2).splitlines()]
    assert "(0, 0, 1, 1): 0*12 + 0*6 + 1*2 + 1*1 = 3, x[3]=1" in lines
    assert "(0, 1, 2, 0): 0*12 + 1*6 + 2*2 + 0*1 = 10, x[10]=1" in lines
    sums = [line for line in lines if line.startswith("sum =")]
    assert sums[:3] == ["sum = 1", "sum = 5", "sum = 3"]


def test_result_has_the_shape_of_the_output():
    x = np.arange(1, 25, dtype=np.float32).reshape(2, 2, 3, 2) / 10
    text = ops.explain(x, "sum", 2)
    result = np.array(ast.literal_eval(text.split("result: ", 1)[1]))
    assert result.shape == (2, 2, 2)  # not a flat list of 8
    np.testing.assert_allclose(result, x.sum(axis=2), rtol=1e-5)
    assert ops.explain(x[0, 0, 0], "sum", 0).splitlines()[-1] == "result: 0.3"  # 0-dim


def test_views_show_their_offset_and_strides():
    s = ops.transpose(ops.from_array(X), 0, 1)[1:]  # offset 1, strides (1, 3)
    text = ops.explain(s, "amax", 1)
    assert "(0, 2): 1 + 0*1 + 2*3 = 7, x[7]=0.8" in text
    assert text.splitlines()[-1] == "result: [0.8, 0.9]"
    np.testing.assert_allclose(ops.amax(s, 1), [0.8, 0.9])


def test_limit_and_bad_input():
    text = ops.explain(np.ones((20, 2), np.float32), "sum", 1, limit=2)
    assert "... 18 more output elements not shown" in text
    with pytest.raises(ValueError, match="explain\\(\\) walks one of"):
        ops.explain(X, "median", 0)
    with pytest.raises(IndexError, match=r"Dimension out of range \(expected to be in range of "
                                         r"\[-2, 1\], but got 2\)"):
        ops.explain(X, "sum", 2)
    with pytest.raises(TypeError, match="needs concrete values"):
        jax.jit(lambda a: ops.explain(a, "sum", 0))(X)
