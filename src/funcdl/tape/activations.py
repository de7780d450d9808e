"""Activations and (log-)softmax, each with its slope written out.

jax.nn's custom_jvp functions cost ~0.3 ms per eager call; jitted once they dispatch in
microseconds, so the forwards below call jitted kernels (inside an outer jit they inline).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcdl.ops.shapes import canonical_dim
from funcdl.tape.cases import Case, along_dim, array, boolean, call, shape, unary
from funcdl.tape.elementwise import abs, add, div, erf, exp, mul, neg, sub, where
from funcdl.tape.reductions import sum
from funcdl.tape.registry import op
from funcdl.tape.shape import reshape, split
from funcdl.tape.tensor import Tensor, apply, constant, shape_of, unwrap

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)

_relu = jax.jit(jax.nn.relu)
_silu = jax.jit(jax.nn.silu)
_log_softmax = jax.jit(jax.nn.log_softmax, static_argnames="axis")


@functools.partial(jax.jit, static_argnames="approximate")
def _gelu(x: Any, approximate: bool) -> Any:
    """torch's GELU kernel, ``x * 0.5 * (1 + erf(x / sqrt(2)))``, or its tanh form.

    ``jax.nn.gelu`` computes the exact form through ``erfc``, which XLA:CPU expands into a far
    longer kernel (2.4 ms against 0.9 ms forward on 2048x1024 floats; under ``jax.grad`` its
    derivative adds two more passes over the activations). The ``erf`` form is torch's own
    formula (bitwise equal to torch on 76% of float32 inputs, against 44% for ``erfc``), with
    the same absolute error; like torch it rounds to 0 below x = -5.5 instead of a tiny value.
    """
    if approximate:
        return jax.nn.gelu(x, approximate=True)
    return x * 0.5 * (1.0 + jax.lax.erf(x * _INV_SQRT_2))


@functools.partial(jax.jit, static_argnames="axis")
def _softmax(x: Any, axis: int) -> Any:
    """``jax.nn.softmax`` with JAX's own softmax derivative (its ``jax_softmax_custom_jvp``
    option, set here for this trace only): without it, ``jax.grad`` differentiates the division
    by the sum, and XLA materialises the broadcast reciprocal of the sum and the unnormalised
    exponentials as extra (B, heads, T, S) arrays (an encoder layer's gradient: ~10% slower).
    The rule is JAX's, not the tape's: ``jax.grad`` stays an independent reference."""
    with jax.softmax_custom_jvp(True):
        return jax.nn.softmax(x, axis=axis)


@op(unary(), torch="torch.sigmoid", method=True)
def sigmoid(x: Any) -> Any:
    """1 / (1 + e^-x); dz/dx = z (1 - z)."""
    return apply("SigmoidBackward0", jax.nn.sigmoid, (unwrap(x),),
                 (lambda g, z, x: mul(g, mul(z, sub(1.0, z))),),
                 tangents="rules")


@op(unary(), torch="torch.tanh", method=True)
def tanh(x: Any) -> Any:
    """Hyperbolic tangent; dz/dx = 1 - z^2."""
    return apply("TanhBackward0", jnp.tanh, (unwrap(x),),
                 (lambda g, z, x: mul(g, sub(1.0, mul(z, z))),),
                 tangents="rules")


@jax.jit
def _relu_grad(g: Any, x: Any) -> Any:
    return jnp.where(x > 0, g, jnp.zeros((), g.dtype))


@op(unary("away"), torch="torch.relu", method=True)
def relu(x: Any) -> Any:
    """max(x, 0); gradient 0 at 0 (PyTorch and JAX agree)."""
    return apply("ReluBackward0", _relu, (unwrap(x),),
                 (lambda g, z, x: _relu_grad(g, x) if not isinstance(g, Tensor)
                  else where(constant(x) > 0, g, 0.0),),
                 tangents="rules")


@op(unary("away"), unary("away", label="slope 0.2", negative_slope=0.2),
    torch="torch.nn.functional.leaky_relu")
def leaky_relu(x: Any, negative_slope: float = 0.01) -> Any:
    """x where x > 0, else negative_slope * x; the slope at 0 is negative_slope (PyTorch's)."""
    return apply("LeakyReluBackward0",
                 lambda x: jnp.where(x > 0, x, x * negative_slope),
                 (unwrap(x),), (lambda g, z, x: where(constant(x) > 0, g,
                                                      mul(g, negative_slope)),),
                 tangents="rules")


def _gelu_slope(x: Any, approximate: str) -> Any:
    if approximate == "tanh":
        inner = mul(_SQRT_2_OVER_PI, add(x, mul(0.044715, mul(x, mul(x, x)))))
        t = tanh(inner)
        d_inner = mul(_SQRT_2_OVER_PI, add(1.0, mul(3 * 0.044715, mul(x, x))))
        return add(mul(0.5, add(1.0, t)), mul(mul(0.5, x), mul(sub(1.0, mul(t, t)), d_inner)))
    cdf = mul(0.5, add(1.0, erf(mul(x, _INV_SQRT_2))))
    pdf = mul(_INV_SQRT_2PI, exp(mul(-0.5, mul(x, x))))
    return add(cdf, mul(x, pdf))


@op(unary(label="exact"), unary(label="tanh approximation", approximate="tanh"),
    torch="torch.nn.functional.gelu")
def gelu(x: Any, approximate: str = "none") -> Any:
    """x * Phi(x) (``approximate="none"``) or PyTorch's tanh approximation."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate argument must be either none or tanh, got {approximate!r}")
    return apply("GeluBackward0", lambda x: _gelu(x, approximate=approximate == "tanh"),
                 (unwrap(x),), (lambda g, z, x: mul(g, _gelu_slope(x, approximate)),),
                 tangents="rules")


@op(unary(), torch="torch.nn.functional.silu")
def silu(x: Any) -> Any:
    """x * sigmoid(x); slope s (1 + x (1 - s))."""
    def slope(x: Any) -> Any:
        s = sigmoid(x)
        return mul(s, add(1.0, mul(x, sub(1.0, s))))

    return apply("SiluBackward0", _silu, (unwrap(x),),
                 (lambda g, z, x: mul(g, slope(x)),),
                 tangents="rules")


def _softplus_case(d: Any) -> Any:
    beta, threshold = d.choice([1.0, 2.0], "beta"), d.choice([20.0, 1.0], "threshold")
    return call(array(d, shape(d), "away") * 2, beta, threshold)


@op(Case("beta, threshold", _softplus_case), torch="torch.nn.functional.softplus")
def softplus(x: Any, beta: float = 1.0, threshold: float = 20.0) -> Any:
    """log(1 + e^(beta x)) / beta, and x itself where beta x > threshold (PyTorch)."""
    def forward(x: Any) -> Any:
        return jnp.where(x * beta > threshold, x, jnp.logaddexp(0.0, beta * x) / beta)

    return apply("SoftplusBackward0", forward, (unwrap(x),),
                 (lambda g, z, x: where(constant(x) * beta > threshold, g,
                                        mul(g, sigmoid(mul(beta, x)))),),
                 tangents="rules")


def _along(fn: Any, x: Any, d: int) -> Any:
    """``fn(x, axis=d)``; a 0-d tensor is a single-element row (PyTorch allows dim 0 and -1)."""
    if x.ndim == 0:
        return fn(x.reshape(1), axis=0).reshape(())
    return fn(x, axis=d)


@op(along_dim(), torch="torch.softmax", method=True)
def softmax(x: Any, dim: int = -1) -> Any:
    """exp(x) / sum(exp(x)) along ``dim``; dx = z (g - sum(g z))."""
    x = unwrap(x)
    d = canonical_dim(dim, len(shape_of(x)))
    return apply("SoftmaxBackward0", lambda x: _along(_softmax, x, d), (x,),
                 (lambda g, z, x: mul(z, sub(g, sum(mul(g, z), d, keepdim=True))),),
                 tangents="rules")


@op(along_dim(), torch="torch.log_softmax", method=True)
def log_softmax(x: Any, dim: int = -1) -> Any:
    """x - logsumexp(x) along ``dim``; dx = g - softmax(x) sum(g)."""
    x = unwrap(x)
    d = canonical_dim(dim, len(shape_of(x)))
    return apply("LogSoftmaxBackward0", lambda x: _along(_log_softmax, x, d), (x,),
                 (lambda g, z, x: sub(g, mul(exp(z), sum(g, d, keepdim=True))),),
                 tangents=(lambda t, z, x: sub(t, sum(mul(t, exp(z)), d, keepdim=True)),))


# --------------------------------------------------------------------------- the course's zoo
# Elementwise activations are single nodes named as torch's grad_fns: each has a jitted forward
# and dz/dx written with funcdl's functions (so the backward differentiates again); a diagonal
# Jacobian makes that backward rule its own tangent rule. Each forward is written so that
# jax.grad of the plain path takes torch's slope at the kinks too (``where`` on the strict
# comparison torch's kernel makes, never ``clip``/``maximum``, which split ties 0.5/0.5).


def _pointwise(name: str, forward: Any, x: Any, slope: Any) -> Any:
    """An elementwise op: ``forward`` and its slope ``slope(x)`` (dz/dx)."""
    return apply(name, forward, (unwrap(x),), (lambda g, z, x: mul(g, slope(x)),),
                 tangents="rules")


def _drawn(label: str, kind: str = "normal", scale: float = 1.0, **choices: Any) -> Case:
    """``op(x * scale, **kwargs)`` on any shape up to 3-D, each keyword drawn from its list."""
    return Case(label, lambda d: call(array(d, shape(d), kind) * scale,
                                      **{k: d.choice(v, k) for k, v in choices.items()}))


@functools.partial(jax.jit, static_argnames=("alpha", "scale", "input_scale"))
def _elu(x: Any, alpha: float, scale: float = 1.0, input_scale: float = 1.0) -> Any:
    negative = jnp.where(x > 0, 0.0, x)  # exp never sees a large x: finite in both branches
    return jnp.where(x > 0, scale * x, (scale * alpha) * jnp.expm1(negative * input_scale))


def _elu_slope(alpha: float, scale: float = 1.0, input_scale: float = 1.0) -> Any:
    """scale where x > 0, else scale * alpha * input_scale * e^(input_scale x) (at 0 too, as
    torch's ``x <= 0`` branch)."""
    def slope(x: Any) -> Any:
        positive = constant(x) > 0
        tail = exp(mul(where(positive, 0.0, x), input_scale))
        return where(positive, scale, mul(scale * alpha * input_scale, tail))

    return slope


@op(_drawn("alpha", "away", alpha=[1.0, 0.5]), torch="torch.nn.functional.elu")
def elu(x: Any, alpha: float = 1.0) -> Any:
    """x where x > 0, else alpha (e^x - 1)."""
    return _pointwise("EluBackward0", functools.partial(_elu, alpha=alpha), x,
                      _elu_slope(alpha))


SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


@op(unary("away"), torch="torch.nn.functional.selu")
def selu(x: Any) -> Any:
    """scale * elu(x, alpha) with the self-normalising constants (torch's EluBackward0)."""
    return _pointwise("EluBackward0",
                      functools.partial(_elu, alpha=SELU_ALPHA, scale=SELU_SCALE), x,
                      _elu_slope(SELU_ALPHA, SELU_SCALE))


@op(_drawn("alpha", "away", alpha=[1.0, 2.0]), torch="torch.nn.functional.celu")
def celu(x: Any, alpha: float = 1.0) -> Any:
    """x where x > 0, else alpha (e^(x / alpha) - 1); slope 1 at 0."""
    if alpha == 0:
        raise RuntimeError("ZeroDivisionError: alpha cannot be 0 for CELU")
    return _pointwise("CeluBackward0",
                      functools.partial(_elu, alpha=alpha, input_scale=1.0 / alpha), x,
                      _elu_slope(alpha, input_scale=1.0 / alpha))


@functools.partial(jax.jit, static_argnames=("low", "high"))
def _hardtanh(x: Any, low: float, high: float) -> Any:
    return jnp.where(x <= low, low, jnp.where(x >= high, high, x)).astype(x.dtype)


@op(_drawn("bounds", scale=2.0, min_val=[-1.0, -0.5], max_val=[1.0, 2.0]),
    torch="torch.nn.functional.hardtanh")
def hardtanh(x: Any, min_val: float = -1.0, max_val: float = 1.0) -> Any:
    """x clipped to [min_val, max_val]; slope 1 strictly inside, 0 on and beyond the bounds."""
    if min_val > max_val:
        raise ValueError("min_val cannot be greater than max_val")
    return _pointwise("HardtanhBackward0",
                      functools.partial(_hardtanh, low=min_val, high=max_val), x,
                      lambda x: where((constant(x) > min_val) & (constant(x) < max_val),
                                      1.0, 0.0))


@op(_drawn("x4", scale=4.0), torch="torch.nn.functional.relu6")
def relu6(x: Any) -> Any:
    """min(max(x, 0), 6): hardtanh(x, 0, 6), as torch computes it."""
    return hardtanh(x, 0.0, 6.0)


@jax.jit
def _hardsigmoid(x: Any) -> Any:
    return jnp.where(x <= -3, 0.0, jnp.where(x >= 3, 1.0, x / 6 + 0.5)).astype(x.dtype)


@op(_drawn("x3", scale=3.0), torch="torch.nn.functional.hardsigmoid")
def hardsigmoid(x: Any) -> Any:
    """relu6(x + 3) / 6; slope 1/6 strictly inside (-3, 3)."""
    return _pointwise("HardsigmoidBackward0", _hardsigmoid, x,
                      lambda x: where((constant(x) > -3) & (constant(x) < 3), 1 / 6, 0.0))


@jax.jit
def _hardswish(x: Any) -> Any:
    return jnp.where(x <= -3, 0.0, jnp.where(x < 3, x * (x + 3) / 6, x)).astype(x.dtype)


@op(_drawn("x3", scale=3.0), torch="torch.nn.functional.hardswish")
def hardswish(x: Any) -> Any:
    """x relu6(x + 3) / 6; slope x/3 + 1/2 strictly inside (-3, 3), 0 at -3 and 1 at 3 (the
    outer branches' slopes, as torch's kernel)."""
    def slope(x: Any) -> Any:
        c = constant(x)
        return where(c <= -3, 0.0, where(c < 3, add(mul(x, 1 / 3), 0.5), 1.0))

    return _pointwise("HardswishBackward0", _hardswish, x, slope)


@jax.jit
def _mish(x: Any) -> Any:
    return x * jnp.tanh(jnp.logaddexp(0.0, x))


@op(unary(), torch="torch.nn.functional.mish")
def mish(x: Any) -> Any:
    """x tanh(softplus(x)); slope t + x sigmoid(x) (1 - t^2) with t = tanh(softplus(x))."""
    def slope(x: Any) -> Any:
        t = tanh(softplus(x, 1.0, math.inf))
        return add(t, mul(mul(x, sigmoid(x)), sub(1.0, mul(t, t))))

    return _pointwise("MishBackward0", _mish, x, slope)


@op(unary(), torch="torch.nn.functional.softsign")
def softsign(x: Any) -> Any:
    """x / (1 + |x|), composed as torch composes it (its grad_fn is DivBackward0)."""
    return div(x, add(abs(x), 1.0))


@op(unary(), torch="torch.nn.functional.tanhshrink")
def tanhshrink(x: Any) -> Any:
    """x - tanh(x), composed as torch composes it (SubBackward0)."""
    return sub(x, tanh(x))


_log_sigmoid = jax.jit(jax.nn.log_sigmoid)


@op(_drawn("x8", scale=8.0), torch="torch.nn.functional.logsigmoid")
def logsigmoid(x: Any) -> Any:
    """log(sigmoid(x)) = -softplus(-x), stable for large |x|; slope sigmoid(-x)."""
    return _pointwise("LogSigmoidBackward0", _log_sigmoid, x, lambda x: sigmoid(neg(x)))


def _glu_case(d: Any) -> Any:
    s = d.choice([(4,), (3, 4), (2, 3, 4), (2, 2)], "shape")
    even = [i for i, n in enumerate(s) if n % 2 == 0]
    i = d.choice(even, "dim")
    return call(array(d, s), i - len(s) if boolean(d, "negative dim") else i)


@op(Case("an even dim", _glu_case), torch="torch.nn.functional.glu")
def glu(x: Any, dim: int = -1) -> Any:
    """a * sigmoid(b) where a, b are the halves of ``x`` along ``dim`` (the gated linear unit),
    composed of split, sigmoid and mul."""
    x = unwrap(x)
    s = shape_of(x)
    if not s:
        raise RuntimeError("glu does not support scalars because halving size must be even")
    d = canonical_dim(dim, len(s))
    if s[d] % 2:
        raise RuntimeError(f"Halving dimension must be even, but dimension {d} is size {s[d]}")
    a, b = split(x, s[d] // 2, d)
    return mul(a, sigmoid(b))


def _prelu_case(d: Any) -> Any:
    s = d.choice([(3,), (2, 3), (2, 3, 2)], "shape")
    channels = s[1] if len(s) >= 2 else 1
    w = array(d, d.choice([(1,), (channels,), ()], "weight shape"), "pos") * 0.25
    return call(array(d, s, "away"), w)


@op(Case("weight per channel or shared", _prelu_case), torch="torch.nn.functional.prelu")
def prelu(input: Any, weight: Any) -> Any:
    """x where x > 0, else weight * x; ``weight`` has one slope, or one per channel (dim 1).
    Composed of reshape, mul and where (the slope at 0 is weight's, as torch's)."""
    x, w = unwrap(input), unwrap(weight)
    s, ws = shape_of(x), shape_of(w)
    if len(ws) > 1:
        raise RuntimeError(f"prelu: Expected `weight` to be a scalar or 1D tensor, but got: "
                           f"ndim = {len(ws)}")
    n = int(np.prod(ws))
    channels = s[1] if len(s) >= 2 else 1
    if n != 1 and n != channels:
        raise RuntimeError(f"Mismatch of parameter numbers and input channel size. Found "
                           f"parameter numbers = {n} and channel size = {channels}.")
    slopes = reshape(w, () if n == 1 else (n,) + (1,) * (len(s) - 2))
    return where(constant(x) > 0, x, mul(slopes, x))
