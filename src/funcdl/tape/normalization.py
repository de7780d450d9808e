"""Normalisation layers as functions: ``layer_norm`` (composed of the elementwise and reduction
ops, so its gradient is theirs)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from funcdl.tape.cases import Case, array, boolean, call, shape
from funcdl.tape.elementwise import add, div, mul, sqrt, sub
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
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and shape_of(p) != norm:
            raise RuntimeError(f"Expected {name} to be of same shape as normalized_shape, but got "
                               f"{name} of shape {list(shape_of(p))} and normalized_shape = "
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
