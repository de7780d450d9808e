"""Turning a strided view into an XLA array: two lowering paths.

* ``"slices"``: when the elements the view reads form a (strided) box of the storage, the view is
  ``storage[start:stop]`` reshaped into that box, one strided ``lax.slice`` per box axis, then a
  transpose and a broadcast for stride-0 dims. These are all ops XLA fuses into its consumer, so a
  reduction reads the storage once, in memory order, with no index arithmetic at run time.
* stacked boxes: when the view is no box but each slice along one (short) dim is, as for
  overlapping sliding windows, the boxes are cut by the slices path and stacked.
* ``"gather"``: anything else (overlapping windows, strides that are no box) reads every element
  by its computed offset ``offset + sum(i_d * stride_d)``, the slides' walk, as one XLA gather.

``lower`` returns the array of the view's *real* dims (size > 1 and stride > 0) in the order the
path produced them, with the logical dim of each axis; size-1 and stride-0 dims are left out so a
reduction can treat them analytically instead of materialising a broadcast.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax.numpy as jnp
from jax import lax

from funcdl.ops.shapes import infer_shape
from funcdl.ops.strided import (
    StridedArray,
    _check,
    _like,
    _view_strides,
    from_array,
    is_contiguous,
    select,
    view,
)

LOWERINGS = ("auto", "slices", "gather")


@dataclasses.dataclass(frozen=True)
class SlicePlan:
    """storage (padded by ``pad``) -> ``[start:start+prod(box)]`` -> reshape ``box`` -> slice."""

    start: int
    pad: int
    box: tuple[int, ...]
    starts: tuple[int, ...]
    steps: tuple[int, ...]
    sizes: tuple[int, ...]
    dims: tuple[int, ...]  # the view's dim for each box axis, largest stride first


def real_dims(s: StridedArray) -> tuple[int, ...]:
    """Dims that move through storage: size > 1 and stride > 0."""
    return tuple(d for d, (n, st) in enumerate(zip(s.shape, s.strides)) if n > 1 and st > 0)


def plan_slices(s: StridedArray) -> SlicePlan | None:
    """A box of storage holding the view's real dims, or None when there is none.

    Sort the real dims by stride, largest first. Box axis ``j`` steps through storage by ``t_j``
    (``t_0`` = the largest stride, ``t_j = gcd(stride_j, t_{j-1})``, the innermost ``t = 1``) and
    the view walks it with step ``stride_j / t_j``. It is a box when every walk stays inside its
    axis (``q_j + (n_j - 1) * step_j < t_{j-1} / t_j``, ``q`` the digits of the start offset).
    """
    dims = tuple(sorted(real_dims(s), key=lambda d: -s.strides[d]))
    if not dims:
        return SlicePlan(s.offset, 0, (1,), (0,), (1,), (1,), ())
    strides = [s.strides[d] for d in dims]
    sizes = [s.shape[d] for d in dims]
    k = len(dims)
    t = [strides[0]] + [0] * (k - 1)
    for j in range(1, k):
        t[j] = math.gcd(strides[j], t[j - 1])
    t[-1] = 1
    steps = [st // tj for st, tj in zip(strides, t)]
    radix = [t[j - 1] // t[j] for j in range(1, k)]
    rows = (sizes[0] - 1) * steps[0] + 1
    n_storage = s.storage.shape[0]
    best = None
    for base in (s.offset - s.offset % t[0], s.offset):  # box aligned to t_0, or starting at offset
        rem, digits = s.offset - base, [0]
        for tj in t[1:]:
            digits.append(rem // tj)
            rem %= tj
        if rem or any(q + (n - 1) * c >= r
                      for q, n, c, r in zip(digits[1:], sizes[1:], steps[1:], radix)):
            continue
        pad = max(0, base + rows * t[0] - n_storage)
        plan = SlicePlan(base, pad, (rows, *radix), tuple(digits), tuple(steps), tuple(sizes), dims)
        if best is None or pad < best.pad:
            best = plan
    return best


def _box(s: StridedArray, plan: SlicePlan) -> jnp.ndarray:
    """The storage region of the plan, reshaped to the box (a bitcast when no pad is needed)."""
    data = s.storage
    if plan.pad:  # the box overhangs the storage end; only reached for ragged offsets
        data = jnp.pad(data, (0, plan.pad))
    length = math.prod(plan.box)
    if plan.start or length != data.shape[0]:
        data = lax.slice(data, (plan.start,), (plan.start + length,))
    return data.reshape(plan.box)


def _limits(plan: SlicePlan) -> tuple[int, ...]:
    return tuple(q + (n - 1) * c + 1 for q, n, c in zip(plan.starts, plan.sizes, plan.steps))


def _slice_box(box: jnp.ndarray, plan: SlicePlan, axes: tuple[int, ...]) -> jnp.ndarray:
    """Apply the plan's slices of box axes ``axes`` to ``box`` (whose axes are exactly those)."""
    starts = tuple(plan.starts[a] for a in axes)
    limits = tuple(_limits(plan)[a] for a in axes)
    steps = tuple(plan.steps[a] for a in axes)
    if starts == (0,) * len(axes) and limits == box.shape and steps == (1,) * len(axes):
        return box
    return lax.slice(box, starts, limits, steps)


def _lower_slices(s: StridedArray, plan: SlicePlan) -> jnp.ndarray:
    box = _slice_box(_box(s, plan), plan, tuple(range(len(plan.box))))
    return box.reshape(plan.sizes) if plan.dims else box.reshape(())


MAX_DEFERRED_WASTE = 4  # read at most this many box elements per view element to skip a copy


def _whole_storage(plan: SlicePlan, n_storage: int) -> SlicePlan | None:
    """The same view, with the box grown to the whole storage (so reshaping it is free).

    Possible when the storage splits into whole box rows and the box starts on a row boundary;
    the view then starts at a row offset of that grid instead of an element offset.
    """
    row = math.prod(plan.box[1:])
    if plan.pad or n_storage % row or plan.start % row:
        return None
    return dataclasses.replace(
        plan, start=0, box=(n_storage // row, *plan.box[1:]),
        starts=(plan.start // row + plan.starts[0], *plan.starts[1:]))


def reduce_box(s: StridedArray, dims: tuple[int, ...], reduce_fn, lowering: str = "auto"):
    """``(result, kept_dims)``: ``reduce_fn(array, axes)`` over the view's real dims in ``dims``.

    On the slice path, when the reduced box axes need no slicing, the whole box is reduced first
    and the kept axes are sliced afterwards: positions are reduced independently, so the junk
    between a strided view's elements lands only in outputs that the slice then drops. XLA fuses
    a reshape into the reduction but copies a strided slice, so reading the storage once at full
    speed beats copying the view first (``x[:, ::2]`` summed over dim 0: ~3x faster). The box
    may be grown to the whole storage for that, since only a reshape of the whole storage is
    free (``x[1:]`` of 4096 x 4096 summed over dim 1: ~10x faster).
    """
    plan = None if lowering == "gather" or s.size == 0 else plan_slices(s)
    if plan is not None and plan.dims:
        grown = _whole_storage(plan, s.storage.shape[0])
        for p in (grown, plan) if grown is not None else (plan,):
            axes = tuple(a for a, d in enumerate(p.dims) if d in dims)
            kept = tuple(a for a in range(len(p.dims)) if a not in axes)
            full = all(p.starts[a] == 0 and p.steps[a] == 1 and p.sizes[a] == p.box[a]
                       for a in axes)
            waste = math.prod(p.box) / math.prod(p.sizes)
            if full and 1 < waste <= MAX_DEFERRED_WASTE:
                r = reduce_fn(_box(s, p), axes)
                return _slice_box(r, p, kept), tuple(p.dims[a] for a in kept)
    arr, adims = lower(s, lowering)
    axes = tuple(a for a, d in enumerate(adims) if d in dims)
    return reduce_fn(arr, axes), tuple(d for d in adims if d not in dims)


MAX_STACKED = 64  # pieces one stacked lowering may cut; past that a gather is smaller


def plan_stacked(s: StridedArray) -> tuple[int, list[SlicePlan]] | None:
    """``(dim, plans)`` when every ``select(s, dim, i)`` is a box, else None.

    Sliding windows (``as_strided(x, (n - k + 1, k), (1, 1))``) overlap, so they are no box, but
    each window column is one: stacking ``k`` contiguous slices costs a copy at memory speed where
    a gather of the same elements is more than ten times slower on XLA:CPU.
    """
    for d in sorted(real_dims(s), key=lambda d: s.shape[d]):
        if s.shape[d] > MAX_STACKED:
            break
        plans = [plan_slices(select(s, d, i)) for i in range(s.shape[d])]
        if all(p is not None for p in plans):
            return d, plans
    return None


def _lower_stacked(s: StridedArray, d: int, plans: list[SlicePlan]):
    pieces = [_lower_slices(select(s, d, i), p) for i, p in enumerate(plans)]
    return jnp.stack(pieces), (d,) + tuple(k + (k >= d) for k in plans[0].dims)


def offsets(s: StridedArray, dims: tuple[int, ...]) -> jnp.ndarray:
    """Storage offsets of the view over ``dims`` (other dims at index 0), built from iotas."""
    shape = tuple(s.shape[d] for d in dims)
    idx_dtype = jnp.int32 if s.storage.shape[0] < 2**31 else jnp.int64
    idx = jnp.full(shape, s.offset, idx_dtype)
    for axis, d in enumerate(dims):
        idx = idx + lax.broadcasted_iota(idx_dtype, shape, axis) * s.strides[d]
    return idx


def _lower_gather(s: StridedArray) -> jnp.ndarray:
    dims = tuple(range(s.ndim))
    return s.storage.at[offsets(s, dims)].get(mode="promise_in_bounds")


def lower(s: StridedArray, lowering: str = "auto") -> tuple[jnp.ndarray, tuple[int, ...]]:
    """``(array, dims)``: the view's elements as an array whose axis ``a`` is view dim ``dims[a]``.

    ``"auto"`` uses slices when the view is a box of storage or a stack of boxes, else a gather.
    ``"slices"`` raises when it would need a gather; ``"gather"`` always gathers, over every dim
    (the walk the slides draw).
    Dims missing from ``dims`` have size 1 or stride 0: every index reads the same elements.
    """
    s = _check(s, "lower")
    if lowering not in LOWERINGS:
        raise ValueError(f"lowering must be one of {LOWERINGS}, got {lowering!r}")
    if s.size == 0:
        return jnp.zeros(s.shape, s.dtype), tuple(range(s.ndim))
    if lowering == "gather":
        return _lower_gather(s), tuple(range(s.ndim))
    plan = plan_slices(s)
    if plan is None:
        stacked = plan_stacked(s)
        if stacked is not None:
            return _lower_stacked(s, *stacked)
        if lowering == "slices":
            raise ValueError(f"layout shape={s.shape} strides={s.strides} offset={s.offset} is "
                             f"not a strided box of its storage, nor a stack of boxes along one "
                             f"dim; use lowering='gather' or 'auto'")
        dims = real_dims(s)
        return s.storage.at[offsets(s, dims)].get(mode="promise_in_bounds"), dims
    return _lower_slices(s, plan), plan.dims


def place(arr: jnp.ndarray, dims: tuple[int, ...], shape: tuple[int, ...]) -> jnp.ndarray:
    """Put axis ``a`` of ``arr`` at output dim ``dims[a]`` and broadcast the rest of ``shape``."""
    order = sorted(range(len(dims)), key=lambda a: dims[a])
    if order != list(range(len(dims))):
        arr = jnp.transpose(arr, order)
    target = tuple(sorted(dims))
    if arr.shape == tuple(shape) and target == tuple(range(len(shape))):
        return arr
    return lax.broadcast_in_dim(arr, tuple(shape), target)


def to_array(s: StridedArray, *, lowering: str = "auto") -> jnp.ndarray:
    """The view as a dense ``jax.Array`` of shape ``s.shape`` (``lowering``: see :func:`lower`)."""
    arr, dims = lower(s, lowering)
    return place(arr, dims, s.shape)


# --------------------------------------------------------------------------- copies


def reshape(s: StridedArray, shape: Sequence[int]) -> StridedArray:
    """A view when the layout allows it, otherwise a contiguous copy with the new shape."""
    s = _check(s, "reshape")
    new_shape = infer_shape(shape, s.size)
    strides = _view_strides(s.shape, s.strides, new_shape)
    if strides is not None:
        return _like(s, new_shape, strides)
    return view(contiguous(s), new_shape)


def contiguous(s: StridedArray) -> StridedArray:
    """``s`` itself when row-major dense with offset 0, else a copy into fresh storage."""
    s = _check(s, "contiguous")
    if is_contiguous(s) and s.offset == 0:
        return s
    return from_array(to_array(s))
