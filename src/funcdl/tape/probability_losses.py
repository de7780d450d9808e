"""Losses on probabilities with ``torch.nn.functional``'s names, arguments and reductions:
``binary_cross_entropy`` (on probabilities, not logits) and ``kl_div``."""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcdl.ops.checks import Check, require
from funcdl.tape.cases import Case, array, boolean, call, shape
from funcdl.tape.elementwise import div, exp, log, maximum, mul, sub, where
from funcdl.tape.losses import (
    REDUCTIONS,
    apply_reduction,
    check_reduction,
    in_float32,
    scaled_rule,
    summed_tangent,
)
from funcdl.tape.reductions import sum
from funcdl.tape.registry import op
from funcdl.tape.tensor import apply, constant, shape_of, unwrap

_EPSILON = 1e-12  # torch's floor on x (1 - x) in the input's gradient


@jax.custom_jvp
def _bce_elements(x: Any, t: Any) -> Any:
    """torch's elementwise loss: each log floored at -100, so an input of exactly 0 or 1 gives
    100, not inf."""
    return (t - 1) * jnp.maximum(jnp.log1p(-x), -100.0) - t * jnp.maximum(jnp.log(x), -100.0)


@_bce_elements.defjvp
def _bce_elements_jvp(primals: Any, tangents: Any) -> Any:
    # torch's slopes, so jax.grad of the plain path equals torch (and the tape) where the floors
    # bite: (x - t) / max(x (1 - x), 1e-12) for the input, -logit(x) for the target
    x, t = primals
    tx, tt = tangents
    slope_x = (x - t) / jnp.maximum((1 - x) * x, _EPSILON)
    return _bce_elements(x, t), tx * slope_x + tt * (jnp.log1p(-x) - jnp.log(x))


@functools.partial(jax.jit, static_argnames="reduction")
def _bce(x: Any, t: Any, w: Any, reduction: str) -> Any:
    loss = _bce_elements(x, t) if w is None else _bce_elements(x, t) * w
    return {"mean": jnp.mean, "sum": jnp.sum}.get(reduction, lambda a: a)(loss)


def _weighted(slope: Any, w: Any) -> Any:
    return slope if w is None else mul(slope, w)


def _slope_x(x: Any, t: Any, w: Any) -> Any:
    return _weighted(div(sub(x, t), maximum(mul(sub(1.0, x), x), _EPSILON)), w)


def _slope_t(x: Any, t: Any, w: Any) -> Any:
    return _weighted(sub(log(sub(1.0, x)), log(x)), w)


def _slope_w(x: Any, t: Any, w: Any) -> Any:  # the unweighted elementwise loss
    return sub(mul(sub(t, 1.0), maximum(log(sub(1.0, x)), -100.0)),
               mul(t, maximum(log(x), -100.0)))


def _bce_case(d: Any) -> Any:
    s = shape(d)
    x = 1 / (1 + np.exp(-array(d, s)))  # probabilities in (0, 1)
    t = np.random.default_rng(d.seed("target")).uniform(size=s).astype(np.float32)
    weight = {"weight": array(d, s[-1:], "pos")} if boolean(d, "weight") else {}
    return call(x, t, **weight, reduction=d.choice(REDUCTIONS, "reduction"))


@op(Case("weight, reductions", _bce_case, torch_no_grad=("weight",)),
    torch="torch.nn.functional.binary_cross_entropy")
def binary_cross_entropy(input: Any, target: Any, weight: Any = None, *,
                         reduction: str = "mean") -> Any:
    """-weight (t log x + (1 - t) log(1 - x)) on probabilities ``input``, each log floored at
    -100 as torch does; torch's slopes. ``weight`` broadcasts to the input's shape. Inputs or
    targets outside [0, 1] raise torch's error (under your own ``jax.jit``: the loss is NaN);
    16-bit inputs are computed in float32."""
    check_reduction(reduction)
    x, t, w = in_float32(unwrap(input), unwrap(target), unwrap(weight))
    s = shape_of(x)
    if shape_of(t) != s:
        raise ValueError(f"Using a target size (torch.Size({list(shape_of(t))})) that is "
                         f"different to the input size (torch.Size({list(s)})) is deprecated. "
                         "Please ensure they have the same size.")
    if w is not None:
        _check_weight(shape_of(w), s)
    fill = [_check_unit(v, what) for v, what in ((x, "input"), (t, "target"))]
    slopes = (_slope_x, _slope_t, _slope_w)
    loss = apply("BinaryCrossEntropyBackward0", lambda x, t, w: _bce(x, t, w, reduction),
                 (x, t, w), tuple(scaled_rule(s, reduction, f) for f in slopes),
                 tangents=tuple(summed_tangent(reduction, f) for f in slopes))
    if any(fill):  # an unrecorded traced check: a loss of out-of-range values is NaN
        bad = _outside_unit(x) | _outside_unit(t)
        loss = where(bad if reduction == "none" else jnp.any(bad), math.nan, loss)
    return loss


def _outside_unit(v: Any) -> Any:
    v = jnp.asarray(constant(v))
    return ~((v >= 0) & (v <= 1))  # NaN is outside too


def _check_unit(v: Any, what: str) -> bool:
    """torch's error for values outside [0, 1]; True when a traced check was not recorded."""
    bad = _outside_unit(v)
    return require(jnp.any(bad), 0, Check(
        RuntimeError, f"all elements of {what} should be between 0 and 1",
        "binary_cross_entropy takes probabilities; for logits use "
        "binary_cross_entropy_with_logits"))


def _check_weight(ws: tuple[int, ...], s: tuple[int, ...]) -> None:
    """torch's errors for a weight that does not broadcast to the input's shape ``s``."""
    for i in range(1, len(ws) + 1):
        if i <= len(s) and ws[-i] not in (1, s[-i]):
            raise RuntimeError(f"Attempting to broadcast a dimension of length {ws[-i]} at -{i}! "
                               f"Mismatching argument at index 1 had torch.Size({list(ws)}); but "
                               f"expected shape should be broadcastable to {list(s)}")
    if len(ws) > len(s):
        full = ws[:len(ws) - len(s)] + s
        raise RuntimeError(f"output with shape {list(s)} doesn't match the broadcast shape "
                           f"{list(full)}")


def _xlogy(t: Any) -> Any:
    """t log t, 0 where t == 0 (torch's xlogy); the safe log keeps the gradient there 0, where
    torch's is NaN."""
    zero = constant(t) == 0
    return where(zero, 0.0, mul(t, log(where(zero, 1.0, t))))


def _kl_case(d: Any) -> Any:
    s = d.choice([(3, 4), (2, 3, 4), (4,)], "shape")
    x, logits = array(d, s), array(d, s)
    logp = x - np.log(np.exp(x).sum(-1, keepdims=True))
    log_q = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    log_target = boolean(d, "log_target")
    return call(logp, log_q if log_target else np.exp(log_q), log_target=log_target,
                reduction=d.choice(["batchmean", "sum", "none"], "reduction"))


@op(Case("log_target, batchmean/sum/none", _kl_case), torch="torch.nn.functional.kl_div")
def kl_div(input: Any, target: Any, *, reduction: str = "mean", log_target: bool = False
           ) -> Any:
    """Pointwise KL divergence t (log t - input) of log-probabilities ``input`` from ``target``
    (probabilities, or log-probabilities with ``log_target``). ``"batchmean"`` divides the sum
    by the batch size (the KL divergence's definition); ``"mean"`` divides by every element and
    warns as torch does."""
    check_reduction(reduction, REDUCTIONS + ("batchmean",))
    if reduction == "mean":
        warnings.warn("reduction: 'mean' divides the total loss by both the batch size and the "
                      "support size.'batchmean' divides only by the batch size, and aligns with "
                      "the KL div math definition.'mean' will be changed to behave the same as "
                      "'batchmean' in the next major release.", UserWarning, stacklevel=2)
    x, t = in_float32(unwrap(input), unwrap(target))
    loss = mul(exp(t), sub(t, x)) if log_target else sub(_xlogy(t), mul(t, x))
    if reduction == "batchmean":
        total = sum(loss)
        return div(total, shape_of(x)[0]) if shape_of(x) else total
    return apply_reduction(loss, reduction)
