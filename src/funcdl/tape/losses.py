"""Losses with ``torch.nn.functional``'s names, arguments and reductions."""

from __future__ import annotations

import builtins
import functools
import math
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcdl.ops.checks import Check, require
from funcdl.ops.shapes import broadcast_shapes
from funcdl.tape.activations import log_softmax, sigmoid, softplus
from funcdl.tape.cases import Case, array, boolean, call, const, shape
from funcdl.tape.elementwise import add, astype, div, mul, neg, sub, where
from funcdl.tape.reductions import mean, sum
from funcdl.tape.registry import op
from funcdl.tape.shape import broadcast_to
from funcdl.tape.tensor import Tensor, apply, constant, shape_of, unwrap

REDUCTIONS = ("mean", "sum", "none")


def _reduce(loss: Any, reduction: str) -> Any:
    if reduction == "mean":
        return mean(loss)
    if reduction == "sum":
        return sum(loss)
    if reduction == "none":
        return loss
    raise ValueError(f"{reduction} is not a valid value for reduction")


def _in_float32(*xs: Any) -> tuple:
    """16-bit float inputs as float32: losses are computed in float32, as under torch.autocast,
    so a loss above float16's 65504 does not overflow (torch outside autocast would)."""
    return tuple(astype(x, jnp.float32) if getattr(x, "dtype", None) in (jnp.float16, jnp.bfloat16)
                 else x for x in xs)


def _warn_target_size(input: Any, target: Any) -> None:
    """torch's warning when a target would broadcast against the input instead of matching it."""
    a, b = tuple(shape_of(input)), tuple(shape_of(target))
    if a != b:
        warnings.warn(f"Using a target size (torch.Size({list(b)})) that is different to the "
                      f"input size (torch.Size({list(a)})). This will likely lead to incorrect "
                      "results due to broadcasting. Please ensure they have the same size.",
                      UserWarning, stacklevel=3)


def _mse_case(d: Any) -> Any:
    s = shape(d)
    return call(array(d, s), array(d, s), reduction=d.choice(REDUCTIONS, "reduction"))


@op(Case("reductions", _mse_case), torch="torch.nn.functional.mse_loss")
def mse_loss(input: Any, target: Any, reduction: str = "mean") -> Any:
    """Mean squared error (``torch.nn.functional.mse_loss``). A target of another shape is
    broadcast with torch's UserWarning ("Using a target size ..."), not refused; 16-bit inputs
    are computed in float32."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"{reduction} is not a valid value for reduction")
    _warn_target_size(input, target)
    input, target = _in_float32(unwrap(input), unwrap(target))
    d = sub(input, target)
    return _reduce(mul(d, d), reduction)


def _class_targets(d: Any) -> Any:
    n, c = d.integer(1, 4, "batch"), d.integer(2, 5, "classes")
    extra = d.choice([(), (3,)], "extra dims")
    target = np.asarray([d.integer(0, c - 1, "class") for _ in range(n * int(np.prod(extra)))])
    target = target.reshape((n,) + extra)
    target[(0,) * target.ndim] = -100  # one ignored entry
    if target.size == 1:
        target[...] = 1
    return call(array(d, (n, c) + extra), target,
                label_smoothing=d.choice([0.0, 0.1], "smoothing"),
                reduction=d.choice(REDUCTIONS, "reduction"))


def _probability_targets(d: Any) -> Any:
    x = array(d, d.choice([(3, 4), (2, 4, 3)], "shape"))
    p = np.exp(array(d, x.shape))
    return call(x, const(p / p.sum(1, keepdims=True)),
                label_smoothing=d.choice([0.0, 0.2], "smoothing"),
                reduction=d.choice(REDUCTIONS, "reduction"))


@op(Case("class indices, ignore_index", _class_targets),
    Case("class probabilities", _probability_targets),
    torch="torch.nn.functional.cross_entropy")
def cross_entropy(input: Any, target: Any, *, ignore_index: int = -100,
                  reduction: str = "mean", label_smoothing: float = 0.0) -> Any:
    """``torch.nn.functional.cross_entropy`` on logits with classes in dim 1 ((C,) or (N, C, ...)).

    Integer targets: the log-likelihood of the class, ``ignore_index`` entries excluded (the mean
    divides by the number kept). Float targets of the input's shape are class probabilities.
    ``label_smoothing`` mixes the target with the uniform distribution. A class target outside
    ``[0, C)`` that is not ``ignore_index`` raises torch's IndexError (under your own ``jax.jit``:
    the loss is NaN, see ``funcdl.ops.checks``); 16-bit inputs are computed in float32.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"{reduction} is not a valid value for reduction")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing}")
    input, target = _in_float32(unwrap(input), jnp.asarray(constant(unwrap(target))))
    shape = shape_of(input)
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
            return div(sum(loss), builtins.max(1, int(np.prod(shape_of(loss)))))
        return _reduce(loss, reduction)
    expected = shape[:cdim] + shape[cdim + 1:]
    if target.shape != expected:
        raise RuntimeError(f"Expected target size {list(expected)}, got {list(target.shape)}")
    keep = target != ignore_index
    bad = keep & ((target < 0) | (target >= n_classes))
    fill = _check_targets(target, bad, n_classes, ignore_index)
    onehot = jax.nn.one_hot(jnp.where(keep, target, 0), n_classes, axis=cdim, dtype=logp.dtype)
    loss = neg(sum(mul(logp, onehot), cdim))
    if label_smoothing > 0.0:
        smooth = neg(div(sum(logp, cdim), n_classes))
        loss = add(mul(1.0 - label_smoothing, loss), mul(label_smoothing, smooth))
    loss = where(keep, loss, 0.0)
    if fill:  # an unrecorded traced check: NaN, never the 0.0 an all-zero one-hot gives
        loss = where(bad, math.nan, loss)
    if reduction == "mean":
        return div(sum(loss), jnp.sum(keep).astype(logp.dtype))
    return _reduce(loss, reduction)


def _check_targets(target: Any, bad: Any, n_classes: int, ignore_index: int) -> bool:
    """torch's IndexError for a class target out of range (not ``ignore_index``): now when
    concrete, recorded for the jitted step when traced; True when the loss must be filled."""
    if target.size == 0:
        return False
    first = jnp.ravel(target)[jnp.argmax(jnp.ravel(bad))]
    return require(jnp.any(bad), first, Check(
        IndexError, "Target {value} is out of bounds.",
        f"The input has {n_classes} classes: class targets must be in [0, {n_classes}) or equal "
        f"ignore_index={ignore_index}"))


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


def _bce_case(d: Any) -> Any:
    s = shape(d)
    t = (array(d, s) > 0).astype(np.float32)
    if boolean(d, "pos_weight"):
        return call(array(d, s), t, pos_weight=array(d, s[-1:], "pos"))
    return call(array(d, s), t, reduction=d.choice(REDUCTIONS, "reduction"))


@op(Case("pos_weight or reductions", _bce_case, torch_no_grad=("pos_weight",)),
    torch="torch.nn.functional.binary_cross_entropy_with_logits")
def binary_cross_entropy_with_logits(input: Any, target: Any, *, reduction: str = "mean",
                                     pos_weight: Any = None) -> Any:
    """Sigmoid + binary cross-entropy in one stable formula (PyTorch's):
    (1 - t) x + (1 + (pos_weight - 1) t) softplus(-x); dL/dx = (1 - t) - w sigmoid(-x)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"{reduction} is not a valid value for reduction")
    x, t, pw = _in_float32(unwrap(input), unwrap(target), unwrap(pos_weight))
    shape = shape_of(x)
    if shape != shape_of(t):
        raise ValueError(f"Target size ({list(shape_of(t))}) must be the same as input size "
                         f"({list(shape)})")
    if pw is not None:
        broadcast_shapes(shape, shape_of(pw))
    n = builtins.max(1, int(np.prod(shape)))

    def g_full(g: Any) -> Any:  # dL/d(elementwise loss)
        if reduction == "none":
            return g
        return broadcast_to(div(g, n) if reduction == "mean" else g, shape)

    def weight(t: Any, pw: Any) -> Any:
        return 1.0 if pw is None else add(1.0, mul(sub(pw, 1.0), t))

    # d(elementwise loss) / d(each input); the rules scale them by dL/d(loss element), the
    # tangent rules sum (or average) them times the input's tangent
    def slope_x(x: Any, t: Any, pw: Any) -> Any:
        return sub(sub(1.0, t), mul(weight(t, pw), sigmoid(neg(x))))

    def slope_t(x: Any, t: Any, pw: Any) -> Any:
        return neg(x) if pw is None else add(neg(x), mul(sub(pw, 1.0), _softplus_neg(x)))

    def slope_pw(x: Any, t: Any, pw: Any) -> Any:
        return mul(t, _softplus_neg(x))

    def rule_x(g: Any, z: Any, x: Any, t: Any, pw: Any) -> Any:
        if not any(isinstance(v, Tensor) for v in (g, x, t, pw)):
            return _bce_input_grad(g, x, t, pw, reduction)
        return mul(g_full(g), slope_x(x, t, pw))

    slopes = (slope_x, slope_t, slope_pw)
    return apply("BinaryCrossEntropyWithLogitsBackward0",
                 lambda x, t, pw: _bce_forward(x, t, pw, reduction), (x, t, pw),
                 (rule_x, *(_scaled(g_full, s) for s in slopes[1:])),
                 tangents=tuple(_summed(reduction, s) for s in slopes))


def _softplus_neg(x: Any) -> Any:
    """softplus(-x), without torch's linear tail (the loss uses the exact log1p(exp(-x)))."""
    return softplus(neg(x), 1.0, math.inf)


def _scaled(g_full: Any, slope: Any) -> Any:
    """A backward rule: dL/d(loss element) times the element's slope."""
    return lambda g, z, x, t, pw: mul(g_full(g), slope(x, t, pw))


def _summed(reduction: str, slope: Any) -> Any:
    """A tangent rule: the input's tangent times the slope, reduced like the loss."""
    return lambda tan, z, x, t, pw: _reduce(mul(tan, slope(x, t, pw)), reduction)
