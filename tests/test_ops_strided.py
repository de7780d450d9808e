"""StridedArray layouts and views: the slides' numbers, PyTorch's strides and offsets, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from funcdl import ops

SLIDES_3x3 = np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8, 0.9]], np.float32)


def test_slides_layouts():
    assert ops.contiguous_strides((2, 2, 3, 2)) == (12, 6, 2, 1)
    assert ops.contiguous_strides((3, 3)) == (3, 1)
    assert ops.contiguous_strides(()) == ()
    x = ops.from_array(SLIDES_3x3)
    assert (x.shape, x.strides, x.offset) == ((3, 3), (3, 1), 0)
    row = x[1]  # slides: [1*3 + 0*1 = 3]
    assert (row.shape, row.strides, row.offset) == ((3,), (1,), 3)
    np.testing.assert_allclose(ops.to_array(row), [0.4, 0.5, 0.6])
    np.testing.assert_allclose(ops.sum(x, 0), [1.2, 1.5, 1.8], rtol=1e-6)
    np.testing.assert_allclose(ops.sum(x, 1), [0.6, 1.5, 2.4], rtol=1e-6)


def test_slides_2x2x3x2_walk():
    # The slides' sum over dim 2 reads offsets {0, 2, 4} -> 1, {1, 3, 5} -> 5, {6, 8, 10} -> 3.
    storage = np.array([0, 2, 1, 1, 0, 2, 1, 0, 1, 0, 1, 0] + [0] * 12, np.float32)
    x = ops.as_strided(storage, (2, 2, 3, 2), ops.contiguous_strides((2, 2, 3, 2)))
    out = ops.sum(x, 2)
    assert out.shape == (2, 2, 2)
    assert float(out[0, 0, 0]) == 1 and float(out[0, 0, 1]) == 5 and float(out[0, 1, 0]) == 3


def _torch_and_ours():
    t = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    return t, ops.from_array(t.numpy())


VIEWS = {
    "transpose": (lambda t: t.transpose(1, 3), lambda s: ops.transpose(s, 1, -1)),
    "permute": (lambda t: t.permute(2, 0, 3, 1), lambda s: ops.permute(s, (2, 0, -1, 1))),
    "select": (lambda t: t.select(2, -1), lambda s: ops.select(s, 2, -1)),
    "slice": (lambda t: t[:, 1:, ::3], lambda s: ops.slice(ops.slice(s, 1, 1), 2, None, None, 3)),
    "slice-clamped": (lambda t: t[:, -10:2], lambda s: ops.slice(s, 1, -10, 2)),
    "slice-empty": (lambda t: t[:, 5:], lambda s: ops.slice(s, 1, 5)),
    "narrow": (lambda t: t.narrow(3, -3, 2), lambda s: ops.narrow(s, 3, -3, 2)),
    "getitem": (lambda t: t[1, None, ..., ::2, 3], lambda s: s[1, None, ..., ::2, 3]),
    "expand": (lambda t: t[:, :1].expand(4, 2, 3, 4, 5),
               lambda s: ops.expand(s[:, :1], (4, 2, 3, -1, 5))),
    "squeeze-all": (lambda t: t[:, :1, 2:3].squeeze(), lambda s: ops.squeeze(s[:, :1, 2:3])),
    "squeeze-some": (lambda t: t[:, :1, 2:3].squeeze((0, 2)),
                     lambda s: ops.squeeze(s[:, :1, 2:3], (0, 2))),
    "unsqueeze-mid": (lambda t: t[:, :, ::2].unsqueeze(2),
                      lambda s: ops.unsqueeze(s[:, :, ::2], 2)),
    "unsqueeze-end": (lambda t: t.unsqueeze(-1), lambda s: ops.unsqueeze(s, -1)),
    "view-merge": (lambda t: t.view(6, 20), lambda s: ops.view(s, (6, -1))),
    "view-of-transposed": (lambda t: t.transpose(0, 1).view(3, 2, 2, 2, 5),
                           lambda s: ops.view(ops.transpose(s, 0, 1), (3, 2, 2, 2, 5))),
    "view-with-ones": (lambda t: t[:, 1].view(2, 1, 4, 1, 5),
                       lambda s: ops.view(s[:, 1], (2, 1, 4, 1, 5))),
    "reshape-as-view": (lambda t: t[1].reshape(12, 5), lambda s: ops.reshape(s[1], (12, 5))),
}


@pytest.mark.parametrize("name", sorted(VIEWS))
def test_views_match_torch_layout_and_values(name):
    t, s = _torch_and_ours()
    tv, sv = VIEWS[name][0](t), VIEWS[name][1](s)
    assert sv.shape == tuple(tv.shape)
    assert sv.strides == tv.stride()
    assert sv.offset == tv.storage_offset()
    assert sv.storage is s.storage  # a view never copies
    np.testing.assert_array_equal(ops.to_array(sv), tv.numpy())


def test_reshape_copies_when_no_view_exists():
    t, s = _torch_and_ours()
    tt, st = t.transpose(0, 3), ops.transpose(s, 0, 3)
    with pytest.raises(ValueError, match=r"view size is not compatible with input tensor's size "
                                         r"and stride.*Use reshape\(\.\.\.\) instead"):
        ops.view(st, (-1,))
    with pytest.raises(RuntimeError, match="view size is not compatible"):
        tt.view(-1)  # the same layout is refused by torch
    r = ops.reshape(st, (-1,))
    assert r.storage is not s.storage and ops.is_contiguous(r) and r.offset == 0
    np.testing.assert_array_equal(ops.to_array(r), tt.reshape(-1).numpy())


@pytest.mark.parametrize("make", [
    lambda t: t, lambda t: t.transpose(0, 1), lambda t: t[:, :, 1:], lambda t: t[:, :1],
    lambda t: t[:, :, :1].transpose(1, 2), lambda t: t[1:], lambda t: t[:, 0, None],
    lambda t: t[:, :, :0].transpose(0, 2), lambda t: t[:1].expand(3, 3, 4, 5)])
def test_is_contiguous_matches_torch(make):
    t, s = _torch_and_ours()
    tv = make(t)
    sv = ops.as_strided(s.storage, tuple(tv.shape), tv.stride(), tv.storage_offset())
    assert ops.is_contiguous(sv) == tv.is_contiguous()
    c = ops.contiguous(sv)
    assert ops.is_contiguous(c)
    assert (c.storage is s.storage) == (tv.is_contiguous() and tv.storage_offset() == 0)
    np.testing.assert_array_equal(ops.to_array(c), tv.numpy())


def test_item():
    s = ops.from_array(SLIDES_3x3)
    assert ops.item(s[2, 1]) == pytest.approx(0.8)
    assert isinstance(ops.item(s[2, 1]), float)
    assert ops.item(ops.view(s[1:2, 2:], ())) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="^a Tensor with 3 elements cannot be converted to Scalar"):
        ops.item(s[0])
    traced = jax.jit(lambda st: ops.item(ops.as_strided(st, (), (), 4)))(s.storage)
    assert float(traced) == pytest.approx(0.5)


def test_pytree_jit_vmap_grad():
    s = ops.transpose(ops.from_array(SLIDES_3x3), 0, 1)[:, 1:]
    leaves, treedef = jax.tree_util.tree_flatten(s)
    assert len(leaves) == 1 and leaves[0] is s.storage
    back = jax.tree_util.tree_unflatten(treedef, leaves)
    assert (back.shape, back.strides, back.offset) == (s.shape, s.strides, s.offset)
    # a jitted function of a StridedArray: storage traced, layout static
    f = jax.jit(lambda v: ops.to_array(v) * 2)
    np.testing.assert_allclose(f(s), SLIDES_3x3.T[:, 1:] * 2)
    # vmap over a batch of storages sharing one layout
    batch = jnp.stack([s.storage, 10 * s.storage])
    got = jax.vmap(lambda st: ops.sum(ops.as_strided(st, s.shape, s.strides, s.offset), 1))(batch)
    want = SLIDES_3x3.T[:, 1:].sum(1)
    np.testing.assert_allclose(got, np.stack([want, 10 * want]), rtol=1e-6)
    # vmap over a StridedArray whose storage carries the batch axis
    sb = jax.vmap(lambda st: ops.as_strided(st, s.shape, s.strides, s.offset))(batch)
    np.testing.assert_allclose(jax.vmap(lambda v: ops.sum(v, 1))(sb), got)
    # grad wrt storage: each storage element read once by the view gets 1, others 0
    g = jax.jit(jax.grad(lambda st: ops.sum(ops.as_strided(st, s.shape, s.strides, s.offset))))(
        s.storage)
    np.testing.assert_array_equal(g, [0, 0, 0, 1, 1, 1, 1, 1, 1])


def test_grad_through_overlapping_and_expanded_views_counts_every_read():
    storage = jnp.arange(5.0)
    windows = ops.as_strided(storage, (3, 3), (1, 1))  # overlapping: element 2 read 3 times
    g = jax.jit(jax.grad(lambda st: ops.sum(ops.as_strided(st, (3, 3), (1, 1)))))(storage)
    np.testing.assert_array_equal(g, [1, 2, 3, 2, 1])
    np.testing.assert_array_equal(ops.to_array(windows), [[0, 1, 2], [1, 2, 3], [2, 3, 4]])
    g = jax.grad(lambda st: ops.sum(ops.expand(ops.as_strided(st, (1, 2), (1, 1), 3), (4, 2))))
    np.testing.assert_array_equal(jax.jit(g)(storage), [0, 0, 0, 4, 4])


# --------------------------------------------------------------------------- bad input


def test_as_strided_bad_layouts():
    st = np.arange(9, dtype=np.float32)
    with pytest.raises(ValueError, match=r"sizes \[3, 3\], strides \[3, 1\] and storage offset 1 "
                                         r"read up to element 9.*out of bounds for storage of "
                                         r"size 9"):
        ops.as_strided(st, (3, 3), (3, 1), 1)
    with pytest.raises(ValueError, match=r"Negative strides are not supported at the moment, got "
                                         r"strides: \[-3, 1\]"):
        ops.as_strided(st, (3, 3), (-3, 1))
    with pytest.raises(ValueError, match=r"negative dimension -3: \[-3, 3\]"):
        ops.as_strided(st, (-3, 3), (3, 1))
    with pytest.raises(ValueError, match="invalid storage offset -1"):
        ops.as_strided(st, (3,), (1,), -1)
    with pytest.raises(TypeError, match="size: every element must be an int, but found element "
                                        "of type float at pos 0"):
        ops.as_strided(st, (2.5, 3), (3, 1))
    with pytest.raises(ValueError, match="mismatch in length of strides and shape"):
        ops.as_strided(st, (3, 3), (1,))
    with pytest.raises(ValueError, match=r"storage must be a 1-D array, got shape \(3, 3\)"):
        ops.as_strided(SLIDES_3x3, (3,), (1,))
    assert ops.as_strided(st, (0, 5), (100, 100), 9).size == 0  # reads nothing: always valid


def test_indexing_a_0_dim_tensor():
    s = ops.as_strided(np.arange(3, dtype=np.float32), (), (), 2)
    for index in (lambda: s[0], lambda: ops.select(s, 0, 0), lambda: s[..., 0]):
        with pytest.raises(IndexError, match="^invalid index of a 0-dim tensor"):
            index()
    assert ops.item(s[None][0]) == 2.0  # None and ... are fine on 0-d, as in torch
    with pytest.raises(IndexError, match="too many indices for tensor of dimension 1"):
        ops.from_array(np.ones(3))[0, 0]


def test_view_errors_use_torch_words():
    s = ops.from_array(SLIDES_3x3)
    with pytest.raises(IndexError, match=r"Dimension out of range \(expected to be in range of "
                                         r"\[-2, 1\], but got 2\)"):
        ops.transpose(s, 0, 2)
    with pytest.raises(IndexError, match=r"select\(\): index 3 out of range for tensor of size "
                                         r"\[3, 3\] at dimension 1"):
        ops.select(s, 1, 3)
    with pytest.raises(ValueError, match="slice step must be positive"):
        ops.slice(s, 0, None, None, -1)
    with pytest.raises(ValueError, match=r"start \(2\) \+ length \(2\) exceeds dimension size"):
        ops.narrow(s, 0, 2, 2)
    with pytest.raises(ValueError, match=r"The expanded size of the tensor \(4\) must match the "
                                         r"existing size \(3\) at non-singleton dimension 1"):
        ops.expand(s, (2, 4))
    with pytest.raises(ValueError, match=r"the number of sizes provided \(1\) must be greater"):
        ops.expand(s, (3,))
    with pytest.raises(ValueError, match=r"isn't allowed in a leading, non-existing dimension 0"):
        ops.expand(s, (-1, 3, 3))
    with pytest.raises(ValueError, match=r"shape '\[2, 5\]' is invalid for input of size 9"):
        ops.view(s, (2, 5))
    with pytest.raises(ValueError, match="only one dimension can be inferred"):
        ops.reshape(s, (-1, -1))
    with pytest.raises(TypeError, match="must be an int, but found element of type float"):
        ops.view(s, (2.5, 3))
    with pytest.raises(ValueError, match=r"number of dimensions in the tensor input does not "
                                         r"match the length of the desired ordering"):
        ops.permute(s, (0,))
    with pytest.raises(ValueError, match=r"permute\(\): duplicate dims are not allowed"):
        ops.permute(s, (1, -1))
    with pytest.raises(IndexError, match=r"range of \[-3, 2\], but got 3"):
        ops.unsqueeze(s, 3)
    with pytest.raises(TypeError, match="expects a StridedArray.*from_array"):
        ops.transpose(SLIDES_3x3, 0, 1)


@pytest.mark.parametrize("shape, strides, dim", [
    ((0, 1), (1, 1), 1), ((0, 3), (3, 1), 1), ((2, 1, 0), (1, 1, 1), 1), ((3, 1), (0, 1), 0),
    ((3, 2), (0, 1), 0), ((2, 3), (0, 0), 1)])
def test_empty_and_stride_0_views_reduce_like_torch(shape, strides, dim):
    storage = np.arange(6, dtype=np.float32)
    s = ops.as_strided(storage, shape, strides)
    t = torch.as_strided(torch.from_numpy(storage), shape, strides)
    for keepdim in (False, True):
        for op in ("argmax", "argmin", "sum", "prod", "mean"):
            got, want = getattr(ops, op)(s, dim, keepdim), getattr(torch, op)(t, dim, keepdim)
            assert got.shape == tuple(want.shape), (op, keepdim)
            np.testing.assert_allclose(got, want.numpy(), err_msg=f"{op} {keepdim}")
