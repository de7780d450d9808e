"""Random layouts up to 5-D against numpy's as_strided on the same storage, on both lowerings.

Two generators: raw ``as_strided`` layouts (any strides, 0 included, offsets, empty dims: mostly
gathers) and chains of views from a dense array (permutations, steps, offsets, expands: mostly
slice boxes), where numpy's own views give the expected values.
"""

import math
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from funcdl import ops

EXAMPLES = max(4, int(os.environ.get("FUNCDL_HYPOTHESIS_EXAMPLES", "25")) // 2)
VALUES = np.array([-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0], np.float32)  # sums are exact
REDUCTIONS = ["sum", "mean", "prod", "amax", "amin", "logsumexp", "var", "argmax", "argmin"]


def _storage(draw, n):
    idx = draw(st.lists(st.integers(0, len(VALUES) - 1), min_size=n, max_size=n))
    return VALUES[np.asarray(idx, np.int64)] if n else np.zeros(0, np.float32)


def _np_view(storage, shape, strides, offset):
    """numpy's reading of the layout: byte strides over the same buffer."""
    itemsize = storage.itemsize
    return np.lib.stride_tricks.as_strided(storage[offset:], shape, [s * itemsize for s in strides])


@st.composite
def raw_layouts(draw):
    nd = draw(st.integers(0, 5))
    shape = tuple(draw(st.lists(st.integers(0, 3), min_size=nd, max_size=nd)))
    strides = tuple(draw(st.lists(st.integers(0, 7), min_size=nd, max_size=nd)))
    offset = draw(st.integers(0, 5))
    need = offset + sum((n - 1) * s for n, s in zip(shape, strides)) + 1 if math.prod(shape) else 0
    storage = _storage(draw, max(need, offset) + draw(st.integers(0, 3)))
    return storage, shape, strides, offset


def _apply(draw, s, ref):
    """One random view on both the StridedArray ``s`` and the numpy view ``ref``."""
    kinds = ["permute", "slice", "unsqueeze", "expand", "squeeze", "reshape"]
    if s.ndim and 0 not in s.shape:
        kinds += ["select", "narrow"]
    kind = draw(st.sampled_from(kinds if s.ndim else ["unsqueeze", "expand"]))
    if kind == "permute":
        perm = draw(st.permutations(range(s.ndim)))
        return ops.permute(s, perm), np.transpose(ref, perm)
    if kind == "unsqueeze":
        d = draw(st.integers(-s.ndim - 1, s.ndim))
        return ops.unsqueeze(s, d), np.expand_dims(ref, d)
    if kind == "squeeze":
        return ops.squeeze(s), np.squeeze(ref)
    if kind == "expand":  # a new leading dim and every size-1 dim broadcast to 1..3
        shape = [draw(st.integers(1, 3))] + [draw(st.integers(1, 3)) if n == 1 else n
                                             for n in s.shape]
        return ops.expand(s, shape), np.broadcast_to(ref, shape)
    if kind == "reshape":  # merge two neighbours: a view or a copy depending on the strides
        if s.ndim < 2:
            return ops.reshape(s, (-1,)), ref.reshape(-1)
        d = draw(st.integers(0, s.ndim - 2))
        shape = s.shape[:d] + (s.shape[d] * s.shape[d + 1],) + s.shape[d + 2:]
        return ops.reshape(s, shape), ref.reshape(shape)
    d = draw(st.integers(0, s.ndim - 1))
    n = s.shape[d]
    if kind == "select":
        i = draw(st.integers(-n, n - 1))
        return ops.select(s, d, i), np.take(ref, i, axis=d)
    if kind == "narrow":
        start = draw(st.integers(0, n - 1))
        length = draw(st.integers(0, n - start))
        return ops.narrow(s, d, start, length), ref[(slice(None),) * d + (slice(start,
                                                                               start + length),)]
    start = draw(st.none() | st.integers(-n - 1, n + 1))
    stop = draw(st.none() | st.integers(-n - 1, n + 1))
    step = draw(st.integers(1, 3))
    return ops.slice(s, d, start, stop, step), ref[(slice(None),) * d + (slice(start, stop, step),)]


@st.composite
def view_chains(draw):
    nd = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=nd, max_size=nd)))
    storage = _storage(draw, math.prod(shape))
    s, ref = ops.from_array(storage.reshape(shape)), storage.reshape(shape)
    for _ in range(draw(st.integers(1, 4))):
        if s.ndim >= 5:
            break
        s, ref = _apply(draw, s, ref)
    return s, ref


def _np_reduce(op, ref, dim, keepdim):
    """The expected value, from numpy on the materialised view (torch's conventions)."""
    axis = None if dim is None or dim == () else dim
    if op in ("argmax", "argmin"):
        r = getattr(np, op)(ref, axis=axis, keepdims=keepdim if axis is not None else False)
        return r.reshape((1,) * ref.ndim) if axis is None and keepdim else r
    x = ref.astype(np.float64)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if op == "logsumexp":
            m = np.max(x, axis=axis, keepdims=True)
            r = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
            return r if keepdim else np.squeeze(r, axis=axis)
        if op == "var":
            n = x.size if axis is None else math.prod(
                x.shape[a] for a in (axis if isinstance(axis, tuple) else (axis,)))
            ss = np.sum((x - np.mean(x, axis=axis, keepdims=True)) ** 2, axis=axis,
                        keepdims=keepdim)
            return ss / max(n - 1, 0)
        fn = {"sum": np.sum, "mean": np.mean, "prod": np.prod, "amax": np.max, "amin": np.min}[op]
        return fn(x, axis=axis, keepdims=keepdim)


def _draw_reduction(draw, ndim, shape):
    op = draw(st.sampled_from(REDUCTIONS))
    if op in ("argmax", "argmin"):
        dim = draw(st.none() | st.integers(-max(ndim, 1), max(ndim, 1) - 1))
    else:
        dim = draw(st.none() | st.integers(-max(ndim, 1), max(ndim, 1) - 1)
                   | st.sets(st.integers(0, max(ndim - 1, 0)), max_size=ndim).map(tuple))
    keepdim = draw(st.booleans())
    dims = ops.canonical_dims(dim, ndim)
    empty = math.prod(shape) == 0 and (dim is None or any(shape[d] == 0 for d in dims)
                                       or op in ("mean", "var", "logsumexp"))
    if empty and op not in ("sum", "prod"):
        op = "sum"  # the others raise or give nan on empty input (checked elsewhere)
    return op, dim, keepdim


def _check_everything(data, storage, s, ref):
    """Values of the view and one random reduction, on every applicable lowering, in one jit."""
    no_gather = ops.plan_slices(s) is not None or ops.plan_stacked(s) is not None
    lowerings = ["auto", "gather"] + (["slices"] if no_gather else [])
    op, dim, keepdim = _draw_reduction(data.draw, s.ndim, s.shape)
    layout = (s.shape, s.strides, s.offset)

    def run(st_):
        v = ops.as_strided(st_, *layout)
        return {lw: (ops.to_array(v, lowering=lw),
                     getattr(ops, op)(v, dim, keepdim, lowering=lw)) for lw in lowerings}

    got = jax.jit(run)(jnp.asarray(storage))
    want = _np_reduce(op, ref, dim, keepdim)
    for lw, (arr, red) in got.items():
        np.testing.assert_array_equal(arr, ref, err_msg=f"view values, lowering={lw}")
        assert red.shape == np.shape(want), (op, dim, keepdim, lw)
        np.testing.assert_allclose(red, want, rtol=2e-5, atol=2e-5,
                                   err_msg=f"{op}(dim={dim}, keepdim={keepdim}), lowering={lw}")


@settings(max_examples=EXAMPLES)
@given(raw_layouts(), st.data())
def test_raw_layouts_match_numpy_as_strided(layout, data):
    storage, shape, strides, offset = layout
    s = ops.as_strided(storage, shape, strides, offset)
    _check_everything(data, storage, s, _np_view(storage, shape, strides, offset))


@settings(max_examples=EXAMPLES)
@given(view_chains(), st.data())
def test_view_chains_match_numpy_views(chain, data):
    s, ref = chain
    storage = np.asarray(s.storage)
    # the layout alone, read by numpy, gives numpy's own view: strides and offset are right
    np.testing.assert_array_equal(_np_view(storage, s.shape, s.strides, s.offset), ref)
    _check_everything(data, storage, s, ref)


GRAD_OPS = {"sum": jnp.sum, "mean": jnp.mean, "prod": jnp.prod, "amax": jnp.max,
            "amin": jnp.min, "logsumexp": jax.nn.logsumexp,
            "var": lambda a, axis: jnp.var(a, axis=axis, ddof=1)}


@settings(max_examples=EXAMPLES)
@given(view_chains(), st.sampled_from(sorted(GRAD_OPS)), st.data())
def test_grad_matches_jax_grad_of_jnp_on_the_materialised_view(chain, op, data):
    s, _ = chain
    if s.size == 0 or s.ndim == 0:
        return
    dim = data.draw(st.integers(0, s.ndim - 1))
    if op == "var" and s.shape[dim] < 2:
        op = "sum"
    storage = jnp.asarray(s.storage)
    # the materialised view, gathered by indices numpy computes from the layout
    index = _np_view(np.arange(storage.shape[0]), s.shape, s.strides, s.offset)
    layout = (s.shape, s.strides, s.offset)
    weights = jnp.asarray(np.linspace(-1, 1, math.prod(_np_reduce("sum", index, dim, False).shape)
                                      or 1, dtype=np.float32))

    def ours(st_, lw):
        r = getattr(ops, op)(ops.as_strided(st_, *layout), dim, lowering=lw)
        return jnp.sum(r.reshape(-1) * weights[: r.size])

    def reference(st_):
        r = GRAD_OPS[op](st_[index], axis=dim)
        return jnp.sum(r.reshape(-1) * weights[: r.size])

    def grads(st_):
        return jax.grad(reference)(st_), {lw: jax.grad(ours)(st_, lw) for lw in ("auto", "gather")}

    want, got = jax.jit(grads)(storage)
    for lw, g in got.items():
        np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-5, err_msg=f"{op} dim={dim} {lw}")


def _view_targets(draw, shape):
    """A shape with the same element count: flattened, two neighbours merged, a dim split, or a
    size-1 dim inserted."""
    kind = draw(st.sampled_from(["flatten", "merge", "split", "one"]))
    if kind == "flatten" or not shape:
        return (math.prod(shape),)
    if kind == "merge" and len(shape) >= 2:
        d = draw(st.integers(0, len(shape) - 2))
        return shape[:d] + (shape[d] * shape[d + 1],) + shape[d + 2:]
    if kind == "split":
        d = draw(st.integers(0, len(shape) - 1))
        n = shape[d]
        a = draw(st.sampled_from([k for k in range(1, n + 1) if n % k == 0] or [1])) if n else 1
        return shape[:d] + ((a, n // a) if n else (0, 1)) + shape[d + 1:]
    d = draw(st.integers(0, len(shape)))
    return shape[:d] + (1,) + shape[d:]


@settings(max_examples=8 * EXAMPLES)
@given(raw_layouts(), st.data())
def test_layout_arithmetic_matches_torch(layout, data):
    """view (PyTorch's computeStride rule), unsqueeze, expand and transpose give torch's strides;
    view fails exactly when torch's does. Layout only: nothing is compiled."""
    storage, shape, strides, offset = layout
    s = ops.as_strided(storage, shape, strides, offset)
    t = torch.as_strided(torch.from_numpy(storage.copy()), shape, strides, offset)
    target = _view_targets(data.draw, shape)
    try:
        want = t.view(target)
    except RuntimeError as e:
        assert "view size is not compatible" in str(e)
        with pytest.raises(ValueError, match="view size is not compatible.*Use reshape"):
            ops.view(s, target)
    else:
        got = ops.view(s, target)
        assert (got.shape, got.strides, got.offset) == (target, want.stride(), offset)
    d = data.draw(st.integers(-s.ndim - 1, s.ndim))
    u, tu = ops.unsqueeze(s, d), t.unsqueeze(d)
    assert (u.shape, u.strides) == (tuple(tu.shape), tu.stride())
    big = (3,) + tuple(3 if n == 1 else n for n in shape)
    e, te = ops.expand(s, big), t.expand(big)
    assert (e.shape, e.strides) == (tuple(te.shape), te.stride())
    if s.ndim:
        d0, d1 = data.draw(st.integers(0, s.ndim - 1)), data.draw(st.integers(0, s.ndim - 1))
        tr, ttr = ops.transpose(s, d0, d1), t.transpose(d0, d1)
        assert (tr.shape, tr.strides) == (tuple(ttr.shape), ttr.stride())
        assert ops.is_contiguous(tr) == ttr.is_contiguous()


@settings(max_examples=16 * EXAMPLES)
@given(raw_layouts())
def test_slice_plans_read_exactly_the_view(layout):
    """Every box the planner finds, executed by numpy (pad, cut, reshape, strided slice), reads
    what numpy's as_strided reads. Layout only: nothing is compiled, so many layouts are tried."""
    storage, shape, strides, offset = layout
    s = ops.as_strided(storage, shape, strides, offset)
    plan = ops.plan_slices(s)
    if plan is None or s.size == 0:
        return
    region = np.concatenate([storage, np.zeros(plan.pad, storage.dtype)])
    box = region[plan.start:plan.start + math.prod(plan.box)].reshape(plan.box)
    cut = box[tuple(slice(q, q + (n - 1) * c + 1, c)
                    for q, n, c in zip(plan.starts, plan.sizes, plan.steps))]
    # the box axes are the real dims sorted by stride; put them back in the view's order
    order = np.argsort(plan.dims, kind="stable")
    real = np.transpose(cut, order) if plan.dims else cut.reshape(())
    want = _np_view(storage, shape, strides, offset)
    index = tuple(slice(None) if d in plan.dims else 0 for d in range(len(shape)))
    np.testing.assert_array_equal(real, want[index])
