"""tape.scan beyond what the op registry checks (tests/test_tape_functions.py runs scan's declared
cases: carries, ys, pytrees, reverse, a nested scan, against jax.grad and jax.jvp): Tensors the body
closes over (weights), nested closures, create_graph (gradients of gradients, Hessians), forward
mode through closures, one recorded node whatever the length, a compiled program that does not grow
with the length, and the backward's reuse of the forward's values (no recomputed matmuls)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcdl import check
from funcdl import tape as T

RNG = np.random.default_rng(0)
W = jnp.asarray(RNG.normal(size=(3, 3)) * 0.5, jnp.float32)
B = jnp.asarray(RNG.normal(size=(3,)), jnp.float32)
H0 = jnp.asarray(RNG.normal(size=(2, 3)), jnp.float32)
XS = jnp.asarray(RNG.normal(size=(5, 2, 3)), jnp.float32)


def rnn(w, b, h0, xs):
    """A tanh RNN whose weights are closed over by the body (not passed through the scan)."""
    def body(h, x):
        h = T.tanh(T.add(T.add(T.matmul(h, w), x), b))
        return h, T.mul(h, h)

    h, ys = T.scan(body, h0, xs)
    return T.add(T.sum(h), T.sum(T.mul(ys, 0.3)))


def nested(w, xs):
    """An outer scan over steps, an inner scan over each step's rows; the inner body closes over
    the outer carry and the weights."""
    def outer(h, x):
        def inner(c, row):
            return T.tanh(T.add(T.matmul(c, w), T.mul(row, h))), None

        c, _ = T.scan(inner, h, x)
        return c, T.sum(c)

    h, ys = T.scan(outer, jnp.ones((3,)), xs)
    return T.add(T.sum(h), T.sum(ys))


def loss_w(w):
    return rnn(w, B, H0, XS)


def close(a, b, tol=2e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "eager"])
def test_closed_over_weights_get_gradients(jit):
    r = check.compare_with_jax(rnn, W, B, H0, XS, argnums=(0, 1, 2, 3), jit=jit)
    assert r.leaves == 4 and r.leafwise < 1e-5


def test_nested_scans_with_closures():
    r = check.compare_with_jax(nested, W, XS[:3], argnums=(0, 1))
    assert r.leafwise < 1e-5


def test_gradient_of_gradient_and_hessian_through_scan():
    def ours(w):
        return T.grad(lambda v: T.sum(T.mul(T.grad(loss_w)(v), T.grad(loss_w)(v))))(w)

    close(jax.jit(ours)(W), jax.jit(jax.grad(lambda v: jnp.sum(jax.grad(loss_w)(v) ** 2)))(W))
    close(jax.jit(T.hessian(loss_w))(W), jax.jit(jax.hessian(loss_w))(W))
    inner = lambda w: nested(w, XS[:2])  # noqa: E731
    close(jax.jit(T.hessian(inner))(W), jax.jit(jax.hessian(inner))(W))


def test_backward_create_graph_then_backward_again():
    w = T.tensor(W, requires_grad=True)
    loss_w(w).backward(create_graph=True)
    first = w.grad
    w.grad = None
    T.sum(T.mul(first, first)).backward()
    close(first.data, jax.grad(loss_w)(W))
    close(w.grad.data, jax.grad(lambda v: jnp.sum(jax.grad(loss_w)(v) ** 2))(W))


def test_forward_mode_through_a_closed_over_tangent():
    t = jnp.asarray(RNG.normal(size=(3, 3)), jnp.float32)
    close(T.jvp(loss_w, (W,), (t,)), jax.jvp(loss_w, (W,), (t,)))
    close(jax.jit(lambda w, t: T.jvp(loss_w, (w,), (t,)))(W, t), jax.jvp(loss_w, (W,), (t,)))


def test_one_node_whatever_the_length():
    w = T.tensor(W, requires_grad=True)
    recorded = []
    for n in (2, 5):
        with T.Tape() as tape:
            rnn(w, B, H0, XS[:n])
            recorded.append([node.name() for node in tape.nodes])
    assert recorded[0] == recorded[1]  # the loop's ops are inside the one node
    assert recorded[0].count("ScanBackward0") == 1


def _program(f, n):
    xs = jnp.zeros((n, 2, 3), jnp.float32)
    return jax.jit(f).lower(W, xs).as_text()


def test_compiled_program_does_not_grow_with_length():
    grad = T.grad(lambda w, xs: rnn(w, B, H0, xs))
    short, long = _program(grad, 50), _program(grad, 500)
    assert short.count("\n") == long.count("\n")
    assert len(re.findall(r"stablehlo.while", short)) == len(re.findall(r"stablehlo.while", long))


def test_backward_replays_the_forward_instead_of_recomputing():
    """The tape's backward step reuses the forward's saved matmul outputs: the optimized program
    has as many dots as jax.grad's (forward + two per step in the backward)."""
    def count(f):
        hlo = jax.jit(f).lower(W, XS).compile().as_text()
        return len(re.findall(r"\bdot\(", hlo))

    loss = lambda w, xs: rnn(w, B, H0, xs)  # noqa: E731
    assert count(T.grad(loss)) == count(jax.grad(loss)) > 0


def test_plain_arrays_give_plain_jax():
    out = T.scan(lambda c, x: (c + x, c * x), H0[0], XS[:, 0])
    assert all(isinstance(v, jax.Array) for v in jax.tree.leaves(out))
    jaxpr = jax.make_jaxpr(lambda h, xs: T.scan(lambda c, x: (c + x, c), h, xs))(H0[0], XS[:, 0])
    assert [e.primitive.name for e in jaxpr.eqns] == ["scan"]


def test_integer_carry_no_xs_reverse_and_no_ys():
    def body(carry, _):
        i, h = carry
        return (i + 1, T.tanh(T.add(T.matmul(h, W), jnp.float32(0.1) * i))), None

    def f(h):
        (_, h), ys = T.scan(body, (jnp.int32(0), h), None, length=4, reverse=True)
        assert ys is None
        return T.sum(h)

    r = check.compare_with_jax(f, H0)
    assert r.leafwise < 1e-5
    h = T.tensor(H0, requires_grad=True)
    (i, out), _ = T.scan(body, (jnp.int32(0), h), None, length=4)
    assert isinstance(i, jax.Array) and int(i) == 4 and out.grad_fn is not None


def test_no_grad_gives_tensors_without_a_graph():
    with T.no_grad():
        h, ys = T.scan(lambda c, x: (T.add(c, x), c), T.tensor(H0, requires_grad=True), XS)
    assert isinstance(h, T.Tensor) and h.grad_fn is None
    close(h.data, H0 + XS.sum(0))


def test_body_errors_are_jaxs():
    h = T.tensor(H0, requires_grad=True)
    with pytest.raises(TypeError, match="same pytree structure"):
        T.scan(lambda c, x: ((c, c), None), h, XS)
    with pytest.raises(TypeError, match="scan body output must be a pair"):
        T.scan(lambda c, x: c, h, XS)
    with pytest.raises(TypeError, match="carry input and carry output must have equal types"):
        T.scan(lambda c, x: (T.getitem(c, 0), None), h, XS)
