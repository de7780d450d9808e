"""Strided tensors and reductions: pure functions over ``(storage, shape, strides, offset)``.

A :class:`StridedArray` is how PyTorch keeps a tensor in memory: a flat storage and a layout.
Views (``transpose``, ``select``, ``slice``, ``expand``, ``view``...) only change the layout.
``unfold`` gives overlapping windows (a convolution's) the same way. Reductions take a
StridedArray or a plain array, are jittable, vmappable and differentiable, and lower a view to XLA
slices (or a gather when the view is no box of its storage); over overlapping windows, to one
``lax.reduce_window`` (``funcdl.ops.windows``).
"""

from funcdl.ops.explain import explain
from funcdl.ops.lower import contiguous, lower, plan_slices, plan_stacked, reshape, to_array
from funcdl.ops.reduce import amax, amin, argmax, argmin, logsumexp, mean, prod, sum, var
from funcdl.ops.shapes import ShapeError, broadcast_shapes, canonical_dim, canonical_dims
from funcdl.ops.strided import (
    StridedArray,
    as_strided,
    contiguous_strides,
    expand,
    from_array,
    getitem,
    is_contiguous,
    item,
    narrow,
    permute,
    select,
    slice,
    squeeze,
    transpose,
    unfold,
    unsqueeze,
    view,
)

__all__ = [
    "StridedArray", "as_strided", "from_array", "to_array", "contiguous_strides",
    "is_contiguous", "contiguous", "transpose", "permute", "select", "slice", "narrow", "expand",
    "squeeze", "unsqueeze", "unfold", "view", "reshape", "item", "getitem",
    "sum", "mean", "prod", "amax", "amin", "argmax", "argmin", "logsumexp", "var",
    "explain", "lower", "plan_slices", "plan_stacked", "canonical_dim", "canonical_dims",
    "broadcast_shapes", "ShapeError",
]
