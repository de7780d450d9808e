"""Reductions on plain arrays: parity with PyTorch, jnp's own program, jit/vmap/grad, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from funcdl import ops

RNG = np.random.default_rng(0)
X = RNG.standard_normal((3, 4, 5)).astype(np.float32)
DIMS = [None, 1, -1, (-1, 0), ()]

TORCH = {
    "sum": torch.sum, "mean": torch.mean, "amax": torch.amax, "amin": torch.amin,
    "logsumexp": lambda t, dim, keepdim: torch.logsumexp(
        t, dim=tuple(range(t.ndim)) if dim is None else dim, keepdim=keepdim),
}


def _torch_reduce(op, x, dim, keepdim):
    t = torch.from_numpy(x)
    fn = TORCH[op]
    if dim is None and op in ("sum", "mean", "amax", "amin") and not keepdim:
        return fn(t).numpy()
    if dim is None:
        dim = tuple(range(t.ndim))
    return fn(t, dim=dim, keepdim=keepdim).numpy()


@pytest.mark.parametrize("op", sorted(TORCH))
def test_matches_torch(op):
    cases = [(d, k) for d in DIMS for k in (False, True) if not (op == "logsumexp" and d == ())]
    # one jitted program for every case keeps the test to one compilation
    got = jax.jit(lambda a: [getattr(ops, op)(a, d, k) for d, k in cases])(X)
    for (dim, keepdim), g in zip(cases, got):
        want = _torch_reduce(op, X, dim, keepdim)  # torch.logsumexp rejects dim=(): not compared
        assert g.shape == want.shape, (dim, keepdim)
        np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-6, err_msg=f"{dim} {keepdim}")


@pytest.mark.parametrize("dim", [0, 2, -2])
def test_prod_matches_torch(dim):
    for keepdim in (False, True):
        want = torch.prod(torch.from_numpy(X), dim=dim, keepdim=keepdim).numpy()
        np.testing.assert_allclose(ops.prod(X, dim, keepdim), want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ops.prod(X), torch.prod(torch.from_numpy(X)).numpy(), rtol=1e-4)


@pytest.mark.parametrize("correction", [0, 1, 2])
@pytest.mark.parametrize("dim", [None, 1, (0, 2)])
def test_var_matches_torch(correction, dim):
    for keepdim in (False, True):
        want = torch.var(torch.from_numpy(X), dim=dim, keepdim=keepdim,
                         correction=correction).numpy()
        got = ops.var(X, dim, keepdim, correction=correction)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_var_correction_beyond_count_divides_by_zero_like_torch():
    # jnp.var divides by n - ddof even when negative (a negative variance); torch clamps at 0.
    x = np.array([1.0, 3.0], np.float32)
    with pytest.warns(UserWarning, match="degrees of freedom is <= 0"):
        want = torch.var(torch.from_numpy(x), correction=5).numpy()
    assert np.isinf(want) and np.isinf(ops.var(x, correction=5))
    assert np.isnan(ops.var(np.ones(1, np.float32)))  # torch: nan for one element, correction 1


@pytest.mark.parametrize("op", ["argmax", "argmin"])
@pytest.mark.parametrize("dim", [None, 0, 1, -1])
@pytest.mark.parametrize("keepdim", [False, True])
def test_arg_matches_torch(op, dim, keepdim):
    x = np.array([[1, 5, 5, 0], [7, 7, 2, 2], [0, 1, 7, 0]], np.float32)  # ties: first wins
    want = getattr(torch, op)(torch.from_numpy(x), dim=dim, keepdim=keepdim).numpy()
    got = getattr(ops, op)(x, dim, keepdim)
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_zero_dim_inputs_follow_torch():
    x = np.float32(2.5)
    for d in (None, 0, -1):
        assert float(ops.sum(x, d)) == 2.5
    with pytest.raises(IndexError, match=r"expected to be in range of \[-1, 0\], but got 1"):
        ops.sum(x, 1)


@pytest.mark.parametrize("op", ["sum", "mean", "amax", "amin", "prod", "logsumexp"])
def test_plain_array_compiles_to_jnp_program(op):
    ref = {"sum": jnp.sum, "mean": jnp.mean, "amax": jnp.max, "amin": jnp.min, "prod": jnp.prod,
           "logsumexp": jax.nn.logsumexp}[op]
    x = jnp.asarray(X)
    ours = jax.make_jaxpr(lambda a: getattr(ops, op)(a, 1))(x)
    theirs = jax.make_jaxpr(lambda a: ref(a, axis=1))(x)
    assert str(ours) == str(theirs)


REDUCTIONS = ["sum", "mean", "prod", "amax", "amin", "logsumexp", "var"]
JNP = {"sum": jnp.sum, "mean": jnp.mean, "prod": jnp.prod, "amax": jnp.max, "amin": jnp.min,
       "logsumexp": jax.nn.logsumexp, "var": lambda a, axis: jnp.var(a, axis=axis, ddof=1)}


@pytest.mark.parametrize("op", REDUCTIONS)
def test_grad_jit_vmap(op):
    f = getattr(ops, op)

    def both(a):  # ours and the jnp reference side by side, in one compiled program
        g = jax.grad(lambda a: jnp.sum(jnp.sin(f(a, (0, 2)))))(a)
        g_ref = jax.grad(lambda a: jnp.sum(jnp.sin(JNP[op](a, axis=(0, 2)))))(a)
        return (g, g_ref), (f(a, -1), JNP[op](a, axis=-1)), (
            jax.vmap(lambda b: f(b, 0))(a), JNP[op](a, axis=1))

    for ours, ref in jax.jit(both)(jnp.asarray(X)):
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_amax_gradient_splits_ties_like_torch():
    x = np.array([[1.0, 3.0, 3.0], [2.0, 0.0, 2.0]], np.float32)
    t = torch.from_numpy(x).requires_grad_()
    torch.amax(t, dim=1).sum().backward()
    g = jax.grad(lambda a: jnp.sum(ops.amax(a, 1)))(jnp.asarray(x))
    np.testing.assert_allclose(g, t.grad.numpy())


def test_integer_inputs():
    x = np.arange(6, dtype=np.int32).reshape(2, 3)
    np.testing.assert_array_equal(ops.sum(x, 1), [3, 12])
    np.testing.assert_allclose(
        ops.logsumexp(x, 1), torch.logsumexp(torch.from_numpy(x), 1).numpy(), rtol=1e-6)
    with pytest.raises(TypeError, match="mean\\(\\): could not infer output dtype"):
        ops.mean(x)
    with pytest.raises(TypeError, match="std and var only support floating point"):
        ops.var(x)


@pytest.mark.parametrize("op", REDUCTIONS + ["argmax", "argmin"])
def test_dim_out_of_range_uses_torch_words(op):
    with pytest.raises(IndexError, match=r"^Dimension out of range \(expected to be in range of "
                                         r"\[-2, 1\], but got 2\)$"):
        getattr(ops, op)(np.ones((2, 3), np.float32), 2)
    with pytest.raises(IndexError, match=r"\[-2, 1\], but got -3"):
        getattr(ops, op)(np.ones((2, 3), np.float32), -3)


def test_bad_dims():
    x = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="dim 0 appears multiple times in the list of dims"):
        ops.sum(x, (0, -2))
    with pytest.raises(TypeError, match="dim must be None, an int or a tuple of ints, not float"):
        ops.sum(x, 1.0)
    with pytest.raises(TypeError, match="dim must be None, an int or a tuple of ints, not bool"):
        ops.sum(x, True)
    with pytest.raises(TypeError, match="dim must be an int, but found element of type float"):
        ops.sum(x, (0, 1.0))
    with pytest.raises(TypeError, match="argmax\\(\\): argument 'dim' must be int, not tuple"):
        ops.argmax(x, (0, 1))


def test_empty_reductions_follow_torch():
    e = np.zeros((0, 3), np.float32)
    with pytest.raises(IndexError, match=r"amax\(\): Expected reduction dim 0 to have non-zero"):
        ops.amax(e, 0)
    with pytest.raises(ValueError, match="Expected reduction dim to be specified"):
        ops.amin(e)
    with pytest.raises(IndexError, match=r"argmax\(\): Expected reduction dim 0 to have non-zero"):
        ops.argmax(e, 0)
    np.testing.assert_array_equal(ops.amax(e, 1), torch.amax(torch.from_numpy(e), 1).numpy())
    np.testing.assert_array_equal(ops.sum(e, 0), [0, 0, 0])
    np.testing.assert_array_equal(ops.prod(e, 0), [1, 1, 1])


def test_integer_sums_that_overflow_int32_raise_and_follow_torch_with_x64():
    big = np.array([2**30] * 4, np.int32)
    expected = int(torch.sum(torch.from_numpy(big)))  # torch sums in int64: 4294967296
    with pytest.raises(OverflowError, match=r"sum\(\) of int32 values reaches 4294967296"):
        ops.sum(big)
    with pytest.raises(OverflowError, match=r"prod\(\) of int32"):
        ops.prod(ops.from_array(np.arange(1, 20, dtype=np.int32)))
    assert int(ops.sum(np.array([2**30, 2**30 - 1, -5], np.int32))) == 2**31 - 6  # fits
    with jax.enable_x64(True):  # JAX's 64-bit mode: int64 results, as torch
        r = ops.sum(big)
        assert r.dtype == jnp.int64 and int(r) == expected
        assert ops.sum(np.array([True, True, False])).dtype == torch.sum(
            torch.tensor([True, True, False])).numpy().dtype
