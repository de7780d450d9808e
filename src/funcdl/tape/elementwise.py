"""Elementwise arithmetic: each op's forward and its backward rules side by side.

Every op is polymorphic. Given plain arrays it is plain ``jnp`` code (jax.grad, jit and vmap see
ordinary JAX). Given a `Tensor` it also records a node whose rules give each input's gradient from
``g`` (dL/dz), ``z`` (the output) and the inputs. The rules are written with these same functions,
so with ``create_graph=True`` the backward pass is itself recorded (higher order). A rule may
return a gradient of the broadcast shape: the engine sums it back to the input's shape.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcdl.ops.shapes import broadcast_shapes
from funcdl.tape.cases import Case, array, binary, call, shape, two_shapes, unary
from funcdl.tape.registry import op
from funcdl.tape.tensor import apply, constant, shape_of, unwrap


def check_broadcast(*xs: Any) -> None:
    """PyTorch's error when the shapes of ``xs`` do not broadcast together."""
    shapes = [shape_of(x) for x in xs]
    if any(s != shapes[0] for s in shapes[1:]):
        broadcast_shapes(*shapes)


def _binary(name: str, fn: Any, a: Any, b: Any, rule_a: Any, rule_b: Any) -> Any:
    a, b = unwrap(a), unwrap(b)
    check_broadcast(a, b)
    return apply(name, fn, (a, b), (rule_a, rule_b),
                 tangents="rules")


@op(binary(), torch="torch.add", method=True, operators=("__add__", "__radd__"))
def add(a: Any, b: Any) -> Any:
    """a + b (broadcasting)."""
    return _binary("AddBackward0", jnp.add, a, b,
                   lambda g, z, a, b: g,
                   lambda g, z, a, b: g)


@op(binary(), torch="torch.sub", method=True, operators=("__sub__", "__rsub__"))
def sub(a: Any, b: Any) -> Any:
    """a - b (broadcasting)."""
    return _binary("SubBackward0", jnp.subtract, a, b,
                   lambda g, z, a, b: g,
                   lambda g, z, a, b: neg(g))


@op(binary(), torch="torch.mul", method=True, operators=("__mul__", "__rmul__"))
def mul(a: Any, b: Any) -> Any:
    """a * b (broadcasting)."""
    return _binary("MulBackward0", jnp.multiply, a, b,
                   lambda g, z, a, b: mul(g, b),
                   lambda g, z, a, b: mul(g, a))


@op(binary("normal", "pos"), torch="torch.div", method=True,
    operators=("__truediv__", "__rtruediv__"))
def div(a: Any, b: Any) -> Any:
    """a / b (true division, broadcasting)."""
    return _binary("DivBackward0", jnp.true_divide, a, b,
                   lambda g, z, a, b: div(g, b),
                   lambda g, z, a, b: neg(div(mul(g, z), b)))  # -g a / b^2 = -g z / b


@op(unary(), torch="torch.neg", method=True, operators=("__neg__",))
def neg(a: Any) -> Any:
    """-a."""
    return apply("NegBackward0", jnp.negative, (unwrap(a),), (lambda g, z, a: neg(g),),
                 tangents="linear")


@op(binary("pos", "normal"),
    Case("integer exponent", lambda d: call(array(d, shape(d)), d.choice([2, 3, 0], "exponent"))),
    Case("real exponent",
         lambda d: call(array(d, shape(d), "pos"), d.choice([0.5, -1.5, 3.0], "exponent"))),
    torch="torch.pow", method=True, operators=("__pow__", "__rpow__"))
def pow(a: Any, b: Any) -> Any:
    """a ** b. Exponent gradient uses log(a) with a == 0 replaced by 1 (0 ** b has slope 0)."""
    a, b = unwrap(a), unwrap(b)
    if isinstance(b, int | float) and not isinstance(a, int | float):
        return apply("PowBackward0", lambda a: jnp.power(a, b), (a,),
                     (lambda g, z, a: mul(g, mul(b, pow(a, b - 1))) if b != 0 else mul(g, 0.0),),
                     tangents="rules")
    return _binary("PowBackward1", jnp.power, a, b,
                   lambda g, z, a, b: mul(g, mul(b, pow(a, sub(b, 1)))),
                   lambda g, z, a, b: mul(g, mul(z, log(where(constant(a) == 0, 1.0, a)))))


@op(unary(), torch="torch.exp", method=True)
def exp(a: Any) -> Any:
    """e ** a."""
    return apply("ExpBackward0", jnp.exp, (unwrap(a),), (lambda g, z, a: mul(g, z),),
                 tangents="rules")


@op(unary("pos"), torch="torch.log", method=True)
def log(a: Any) -> Any:
    """Natural logarithm."""
    return apply("LogBackward0", jnp.log, (unwrap(a),), (lambda g, z, a: div(g, a),),
                 tangents="rules")


@op(unary("pos"), torch="torch.sqrt", method=True)
def sqrt(a: Any) -> Any:
    """Square root."""
    return apply("SqrtBackward0", jnp.sqrt, (unwrap(a),),
                 (lambda g, z, a: div(g, mul(2.0, z)),),
                 tangents="rules")


@jax.jit
def _abs(a: Any) -> Any:
    # sign(a) * a is |a| exactly, and jax.grad of it at 0 is sign(0) = 0, torch's slope (JAX's
    # own abs has slope 1 there, so l1_loss(x, x) would disagree with torch and the tape)
    return jnp.abs(a) if jnp.iscomplexobj(a) else jnp.sign(a) * a


@op(unary("away"), torch="torch.abs", method=True, operators=("__abs__",))
def abs(a: Any) -> Any:
    """|a|; its gradient at 0 is 0 (sign(0)), as in PyTorch."""
    return apply("AbsBackward0", _abs, (unwrap(a),),
                 (lambda g, z, a: mul(g, jnp.sign(constant(a))),),
                 tangents="rules")


@op(unary(), torch="torch.erf", method=True)
def erf(a: Any) -> Any:
    """The error function (used by exact gelu)."""
    return apply("ErfBackward0", jax.scipy.special.erf, (unwrap(a),),
                 (lambda g, z, a: mul(g, mul(2.0 / math.sqrt(math.pi), exp(neg(mul(a, a))))),),
                 tangents="rules")


def _tie_share(a: Any, b: Any, bigger: bool) -> Any:
    """1 where ``a`` wins, 0.5 on ties, 0 where it loses (PyTorch and JAX split ties evenly)."""
    a, b = constant(a), constant(b)
    wins = (a > b) if bigger else (a < b)
    return jnp.where(wins, 1.0, jnp.where(a == b, 0.5, 0.0))


def _ties(d: Any) -> Any:
    """Two arrays with some equal elements (the tie rule is checked too)."""
    a, b = array(d, (3, 4)), array(d, (3, 4))
    return call(a, np.where(np.arange(12).reshape(3, 4) % 3 == 0, a, b))


@op(binary(), Case("ties", _ties), torch="torch.maximum", method=True)
def maximum(a: Any, b: Any) -> Any:
    """Elementwise max (broadcasting)."""
    return _binary("MaximumBackward0", jnp.maximum, a, b,
                   lambda g, z, a, b: mul(g, _tie_share(a, b, True)),
                   lambda g, z, a, b: mul(g, _tie_share(b, a, True)))


@op(binary(), Case("ties", _ties), torch="torch.minimum", method=True)
def minimum(a: Any, b: Any) -> Any:
    """Elementwise min (broadcasting)."""
    return _binary("MinimumBackward0", jnp.minimum, a, b,
                   lambda g, z, a, b: mul(g, _tie_share(a, b, False)),
                   lambda g, z, a, b: mul(g, _tie_share(b, a, False)))


def _where_case(d: Any) -> Any:
    sc, sx = two_shapes(d)
    return call(array(d, sc) > 0, array(d, sx), array(d, sc))


@op(Case("broadcast", _where_case), torch="torch.where")
def where(cond: Any, x: Any, y: Any) -> Any:
    """x where cond else y (broadcasting); cond gets no gradient."""
    cond, x, y = constant(unwrap(cond)), unwrap(x), unwrap(y)
    check_broadcast(cond, x, y)
    return apply("WhereBackward0", lambda x, y: jnp.where(cond, x, y), (x, y),
                 (lambda g, z, x, y: where(cond, g, 0.0),
                  lambda g, z, x, y: where(cond, 0.0, g)),
                 tangents="rules")


def _masked_fill_case(d: Any) -> Any:
    s = shape(d, 1)
    mask = array(d, s[d.integer(0, len(s), "mask dims"):]) > 0
    return call(array(d, s), mask, array(d, ()))


@op(Case("broadcast mask", _masked_fill_case),
    Case("python value", lambda d: call(array(d, (3, 4)), array(d, (4,)) > 0, -1.0)),
    torch="torch.masked_fill", method=True)
def masked_fill(x: Any, mask: Any, value: Any) -> Any:
    """x with ``value`` where the boolean ``mask`` is True (``torch.masked_fill``)."""
    x, mask, value = unwrap(x), constant(unwrap(mask)), unwrap(value)
    mask = jnp.asarray(mask)
    if mask.dtype != jnp.bool_:
        raise RuntimeError("masked_fill_ only supports boolean masks, but got mask with dtype "
                           f"{mask.dtype}")
    broadcast_shapes(shape_of(x), mask.shape)
    if shape_of(value) != ():
        raise RuntimeError("masked_fill_ only supports a 0-dimensional value tensor, but got "
                           f"tensor with {len(shape_of(value))} dimension(s).")
    return apply("MaskedFillBackward0",
                 lambda x, v: jnp.where(mask, jnp.asarray(v, x.dtype), x), (x, value),
                 (lambda g, z, x, v: where(mask, 0.0, g),
                  lambda g, z, x, v: where(mask, g, 0.0)),
                 tangents="rules")


def _clip_bounds(d: Any) -> Any:
    lo, hi = d.choice([(-0.5, 0.5), (None, 0.3), (-0.2, None)], "bounds")
    return call(array(d, shape(d)), lo, hi)


def _clip_tensor_bounds(d: Any) -> Any:
    s = shape(d, 1)
    return call(array(d, s), array(d, s) - 1.0, array(d, s[-1:]) + 1.0)


@op(Case("number bounds", _clip_bounds), Case("tensor bounds", _clip_tensor_bounds),
    torch="torch.clamp", method=True, aliases=("clamp",))
def clip(x: Any, min: Any = None, max: Any = None) -> Any:
    """Clamp to [min, max] (``torch.clamp``): gradient 1 inside, boundaries included."""
    x, lo, hi = unwrap(x), unwrap(min), unwrap(max)
    if lo is None and hi is None:
        raise RuntimeError("torch.clamp: At least one of 'min' or 'max' must not be None")

    def forward(x: Any, lo: Any, hi: Any) -> Any:
        return jnp.clip(x, lo, hi)

    def inside(x: Any, lo: Any, hi: Any) -> Any:
        x = constant(x)
        ok = jnp.ones(jnp.shape(x), bool)
        if lo is not None:
            ok = ok & (x >= constant(lo))
        if hi is not None:
            ok = ok & (x <= constant(hi))
        return ok

    def to_lo(x: Any, lo: Any, hi: Any) -> Any:  # x below lo, and lo itself not clipped by hi
        x, lo = constant(x), constant(lo)
        return (x < lo) if hi is None else (x < lo) & (lo <= constant(hi))

    def to_hi(x: Any, lo: Any, hi: Any) -> Any:  # z = min(max(x, lo), hi) took hi
        x, hi = constant(x), constant(hi)
        return (x if lo is None else jnp.maximum(x, constant(lo))) > hi

    return apply("ClampBackward1", forward, (x, lo, hi),
                 (lambda g, z, x, lo, hi: where(inside(x, lo, hi), g, 0.0),
                  lambda g, z, x, lo, hi: where(to_lo(x, lo, hi), g, 0.0),
                  lambda g, z, x, lo, hi: where(to_hi(x, lo, hi), g, 0.0)),
                 tangents="rules")


def _torch_astype(x: Any, dtype: Any) -> Any:
    import torch

    return x.to(getattr(torch, jnp.dtype(dtype).name))


@op(unary(label="to bfloat16", dtype=jnp.bfloat16), unary(label="to float16", dtype=jnp.float16),
    torch=_torch_astype, method=True)
def astype(x: Any, dtype: Any) -> Any:
    """Cast to ``dtype``; the gradient is cast back to the input's dtype (``ToCopyBackward0``)."""
    x = unwrap(x)
    src = jnp.result_type(x)
    return apply("ToCopyBackward0", lambda x: jnp.asarray(x).astype(dtype), (x,),
                 (lambda g, z, x: astype(g, src),),
                 tangents=(lambda t, z, x: astype(t, dtype),))
