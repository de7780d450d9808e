"""Activations and (log-)softmax, each with its slope written out.

jax.nn's custom_jvp functions cost ~0.3 ms per eager call; jitted once they dispatch in
microseconds, so the forwards below call jitted kernels (inside an outer jit they inline).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from funcdl.ops.shapes import canonical_dim
from funcdl.tape.cases import Case, along_dim, array, call, shape, unary
from funcdl.tape.elementwise import add, erf, exp, mul, sub, where
from funcdl.tape.reductions import sum
from funcdl.tape.registry import op
from funcdl.tape.tensor import Tensor, apply, constant, shape_of, unwrap

_relu = jax.jit(jax.nn.relu)
_silu = jax.jit(jax.nn.silu)
_gelu = jax.jit(jax.nn.gelu, static_argnames="approximate")
_softmax = jax.jit(jax.nn.softmax, static_argnames="axis")
_log_softmax = jax.jit(jax.nn.log_softmax, static_argnames="axis")


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
