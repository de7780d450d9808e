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
from funcdl.tape.shape import broadcast_to, reshape
from funcdl.tape.tensor import Tensor, apply, constant, shape_of, unwrap

REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str, valid: tuple[str, ...] = REDUCTIONS) -> None:
    """torch's error for a reduction it does not know."""
    if reduction not in valid:
        raise ValueError(f"{reduction} is not a valid value for reduction")


def apply_reduction(loss: Any, reduction: str) -> Any:
    """``loss`` reduced as torch's ``reduction`` argument says (mean, sum or none)."""
    if reduction == "mean":
        return mean(loss)
    if reduction == "sum":
        return sum(loss)
    if reduction == "none":
        return loss
    raise ValueError(f"{reduction} is not a valid value for reduction")


def in_float32(*xs: Any) -> tuple:
    """16-bit float inputs as float32: losses are computed in float32, as under torch.autocast,
    so a loss above float16's 65504 does not overflow (torch outside autocast would)."""
    return tuple(astype(x, jnp.float32) if getattr(x, "dtype", None) in (jnp.float16, jnp.bfloat16)
                 else x for x in xs)


def warn_target_size(input: Any, target: Any) -> None:
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
    warn_target_size(input, target)
    input, target = in_float32(unwrap(input), unwrap(target))
    d = sub(input, target)
    return apply_reduction(mul(d, d), reduction)


def _class_weight(d: Any, c: int) -> dict:
    """Half the draws weigh the classes (``weight=``, differentiated by funcdl, not by torch)."""
    return {"weight": array(d, (c,), "pos")} if boolean(d, "weight") else {}


def _class_targets(d: Any) -> Any:
    n, c = d.integer(1, 4, "batch"), d.integer(2, 5, "classes")
    extra = d.choice([(), (3,)], "extra dims")
    target = np.asarray([d.integer(0, c - 1, "class") for _ in range(n * int(np.prod(extra)))])
    target = target.reshape((n,) + extra)
    target[(0,) * target.ndim] = -100  # one ignored entry
    if target.size == 1:
        target[...] = 1
    return call(array(d, (n, c) + extra), target, **_class_weight(d, c),
                label_smoothing=d.choice([0.0, 0.1], "smoothing"),
                reduction=d.choice(REDUCTIONS, "reduction"))


def _probability_targets(d: Any) -> Any:
    x = array(d, d.choice([(3, 4), (2, 4, 3)], "shape"))
    p = np.exp(array(d, x.shape))
    return call(x, const(p / p.sum(1, keepdims=True)), **_class_weight(d, 4),
                label_smoothing=d.choice([0.0, 0.2], "smoothing"),
                reduction=d.choice(REDUCTIONS, "reduction"))


@op(Case("class indices, ignore_index, weight", _class_targets, torch_no_grad=("weight",)),
    Case("class probabilities, weight", _probability_targets, torch_no_grad=("weight",)),
    torch="torch.nn.functional.cross_entropy")
def cross_entropy(input: Any, target: Any, weight: Any = None, *, ignore_index: int = -100,
                  reduction: str = "mean", label_smoothing: float = 0.0) -> Any:
    """``torch.nn.functional.cross_entropy`` on logits with classes in dim 1 ((C,) or (N, C, ...)).

    Integer targets: ``nll_loss`` of ``log_softmax(input)``, ``ignore_index`` entries excluded
    (the mean divides by the summed ``weight`` of the kept entries). Float targets of the input's
    shape are class probabilities (weighted per class; the mean divides by the entry count).
    ``label_smoothing`` mixes the target with the uniform distribution. A class target outside
    ``[0, C)`` that is not ``ignore_index`` raises torch's IndexError (under your own ``jax.jit``:
    the loss is NaN, see ``funcdl.ops.checks``); 16-bit inputs are computed in float32.
    """
    check_reduction(reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise RuntimeError(f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing}")
    input, target, weight, shape, cdim = _class_inputs(input, target, weight)
    n_classes = shape[cdim]
    logp = log_softmax(input, cdim)

    def weighted(x: Any) -> Any:
        return x if weight is None else mul(x, _along_classes(weight, len(shape), cdim))

    if jnp.issubdtype(target.dtype, jnp.floating):
        if target.shape != shape:
            raise RuntimeError(f"Expected floating point target (class probabilities) of the "
                               f"input's shape {list(shape)}, got {list(target.shape)}")
        probs = target * (1.0 - label_smoothing) + label_smoothing / n_classes
        loss = neg(sum(weighted(mul(logp, probs)), cdim))
        if reduction == "mean":
            return div(sum(loss), builtins.max(1, int(np.prod(shape_of(loss)))))
        return apply_reduction(loss, reduction)
    target = _class_target(shape, target)
    loss, kept = _class_terms(logp, target, weight, ignore_index, cdim)
    if label_smoothing > 0.0:  # torch's smoothing term: every class's weighted log-probability
        smooth = where(target != ignore_index, neg(sum(weighted(logp), cdim)), 0.0)
        loss = add(mul(1.0 - label_smoothing, loss), mul(label_smoothing / n_classes, smooth))
    return _weighted_reduction(loss, kept, reduction)


def _nll_case(d: Any) -> Any:
    c = _class_targets(d)
    return call(*c.args, **{k: v for k, v in c.kwargs.items() if k != "label_smoothing"})


@op(Case("log-probabilities, ignore_index, weight", _nll_case, torch_no_grad=("weight",)),
    torch="torch.nn.functional.nll_loss")
def nll_loss(input: Any, target: Any, weight: Any = None, *, ignore_index: int = -100,
             reduction: str = "mean") -> Any:
    """``torch.nn.functional.nll_loss``: ``-weight[t] * input[t]`` per entry, with classes in
    dim 1 ((C,) or (N, C, ...)) of ``input`` (log-probabilities). ``ignore_index`` entries give 0
    and are left out of the mean, which divides by the kept entries' summed weight (NaN when
    none is kept, as torch). Targets of any integer dtype (JAX has no int64 by default)."""
    check_reduction(reduction)
    input, target, weight, shape, cdim = _class_inputs(input, target, weight)
    target = _class_target(shape, target)
    return _weighted_reduction(*_class_terms(input, target, weight, ignore_index, cdim),
                               reduction)


def _class_inputs(input: Any, target: Any, weight: Any) -> tuple:
    """A class loss's arguments unwrapped (16-bit floats as float32) and checked as torch checks
    them, with the input's shape and its class dim (1, or 0 for a (C,) input)."""
    input, weight = in_float32(unwrap(input), unwrap(weight))
    target = jnp.asarray(constant(unwrap(target)))
    shape = shape_of(input)
    if not shape:
        raise ValueError("Expected 1 or more dimensions (got 0)")
    cdim = 1 if len(shape) >= 2 else 0
    _check_class_weight(weight, shape[cdim])
    return input, target, weight, shape, cdim


_TORCH_DTYPES = {"float32": "Float", "float64": "Double", "float16": "Half",
                 "bfloat16": "BFloat16", "bool": "Bool"}


def _class_target(shape: tuple[int, ...], target: Any) -> Any:
    """``target`` checked against the input's ``shape`` as torch checks it (its errors); a
    1-element target of a (C,) input as a 0-d one."""
    if not jnp.issubdtype(target.dtype, jnp.integer):
        name = _TORCH_DTYPES.get(str(target.dtype), str(target.dtype))
        raise RuntimeError(f"expected target dtype to be Long or Byte, but got {name}")
    t = tuple(target.shape)
    if len(shape) != 1 and shape[0] != (t[0] if t else 0):
        raise ValueError(f"Expected input batch_size ({shape[0]}) to match target batch_size "
                         f"({t[0] if t else 0}).")
    if len(shape) <= 2 and len(t) > 1:
        raise RuntimeError("0D or 1D target tensor expected, multi-target not supported")
    if len(shape) == 1:
        if t not in ((), (1,)):
            raise ValueError(f"For 1D input, 1D target must have size 1, but got target size: "
                             f"{t[0]}")
        return target.reshape(())
    expected = shape[:1] + shape[2:]
    if t != expected:
        raise RuntimeError(f"Expected target size {list(expected)}, got {list(t)}")
    return target


def _check_class_weight(weight: Any, n_classes: int) -> None:
    if weight is not None and shape_of(weight) != (n_classes,):
        raise RuntimeError(f"weight tensor should be defined either for all {n_classes} classes "
                           f"or no classes but got weight tensor of shape: "
                           f"{list(shape_of(weight))}")


def _along_classes(weight: Any, ndim: int, cdim: int) -> Any:
    """The (C,) ``weight`` shaped to broadcast along the class dim of an ``ndim``-d input."""
    return reshape(weight, (-1,) + (1,) * (ndim - 1 - cdim))


def _class_terms(logp: Any, target: Any, weight: Any, ignore_index: int, cdim: int) -> tuple:
    """Per entry ``-weight[t] logp[t]`` (0 where ignored) and the kept entries' ``weight[t]``
    (1 each without weights): the terms of nll_loss and its weighted mean."""
    n_classes = shape_of(logp)[cdim]
    keep = target != ignore_index
    bad = keep & ((target < 0) | (target >= n_classes))
    fill = _check_targets(target, bad, n_classes, ignore_index)
    onehot = jax.nn.one_hot(jnp.where(keep, target, 0), n_classes, axis=cdim,
                            dtype=jnp.result_type(constant(logp)))
    picked = onehot if weight is None else mul(onehot, _along_classes(weight, target.ndim + 1,
                                                                      cdim))
    loss = where(keep, neg(sum(mul(logp, picked), cdim)), 0.0)
    if fill:  # an unrecorded traced check: NaN, never the 0.0 an all-zero one-hot gives
        loss = where(bad, math.nan, loss)
    kept = keep.astype(onehot.dtype) if weight is None else where(keep, sum(picked, cdim), 0.0)
    return loss, kept


def _weighted_reduction(loss: Any, kept: Any, reduction: str) -> Any:
    """torch's nll reduction: the mean divides by the kept entries' summed weight."""
    if reduction == "mean":
        return div(sum(loss), sum(kept))
    return apply_reduction(loss, reduction)


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
    weight = {"weight": array(d, s[-1:], "pos")} if boolean(d, "weight") else {}
    if boolean(d, "pos_weight"):
        return call(array(d, s), t, **weight, pos_weight=array(d, s[-1:], "pos"))
    return call(array(d, s), t, **weight, reduction=d.choice(REDUCTIONS, "reduction"))


@op(Case("weight, pos_weight or reductions", _bce_case, torch_no_grad=("pos_weight", "weight")),
    torch="torch.nn.functional.binary_cross_entropy_with_logits")
def binary_cross_entropy_with_logits(input: Any, target: Any, weight: Any = None, *,
                                     reduction: str = "mean", pos_weight: Any = None) -> Any:
    """Sigmoid + binary cross-entropy in one stable formula (PyTorch's):
    (1 - t) x + (1 + (pos_weight - 1) t) softplus(-x); dL/dx = (1 - t) - w sigmoid(-x).
    ``weight`` (broadcast to the input's shape) scales each element's loss before reducing."""
    check_reduction(reduction)
    if weight is not None:
        w = in_float32(unwrap(weight))[0]
        full = broadcast_shapes(shape_of(input), shape_of(w))
        if full != tuple(shape_of(input)):
            raise RuntimeError(f"output with shape {list(shape_of(input))} doesn't match the "
                               f"broadcast shape {list(full)}")
        loss = binary_cross_entropy_with_logits(input, target, reduction="none",
                                                pos_weight=pos_weight)
        return apply_reduction(mul(loss, w), reduction)
    x, t, pw = in_float32(unwrap(input), unwrap(target), unwrap(pos_weight))
    shape = shape_of(x)
    if shape != shape_of(t):
        raise ValueError(f"Target size ({list(shape_of(t))}) must be the same as input size "
                         f"({list(shape)})")
    if pw is not None:
        broadcast_shapes(shape, shape_of(pw))

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
        return mul(spread(g, shape, reduction), slope_x(x, t, pw))

    slopes = (slope_x, slope_t, slope_pw)
    return apply("BinaryCrossEntropyWithLogitsBackward0",
                 lambda x, t, pw: _bce_forward(x, t, pw, reduction), (x, t, pw),
                 (rule_x, *(scaled_rule(shape, reduction, s) for s in slopes[1:])),
                 tangents=tuple(summed_tangent(reduction, s) for s in slopes))


def _softplus_neg(x: Any) -> Any:
    """softplus(-x), without torch's linear tail (the loss uses the exact log1p(exp(-x)))."""
    return softplus(neg(x), 1.0, math.inf)


def spread(g: Any, shape: tuple[int, ...], reduction: str) -> Any:
    """dL/d(each loss element) of an elementwise loss of ``shape`` from dL/d(its reduction)."""
    if reduction == "none":
        return g
    n = builtins.max(1, int(np.prod(shape)))
    return broadcast_to(div(g, n) if reduction == "mean" else g, shape)


def scaled_rule(shape: tuple[int, ...], reduction: str, slope: Any) -> Any:
    """A backward rule of an elementwise loss: dL/d(loss element) times the element's slope
    ``slope(*inputs)``."""
    return lambda g, z, *xs: mul(spread(g, shape, reduction), slope(*xs))


def summed_tangent(reduction: str, slope: Any) -> Any:
    """A tangent rule of an elementwise loss: the input's tangent times the slope, reduced like
    the loss."""
    return lambda tan, z, *xs: apply_reduction(mul(tan, slope(*xs)), reduction)
