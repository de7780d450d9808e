"""Every declared op, checked from its own declaration (`funcdl.tape.registry`).

Each op's cases draw shapes and values through hypothesis. For each drawn call: the Tensor forward
equals the plain one, ``tape.grad`` equals ``jax.grad`` and ``tape.jvp`` (forward mode) equals
``jax.jvp`` of the same function (jitted and eager), and, where the op names a torch counterpart,
the values and gradients equal PyTorch's. The loss
weights every output element differently (`funcdl.check.weighted_sum`), so a wrong gradient
anywhere shows. Nothing here lists ops by hand: a new op is covered by declaring it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from funcdl import check
from funcdl import tape as T
from funcdl.tape import registry
from funcdl.tape.cases import fixed, unary

RTOL, ATOL = 2e-5, 2e-6
CASES = [(o, case) for o in registry.OPS.values() for case in o.cases]
IDS = [f"{o.name}-{case.label}" for o, case in CASES]


class HypothesisDraw:
    """The cases' choices drawn by hypothesis (so failures shrink to small shapes)."""

    def __init__(self, data):
        self._data = data

    def integer(self, lo, hi, label=""):
        return self._data.draw(st.integers(lo, hi), label=label or None)

    def choice(self, options, label=""):
        return self._data.draw(st.sampled_from(list(options)), label=label or None)

    def seed(self, label=""):
        return self._data.draw(st.integers(0, 2**16), label=label or "seed")


def leaves(out):
    return jax.tree.leaves(out, is_leaf=lambda x: isinstance(x, T.Tensor))


def tangents_for(args):
    """Fixed random tangents, one per differentiable argument."""
    rng = np.random.default_rng(7)
    return tuple(jnp.asarray(rng.normal(size=np.shape(a)), jnp.result_type(a)) for a in args)


def assert_close(ours, ref, rtol=RTOL, atol=ATOL, what=""):
    for g, r in zip(ours, ref, strict=True):
        assert g.shape == r.shape and g.dtype == r.dtype, what
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(r, np.float32),
                                   rtol=rtol, atol=atol, err_msg=what)


@pytest.mark.parametrize("op, case", CASES, ids=IDS)
@settings(max_examples=2, deadline=None)
@given(data=st.data())
def test_tape_grad_equals_jax_grad_jitted_and_torch(op, case, data):
    """Inside one jitted program (one compile per example): the Tensor forward equals the plain
    one and tape.grad equals jax.grad; then torch gives the same values and gradients."""
    c = case.make(HypothesisDraw(data))
    fn, args = check.op_function(op, c)
    assert all(isinstance(x, jax.Array) for x in leaves(fn(*args))), \
        "plain arrays in must give plain arrays out"
    nums = tuple(range(len(args)))

    def loss(*xs):
        return check.weighted_sum(fn(*xs))

    @jax.jit
    def both(args, tangents):
        tensor_out = leaves(fn(*[T.tensor(a, requires_grad=True) for a in args]))
        assert all(isinstance(x, T.Tensor) for x in tensor_out)
        return ([x.data for x in tensor_out], leaves(fn(*args)),
                T.grad(loss, nums)(*args), jax.grad(loss, nums)(*args),
                leaves(T.jvp(fn, args, tangents)), leaves(jax.jvp(fn, args, tangents)))

    tensor_out, plain_out, ours, ref, ours_jvp, ref_jvp = both(args, tangents_for(args))
    assert_close(tensor_out, plain_out, what="Tensor forward vs plain forward")
    assert_close(ours, ref, what="tape.grad vs jax.grad")
    assert_close(ours_jvp, ref_jvp, what="tape.jvp vs jax.jvp")
    if op.torch is not None:
        outputs, grads = check.torch_reference(op, case, c)
        assert_close(plain_out, outputs, case.rtol, case.atol, "forward vs torch")
        for g, r in zip(ref, grads, strict=True):
            if r is not None:
                np.testing.assert_allclose(np.asarray(g), r, rtol=case.rtol, atol=case.atol,
                                           err_msg="gradient vs torch")


@pytest.mark.parametrize("op, case", CASES, ids=IDS)
@settings(max_examples=1, deadline=None)
@given(data=st.data())
def test_eager_tape_grad_equals_jax_grad(op, case, data):
    """Eagerly (concrete arrays, op by op) against jitted jax.grad and jax.jvp."""
    fn, args = check.op_function(op, case.make(HypothesisDraw(data)))
    nums = tuple(range(len(args)))

    def loss(*xs):
        return check.weighted_sum(fn(*xs))

    assert_close(T.grad(loss, nums)(*args), jax.jit(jax.grad(loss, nums))(*args))
    tangents = tangents_for(args)
    assert_close(leaves(T.jvp(fn, args, tangents)),
                 leaves(jax.jit(lambda a, t: jax.jvp(fn, a, t))(args, tangents)))


def test_every_public_function_is_a_declared_op_with_cases():
    public = registry.public()
    functions = [n for n in T.__all__ if n not in T.ENGINE]
    assert sorted(functions) == sorted(public)
    for o in registry.OPS.values():
        assert o.cases, o.name
        assert o.torch is not None or o.no_torch, o.name
    assert {"clamp", "cat", "view"} <= set(public)  # aliases are public too


def test_declaring_an_op_without_cases_or_torch_answer_fails():
    with pytest.raises(TypeError, match="at least one parity Case"):
        registry.op(torch="torch.exp")
    with pytest.raises(TypeError, match="torch counterpart"):
        registry.op(unary())
    with pytest.raises(TypeError, match="not both"):
        registry.op(unary(), torch="torch.exp", no_torch="because")
    with pytest.raises(ValueError, match=r"\['exp'\] already declared"):
        registry.op(unary(), torch="torch.exp")(T.exp)


def test_tensor_methods_and_operators_are_the_declared_functions():
    for o in registry.OPS.values():
        if o.method:
            for name in (o.name, *o.aliases):
                assert hasattr(T.Tensor, name), name
    x, y = np.array([1.5, -2.0], np.float32), np.array([0.5, 4.0], np.float32)
    a, b = T.tensor(x, requires_grad=True), T.tensor(y, requires_grad=True)
    # each operator against the function it is declared on, both operand orders
    for o in registry.OPS.values():
        for dunder in o.operators:
            if dunder in ("__getitem__",):
                np.testing.assert_array_equal(np.asarray(a[1].data), x[1])
            elif dunder in ("__neg__", "__abs__"):
                np.testing.assert_array_equal(np.asarray(getattr(a, dunder)().data),
                                              np.asarray(o.fn(x)))
            elif dunder.startswith("__r"):
                np.testing.assert_allclose(np.asarray(getattr(a, dunder)(y).data),
                                           np.asarray(o.fn(y, x)), err_msg=dunder)
            else:
                np.testing.assert_allclose(np.asarray(getattr(a, dunder)(b).data),
                                           np.asarray(o.fn(x, y)), err_msg=dunder)
    assert (a @ b).grad_fn.name() == "DotBackward0" and (2.0 ** a).grad_fn.name() == "PowBackward1"
    assert a.T.shape == (2,) and T.tensor(np.ones((2, 3))).mT.shape == (3, 2)


def test_a_wrong_rule_is_caught_by_the_derived_checks():
    """The machinery is not vacuous: an op whose backward rule is off by a factor fails."""
    import jax.numpy as jnp

    from funcdl.tape.tensor import apply, unwrap

    def bad_exp(a):
        return apply("ExpBackward0", jnp.exp, (unwrap(a),), (lambda g, z, a: T.mul(g, 2.0),))

    o = registry.Op("bad_exp", bad_exp, "test", (fixed("3x4", (3, 4)),), "torch.exp", None,
                    False, (), ())
    name, case, c = next(check.op_calls(o))
    result = check.compare_gradients(check.GradCase(name, lambda: check.op_function(o, c)))
    assert result.error is None and result.relative > 0.1
    fn, args = check.op_function(o, c)
    assert check.torch_mismatch(case, ([fn(*args)], []), check.torch_reference(o, case, c)[:1]
                                + ([],)) <= 0  # its forward is right

