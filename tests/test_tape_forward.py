"""Forward mode: torch's dual-tensor API against torch itself, and `jvp`, `jacfwd`, `jacrev`,
`hessian` against their JAX namesakes (eager, jitted, vmapped) on functions and a whole layer.
Every op's own tangent rule is checked against ``jax.jvp`` in test_tape_functions.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.autograd.forward_ad as torch_fwad
from flax import nnx

from funcdl import layers
from funcdl import tape as T
from funcdl.tape import forward_ad as fwad

RNG = np.random.default_rng(0)
X = RNG.normal(size=(3, 4)).astype(np.float32)
W = RNG.normal(size=(4, 2)).astype(np.float32)
W1, B1 = RNG.normal(size=(5, 4)).astype(np.float32), RNG.normal(size=5).astype(np.float32)
W2 = RNG.normal(size=(2, 5)).astype(np.float32)


def two_layer(lib, x, w1, b1, w2):
    """The slides' 2-layer network, written once for funcdl.tape and once for torch."""
    if lib is torch:
        return torch.nn.functional.linear(torch.tanh(torch.nn.functional.linear(x, w1, b1)), w2)
    return T.linear(T.tanh(T.linear(x, w1, b1)), w2)


def test_sigmoid_neuron_slope_by_dual_numbers_is_the_slides_0_3932():
    with fwad.dual_level():
        x = fwad.make_dual(T.tensor(1.0), T.tensor(1.0))
        primal, tangent = fwad.unpack_dual(2 * T.sigmoid(x))
    assert abs(float(tangent) - 0.3932) < 1e-4 and abs(float(primal) - 1.4621) < 1e-4


@pytest.mark.parametrize("direction", ["x", "w1"])
def test_dual_tensors_match_torch_forward_ad(direction):
    tangent = RNG.normal(size=X.shape if direction == "x" else W1.shape).astype(np.float32)
    args = {"x": X, "w1": W1, "b1": B1, "w2": W2}
    with torch_fwad.dual_level():
        targs = {k: torch.from_numpy(v) for k, v in args.items()}
        targs[direction] = torch_fwad.make_dual(targs[direction], torch.from_numpy(tangent))
        ref = torch_fwad.unpack_dual(two_layer(torch, **targs))
    with fwad.dual_level():
        fargs = dict(args)
        fargs[direction] = fwad.make_dual(args[direction], tangent)
        ours = fwad.unpack_dual(two_layer(T, **fargs))
    np.testing.assert_allclose(np.asarray(ours.primal), ref.primal.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ours.tangent), ref.tangent.numpy(), rtol=1e-5,
                               atol=1e-5)


def test_dual_api_errors_and_levels_as_torch():
    with pytest.raises(RuntimeError, match="no level exists, make sure to enter_dual_level"):
        fwad.make_dual(X, X)
    with fwad.dual_level():
        with pytest.raises(RuntimeError, match=r"Tensor is of size \[3, 4\] while the given "
                                               r"forward gradient is of size \[4\]"):
            fwad.make_dual(X, X[0])
        with pytest.raises(RuntimeError, match="Nested forward mode AD is not supported"):
            with fwad.dual_level():
                pass
        y = T.exp(fwad.make_dual(X, np.ones_like(X)))
        assert fwad.unpack_dual(T.tensor(X)).tangent is None  # a plain tensor has none
    assert fwad.unpack_dual(y).tangent is None  # the level has ended: tangents are gone


def test_an_op_without_a_tangent_rule_names_itself():
    from funcdl.tape.tensor import apply

    with fwad.dual_level(), pytest.raises(RuntimeError, match="forward AD with Mystery that "
                                                              "does not support it"):
        apply("MysteryBackward0", jnp.sin, (fwad.make_dual(X, X),), (None,))


def test_reverse_through_a_dual_tensor_reaches_its_primal():
    """make_dual is a view, as in torch: backward through the dual accumulates into x."""
    x = T.tensor(X, requires_grad=True)
    with fwad.dual_level():
        T.sum(T.mul(fwad.make_dual(x, np.ones_like(X)), 3.0)).backward()
    np.testing.assert_allclose(np.asarray(x.grad), np.full_like(X, 3.0))


def loss(x, w):
    return T.sum(T.tanh(T.matmul(x, w)) ** 2)


def vector(x, w):
    return T.softmax(T.matmul(x, w), dim=-1)


def test_jvp_matches_jax_eager_jitted_and_vmapped():
    tx, tw = np.ones_like(X), np.full_like(W, 0.5)
    ref = jax.jvp(vector, (X, W), (tx, tw))
    for ours in (T.jvp(vector, (X, W), (tx, tw)), jax.jit(T.jvp, static_argnums=0)(
            vector, (X, W), (tx, tw))):
        for a, b in zip(ours, ref):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    batched = jax.vmap(lambda t: T.jvp(vector, (X, W), (t, tw))[1])(np.stack([tx, 2 * tx]))
    np.testing.assert_allclose(np.asarray(batched[1]), 2 * np.asarray(
        jax.jvp(vector, (X, W), (tx, np.zeros_like(W)))[1]) + np.asarray(
        jax.jvp(vector, (X, W), (np.zeros_like(X), tw))[1]), rtol=1e-5, atol=1e-6)


def test_jvp_refuses_tangents_that_do_not_match():
    with pytest.raises(TypeError, match="must have the same tree structure"):
        T.jvp(loss, (X, W), (X,))
    with pytest.raises(ValueError, match=r"different primal and tangent shapes"):
        T.jvp(loss, (X, W), (X, X))


@pytest.mark.parametrize("name", ["jacfwd", "jacrev"])
def test_jacobians_match_jax_on_pytrees_and_argnums(name):
    ours_t, ref_t = getattr(T, name), getattr(jax, name)
    for fn, argnums in ((vector, 0), (vector, (0, 1)), (loss, 1)):
        ours, ref = ours_t(fn, argnums)(X, W), ref_t(fn, argnums)(X, W)
        assert jax.tree.structure(ours) == jax.tree.structure(ref)
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
            assert a.shape == b.shape
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    params = {"w": W, "x": X}  # a dict argument: the Jacobian has the same structure
    ours = jax.jit(ours_t(lambda p: vector(p["x"], p["w"])))(params)
    ref = ref_t(lambda p: vector(p["x"], p["w"]))(params)
    for key in params:
        np.testing.assert_allclose(np.asarray(ours[key]), np.asarray(ref[key]), atol=1e-6)


def test_hessian_is_forward_over_reverse_and_matches_jax():
    for argnums in (0, (0, 1)):
        ours, ref = jax.jit(T.hessian(loss, argnums))(X, W), jax.hessian(loss, argnums)(X, W)
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
            assert a.shape == b.shape
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_forward_mode_through_a_transformer_layer_matches_jax_jvp():
    layer = layers.TransformerEncoderLayer(8, 2, 16, dropout=0.0, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(layer)
    x = RNG.normal(size=(2, 5, 8)).astype(np.float32)
    pad = np.array([[False] * 5, [False, False, False, True, True]])

    def run(params, x):
        return nnx.merge(graphdef, params)(x, key_padding_mask=pad)

    tangents = (jax.tree.map(jnp.ones_like, params), np.ones_like(x))
    ours = jax.jit(lambda p, x, t: T.jvp(run, (p, x), t))(params, x, tangents)
    ref = jax.jvp(run, (params, x), tangents)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


class Cube(T.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x ** 3

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3 * x ** 2 * g

    @staticmethod
    def jvp(ctx, t):
        (x,) = ctx.saved_tensors
        return 3 * x ** 2 * t


class CubeWithoutJvp(Cube):
    jvp = T.Function.jvp


def test_custom_function_jvp_as_torch():
    _, tangent = T.jvp(lambda x: Cube.apply(x), (X,), (np.ones_like(X),))
    np.testing.assert_allclose(np.asarray(tangent), 3 * X ** 2, rtol=1e-6)
    with pytest.raises(RuntimeError, match="forward AD with CubeWithoutJvp.*implement its jvp"):
        T.jvp(lambda x: CubeWithoutJvp.apply(x), (X,), (np.ones_like(X),))
