"""Reductions over overlapping windows (``unfold`` views) as one ``lax.reduce_window``.

``unfold(x, d, k, s)`` reads each element up to ``k`` times, so the view is no box of its
storage, and the general lowering copies it (stacked slices, or a gather) before reducing. But the
window dim and the dim it slides along are two walks over the same storage axis: merged, they are
one axis whose stride is the gcd of theirs, and reducing over the window dim is
``lax.reduce_window`` over that axis (window ``k``, stride ``s``), which reads the storage once.
The roles can swap: reducing over the positions keeps the window offsets (a window of ``n - k + 1``
elements, ``k`` outputs). A 2-D unfold (a convolution's or a pooling layer's windows) merges two
pairs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np
from jax import lax

from funcdl.ops.lower import lower, plan_slices, plan_stacked, real_dims
from funcdl.ops.strided import StridedArray, _make

# reduce.py's op -> the lax monoid of its windows (mean: the sum, divided afterwards). No prod:
# JAX differentiates only the window sum, max and min.
_MONOIDS = {"sum": lax.add, "mean": lax.add, "amax": lax.max, "amin": lax.min}
MAX_PAIRINGS = 4096  # pairings of reduced and kept dims tried before giving up (trace time)

Groups = tuple[tuple[int, ...], ...]


def _merged(s: StridedArray, groups: Groups) -> StridedArray:
    """The layout with each pair ``(reduced, kept)`` of view dims merged into one base dim."""
    shape, strides = [], []
    for group in groups:
        if len(group) == 1:
            shape.append(s.shape[group[0]])
            strides.append(s.strides[group[0]])
            continue
        r, q = group
        g = math.gcd(s.strides[r], s.strides[q])
        shape.append((s.shape[q] - 1) * s.strides[q] // g + (s.shape[r] - 1) * s.strides[r] // g
                     + 1)
        strides.append(g)
    return _make(s.storage, tuple(shape), tuple(strides), s.offset)


def plan_windows(s: StridedArray, dims: tuple[int, ...]) -> tuple[StridedArray, Groups] | None:
    """``(base, groups)`` when reducing the overlapping view ``s`` over ``dims`` is a windowed
    reduction of ``base`` (a box, or a stack of boxes): base dim ``i`` stands for the view dims
    ``groups[i]``, one dim or a ``(window, position)`` pair whose window dim is reduced. None when
    ``s`` is a box already or no pairing gives a base that lowers without a gather."""
    if plan_slices(s) is not None:
        return None
    real = real_dims(s)
    reduced = [d for d in real if d in dims]
    if not reduced or len(real) ** len(reduced) > MAX_PAIRINGS:
        return None
    candidates = []
    for partners in itertools.product([None, *real], repeat=len(reduced)):
        chosen = [p for p in partners if p is not None]
        pairs = {r: p for r, p in zip(reduced, partners) if p is not None}
        if (not chosen or len(set(chosen)) != len(chosen)
                or any(p == r or p in pairs for r, p in pairs.items())):
            continue
        groups = tuple((d, pairs[d]) if d in pairs else (d,) for d in real if d not in chosen)
        base = _merged(s, groups)
        if plan_slices(base) is not None:  # a box: read once, in storage order
            return base, groups
        candidates.append((base, groups))
    # no box: a base that is a stack of boxes (one window pair left overlapping) still beats
    # copying every window
    return next(((b, g) for b, g in candidates if plan_stacked(b) is not None), None)


def _init(op: str, dtype) -> np.ndarray:
    """The monoid's identity as a numpy constant, so JAX picks its differentiable window sum,
    max or min (a traced init value gives a generic reduce_window, which has no gradient)."""
    if op in ("sum", "mean"):
        return np.zeros((), dtype)
    big = np.inf if jnp.issubdtype(dtype, jnp.floating) else np.iinfo(dtype).max
    return np.array(-big if op == "amax" else big, dtype)


def reduce_windows(s: StridedArray, dims: tuple[int, ...], op: str,
                   reduce_fn: Callable) -> tuple[jnp.ndarray, tuple[int, ...]] | None:
    """``(result, kept_dims)`` like ``lower.reduce_box``, by ``lax.reduce_window`` over the merged
    window pairs and ``reduce_fn(array, axes)`` over the other reduced dims; None when the view's
    windows do not overlap (or ``op`` has no window form)."""
    if op not in _MONOIDS or s.dtype == jnp.bool_ or s.size == 0:
        return None
    found = plan_windows(s, dims)
    if found is None:
        return None
    base, groups = found
    arr, adims = lower(base)
    window, strides, dilation, count = [], [], [], 1
    for b in adims:
        group = groups[b]
        if len(group) == 1:
            window.append(1), strides.append(1), dilation.append(1)
            continue
        r, q = group
        g = base.strides[b]
        window.append(s.shape[r]), strides.append(s.strides[q] // g)
        dilation.append(s.strides[r] // g)
        count *= s.shape[r]
    r = lax.reduce_window(arr, _init(op, arr.dtype), _MONOIDS[op], tuple(window), tuple(strides),
                          "VALID", window_dilation=tuple(dilation))
    if op == "mean":
        r = r / count
    # each axis now stands for its group's last dim (a pair's position dim): reduce those in dims
    done = [groups[b][-1] in dims for b in adims]
    r = reduce_fn(r, tuple(a for a, d in enumerate(done) if d))
    return r, tuple(groups[b][-1] for b, d in zip(adims, done) if not d)
