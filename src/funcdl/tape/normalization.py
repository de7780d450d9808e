"""Normalisation layers as functions: ``layer_norm`` and ``rms_norm`` (composed of the
elementwise and reduction ops, so their gradients are theirs)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from funcdl.tape.cases import Case, array, boolean, call, shape
from funcdl.tape.elementwise import add, astype, div, mul, sqrt, sub
from funcdl.tape.reductions import mean
from funcdl.tape.registry import op
from funcdl.tape.tensor import shape_of, unwrap


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
