"""Normalisation layers as functions: ``layer_norm`` and ``rms_norm`` (composed of the
elementwise and reduction ops, so their gradients are theirs)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax import lax

from funcdl.tape.cases import Case, array, boolean, call, const, shape
from funcdl.tape.elementwise import add, astype, div, mul, sqrt, sub
from funcdl.tape.reductions import mean
from funcdl.tape.registry import op
from funcdl.tape.shape import reshape
from funcdl.tape.tensor import Tensor, constant, shape_of, unwrap, wrap


def _layer_norm_case(d: Any) -> Any:
    s = shape(d, 1, min_side=2)
    norm = s[len(s) - d.integer(1, len(s), "normalized dims"):]
    x = array(d, s) * 3 + 1
    if boolean(d, "affine"):
        return call(x, norm, array(d, norm), array(d, norm))
    return call(x, norm)


@op(Case("affine or not", _layer_norm_case), torch="torch.nn.functional.layer_norm")
def layer_norm(x: Any, normalized_shape: int | Sequence[int], weight: Any = None,
               bias: Any = None, eps: float = 1e-5) -> Any:
    """``torch.nn.functional.layer_norm`` over the trailing ``normalized_shape`` dims."""
    x, weight, bias = unwrap(x), unwrap(weight), unwrap(bias)
    norm = ((normalized_shape,) if isinstance(normalized_shape, int | np.integer)
            else tuple(normalized_shape))
    shape = shape_of(x)
    k = len(norm)
    if k == 0 or shape[len(shape) - k:] != norm or len(shape) < k:
        raise RuntimeError(f"Given normalized_shape={list(norm)}, expected input with shape "
                           f"[*, {', '.join(map(str, norm))}], but got input of size"
                           f"{list(shape)}")
    _check_affine(norm, weight=weight, bias=bias)
    dims = tuple(range(len(shape) - k, len(shape)))
    centred = sub(x, mean(x, dims, keepdim=True))
    variance = mean(mul(centred, centred), dims, keepdim=True)
    y = div(centred, sqrt(add(variance, eps)))
    if weight is not None:
        y = mul(y, weight)
    if bias is not None:
        y = add(y, bias)
    return y


def _check_affine(norm: tuple[int, ...], **params: Any) -> None:
    """torch's error for an affine parameter whose shape is not ``normalized_shape``."""
    for name, p in params.items():
        if p is not None and shape_of(p) != norm:
            raise RuntimeError(f"Expected {name} to be of same shape as normalized_shape, but got "
                               f"{name} of shape {list(shape_of(p))} and normalized_shape = "
                               f"{list(norm)}")


def _rms_norm_case(d: Any) -> Any:
    s = shape(d, 1, min_side=2)
    norm = s[len(s) - d.integer(1, len(s), "normalized dims"):]
    x = array(d, s) * 3 + 1
    eps = d.choice([None, 1e-5], "eps")
    return call(x, norm, array(d, norm) if boolean(d, "weight") else None, eps)


@op(Case("weight or not, eps", _rms_norm_case), torch="torch.nn.functional.rms_norm")
def rms_norm(x: Any, normalized_shape: int | Sequence[int], weight: Any = None,
             eps: float | None = None) -> Any:
    """``torch.nn.functional.rms_norm``: x / sqrt(mean(x^2) + eps) * weight over the trailing
    ``normalized_shape`` dims. ``eps=None`` is torch's: float32's machine epsilon for 16-bit and
    float32 inputs (float64's for float64); 16-bit inputs are computed in float32 (weight
    included) and cast back, as torch computes them."""
    x, weight = unwrap(x), unwrap(weight)
    norm = ((normalized_shape,) if isinstance(normalized_shape, int | np.integer)
            else tuple(normalized_shape))
    shape = shape_of(x)
    k = len(norm)
    if k == 0:
        raise RuntimeError("Expected normalized_shape to be at least 1-dimensional, i.e., "
                           "containing at least one element, but got normalized_shape = []")
    if len(shape) < k:
        raise ValueError(f"Input tensor must have at least {k} dimensions, but got {len(shape)}")
    if shape[len(shape) - k:] != norm:
        raise RuntimeError(f"Given normalized_shape={list(norm)}, expected input with shape "
                           f"[*{', '.join(map(str, norm))}], but got input of size{list(shape)}")
    _check_affine(norm, weight=weight)
    dtype = jnp.result_type(x)
    low = dtype in (jnp.float16, jnp.bfloat16)
    if low:
        x = astype(x, jnp.float32)
        weight = None if weight is None else astype(weight, jnp.float32)
    if eps is None:
        eps = float(jnp.finfo(jnp.float32 if low else dtype).eps)
    dims = tuple(range(len(shape) - k, len(shape)))
    y = div(x, sqrt(add(mean(mul(x, x), dims, keepdim=True), eps)))
    if weight is not None:
        y = mul(y, weight)
    return astype(y, dtype) if low else y


def _batch_norm_case(d: Any) -> Any:
    shape = d.choice([(3, 2, 4), (2, 2, 3, 3), (4, 2)], "shape")
    x = array(d, shape) * 2 + 1
    stats = const(array(d, (2,))), const(np.abs(array(d, (2,))) + 0.5)
    affine = (array(d, (2,)), array(d, (2,))) if boolean(d, "affine") else (None, None)
    return call(x, *stats, *affine, training=boolean(d, "training"),
                momentum=d.choice([0.1, 0.5], "momentum"), eps=1e-5)


def _torch_batch_norm(input: Any, running_mean: Any, running_var: Any, weight: Any = None,
                      bias: Any = None, training: bool = False, momentum: float = 0.1,
                      eps: float = 1e-5) -> Any:
    """torch's batch_norm, returning the running statistics it updates in place."""
    import torch

    mean, var = running_mean.clone(), running_var.clone()
    y = torch.nn.functional.batch_norm(input, mean, var, weight, bias, training, momentum, eps)
    return (y, mean, var) if training else y


def _check_batch_norm(shape: tuple, params: dict, training: bool) -> int:
    channels = shape[1] if len(shape) > 1 else 0
    for name, p in params.items():
        if p is not None and int(np.prod(shape_of(p))) != channels:
            raise RuntimeError(f"{name} should contain {channels} elements not "
                               f"{int(np.prod(shape_of(p)))}")
    count = int(np.prod(shape)) // max(channels, 1)
    if training and count <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size "
                         f"torch.Size({list(shape)})")  # torch's words, shape and all
    if not training and params["running_mean"] is None:
        raise RuntimeError("running_mean must be defined in evaluation mode")
    return count


@op(Case("training (batch statistics, running update) or eval (running statistics)",
         _batch_norm_case, rtol=1e-4, atol=1e-5), torch=_torch_batch_norm)
def batch_norm(input: Any, running_mean: Any, running_var: Any, weight: Any = None,
               bias: Any = None, training: bool = False, momentum: float = 0.1,
               eps: float = 1e-5) -> Any:
    """``torch.nn.functional.batch_norm`` over dim 1 (``(N, C, *)``): in training, the batch's
    mean and biased variance normalise; in evaluation, the running statistics.

    torch updates ``running_mean``/``running_var`` in place during training; funcdl is pure and
    returns them instead: ``(y, new_running_mean, new_running_var)`` when ``training`` and the
    running statistics are given (``new = (1 - momentum) old + momentum batch``, the variance
    unbiased), else ``y``. The new statistics carry no gradient, as torch's buffers.
    """
    x, rm, rv = unwrap(input), unwrap(running_mean), unwrap(running_var)
    weight, bias = unwrap(weight), unwrap(bias)
    shape = shape_of(x)
    count = _check_batch_norm(shape, {"running_mean": rm, "running_var": rv, "weight": weight,
                                      "bias": bias}, training)
    per_channel = (1, -1) + (1,) * (len(shape) - 2)
    dims = (0,) + tuple(range(2, len(shape)))
    if training or rm is None:
        mean_ = mean(x, dims, keepdim=True)
        centred = sub(x, mean_)
        variance = mean(mul(centred, centred), dims, keepdim=True)
    else:
        centred = sub(x, reshape(rm, per_channel))
        variance = reshape(rv, per_channel)
    scale = div(1.0, sqrt(add(variance, eps)))
    if weight is not None:
        scale = mul(scale, reshape(weight, per_channel))
    y = mul(centred, scale)
    if bias is not None:
        y = add(y, reshape(bias, per_channel))
    if not training or rm is None:
        return y
    # the running update reads detached values: torch updates its buffers outside autograd
    batch_mean = lax.stop_gradient(constant(mean_)).reshape(-1)
    batch_var = lax.stop_gradient(constant(variance)).reshape(-1) * (count / (count - 1))
    new_mean = (1 - momentum) * constant(rm) + momentum * batch_mean
    new_var = (1 - momentum) * constant(rv) + momentum * batch_var
    new_mean, new_var = new_mean.astype(constant(rm).dtype), new_var.astype(constant(rv).dtype)
    if isinstance(y, Tensor):  # Tensors in, Tensors out: constants, like torch's buffers
        return y, wrap("BatchNormStats", new_mean, ()), wrap("BatchNormStats", new_var, ())
    return y, new_mean, new_var
