"""The differentiable functions: one function, one place, forward and backward side by side.

Each function is polymorphic. Given plain arrays it is plain ``jnp`` code (jax.grad, jit and vmap
see ordinary JAX). Given a `Tensor` it also records a node whose rules give each input's gradient
from ``g`` (dL/dz), ``z`` (the output) and the inputs. The rules are written with these same
functions, so with ``create_graph=True`` the backward pass is itself recorded (higher order).
Rules may return a gradient of the broadcast shape: the engine sums it back to the input's shape.
"""

from __future__ import annotations

import builtins
import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcdl.tape.tensor import Tensor, _data, apply, unwrap

# ---------------------------------------------------------------------------------------------
# helpers: shapes, dims, PyTorch's error messages
# ---------------------------------------------------------------------------------------------


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(getattr(x, "shape", ()))


def broadcast_shapes(*shapes: Sequence[int]) -> tuple[int, ...]:
    """NumPy broadcasting, failing with PyTorch's message."""
    out: list[int] = []
    first = shapes[0]
    for other in shapes[1:]:
        n = builtins.max(len(first), len(other))
        a = (1,) * (n - len(first)) + tuple(first)
        b = (1,) * (n - len(other)) + tuple(other)
        out = []
        for i, (sa, sb) in enumerate(zip(a, b)):
            if sa != sb and sa != 1 and sb != 1:
                raise RuntimeError(f"The size of tensor a ({sa}) must match the size of tensor "
                                   f"b ({sb}) at non-singleton dimension {i}")
            out.append(sa if sb == 1 else sb)
        first = tuple(out)
    return tuple(first)


def _check_broadcast(*xs: Any) -> None:
    shapes = [_shape(x) for x in xs]
    if any(s != shapes[0] for s in shapes[1:]):
        broadcast_shapes(*shapes)


def _dim(d: int, ndim: int) -> int:
    """PyTorch's dim wrapping: negative dims count from the end; 0-d tensors accept -1 and 0."""
    lo, hi = (-1, 0) if ndim == 0 else (-ndim, ndim - 1)
    if not isinstance(d, int | np.integer) or not lo <= d <= hi:
        raise IndexError(f"Dimension out of range (expected to be in range of [{lo}, {hi}], "
                         f"but got {d})")
    return int(d) % builtins.max(ndim, 1)


def _dims(dim: int | Sequence[int] | None, ndim: int) -> tuple[int, ...]:
    """The reduced dims, as ``funcdl.ops`` reads them: None and ``()`` mean all (torch's rule)."""
    if dim is None or (not isinstance(dim, int | np.integer) and len(dim) == 0):
        return tuple(range(ndim))
    if isinstance(dim, int | np.integer):
        dim = (dim,)
    dims = tuple(_dim(d, ndim) for d in dim)
    if len(set(dims)) != len(dims):
        raise RuntimeError(f"dim {dims} appears multiple times in the list of dims")
    return tuple(d for d in dims if ndim > 0)


def _ops():
    from funcdl import ops

    return ops


def _const(x: Any) -> Any:
    """The data of a value used only as a constant in a rule (a mask, a sign)."""
    return x.data if isinstance(x, Tensor) else x


def _binary(name: str, fn: Any, a: Any, b: Any, ra: Any, rb: Any) -> Any:
    a, b = unwrap(a), unwrap(b)
    _check_broadcast(a, b)
    return apply(name, fn, (a, b), (ra, rb))


# ---------------------------------------------------------------------------------------------
# eager fast paths: eager JAX pays a dispatch (tens of microseconds) per op, so the hottest
# forwards and backward rules on plain arrays run as one jitted kernel; inside an outer jit they
# inline into the same program. Tensor gradients (create_graph) take the polymorphic route.
# ---------------------------------------------------------------------------------------------


@jax.jit
def _linear_forward(x: Any, w: Any, b: Any) -> Any:
    y = jnp.matmul(x, w.T)
    return y if b is None else y + b


@functools.partial(jax.jit, static_argnames="needs")
def _linear_grads(g: Any, x: Any, w: Any, needs: tuple[bool, ...]) -> tuple:
    g2 = g.reshape(-1, g.shape[-1])
    return (jnp.matmul(g, w) if needs[0] else None,
            jnp.matmul(g2.T, x.reshape(-1, x.shape[-1])) if needs[1] else None,
            g2.sum(0) if needs[2] else None)


# jax.nn's custom_jvp functions cost ~0.3 ms per eager call; jitted they dispatch in microseconds
_relu = jax.jit(jax.nn.relu)
_silu = jax.jit(jax.nn.silu)
_gelu = jax.jit(jax.nn.gelu, static_argnames="approximate")
_softmax = jax.jit(jax.nn.softmax, static_argnames="axis")
_log_softmax = jax.jit(jax.nn.log_softmax, static_argnames="axis")


@jax.jit
def _relu_grad(g: Any, x: Any) -> Any:
    return jnp.where(x > 0, g, jnp.zeros((), g.dtype))


# ---------------------------------------------------------------------------------------------
# elementwise arithmetic
# ---------------------------------------------------------------------------------------------


def add(a: Any, b: Any) -> Any:
    """a + b (broadcasting)."""
    return _binary("AddBackward0", jnp.add, a, b,
                   lambda g, z, a, b: g,
                   lambda g, z, a, b: g)


def sub(a: Any, b: Any) -> Any:
    """a - b (broadcasting)."""
    return _binary("SubBackward0", jnp.subtract, a, b,
                   lambda g, z, a, b: g,
                   lambda g, z, a, b: neg(g))


def mul(a: Any, b: Any) -> Any:
    """a * b (broadcasting)."""
    return _binary("MulBackward0", jnp.multiply, a, b,
                   lambda g, z, a, b: mul(g, b),
                   lambda g, z, a, b: mul(g, a))


def div(a: Any, b: Any) -> Any:
    """a / b (true division, broadcasting)."""
    return _binary("DivBackward0", jnp.true_divide, a, b,
                   lambda g, z, a, b: div(g, b),
                   lambda g, z, a, b: neg(div(mul(g, z), b)))  # -g a / b^2 = -g z / b


def neg(a: Any) -> Any:
    """-a."""
    return apply("NegBackward0", jnp.negative, (unwrap(a),), (lambda g, z, a: neg(g),))


def pow(a: Any, b: Any) -> Any:
    """a ** b. Exponent gradient uses log(a) with a == 0 replaced by 1 (0 ** b has slope 0)."""
    a, b = unwrap(a), unwrap(b)
    if isinstance(b, int | float) and not isinstance(a, int | float):
        return apply("PowBackward0", lambda a: jnp.power(a, b), (a,),
                     (lambda g, z, a: mul(g, mul(b, pow(a, b - 1))) if b != 0 else mul(g, 0.0),))
    return _binary("PowBackward1", jnp.power, a, b,
                   lambda g, z, a, b: mul(g, mul(b, pow(a, sub(b, 1)))),
                   lambda g, z, a, b: mul(g, mul(z, log(where(_const(a) == 0, 1.0, a)))))


def exp(a: Any) -> Any:
    """e ** a."""
    return apply("ExpBackward0", jnp.exp, (unwrap(a),), (lambda g, z, a: mul(g, z),))


def log(a: Any) -> Any:
    """Natural logarithm."""
    return apply("LogBackward0", jnp.log, (unwrap(a),), (lambda g, z, a: div(g, a),))


def sqrt(a: Any) -> Any:
    """Square root."""
    return apply("SqrtBackward0", jnp.sqrt, (unwrap(a),),
                 (lambda g, z, a: div(g, mul(2.0, z)),))


def abs(a: Any) -> Any:
    """|a|; its gradient at 0 is 0 (sign(0)), as in PyTorch."""
    return apply("AbsBackward0", jnp.abs, (unwrap(a),),
                 (lambda g, z, a: mul(g, jnp.sign(_const(a))),))


def erf(a: Any) -> Any:
    """The error function (used by exact gelu)."""
    return apply("ErfBackward0", jax.scipy.special.erf, (unwrap(a),),
                 (lambda g, z, a: mul(g, mul(2.0 / math.sqrt(math.pi), exp(neg(mul(a, a))))),))


def _tie_share(a: Any, b: Any, bigger: bool) -> Any:
    """1 where ``a`` wins, 0.5 on ties, 0 where it loses (PyTorch and JAX split ties evenly)."""
    a, b = _const(a), _const(b)
    wins = (a > b) if bigger else (a < b)
    return jnp.where(wins, 1.0, jnp.where(a == b, 0.5, 0.0))


def maximum(a: Any, b: Any) -> Any:
    """Elementwise max (broadcasting)."""
    return _binary("MaximumBackward0", jnp.maximum, a, b,
                   lambda g, z, a, b: mul(g, _tie_share(a, b, True)),
                   lambda g, z, a, b: mul(g, _tie_share(b, a, True)))


def minimum(a: Any, b: Any) -> Any:
    """Elementwise min (broadcasting)."""
    return _binary("MinimumBackward0", jnp.minimum, a, b,
                   lambda g, z, a, b: mul(g, _tie_share(a, b, False)),
                   lambda g, z, a, b: mul(g, _tie_share(b, a, False)))


def where(cond: Any, x: Any, y: Any) -> Any:
    """x where cond else y (broadcasting); cond gets no gradient."""
    cond, x, y = _const(unwrap(cond)), unwrap(x), unwrap(y)
    _check_broadcast(cond, x, y)
    return apply("WhereBackward0", lambda x, y: jnp.where(cond, x, y), (x, y),
                 (lambda g, z, x, y: where(cond, g, 0.0),
                  lambda g, z, x, y: where(cond, 0.0, g)))


def masked_fill(x: Any, mask: Any, value: Any) -> Any:
    """x with ``value`` where the boolean ``mask`` is True (``torch.masked_fill``)."""
    x, mask, value = unwrap(x), _const(unwrap(mask)), unwrap(value)
    mask = jnp.asarray(mask)
    if mask.dtype != jnp.bool_:
        raise RuntimeError("masked_fill_ only supports boolean masks, but got mask with dtype "
                           f"{mask.dtype}")
    broadcast_shapes(_shape(x), mask.shape)
    if _shape(value) != ():
        raise RuntimeError("masked_fill_ only supports a 0-dimensional value tensor, but got "
                           f"tensor with {len(_shape(value))} dimension(s).")
    return apply("MaskedFillBackward0",
                 lambda x, v: jnp.where(mask, jnp.asarray(v, x.dtype), x), (x, value),
                 (lambda g, z, x, v: where(mask, 0.0, g),
                  lambda g, z, x, v: where(mask, g, 0.0)))


def clip(x: Any, min: Any = None, max: Any = None) -> Any:
    """Clamp to [min, max] (``torch.clamp``): gradient 1 inside, boundaries included."""
    x, lo, hi = unwrap(x), unwrap(min), unwrap(max)
    if lo is None and hi is None:
        raise RuntimeError("torch.clamp: At least one of 'min' or 'max' must not be None")

    def forward(x: Any, lo: Any, hi: Any) -> Any:
        return jnp.clip(x, lo, hi)

    def inside(x: Any, lo: Any, hi: Any) -> Any:
        x = _const(x)
        ok = jnp.ones(jnp.shape(x), bool)
        if lo is not None:
            ok = ok & (x >= _const(lo))
        if hi is not None:
            ok = ok & (x <= _const(hi))
        return ok

    def to_lo(x: Any, lo: Any, hi: Any) -> Any:  # x below lo, and lo itself not clipped by hi
        x, lo = _const(x), _const(lo)
        return (x < lo) if hi is None else (x < lo) & (lo <= _const(hi))

    def to_hi(x: Any, lo: Any, hi: Any) -> Any:  # z = min(max(x, lo), hi) took hi
        x, hi = _const(x), _const(hi)
        return (x if lo is None else jnp.maximum(x, _const(lo))) > hi

    return apply("ClampBackward1", forward, (x, lo, hi),
                 (lambda g, z, x, lo, hi: where(inside(x, lo, hi), g, 0.0),
                  lambda g, z, x, lo, hi: where(to_lo(x, lo, hi), g, 0.0),
                  lambda g, z, x, lo, hi: where(to_hi(x, lo, hi), g, 0.0)))


clamp = clip

# ---------------------------------------------------------------------------------------------
# activations
# ---------------------------------------------------------------------------------------------


def sigmoid(x: Any) -> Any:
    """1 / (1 + e^-x); dz/dx = z (1 - z)."""
    return apply("SigmoidBackward0", jax.nn.sigmoid, (unwrap(x),),
                 (lambda g, z, x: mul(g, mul(z, sub(1.0, z))),))


def tanh(x: Any) -> Any:
    """Hyperbolic tangent; dz/dx = 1 - z^2."""
    return apply("TanhBackward0", jnp.tanh, (unwrap(x),),
                 (lambda g, z, x: mul(g, sub(1.0, mul(z, z))),))


def relu(x: Any) -> Any:
    """max(x, 0); gradient 0 at 0 (PyTorch and JAX agree)."""
    return apply("ReluBackward0", _relu, (unwrap(x),),
                 (lambda g, z, x: _relu_grad(g, x) if not isinstance(g, Tensor)
                  else where(_const(x) > 0, g, 0.0),))


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _gelu_slope(x: Any, approximate: str) -> Any:
    if approximate == "tanh":
        inner = mul(_SQRT_2_OVER_PI, add(x, mul(0.044715, mul(x, mul(x, x)))))
        t = tanh(inner)
        d_inner = mul(_SQRT_2_OVER_PI, add(1.0, mul(3 * 0.044715, mul(x, x))))
        return add(mul(0.5, add(1.0, t)), mul(mul(0.5, x), mul(sub(1.0, mul(t, t)), d_inner)))
    cdf = mul(0.5, add(1.0, erf(mul(x, _INV_SQRT_2))))
    pdf = mul(_INV_SQRT_2PI, exp(mul(-0.5, mul(x, x))))
    return add(cdf, mul(x, pdf))


def gelu(x: Any, approximate: str = "none") -> Any:
    """x * Phi(x) (``approximate="none"``) or PyTorch's tanh approximation."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate argument must be either none or tanh, got {approximate!r}")
    return apply("GeluBackward0", lambda x: _gelu(x, approximate=approximate == "tanh"),
                 (unwrap(x),), (lambda g, z, x: mul(g, _gelu_slope(x, approximate)),))


def silu(x: Any) -> Any:
    """x * sigmoid(x); slope s (1 + x (1 - s))."""
    def slope(x: Any) -> Any:
        s = sigmoid(x)
        return mul(s, add(1.0, mul(x, sub(1.0, s))))

    return apply("SiluBackward0", _silu, (unwrap(x),),
                 (lambda g, z, x: mul(g, slope(x)),))


def softplus(x: Any, beta: float = 1.0, threshold: float = 20.0) -> Any:
    """log(1 + e^(beta x)) / beta, and x itself where beta x > threshold (PyTorch)."""
    def forward(x: Any) -> Any:
        return jnp.where(x * beta > threshold, x, jnp.logaddexp(0.0, beta * x) / beta)

    return apply("SoftplusBackward0", forward, (unwrap(x),),
                 (lambda g, z, x: where(_const(x) * beta > threshold, g,
                                        mul(g, sigmoid(mul(beta, x)))),))


def _along(fn: Any, x: Any, d: int) -> Any:
    """``fn(x, axis=d)``; a 0-d tensor is a single-element row (PyTorch allows dim 0 and -1)."""
    if x.ndim == 0:
        return fn(x.reshape(1), axis=0).reshape(())
    return fn(x, axis=d)


def softmax(x: Any, dim: int = -1) -> Any:
    """exp(x) / sum(exp(x)) along ``dim``; dx = z (g - sum(g z))."""
    x = unwrap(x)
    d = _dim(dim, len(_shape(x)))
    return apply("SoftmaxBackward0", lambda x: _along(_softmax, x, d), (x,),
                 (lambda g, z, x: mul(z, sub(g, sum(mul(g, z), d, keepdim=True))),))


def log_softmax(x: Any, dim: int = -1) -> Any:
    """x - logsumexp(x) along ``dim``; dx = g - softmax(x) sum(g)."""
    x = unwrap(x)
    d = _dim(dim, len(_shape(x)))
    return apply("LogSoftmaxBackward0", lambda x: _along(_log_softmax, x, d), (x,),
                 (lambda g, z, x: sub(g, mul(exp(z), sum(g, d, keepdim=True))),))


# ---------------------------------------------------------------------------------------------
# matrix products
# ---------------------------------------------------------------------------------------------


def matmul(a: Any, b: Any) -> Any:
    """``torch.matmul``: dot (1-D, 1-D), mm, mv, and batched products with broadcast batches."""
    a, b = unwrap(a), unwrap(b)
    sa, sb = _shape(a), _shape(b)
    if len(sa) == 0 or len(sb) == 0:
        raise RuntimeError(f"both arguments to matmul need to be at least 1D, but they are "
                           f"{len(sa)}D and {len(sb)}D")
    ka = sa[-1]
    kb = sb[0] if len(sb) == 1 else sb[-2]
    if ka != kb:
        rows = 1 if len(sa) == 1 else int(np.prod(sa[:-1]))
        cols = sb[-1] if len(sb) > 1 else 1
        raise RuntimeError(f"mat1 and mat2 shapes cannot be multiplied ({rows}x{ka} and "
                           f"{kb}x{cols})")
    if len(sa) > 2 or len(sb) > 2:
        broadcast_shapes(sa[:-2], sb[:-2])
    name = {(1, 1): "DotBackward0", (2, 1): "MvBackward0", (2, 2): "MmBackward0",
            (1, 2): "MmBackward0"}.get((len(sa), len(sb)), "BmmBackward0")

    def rule_a(g: Any, z: Any, a: Any, b: Any) -> Any:
        if len(sa) == 1 and len(sb) == 1:
            return mul(g, b)
        g2 = unsqueeze(g, -1) if len(sb) == 1 else g  # (..., n, 1) for matrix @ vector
        b2 = unsqueeze(b, -1) if len(sb) == 1 else b
        if len(sa) == 1:
            g2 = unsqueeze(g2, -2)  # (..., 1, m)
        da = matmul(g2, transpose(b2, -1, -2))
        if len(sa) == 1:
            return reshape(_sum_leading(da, 2), sa)
        return da

    def rule_b(g: Any, z: Any, a: Any, b: Any) -> Any:
        if len(sa) == 1 and len(sb) == 1:
            return mul(g, a)
        if len(sb) == 2 and len(sa) > 2:  # (..., m, k) @ (k, n): one product over all rows
            return matmul(transpose(reshape(a, (-1, sa[-1])), 0, 1), reshape(g, (-1, sb[-1])))
        a2 = unsqueeze(a, -2) if len(sa) == 1 else a  # (..., 1, k)
        g2 = unsqueeze(g, -2) if len(sa) == 1 else g
        if len(sb) == 1:
            g2 = unsqueeze(g2, -1)  # (..., n, 1)
        db = matmul(transpose(a2, -1, -2), g2)
        if len(sb) == 1:
            return reshape(_sum_leading(db, 2), sb)
        return db

    return apply(name, jnp.matmul, (a, b), (rule_a, rule_b))


def _sum_leading(x: Any, keep: int) -> Any:
    """Sum all but the last ``keep`` dims."""
    lead = len(_shape(x)) - keep
    return sum(x, tuple(range(lead))) if lead > 0 else x


def linear(x: Any, weight: Any, bias: Any = None) -> Any:
    """``torch.nn.functional.linear``: x @ weight.T + bias, weight [out, in]."""
    x, weight, bias = unwrap(x), unwrap(weight), unwrap(bias)
    sx, sw = _shape(x), _shape(weight)
    if len(sw) != 2 or sx[-1:] != sw[1:]:
        rows = int(np.prod(sx[:-1])) if sx else 1
        raise RuntimeError(f"mat1 and mat2 shapes cannot be multiplied ({rows}x"
                           f"{sx[-1] if sx else 0} and {sw[-1] if sw else 0}x"
                           f"{sw[0] if sw else 0})")
    if bias is not None and _shape(bias) not in ((sw[0],), (), (1,)):
        broadcast_shapes(sx[:-1] + (sw[0],), _shape(bias))

    def rule_w(g: Any, z: Any, x: Any, w: Any, b: Any) -> Any:
        g2 = reshape(g, (-1, sw[0]))
        x2 = reshape(x, (-1, sw[1]))
        return matmul(transpose(g2, 0, 1), x2)

    def rule_b(g: Any, z: Any, x: Any, w: Any, b: Any) -> Any:
        return g  # the engine sums over the broadcast dims

    rules = (lambda g, z, x, w, b: matmul(g, w), rule_w, rule_b)
    fused = bias is None or _shape(bias) == (sw[0],)

    def joint(g: Any, z: Any, needs: tuple[bool, ...], x: Any, w: Any, b: Any) -> tuple:
        if fused and not isinstance(g, Tensor):  # eager: one dispatch for all three
            return _linear_grads(g, x, w, needs)
        return tuple(rule(g, z, x, w, b) if need else None for rule, need in zip(rules, needs))

    return apply("AddmmBackward0" if bias is not None else "MmBackward0", _linear_forward,
                 (x, weight, bias), rules, joint)


# ---------------------------------------------------------------------------------------------
# reductions (forward by funcdl.ops)
# ---------------------------------------------------------------------------------------------


def _unreduce(g: Any, shape: tuple[int, ...], dims: tuple[int, ...], keepdim: bool) -> Any:
    """Broadcast a reduced gradient back over the reduced dims."""
    if not keepdim:
        g = reshape(g, tuple(1 if i in dims else n for i, n in enumerate(shape)))
    return broadcast_to(g, shape)


def _count(shape: tuple[int, ...], dims: tuple[int, ...]) -> int:
    return int(np.prod([shape[d] for d in dims])) if dims else 1


def sum(x: Any, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> Any:
    """Sum over ``dim`` (all dims when None)."""
    x = unwrap(x)
    shape = _shape(x)
    dims = _dims(dim, len(shape))
    return apply("SumBackward0" if dim is None else "SumBackward1",
                 lambda x: _ops().sum(x, dim=dim, keepdim=keepdim), (x,),
                 (lambda g, z, x: _unreduce(g, shape, dims, keepdim),))


def mean(x: Any, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> Any:
    """Arithmetic mean over ``dim``."""
    x = unwrap(x)
    shape = _shape(x)
    dims = _dims(dim, len(shape))
    n = _count(shape, dims)
    return apply("MeanBackward0" if dim is None else "MeanBackward1",
                 lambda x: _ops().mean(x, dim=dim, keepdim=keepdim), (x,),
                 (lambda g, z, x: div(_unreduce(g, shape, dims, keepdim), n),))


def amax(x: Any, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> Any:
    """Maximum over ``dim``; tied maxima share the gradient evenly (PyTorch's amax rule)."""
    x = unwrap(x)
    shape = _shape(x)
    dims = _dims(dim, len(shape))

    def rule(g: Any, z: Any, x: Any) -> Any:
        hit = _const(x) == _unreduce(_const(z), shape, dims, keepdim)
        share = hit / jnp.sum(hit, axis=dims, keepdims=True)
        return mul(_unreduce(g, shape, dims, keepdim), share)

    return apply("AmaxBackward0", lambda x: _ops().amax(x, dim=dim, keepdim=keepdim), (x,),
                 (rule,))


def var(x: Any, dim: int | Sequence[int] | None = None, keepdim: bool = False, *,
        correction: int = 1) -> Any:
    """Variance over ``dim`` with Bessel's ``correction`` (``torch.var``)."""
    x = unwrap(x)
    shape = _shape(x)
    dims = _dims(dim, len(shape))
    n = _count(shape, dims)

    def rule(g: Any, z: Any, x: Any) -> Any:
        centred = sub(x, mean(x, dims, keepdim=True))
        # n == correction divides by zero: inf, so the gradient is inf/nan as in torch
        scale = 2.0 / (n - correction) if n != correction else math.inf
        return mul(_unreduce(g, shape, dims, keepdim), mul(centred, scale))

    return apply("VarBackward0",
                 lambda x: _ops().var(x, dim=dim, keepdim=keepdim, correction=correction),
                 (x,), (rule,))


def logsumexp(x: Any, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> Any:
    """log(sum(exp(x))) over ``dim``, computed stably; dx = g softmax(x)."""
    x = unwrap(x)
    shape = _shape(x)
    dims = _dims(dim, len(shape))
    return apply("LogsumexpBackward0",
                 lambda x: _ops().logsumexp(x, dim=dim, keepdim=keepdim), (x,),
                 (lambda g, z, x: mul(_unreduce(g, shape, dims, keepdim),
                                      exp(sub(x, _unreduce(z, shape, dims, keepdim)))),))


# ---------------------------------------------------------------------------------------------
# shapes
# ---------------------------------------------------------------------------------------------


def _target_shape(shape: Any, numel: int) -> tuple[int, ...]:
    shape = (shape,) if isinstance(shape, int | np.integer) else tuple(int(s) for s in shape)
    known = int(np.prod([s for s in shape if s != -1]))
    if shape.count(-1) > 1:
        raise RuntimeError("only one dimension can be inferred")
    if -1 in shape:
        if known == 0 or numel % known:
            raise RuntimeError(f"shape '{list(shape)}' is invalid for input of size {numel}")
        shape = tuple(numel // known if s == -1 else s for s in shape)
    if int(np.prod(shape)) != numel:
        raise RuntimeError(f"shape '{list(shape)}' is invalid for input of size {numel}")
    return shape


def reshape(x: Any, shape: Sequence[int] | int) -> Any:
    """The same elements in a new shape (one -1 is inferred)."""
    x = unwrap(x)
    old = _shape(x)
    new = _target_shape(shape, int(np.prod(old)))
    if new == old:
        return x
    return apply("ViewBackward0", lambda x: jnp.reshape(x, new), (x,),
                 (lambda g, z, x: reshape(g, old),))


view = reshape


def transpose(x: Any, dim0: int, dim1: int) -> Any:
    """Swap two dims."""
    x = unwrap(x)
    n = len(_shape(x))
    d0, d1 = _dim(dim0, n), _dim(dim1, n)
    return apply("TransposeBackward0", lambda x: jnp.swapaxes(x, d0, d1), (x,),
                 (lambda g, z, x: transpose(g, d0, d1),))


def permute(x: Any, dims: Sequence[int]) -> Any:
    """Reorder the dims: output dim i is input dim ``dims[i]``."""
    x = unwrap(x)
    n = len(_shape(x))
    if len(dims) != n:
        raise RuntimeError("permute(sparse_coo): number of dimensions in the tensor input does "
                           "not match the length of the desired ordering of dimensions i.e. "
                           f"input.dim() = {n} is not equal to len(dims) = {len(dims)}")
    perm = tuple(_dim(d, n) for d in dims)
    if sorted(perm) != list(range(n)):
        raise RuntimeError("permute(): duplicate dims are not allowed.")
    inverse = tuple(int(i) for i in np.argsort(perm))
    return apply("PermuteBackward0", lambda x: jnp.transpose(x, perm), (x,),
                 (lambda g, z, x: permute(g, inverse),))


def squeeze(x: Any, dim: int | Sequence[int] | None = None) -> Any:
    """Drop size-1 dims (only those in ``dim`` when given; others are left, as in PyTorch)."""
    x = unwrap(x)
    old = _shape(x)
    dims = _dims(dim, len(old))
    new = tuple(n for i, n in enumerate(old) if not (i in dims and n == 1))
    return apply("SqueezeBackward0" if dim is None else "SqueezeBackward1",
                 lambda x: jnp.reshape(x, new), (x,), (lambda g, z, x: reshape(g, old),))


def unsqueeze(x: Any, dim: int) -> Any:
    """Insert a size-1 dim at ``dim`` (range [-ndim-1, ndim])."""
    x = unwrap(x)
    old = _shape(x)
    d = _dim(dim, len(old) + 1)
    new = old[:d] + (1,) + old[d:]
    return apply("UnsqueezeBackward0", lambda x: jnp.reshape(x, new), (x,),
                 (lambda g, z, x: reshape(g, old),))


def _expand_shape(old: tuple[int, ...], shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) < len(old):
        raise RuntimeError(f"expand: the number of sizes provided ({len(shape)}) must be greater "
                           f"or equal to the number of dimensions in the tensor ({len(old)})")
    lead = len(shape) - len(old)
    out = []
    for i, s in enumerate(shape):
        have = old[i - lead] if i >= lead else None
        if s == -1:
            if have is None:
                raise RuntimeError(f"The expanded size of the tensor (-1) isn't allowed in a "
                                   f"leading, non-existing dimension {i}")
            s = have
        if have is not None and have != 1 and have != s:
            raise RuntimeError(f"The expanded size of the tensor ({s}) must match the existing "
                               f"size ({have}) at non-singleton dimension {i}.  Target sizes: "
                               f"{list(shape)}.  Tensor sizes: {list(old)}")
        out.append(s)
    return tuple(out)


def expand(x: Any, *shape: Any) -> Any:
    """``torch.expand``: broadcast to ``shape``; -1 keeps a size. Gradient sums back."""
    x = unwrap(x)
    if len(shape) == 1 and not isinstance(shape[0], int | np.integer):
        shape = tuple(shape[0])
    old = _shape(x)
    new = _expand_shape(old, shape)
    if new == old:
        return x
    return apply("ExpandBackward0", lambda x: jnp.broadcast_to(x, new), (x,),
                 (lambda g, z, x: g,))  # the engine sums g back to x's shape


def broadcast_to(x: Any, shape: Sequence[int]) -> Any:
    """Broadcast to ``shape`` (NumPy rules, PyTorch's errors)."""
    return expand(x, tuple(shape))


def concatenate(xs: Sequence[Any], dim: int = 0) -> Any:
    """Join along an existing dim (``torch.cat``)."""
    xs = tuple(unwrap(x) for x in xs)
    if not xs:
        raise RuntimeError("torch.cat(): expected a non-empty list of Tensors")
    shapes = [_shape(x) for x in xs]
    d = _dim(dim, len(shapes[0]))
    for k, s in enumerate(shapes[1:], start=1):
        if len(s) != len(shapes[0]):
            raise RuntimeError(f"Tensors must have same number of dimensions: got "
                               f"{len(shapes[0])} and {len(s)}")
        for i, (n0, n) in enumerate(zip(shapes[0], s)):
            if i != d and n0 != n:
                raise RuntimeError(f"Sizes of tensors must match except in dimension {d}. "
                                   f"Expected size {n0} but got size {n} for tensor number {k} "
                                   "in the list.")
    starts = np.cumsum([0] + [s[d] for s in shapes])

    def piece(k: int) -> Any:
        index = (slice(None),) * d + (slice(int(starts[k]), int(starts[k + 1])),)
        return lambda g, z, *xs: getitem(g, index)

    return apply("CatBackward0", lambda *xs: jnp.concatenate(xs, axis=d), xs,
                 tuple(piece(k) for k in range(len(xs))))


cat = concatenate


def stack(xs: Sequence[Any], dim: int = 0) -> Any:
    """Join along a new dim."""
    xs = tuple(unwrap(x) for x in xs)
    if not xs:
        raise RuntimeError("stack expects a non-empty TensorList")
    shapes = [_shape(x) for x in xs]
    for k, s in enumerate(shapes[1:], start=1):
        if s != shapes[0]:
            raise RuntimeError(f"stack expects each tensor to be equal size, but got "
                               f"{list(shapes[0])} at entry 0 and {list(s)} at entry {k}")
    d = _dim(dim, len(shapes[0]) + 1)

    def piece(k: int) -> Any:
        index = (slice(None),) * d + (k,)
        return lambda g, z, *xs: getitem(g, index)

    return apply("StackBackward0", lambda *xs: jnp.stack(xs, axis=d), xs,
                 tuple(piece(k) for k in range(len(xs))))


def split(x: Any, split_size_or_sections: int | Sequence[int], dim: int = 0) -> tuple:
    """``torch.split``: chunks of a given size (the last may be smaller) or of listed sizes."""
    x = unwrap(x)
    shape = _shape(x)
    d = _dim(dim, len(shape))
    n = shape[d]
    if isinstance(split_size_or_sections, int | np.integer):
        size = int(split_size_or_sections)
        if size <= 0:
            raise RuntimeError(f"split_size can only be 0 if dimension size is 0, but got "
                               f"dimension size of {n}" if size == 0 else
                               f"split expects split_size be non-negative, but got "
                               f"split_size={size}")
        sizes = [builtins.min(size, n - s) for s in range(0, n, size)] or [0]
    else:
        sizes = [int(s) for s in split_size_or_sections]
        if builtins.sum(sizes) != n:
            raise RuntimeError(f"split_with_sizes expects split_sizes to sum exactly to {n} "
                               f"(input tensor's size at dimension {d}), but got "
                               f"split_sizes={sizes}")
    starts = np.cumsum([0] + sizes)
    return tuple(getitem(x, (slice(None),) * d + (slice(int(starts[k]), int(starts[k + 1])),))
                 for k in range(len(sizes)))


def _norm_index(index: Any) -> Any:
    if isinstance(index, tuple):
        return tuple(_norm_index(i) for i in index)
    index = unwrap(index)
    if isinstance(index, Tensor):
        return index.data
    if isinstance(index, list):
        return jnp.asarray(index)
    return index


def _check_index(index: Any, shape: tuple[int, ...]) -> None:
    """PyTorch's bounds errors for plain integer indices (JAX would clamp silently)."""
    parts = index if isinstance(index, tuple) else (index,)
    if not shape and any(p is not Ellipsis and p is not None for p in parts):
        raise IndexError("invalid index of a 0-dim tensor. Use `tensor.item()` in Python or "
                         "`tensor.item<T>()` in C++ to convert a 0-dim tensor to a number")
    dim = 0
    for p in parts:
        if p is Ellipsis:
            return  # the dims after it are counted from the end; leave those to JAX
        if p is None:
            continue
        if isinstance(p, int | np.integer) and not isinstance(p, bool):
            if dim < len(shape) and not -shape[dim] <= p < shape[dim]:
                raise IndexError(f"index {p} is out of bounds for dimension {dim} with size "
                                 f"{shape[dim]}")
        if dim >= len(shape) and not isinstance(p, bool):
            raise IndexError(f"too many indices for tensor of dimension {len(shape)}")
        ndim_used = getattr(p, "ndim", 0) if getattr(p, "dtype", None) == jnp.bool_ else 1
        dim += ndim_used


def _index_name(index: Any) -> str:
    parts = index if isinstance(index, tuple) else (index,)
    if any(hasattr(p, "shape") for p in parts):
        return "IndexBackward0"
    if any(isinstance(p, int | np.integer) for p in parts):
        return "SelectBackward0"
    return "SliceBackward0"


def getitem(x: Any, index: Any) -> Any:
    """``x[index]`` with ints, slices, None, Ellipsis and integer arrays; scatter-add backward."""
    x = unwrap(x)
    index = _norm_index(index)
    if index is Ellipsis:
        return x
    shape = _shape(x)
    _check_index(index, shape)
    return apply(_index_name(index), lambda x: x[index], (x,),
                 (lambda g, z, x: index_add_into(g, index, shape),))


def _basic_parts(index: Any, ndim: int) -> list | None:
    """``index`` as one entry per input dim plus None for new axes, when it holds only ints,
    slices, None and Ellipsis (basic indexing); None otherwise."""
    parts = list(index) if isinstance(index, tuple) else [index]
    if not all(p is None or p is Ellipsis or isinstance(p, slice)
               or (isinstance(p, int | np.integer) and not isinstance(p, bool)) for p in parts):
        return None
    used = builtins.sum(1 for p in parts if p is not None and p is not Ellipsis)
    fill = [slice(None)] * (ndim - used)
    if Ellipsis in parts:
        k = parts.index(Ellipsis)
        parts[k:k + 1] = fill
    else:
        parts += fill
    return parts


def _pad_into(g: Any, parts: list, shape: tuple[int, ...]) -> Any:
    """The transpose of basic indexing as a pad (what jax.grad emits), not a scatter."""
    mid, flips, config = [], [], []
    dims = iter(range(len(shape)))
    for p in parts:
        if p is None:
            continue
        d = next(dims)
        n = shape[d]
        if not isinstance(p, slice):
            i = int(p) % n
            mid.append(1)
            config.append((i, n - i - 1, 0))
            continue
        start, stop, step = p.indices(n)
        length = len(range(start, stop, step))
        mid.append(length)
        if length == 0:
            config.append((n, 0, 0))
            continue
        lowest = start if step > 0 else start + (length - 1) * step
        if step < 0:
            flips.append(len(mid) - 1)
        config.append((lowest, n - lowest - (length - 1) * builtins.abs(step) - 1,
                       builtins.abs(step) - 1))
    g = jnp.reshape(g, mid)
    if flips:
        g = jnp.flip(g, flips)
    return jax.lax.pad(g, jnp.zeros((), g.dtype), config)


def index_add_into(g: Any, index: Any, shape: tuple[int, ...]) -> Any:
    """zeros(shape) with ``g`` added at ``index`` (repeated indices accumulate): getitem's
    transpose, and getitem is its own. Basic indices become a pad, others a scatter-add."""
    parts = _basic_parts(index, len(shape))

    def forward(g: Any) -> Any:
        if parts is not None:
            return _pad_into(g, parts, shape)
        return jnp.zeros(shape, g.dtype).at[index].add(g)

    return apply("IndexPutBackward0", forward, (unwrap(g),),
                 (lambda gg, z, g: getitem(gg, index),))


def _check_ids(ids: Any, size: int) -> None:
    ids = jnp.asarray(ids)
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise TypeError(f"Expected tensor for argument #1 'indices' to have one of the following "
                        f"scalar types: Long, Int; but got {ids.dtype} instead (call "
                        ".astype(jnp.int32) first)")
    if not isinstance(ids, jax.core.Tracer) and ids.size and (
            int(ids.min()) < -size or int(ids.max()) >= size):
        raise IndexError("index out of range in self")


def take(x: Any, indices: Any, dim: int = 0) -> Any:
    """Rows (slices along ``dim``) picked by integer ``indices``: ``torch.index_select`` for any
    index shape; output shape x.shape[:dim] + indices.shape + x.shape[dim+1:]."""
    x = unwrap(x)
    shape = _shape(x)
    d = _dim(dim, len(shape))
    ids = jnp.asarray(_const(unwrap(indices)))
    _check_ids(ids, shape[d])
    index = (slice(None),) * d + (ids,)
    return apply("IndexSelectBackward0", lambda x: x[index], (x,),
                 (lambda g, z, x: index_add_into(g, index, shape),))


def embedding(ids: Any, weight: Any) -> Any:
    """Rows of ``weight`` [num_embeddings, dim] for integer ``ids`` (any shape)."""
    weight = unwrap(weight)
    shape = _shape(weight)
    if len(shape) != 2:
        raise RuntimeError(f"'weight' must be 2-D, got shape {list(shape)}")
    ids = jnp.asarray(_const(unwrap(ids)))
    _check_ids(ids, shape[0])
    return apply("EmbeddingBackward0", lambda w: w[ids], (weight,),
                 (lambda g, z, w: index_add_into(g, ids, shape),))


def astype(x: Any, dtype: Any) -> Any:
    """Cast to ``dtype``; the gradient is cast back to the input's dtype (``ToCopyBackward0``)."""
    x = unwrap(x)
    src = jnp.result_type(x)
    return apply("ToCopyBackward0", lambda x: jnp.asarray(x).astype(dtype), (x,),
                 (lambda g, z, x: astype(g, src),))


def tril(x: Any, diagonal: int = 0) -> Any:
    """Keep the lower triangle (of the last two dims)."""
    x = unwrap(x)
    return apply("TrilBackward0", lambda x: jnp.tril(x, diagonal), (x,),
                 (lambda g, z, x: tril(g, diagonal),))


def triu(x: Any, diagonal: int = 0) -> Any:
    """Keep the upper triangle (of the last two dims)."""
    x = unwrap(x)
    return apply("TriuBackward0", lambda x: jnp.triu(x, diagonal), (x,),
                 (lambda g, z, x: triu(g, diagonal),))


# ---------------------------------------------------------------------------------------------
# normalisation, dropout
# ---------------------------------------------------------------------------------------------


def layer_norm(x: Any, normalized_shape: int | Sequence[int], weight: Any = None,
               bias: Any = None, eps: float = 1e-5) -> Any:
    """``torch.nn.functional.layer_norm`` over the trailing ``normalized_shape`` dims."""
    x, weight, bias = unwrap(x), unwrap(weight), unwrap(bias)
    norm = ((normalized_shape,) if isinstance(normalized_shape, int | np.integer)
            else tuple(normalized_shape))
    shape = _shape(x)
    k = len(norm)
    if k == 0 or shape[len(shape) - k:] != norm or len(shape) < k:
        raise RuntimeError(f"Given normalized_shape={list(norm)}, expected input with shape "
                           f"[*, {', '.join(map(str, norm))}], but got input of size"
                           f"{list(shape)}")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and _shape(p) != norm:
            raise RuntimeError(f"Expected {name} to be of same shape as normalized_shape, but got "
                               f"{name} of shape {list(_shape(p))} and normalized_shape = "
                               f"{list(norm)}")
    dims = tuple(range(len(shape) - k, len(shape)))
    centred = sub(x, mean(x, dims, keepdim=True))
    variance = mean(mul(centred, centred), dims, keepdim=True)
    y = div(centred, sqrt(add(variance, eps)))
    if weight is not None:
        y = mul(y, weight)
    if bias is not None:
        y = add(y, bias)
    return y


def dropout(x: Any, p: float = 0.5, *, key: Any = None, training: bool = True) -> Any:
    """Inverted dropout: zero each element with probability p, scale the rest by 1/(1-p)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    x = unwrap(x)
    if not training or p == 0.0:
        return x
    if key is None:
        raise ValueError("dropout with training=True and p > 0 needs an explicit PRNG key: pass "
                         "key=jax.random.key(...) (or training=False for evaluation)")
    shape = _shape(x)
    if p == 1.0:
        scale = jnp.zeros(shape, jnp.float32)
    else:
        keep = jax.random.bernoulli(key, 1.0 - p, shape)
        scale = jnp.where(keep, 1.0 / (1.0 - p), 0.0)
    return apply("NativeDropoutBackward0", lambda x: x * scale.astype(x.dtype), (x,),
                 (lambda g, z, x: mul(g, scale),))


# ---------------------------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------------------------


def _reduce(loss: Any, reduction: str) -> Any:
    if reduction == "mean":
        return mean(loss)
    if reduction == "sum":
        return sum(loss)
    if reduction == "none":
        return loss
    raise ValueError(f"{reduction} is not a valid value for reduction")


def mse_loss(input: Any, target: Any, reduction: str = "mean") -> Any:
    """Mean squared error (``torch.nn.functional.mse_loss``)."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{reduction} is not a valid value for reduction")
    d = sub(input, target)
    return _reduce(mul(d, d), reduction)


def cross_entropy(input: Any, target: Any, *, ignore_index: int = -100,
                  reduction: str = "mean", label_smoothing: float = 0.0) -> Any:
    """``torch.nn.functional.cross_entropy`` on logits with classes in dim 1 ((C,) or (N, C, ...)).

    Integer targets: the log-likelihood of the class, ``ignore_index`` entries excluded (the mean
    divides by the number kept). Float targets of the input's shape are class probabilities.
    ``label_smoothing`` mixes the target with the uniform distribution.
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{reduction} is not a valid value for reduction")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing}")
    input = unwrap(input)
    target = jnp.asarray(_const(unwrap(target)))
    shape = _shape(input)
    cdim = 1 if len(shape) >= 2 else 0
    n_classes = shape[cdim]
    logp = log_softmax(input, cdim)
    if jnp.issubdtype(target.dtype, jnp.floating):
        if target.shape != shape:
            raise RuntimeError(f"Expected floating point target (class probabilities) of the "
                               f"input's shape {list(shape)}, got {list(target.shape)}")
        probs = target * (1.0 - label_smoothing) + label_smoothing / n_classes
        loss = neg(sum(mul(logp, probs), cdim))
        if reduction == "mean":
            return div(sum(loss), builtins.max(1, int(np.prod(_shape(loss)))))
        return _reduce(loss, reduction)
    expected = shape[:cdim] + shape[cdim + 1:]
    if target.shape != expected:
        raise RuntimeError(f"Expected target size {list(expected)}, got {list(target.shape)}")
    keep = target != ignore_index
    onehot = jax.nn.one_hot(jnp.where(keep, target, 0), n_classes, axis=cdim, dtype=logp.dtype)
    loss = neg(sum(mul(logp, onehot), cdim))
    if label_smoothing > 0.0:
        smooth = neg(div(sum(logp, cdim), n_classes))
        loss = add(mul(1.0 - label_smoothing, loss), mul(label_smoothing, smooth))
    loss = where(keep, loss, 0.0)
    if reduction == "mean":
        return div(sum(loss), jnp.sum(keep).astype(logp.dtype))
    return _reduce(loss, reduction)


@functools.partial(jax.jit, static_argnames="reduction")
def _bce_forward(x: Any, t: Any, pw: Any, reduction: str) -> Any:
    weight = 1.0 if pw is None else 1.0 + (pw - 1.0) * t
    loss = (1.0 - t) * x + weight * jnp.logaddexp(0.0, -x)
    return {"mean": jnp.mean, "sum": jnp.sum}.get(reduction, lambda a: a)(loss)


@functools.partial(jax.jit, static_argnames="reduction")
def _bce_input_grad(g: Any, x: Any, t: Any, pw: Any, reduction: str) -> Any:
    weight = 1.0 if pw is None else 1.0 + (pw - 1.0) * t
    scale = g / x.size if reduction == "mean" else g
    return scale * ((1.0 - t) - weight * jax.nn.sigmoid(-x))


def binary_cross_entropy_with_logits(input: Any, target: Any, *, reduction: str = "mean",
                                     pos_weight: Any = None) -> Any:
    """Sigmoid + binary cross-entropy in one stable formula (PyTorch's):
    (1 - t) x + (1 + (pos_weight - 1) t) softplus(-x); dL/dx = (1 - t) - w sigmoid(-x)."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{reduction} is not a valid value for reduction")
    x, t, pw = unwrap(input), unwrap(target), unwrap(pos_weight)
    shape = _shape(x)
    if shape != _shape(t):
        raise ValueError(f"Target size ({list(_shape(t))}) must be the same as input size "
                         f"({list(shape)})")
    if pw is not None:
        broadcast_shapes(shape, _shape(pw))
    n = builtins.max(1, int(np.prod(shape)))

    def g_full(g: Any) -> Any:  # dL/d(elementwise loss)
        if reduction == "none":
            return g
        return broadcast_to(div(g, n) if reduction == "mean" else g, shape)

    def weight(t: Any, pw: Any) -> Any:
        return 1.0 if pw is None else add(1.0, mul(sub(pw, 1.0), t))

    def rule_x(g: Any, z: Any, x: Any, t: Any, pw: Any) -> Any:
        if not any(isinstance(v, Tensor) for v in (g, x, t, pw)):
            return _bce_input_grad(g, x, t, pw, reduction)
        return mul(g_full(g), sub(sub(1.0, t), mul(weight(t, pw), sigmoid(neg(x)))))

    def rule_t(g: Any, z: Any, x: Any, t: Any, pw: Any) -> Any:
        tail = softplus(neg(x), 1.0, math.inf)
        slope = neg(x) if pw is None else add(neg(x), mul(sub(pw, 1.0), tail))
        return mul(g_full(g), slope)

    def rule_pw(g: Any, z: Any, x: Any, t: Any, pw: Any) -> Any:
        return mul(g_full(g), mul(t, softplus(neg(x), 1.0, math.inf)))

    return apply("BinaryCrossEntropyWithLogitsBackward0",
                 lambda x, t, pw: _bce_forward(x, t, pw, reduction), (x, t, pw),
                 (rule_x, rule_t, rule_pw))


# ---------------------------------------------------------------------------------------------
# Tensor operators and methods: the same functions
# ---------------------------------------------------------------------------------------------


def _flip(fn: Any) -> Any:
    return lambda self, other: fn(other, self)


def _compare(op: Any) -> Any:
    return lambda self, other: op(self.data, _data(unwrap(other)))


def _install_operators() -> None:
    T = Tensor
    T.__add__, T.__radd__ = add, _flip(add)
    T.__sub__, T.__rsub__ = sub, _flip(sub)
    T.__mul__, T.__rmul__ = mul, _flip(mul)
    T.__truediv__, T.__rtruediv__ = div, _flip(div)
    T.__matmul__, T.__rmatmul__ = matmul, _flip(matmul)
    T.__pow__, T.__rpow__ = pow, _flip(pow)
    T.__neg__ = neg
    T.__pos__ = lambda self: self
    T.__abs__ = abs
    T.__getitem__ = getitem
    for name, op in (("__lt__", jnp.less), ("__le__", jnp.less_equal), ("__gt__", jnp.greater),
                     ("__ge__", jnp.greater_equal), ("__eq__", jnp.equal),
                     ("__ne__", jnp.not_equal)):
        setattr(T, name, _compare(op))
    T.__hash__ = lambda self: id(self)
    for fn in (add, sub, mul, div, pow, exp, log, sqrt, abs, neg, sigmoid, tanh, relu, softmax,
               log_softmax, matmul, sum, mean, amax, var, logsumexp, transpose, permute, squeeze,
               unsqueeze, masked_fill, tril, triu, clip, maximum, minimum):
        setattr(T, fn.__name__, fn)
    T.clamp = clip
    T.reshape = lambda self, *shape: reshape(self, shape[0] if len(shape) == 1 else shape)
    T.view = T.reshape
    T.expand = expand
    T.t = lambda self: transpose(self, 0, 1) if self.ndim == 2 else self
    T.astype = astype


_install_operators()
