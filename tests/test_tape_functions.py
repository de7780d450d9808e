"""Every differentiable function: the tape's gradient equals jax.grad of the very same function.

Each case draws shapes (broadcasting included) and values with hypothesis and returns
``(fn, args)``: ``fn`` is written once with funcdl.tape functions; jax.grad differentiates it on
plain arrays (plain jnp code), tape.grad on Tensors. The loss weights the output with fixed random
numbers so every output element matters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from funcdl import tape as T

RTOL, ATOL = 2e-5, 2e-6


def arr(data, shape, kind: str = "normal"):
    seed = data.draw(st.integers(0, 2**16), label="seed")
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape)
    if kind == "pos":
        x = np.abs(x) + 0.5
    return jnp.asarray(x, jnp.float32)


def shape(data, min_dims=0, max_dims=3, min_side=1):
    """Sides of 1 and 3 only: few distinct shapes keep JAX's per-shape op compilation cached."""
    ndim = data.draw(st.integers(min_dims, max_dims), label="ndim")
    sides = [3] if min_side > 1 else [1, 3]
    return tuple(data.draw(st.sampled_from(sides), label="side") for _ in range(ndim))


def two_shapes(data):
    """Two shapes that broadcast together: b drops leading dims of a and sets some sides to 1."""
    a = shape(data)
    drop = data.draw(st.integers(0, len(a)), label="dropped dims")
    b = tuple(1 if data.draw(st.booleans(), label="ones") else n for n in a[drop:])
    return (a, b) if data.draw(st.booleans(), label="swap") else (b, a)


def dim_of(data, ndim):
    lo = -max(ndim, 1)
    return data.draw(st.integers(lo, max(ndim, 1) - 1), label="dim")


def dims_of(data, ndim):
    """None, an int or a tuple of distinct dims (negative allowed)."""
    if ndim == 0:
        return data.draw(st.sampled_from([None, 0, -1]), label="dim")
    kind = data.draw(st.sampled_from(["none", "int", "tuple"]), label="dim kind")
    if kind == "none":
        return None
    if kind == "int":
        return dim_of(data, ndim)
    chosen = data.draw(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim,
                                unique=True), label="dims")
    return tuple(d - ndim if data.draw(st.booleans(), label="neg") else d for d in chosen)


# --- the cases ----------------------------------------------------------------------------------


def binary(fn, kind_a="normal", kind_b="normal"):
    def case(data):
        sa, sb = two_shapes(data)
        return fn, [arr(data, sa, kind_a), arr(data, sb, kind_b)]

    return case


def unary(fn, kind="normal", **kw):
    def case(data):
        return (lambda x: fn(x, **kw)), [arr(data, shape(data), kind)]

    return case


def case_where(data):
    sc, sx = two_shapes(data)
    cond = np.asarray(arr(data, sc)) > 0
    return (lambda x, y: T.where(cond, x, y)), [arr(data, sx), arr(data, sc)]


def case_masked_fill(data):
    s = shape(data, 1)
    mask_shape = s[data.draw(st.integers(0, len(s))):]
    mask = np.asarray(arr(data, mask_shape)) > 0
    return (lambda x, v: T.masked_fill(x, mask, v)), [arr(data, s), arr(data, ())]


def case_clip(data):
    lo, hi = data.draw(st.sampled_from([(-0.5, 0.5), (None, 0.3), (-0.2, None)]), label="bounds")
    return (lambda x: T.clip(x, lo, hi)), [arr(data, shape(data))]


def case_clip_tensor_bounds(data):
    s = shape(data, 1)
    return (lambda x, lo, hi: T.clip(x, lo, hi)), [arr(data, s), arr(data, s) - 1.0,
                                                   arr(data, s[-1:]) + 1.0]


def case_softplus(data):
    beta = data.draw(st.sampled_from([1.0, 2.0]), label="beta")
    threshold = data.draw(st.sampled_from([20.0, 1.0]), label="threshold")
    return (lambda x: T.softplus(x, beta, threshold)), [arr(data, shape(data)) * 2]


def along_dim(fn):
    def case(data):
        s = shape(data)
        d = dim_of(data, len(s))
        return (lambda x: fn(x, d)), [arr(data, s)]

    return case


MATMUL_SHAPES = [((3,), (3,)), ((2, 3), (3,)), ((3,), (3, 4)), ((2, 3), (3, 4)),
                 ((2, 2, 3), (3, 4)), ((3,), (2, 3, 4)), ((2, 1, 2, 3), (3, 3, 2)),
                 ((2, 2, 3), (2, 3, 1))]


def case_matmul(data):
    sa, sb = data.draw(st.sampled_from(MATMUL_SHAPES), label="shapes")
    return T.matmul, [arr(data, sa), arr(data, sb)]


def case_linear(data):
    lead = shape(data, 0, 2)
    n_in, n_out = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    args = [arr(data, lead + (n_in,)), arr(data, (n_out, n_in))]
    if data.draw(st.booleans(), label="bias"):
        return T.linear, args + [arr(data, (n_out,))]
    return (lambda x, w: T.linear(x, w)), args


def reduction(fn, **kw):
    def case(data):
        s = shape(data)
        dim = dims_of(data, len(s))
        keepdim = data.draw(st.booleans(), label="keepdim")
        return (lambda x: fn(x, dim, keepdim, **kw)), [arr(data, s)]

    return case


def case_var(data):
    s = shape(data, 1, min_side=2)
    dim = dims_of(data, len(s))
    keepdim = data.draw(st.booleans(), label="keepdim")
    correction = data.draw(st.sampled_from([0, 1]), label="correction")
    return (lambda x: T.var(x, dim, keepdim, correction=correction)), [arr(data, s)]


def case_reshape(data):
    s = shape(data)
    n = int(np.prod(s))
    new = data.draw(st.sampled_from([(n,), (-1,), (1, n), (n, 1, -1)]), label="new shape")
    return (lambda x: T.reshape(x, new)), [arr(data, s)]


def case_transpose(data):
    s = shape(data, 1)
    d0, d1 = dim_of(data, len(s)), dim_of(data, len(s))
    return (lambda x: T.transpose(x, d0, d1)), [arr(data, s)]


def case_permute(data):
    s = shape(data, 1)
    perm = data.draw(st.permutations(range(len(s))), label="perm")
    return (lambda x: T.permute(x, perm)), [arr(data, s)]


def case_squeeze(data):
    s = tuple(data.draw(st.lists(st.sampled_from([1, 3]), min_size=1, max_size=4), label="shape"))
    dim = dims_of(data, len(s))
    return (lambda x: T.squeeze(x, dim)), [arr(data, s)]


def case_unsqueeze(data):
    s = shape(data)
    d = data.draw(st.integers(-len(s) - 1, len(s)), label="dim")
    return (lambda x: T.unsqueeze(x, d)), [arr(data, s)]


def case_expand(data):
    sa, sb = two_shapes(data)
    target = tuple(np.broadcast_shapes(sa, sb))
    spec = tuple(-1 if i >= len(target) - len(sa) and sa[i - len(target) + len(sa)] == n
                 and data.draw(st.booleans(), label="keep") else n for i, n in enumerate(target))
    return (lambda x: T.expand(x, spec)), [arr(data, sa)]


def case_broadcast_to(data):
    sa, sb = two_shapes(data)
    target = tuple(np.broadcast_shapes(sa, sb))
    return (lambda x: T.broadcast_to(x, target)), [arr(data, sa)]


def case_concatenate(data):
    s = shape(data, 1)
    d = dim_of(data, len(s))
    sizes = data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=3), label="sizes")
    parts = [arr(data, s[:d % len(s)] + (k,) + s[d % len(s) + 1:]) for k in sizes]
    return (lambda *xs: T.concatenate(xs, d)), parts


def case_stack(data):
    s = shape(data)
    d = data.draw(st.integers(-len(s) - 1, len(s)), label="dim")
    k = data.draw(st.integers(1, 3), label="count")
    return (lambda *xs: T.stack(xs, d)), [arr(data, s) for _ in range(k)]


def case_split(data):
    s = shape(data, 1)
    d = dim_of(data, len(s))
    n = s[d]
    how = data.draw(st.one_of(st.integers(1, 4), st.just([n - 1, 1] if n > 1 else [1])),
                    label="split")
    weights = [arr(data, s) for _ in range(4)]  # one weighting per piece

    def fn(x):
        pieces = T.split(x, how, d)
        return T.stack([T.sum(T.mul(p, T.getitem(w, tuple(
            slice(0, p.shape[i]) for i in range(len(s)))))) for p, w in zip(pieces, weights)])

    return fn, [arr(data, s)]


def case_getitem(data):
    s = shape(data, 1)
    n = s[0]
    index = data.draw(st.sampled_from([
        0, -1, slice(None, None, 2), (Ellipsis, 0), (None, slice(1, None)),
        np.array([0, n - 1, 0]), (slice(None), None), np.array([[n - 1], [0]]),
    ]), label="index")
    return (lambda x: T.getitem(x, index)), [arr(data, s)]


def case_take(data):
    s = shape(data, 1)
    d = dim_of(data, len(s))
    ids = np.asarray(data.draw(st.lists(st.integers(0, s[d] - 1), min_size=1, max_size=5),
                               label="ids"))
    return (lambda x: T.take(x, ids, d)), [arr(data, s)]


def case_embedding(data):
    vocab, dim = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 4))
    ids = np.asarray(data.draw(st.lists(st.integers(0, vocab - 1), min_size=2, max_size=6),
                               label="ids"))
    ids = ids[:len(ids) // 2 * 2].reshape(2, -1)
    return (lambda w: T.embedding(ids, w)), [arr(data, (vocab, dim))]


def tri(fn):
    def case(data):
        s = shape(data, 2)
        k = data.draw(st.integers(-2, 2), label="diagonal")
        return (lambda x: fn(x, k)), [arr(data, s)]

    return case


def case_layer_norm(data):
    s = shape(data, 1, min_side=2)
    k = data.draw(st.integers(1, len(s)), label="normalized dims")
    norm = s[len(s) - k:]
    x = arr(data, s) * 3 + 1
    if data.draw(st.booleans(), label="affine"):
        return (lambda x, w, b: T.layer_norm(x, norm, w, b)), [x, arr(data, norm),
                                                               arr(data, norm)]
    return (lambda x: T.layer_norm(x, norm)), [x]


def case_dropout(data):
    p = data.draw(st.sampled_from([0.0, 0.3, 0.9]), label="p")
    key = jax.random.key(data.draw(st.integers(0, 100), label="key"))
    return (lambda x: T.dropout(x, p, key=key)), [arr(data, shape(data))]


def case_mse(data):
    s = shape(data)
    reduction = data.draw(st.sampled_from(["mean", "sum", "none"]), label="reduction")
    return (lambda x, t: T.mse_loss(x, t, reduction)), [arr(data, s), arr(data, s)]


def case_cross_entropy(data):
    n, c = data.draw(st.integers(1, 4)), data.draw(st.integers(2, 5))
    extra = data.draw(st.sampled_from([(), (3,)]), label="extra dims")
    size = n * int(np.prod(extra))
    target = np.asarray(data.draw(st.lists(st.integers(0, c - 1), min_size=size,
                                           max_size=size), label="target"))
    target = target.reshape((n,) + extra)
    target[(0,) * target.ndim] = -100  # one ignored entry
    if target.size == 1:
        target[...] = 1
    smoothing = data.draw(st.sampled_from([0.0, 0.1]), label="smoothing")
    reduction = data.draw(st.sampled_from(["mean", "sum", "none"]), label="reduction")
    x = arr(data, (n, c) + extra)
    return (lambda x: T.cross_entropy(x, target, label_smoothing=smoothing,
                                      reduction=reduction)), [x]


def case_bce(data):
    s = shape(data)
    t = (np.asarray(arr(data, s)) > 0).astype(np.float32)
    if data.draw(st.booleans(), label="pos_weight"):
        return (lambda x, pw: T.binary_cross_entropy_with_logits(x, t, pos_weight=pw)), \
            [arr(data, s), arr(data, s[-1:], "pos")]
    return (lambda x: T.binary_cross_entropy_with_logits(x, t, reduction="sum")), [arr(data, s)]


CASES = {
    "add": binary(T.add), "sub": binary(T.sub), "mul": binary(T.mul),
    "div": binary(T.div, "normal", "pos"), "pow": binary(T.pow, "pos", "normal"),
    "pow_scalar": unary(lambda x: T.pow(x, 3)), "pow_half": unary(lambda x: x ** 0.5, "pos"),
    "maximum": binary(T.maximum), "minimum": binary(T.minimum),
    "neg": unary(T.neg), "exp": unary(T.exp), "log": unary(T.log, "pos"),
    "sqrt": unary(T.sqrt, "pos"), "abs": unary(T.abs), "erf": unary(T.erf),
    "where": case_where, "masked_fill": case_masked_fill, "clip": case_clip,
    "clip_tensor_bounds": case_clip_tensor_bounds,
    "sigmoid": unary(T.sigmoid), "tanh": unary(T.tanh), "relu": unary(T.relu),
    "gelu": unary(T.gelu), "gelu_tanh": unary(T.gelu, approximate="tanh"), "silu": unary(T.silu),
    "softplus": case_softplus, "softmax": along_dim(T.softmax),
    "log_softmax": along_dim(T.log_softmax), "matmul": case_matmul, "linear": case_linear,
    "sum": reduction(T.sum), "mean": reduction(T.mean), "amax": reduction(T.amax),
    "var": case_var, "logsumexp": reduction(T.logsumexp), "reshape": case_reshape,
    "transpose": case_transpose, "permute": case_permute, "squeeze": case_squeeze,
    "unsqueeze": case_unsqueeze, "expand": case_expand, "broadcast_to": case_broadcast_to,
    "concatenate": case_concatenate, "stack": case_stack, "split": case_split,
    "getitem": case_getitem, "take": case_take, "embedding": case_embedding,
    "tril": tri(T.tril), "triu": tri(T.triu), "layer_norm": case_layer_norm,
    "dropout": case_dropout, "mse_loss": case_mse, "cross_entropy": case_cross_entropy,
    "binary_cross_entropy_with_logits": case_bce,
}


def weighted(fn, out_shape, seed=0):
    """sum(fn(*xs) * w): a scalar whose gradient involves every output element."""
    w = jnp.asarray(np.random.default_rng(seed).normal(size=out_shape), jnp.float32)
    return lambda *xs: T.sum(T.mul(fn(*xs), w))


def assert_grads_equal(ours, ref):
    for g, r in zip(ours, ref):
        assert g.shape == r.shape and g.dtype == r.dtype
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", sorted(CASES))
@settings(max_examples=4)
@given(data=st.data())
def test_jitted_tape_grad_equals_jax_grad(name, data):
    """Inside one jitted program (one compile per example): the Tensor forward equals the plain
    one, and tape.grad equals jax.grad."""
    fn, args = CASES[name](data)
    out = fn(*args)
    assert isinstance(out, jax.Array), "plain arrays in must give a plain array out"
    loss = weighted(fn, out.shape)
    nums = tuple(range(len(args)))

    @jax.jit
    def both(*args):
        tensor_out = fn(*[T.tensor(a, requires_grad=True) for a in args])
        assert isinstance(tensor_out, T.Tensor)
        return tensor_out.data, fn(*args), T.grad(loss, nums)(*args), jax.grad(loss, nums)(*args)

    ours_out, ref_out, ours, ref = both(*args)
    np.testing.assert_allclose(np.asarray(ours_out), np.asarray(ref_out), rtol=RTOL, atol=ATOL)
    assert_grads_equal(ours, ref)


@pytest.mark.parametrize("name", sorted(CASES))
@settings(max_examples=1)
@given(data=st.data())
def test_eager_tape_grad_equals_jax_grad(name, data):
    """Eagerly (concrete arrays, op by op) against jitted jax.grad."""
    fn, args = CASES[name](data)
    loss = weighted(fn, fn(*args).shape)
    nums = tuple(range(len(args)))
    assert_grads_equal(T.grad(loss, nums)(*args), jax.jit(jax.grad(loss, nums))(*args))
