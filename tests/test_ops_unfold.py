"""ops.unfold (PyTorch's Tensor.unfold as a view) and reductions over its overlapping windows,
which lower to one lax.reduce_window: values and layouts against torch, errors in torch's words."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from funcdl import ops

X = np.random.default_rng(0).standard_normal((2, 3, 7, 6)).astype(np.float32)


def _primitives(fn, *args) -> str:
    return str(jax.make_jaxpr(fn)(*args))


@pytest.mark.parametrize("dim, size, step", [(0, 1, 1), (1, 2, 1), (2, 3, 2), (-1, 6, 4),
                                             (3, 0, 1), (2, 7, 7)])
def test_unfold_is_torchs_view(dim, size, step):
    s, t = ops.from_array(X), torch.from_numpy(X)
    v, w = ops.unfold(s, dim, size, step), t.unfold(dim, size, step)
    assert (v.shape, v.strides, v.offset) == (tuple(w.shape), w.stride(), w.storage_offset())
    assert v.storage is s.storage  # a view: the same storage array
    np.testing.assert_array_equal(ops.to_array(v), w.numpy())


def test_unfold_of_views_and_of_a_0d_array():
    t = torch.from_numpy(X).transpose(1, 3)[:, ::2]
    v = ops.unfold(ops.slice(ops.transpose(ops.from_array(X), 1, 3), 1, None, None, 2), 2, 2, 2)
    w = t.unfold(2, 2, 2)
    assert (v.shape, v.strides, v.offset) == (tuple(w.shape), w.stride(), w.storage_offset())
    np.testing.assert_array_equal(ops.to_array(v), w.numpy())
    scalar = ops.unfold(ops.from_array(np.float32(5.0)), 0, 1, 1)
    assert (scalar.shape, scalar.strides) == (tuple(torch.tensor(5.0).unfold(0, 1, 1).shape), (1,))


@pytest.mark.parametrize("args, error, message", [
    ((1, 4, 1), RuntimeError, "maximum size for tensor at dimension 1 is 3 but size is 4"),
    ((1, -1, 1), RuntimeError, "size is -1 but must be >= 0"),
    ((1, 2, 0), RuntimeError, "step is 0 but must be > 0"),
    ((4, 2, 1), IndexError, r"Dimension out of range \(expected to be in range of \[-4, 3\], "
                            r"but got 4\)"),
])
def test_unfold_errors_are_torchs(args, error, message):
    with pytest.raises(error, match=message):
        ops.unfold(ops.from_array(X), *args)
    with pytest.raises(error, match=message):
        torch.from_numpy(X).unfold(*args)


def _windows(storage):  # the 2-D windows of a 3x2 kernel, stride (2, 1), as torch builds them
    return ops.unfold(ops.unfold(ops.from_array(storage), 2, 3, 2), 3, 2, 1)


REDUCTIONS = [("sum", torch.sum), ("mean", torch.mean), ("amax", torch.amax),
              ("amin", torch.amin)]
DIMS = [(-2, -1), (-1,), (1, 4, 5), (2,), (2, 3), (0, 2, 4)]


@pytest.fixture(scope="module")
def windowed():
    """Every reduction over every dims of the 2-D windows, in one jitted program."""
    def run(storage):
        v = _windows(storage)
        return {(op, d): getattr(ops, op)(v, d) for op, _ in REDUCTIONS for d in DIMS}

    return jax.jit(run)(jnp.asarray(X)), run


def test_windowed_reductions_equal_torch_and_lower_to_reduce_window(windowed):
    got, run = windowed
    t = torch.from_numpy(X).unfold(2, 3, 2).unfold(3, 2, 1)
    for op, fn in REDUCTIONS:
        for d in DIMS:
            np.testing.assert_allclose(got[op, d], fn(t, dim=d).numpy(), rtol=1e-5, atol=1e-5,
                                       err_msg=f"{op} over {d}")
    program = _primitives(run, jnp.asarray(X))
    assert program.count("reduce_window") >= len(REDUCTIONS) * len(DIMS)
    assert "gather" not in program  # the windows are never copied out of the storage


def test_sliding_window_sums_over_either_dim():
    flat = np.random.default_rng(1).standard_normal(100).astype(np.float32)
    ref = np.lib.stride_tricks.sliding_window_view(flat, 8)

    def sums(a):
        v = ops.as_strided(a, (93, 8), (1, 1))  # the benchmark's overlapping windows
        return ops.sum(v, 0), ops.sum(v, 1), ops.mean(v, None), ops.amax(v, 0, keepdim=True)

    got = jax.jit(sums)(flat)
    for g, w in zip(got, (ref.sum(0), ref.sum(1), ref.mean(), ref.max(0, keepdims=True))):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
    assert _primitives(sums, flat).count("reduce_window") == 4


def test_windowed_sum_and_max_differentiate_like_torch():
    def loss(storage):
        v = _windows(storage)
        return (ops.sum(v, (-2, -1)) ** 2).sum() + ops.amax(v, (-2, -1)).sum()

    t = torch.tensor(X, requires_grad=True)
    w = t.unfold(2, 3, 2).unfold(3, 2, 1)
    ((w.sum((-2, -1)) ** 2).sum() + w.amax((-2, -1)).sum()).backward()
    ours = jax.jit(jax.grad(loss))(jnp.asarray(X))
    np.testing.assert_allclose(ours, t.grad.numpy(), rtol=1e-5, atol=1e-5)


def test_explain_conv2d_walks_the_windows_torch_sums():
    x = (np.arange(1, 33, dtype=np.float32) / 10).reshape(1, 2, 4, 4)  # two channels
    text = ops.explain(x, "conv2d", kernel=(2, 3), stride=(2, 1))
    assert "windows = x.unfold(2, 2, 2).unfold(3, 3, 1): shape (1, 2, 2, 2, 2, 3)" in text
    assert "strides (32, 16, 8, 1, 4, 1)" in text  # oh steps two rows (8), i one row (4)
    assert "(0, 1, 0, 0, 1, 2): 0*32 + 1*16 + 0*8 + 0*1 + 1*4 + 2*1 = 22, x[22]=2.3" in text
    assert "out[0, 0, 1, 1]: 9, 10, 11, 13, 14, 15, 25, 26, 27, 29, 30, 31" in text
    want = torch.nn.functional.conv2d(torch.from_numpy(x), torch.ones(1, 2, 2, 3), stride=(2, 1))
    shown = text.rsplit("result: ", 1)[1]
    got = np.array([float(v) for v in shown.replace("[", " ").replace("]", " ")
                    .replace(",", " ").split()]).reshape(want.shape)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5)
    with pytest.raises(ValueError, match="walks an \\(N, C, H, W\\) input"):
        ops.explain(x[0], "conv2d")


def test_funcdl_explain_conv2d_command(capsys):
    from funcdl import cli

    assert cli.main(["explain", "conv2d", "--shape", "1,1,4,4", "--kernel", "2,2"]) == 0
    out = capsys.readouterr().out
    assert "out[0, 0, 2, 2]: 10, 11, 14, 15" not in out  # past the walk's limit of 8
    assert "out[0, 0, 2, 1]: 9, 10, 13, 14" in out and "1 more output elements not shown" in out
    assert cli.main(["explain", "conv2d", "--kernel", "5,5"]) == 2  # a usage error, no traceback
    assert "maximum size for tensor at dimension 2 is 4 but size is 5" in capsys.readouterr().err
