"""Indexing: ``x[index]``, its transpose (``index_add_into``), ``take`` and ``embedding``.

Basic indices (ints, slices, None, Ellipsis) differentiate into a pad, as ``jax.grad`` does;
integer-array indices into a scatter-add, where repeated indices accumulate.
"""

from __future__ import annotations

import builtins
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcdl.ops.checks import FILL, Check, out_of_range, require
from funcdl.ops.shapes import canonical_dim, check_index
from funcdl.tape.cases import Case, array, call, dim, shape
from funcdl.tape.registry import op
from funcdl.tape.tensor import Tensor, apply, constant, shape_of, unwrap


def _norm_index(index: Any) -> Any:
    if isinstance(index, tuple):
        return tuple(_norm_index(i) for i in index)
    index = unwrap(index)
    if isinstance(index, Tensor):
        return index.data
    if isinstance(index, list):
        return jnp.asarray(index)
    return index


def _index_name(index: Any) -> str:
    parts = index if isinstance(index, tuple) else (index,)
    if any(hasattr(p, "shape") for p in parts):
        return "IndexBackward0"
    if any(isinstance(p, int | np.integer) for p in parts):
        return "SelectBackward0"
    return "SliceBackward0"


def _getitem_case(d: Any) -> Any:
    s = shape(d, 1)
    n = s[0]
    index = d.choice([
        0, -1, slice(None, None, 2), (Ellipsis, 0), (None, slice(1, None)),
        np.array([0, n - 1, 0]), (slice(None), None), np.array([[n - 1], [0]]),
    ], "index")
    return call(array(d, s), index)


@op(Case("ints, slices, None, ..., arrays", _getitem_case),
    Case("int, strided slice, None, ...",
         lambda d: call(array(d, (2, 5, 3)), (1, slice(None, None, 2), None, Ellipsis))),
    torch="torch.Tensor.__getitem__", operators=("__getitem__",))
def getitem(x: Any, index: Any) -> Any:
    """``x[index]`` with ints, slices, None, Ellipsis and integer arrays; scatter-add backward."""
    x = unwrap(x)
    index = _norm_index(index)
    if index is Ellipsis:
        return x
    shape = shape_of(x)
    check_index(index, shape)
    fill = _check_array_indices(index, shape)
    return apply(_index_name(index), lambda x: _gather(x, index, fill), (x,),
                 (lambda g, z, x: index_add_into(g, index, shape),),
                 tangents="linear")


def _basic_parts(index: Any, ndim: int) -> list | None:
    """``index`` as one entry per input dim plus None for new axes, when it holds only ints,
    slices, None and Ellipsis (basic indexing); None otherwise."""
    parts = list(index) if isinstance(index, tuple) else [index]
    if not all(p is None or p is Ellipsis or isinstance(p, slice)
               or (isinstance(p, int | np.integer) and not isinstance(p, bool)) for p in parts):
        return None
    used = builtins.sum(1 for p in parts if p is not None and p is not Ellipsis)
    fill = [slice(None)] * (ndim - used)
    if Ellipsis in parts:
        k = parts.index(Ellipsis)
        parts[k:k + 1] = fill
    else:
        parts += fill
    return parts


def _pad_into(g: Any, parts: list, shape: tuple[int, ...]) -> Any:
    """The transpose of basic indexing as a pad (what jax.grad emits), not a scatter."""
    mid, flips, config = [], [], []
    dims = iter(range(len(shape)))
    for p in parts:
        if p is None:
            continue
        d = next(dims)
        n = shape[d]
        if not isinstance(p, slice):
            i = int(p) % n
            mid.append(1)
            config.append((i, n - i - 1, 0))
            continue
        start, stop, step = p.indices(n)
        length = len(range(start, stop, step))
        mid.append(length)
        if length == 0:
            config.append((n, 0, 0))
            continue
        lowest = start if step > 0 else start + (length - 1) * step
        if step < 0:
            flips.append(len(mid) - 1)
        config.append((lowest, n - lowest - (length - 1) * builtins.abs(step) - 1,
                       builtins.abs(step) - 1))
    g = jnp.reshape(g, mid)
    if flips:
        g = jnp.flip(g, flips)
    return jax.lax.pad(g, jnp.zeros((), g.dtype), config)


def _torch_index_add_into(g: Any, index: Any, shape: tuple[int, ...]) -> Any:
    import torch

    out = torch.zeros(shape, dtype=g.dtype)
    parts = index if isinstance(index, tuple) else (index,)
    if any(isinstance(p, torch.Tensor) for p in parts):
        return out.index_put_(parts, g, accumulate=True)
    out[index] += g  # basic indices address each element once
    return out


@op(Case("repeated rows", lambda d: call(array(d, (3, 3)), np.array([0, 2, 2]), (4, 3))),
    Case("slice and int", lambda d: call(array(d, (2, 2)), (slice(1, 3), 1), (4, 5, 2))),
    torch=_torch_index_add_into)
def index_add_into(g: Any, index: Any, shape: tuple[int, ...]) -> Any:
    """zeros(shape) with ``g`` added at ``index`` (repeated indices accumulate): getitem's
    transpose, and getitem is its own. Basic indices become a pad, others a scatter-add."""
    parts = _basic_parts(index, len(shape))

    def forward(g: Any) -> Any:
        if parts is not None:
            return _pad_into(g, parts, shape)
        return jnp.zeros(shape, g.dtype).at[index].add(g)

    return apply("IndexPutBackward0", forward, (unwrap(g),),
                 (lambda gg, z, g: getitem(gg, index),),
                 tangents="linear")


def _gather(x: Any, index: Any, fill: bool) -> Any:
    """``x[index]``; with ``fill``, entries at out-of-range indices are NaN (integers: their
    minimum) where JAX would clamp, because no step records the check (``funcdl.ops.checks``)."""
    return jnp.asarray(x).at[index].get(mode=FILL) if fill else x[index]


def _check_ids(ids: Any, low: int, high: int) -> bool:
    """torch's errors for ids that are not integers or not in ``[low, high)``: raised now when
    the ids are concrete, recorded for the jitted step when traced; True when the traced result
    must be filled (see ``_gather``)."""
    ids = jnp.asarray(ids)
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise TypeError(f"Expected tensor for argument #1 'indices' to have one of the following "
                        f"scalar types: Long, Int; but got {ids.dtype} instead (call "
                        ".astype(jnp.int32) first)")
    failed, value = out_of_range(ids, low, high)
    return require(failed, value, Check(
        IndexError, f"index out of range in self: id {{value}} is outside [{low}, {high})",
        "Check the ids against the table size (a tokenizer's vocabulary against the model's)"))


def _check_array_indices(index: Any, shape: tuple[int, ...]) -> bool:
    """torch's IndexError for integer-array indices out of bounds of their dim (concrete:
    now; traced: recorded); True when the traced result must be filled."""
    fill = False
    for d, p in _array_dims(index if isinstance(index, tuple) else (index,), len(shape)):
        failed, value = out_of_range(p, -shape[d], shape[d])
        fill = require(failed, value, Check(
            IndexError, f"index {{value}} is out of bounds for dimension {d} with size "
            f"{shape[d]}")) or fill
    return fill


def _array_dims(parts: tuple, ndim: int) -> list[tuple[int, Any]]:
    """``(dim, array)`` of each integer-array part of an index; dims after an Ellipsis are
    counted from the end."""
    def width(p: Any) -> int:  # input dims a part consumes (a bool mask: its ndim)
        return 0 if p is None else (np.ndim(p) if getattr(p, "dtype", None) == np.bool_ else 1)

    def is_ids(p: Any) -> bool:
        return hasattr(p, "dtype") and jnp.issubdtype(p.dtype, jnp.integer)

    k = next((i for i, p in enumerate(parts) if p is Ellipsis), len(parts))
    out, d = [], 0
    for p in parts[:k]:
        out += [(d, p)] if is_ids(p) else []
        d += width(p)
    d = ndim - builtins.sum(width(p) for p in parts[k + 1:])
    for p in parts[k + 1:]:
        out += [(d, p)] if is_ids(p) else []
        d += width(p)
    return out


def _take_case(d: Any) -> Any:
    s = shape(d, 1)
    k = dim(d, len(s))
    ids = [d.integer(0, s[k] - 1, "id") for _ in range(d.integer(1, 5, "count"))]
    return call(array(d, s), np.asarray(ids), k)


def _torch_take(x: Any, indices: Any, dim: int = 0) -> Any:
    import torch

    d = dim % x.ndim
    rows = torch.index_select(x, d, indices.reshape(-1))
    return rows.reshape(x.shape[:d] + indices.shape + x.shape[d + 1:])


@op(Case("1-D ids", _take_case),
    Case("2-D ids", lambda d: call(array(d, (3, 4)), np.array([[3, 0], [1, 3]]), 1)),
    torch=_torch_take)
def take(x: Any, indices: Any, dim: int = 0) -> Any:
    """Rows (slices along ``dim``) picked by integer ``indices``: ``torch.index_select`` for any
    index shape; output shape x.shape[:dim] + indices.shape + x.shape[dim+1:]."""
    x = unwrap(x)
    shape = shape_of(x)
    d = canonical_dim(dim, len(shape))
    ids = jnp.asarray(constant(unwrap(indices)))
    fill = _check_ids(ids, -shape[d], shape[d])
    index = (slice(None),) * d + (ids,)
    return apply("IndexSelectBackward0", lambda x: _gather(x, index, fill), (x,),
                 (lambda g, z, x: index_add_into(g, index, shape),),
                 tangents="linear")


def _embedding_case(d: Any) -> Any:
    vocab, width = d.integer(1, 5, "vocab"), d.integer(1, 4, "dim")
    ids = np.asarray([d.integer(0, vocab - 1, "id") for _ in range(2 * d.integer(1, 3, "len"))])
    return call(ids.reshape(2, -1), array(d, (vocab, width)))


@op(Case("repeated ids", _embedding_case), torch="torch.nn.functional.embedding")
def embedding(ids: Any, weight: Any) -> Any:
    """Rows of ``weight`` [num_embeddings, dim] for integer ``ids`` (any shape). An id outside
    ``[0, num_embeddings)`` raises IndexError as in torch (under ``fit``'s jitted step: when the
    step ran; under your own ``jax.jit``: its rows are NaN, see ``funcdl.ops.checks``)."""
    weight = unwrap(weight)
    shape = shape_of(weight)
    if len(shape) != 2:
        raise RuntimeError(f"'weight' must be 2-D, got shape {list(shape)}")
    ids = jnp.asarray(constant(unwrap(ids)))
    fill = _check_ids(ids, 0, shape[0])  # torch's embedding has no negative ids
    return apply("EmbeddingBackward0", lambda w: _gather(w, ids, fill), (weight,),
                 (lambda g, z, w: index_add_into(g, ids, shape),),
                 tangents="linear")
