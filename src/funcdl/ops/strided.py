"""How a tensor lives in memory: a flat ``storage`` and a static (shape, strides, offset) layout.

Element ``(i0, i1, ...)`` of a :class:`StridedArray` is ``storage[offset + i0*strides[0] + ...]``
(strides counted in elements, as in PyTorch). Every view below returns a new layout over the SAME
storage: nothing is copied. Layout errors are raised in Python, before any computation, in
PyTorch's words where PyTorch has them.
"""

from __future__ import annotations

import builtins
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcdl.ops.shapes import (
    ZERO_DIM_INDEX,
    Shape,
    ShapeError,
    as_int,
    as_ints,
    canonical_dim,
    expand_shape,
    infer_shape,
    permutation,
    unfold_dim,
)

# --------------------------------------------------------------------------- checks and helpers


def contiguous_strides(shape: Sequence[int]) -> Shape:
    """Row-major strides in elements: ``(2, 2, 3, 2)`` gives ``(12, 6, 2, 1)``."""
    strides, acc = [], 1
    for n in reversed(tuple(shape)):
        strides.append(acc)
        acc *= max(n, 1)
    return tuple(reversed(strides))


def _check_layout(storage_size: int, shape: Shape, strides: Shape, offset: int) -> None:
    """Raise unless every element of the layout lies inside a storage of ``storage_size``."""
    if len(shape) != len(strides):
        raise ShapeError(f"mismatch in length of strides and shape: shape has {len(shape)} "
                         f"dims, strides has {len(strides)}")
    if any(n < 0 for n in shape):
        raise ShapeError(f"Trying to create tensor with negative dimension "
                         f"{min(shape)}: {list(shape)}")
    if any(s < 0 for s in strides):
        raise ShapeError(f"as_strided: Negative strides are not supported at the moment, got "
                         f"strides: {list(strides)}")
    if offset < 0:
        raise ShapeError(f"Tensor: invalid storage offset {offset}")
    if math.prod(shape) == 0:
        return
    needed = offset + builtins.sum((n - 1) * s for n, s in zip(shape, strides)) + 1
    if needed > storage_size:
        raise ShapeError(
            f"as_strided: sizes {list(shape)}, strides {list(strides)} and storage offset "
            f"{offset} read up to element {needed - 1}, requiring a storage of {needed} elements, "
            f"which is out of bounds for storage of size {storage_size}; use smaller sizes, "
            f"strides or offset")


# --------------------------------------------------------------------------- the pytree


@jax.tree_util.register_pytree_node_class
class StridedArray:
    """A view ``(shape, strides, offset)`` over a flat 1-D ``storage``.

    A JAX pytree: ``storage`` is the only (traced) child; the layout is static auxiliary data, so a
    jitted function is specialised per layout and the layout arithmetic costs nothing at run time.
    Build one with :func:`as_strided` or :func:`from_array`; ``to_array`` materialises it.
    """

    __slots__ = ("storage", "shape", "strides", "offset")

    def __init__(self, storage: Any, shape: Sequence[int], strides: Sequence[int],
                 offset: int = 0):
        storage = storage if isinstance(storage, jax.Array) else jnp.asarray(storage)
        if storage.ndim != 1:
            raise ValueError(f"storage must be a 1-D array, got shape {tuple(storage.shape)}; "
                             f"pass x.ravel(), or use from_array(x)")
        shape = as_ints(shape, "size")
        strides = as_ints(strides, "stride")
        offset = as_int(offset, "storage_offset")
        _check_layout(storage.shape[0], shape, strides, offset)
        self.storage, self.shape, self.strides, self.offset = storage, shape, strides, offset

    # pytree protocol: the layout travels as static aux data; unflatten skips the checks because
    # JAX rebuilds the object with tracers, batched storages or placeholders.
    def tree_flatten(self):
        return (self.storage,), (self.shape, self.strides, self.offset)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return _make(children[0], *aux)

    @property
    def dtype(self):
        return self.storage.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        """Number of elements of the view (``numel``)."""
        return math.prod(self.shape)

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __repr__(self) -> str:
        return (f"StridedArray(shape={self.shape}, strides={self.strides}, offset={self.offset}, "
                f"storage={self.storage.dtype}{list(self.storage.shape)})")

    def __getitem__(self, index: Any) -> StridedArray:
        return getitem(self, index)


def _make(storage: Any, shape: Shape, strides: Shape, offset: int) -> StridedArray:
    """A StridedArray without checks (layouts derived from a valid one are valid)."""
    s = object.__new__(StridedArray)
    s.storage, s.shape, s.strides, s.offset = storage, shape, strides, offset
    return s


def _like(s: StridedArray, shape: Shape, strides: Shape, offset: int | None = None):
    return _make(s.storage, tuple(shape), tuple(strides), s.offset if offset is None else offset)


def _check(s: Any, fn: str) -> StridedArray:
    if not isinstance(s, StridedArray):
        raise TypeError(f"{fn}() expects a StridedArray, got {type(s).__name__}; wrap an array "
                        f"with funcdl.ops.from_array(x)")
    return s


# --------------------------------------------------------------------------- construction


def as_strided(storage: Any, shape: Sequence[int], strides: Sequence[int],
               offset: int = 0) -> StridedArray:
    """A view of the 1-D ``storage`` with the given layout; raises if it would read outside it."""
    return StridedArray(storage, shape, strides, offset)


def from_array(x: Any) -> StridedArray:
    """A contiguous StridedArray holding ``x``'s elements in row-major order."""
    x = jnp.asarray(x)
    return _make(x.reshape(-1), tuple(x.shape), contiguous_strides(x.shape), 0)


def is_contiguous(s: StridedArray) -> bool:
    """True when the view is row-major dense (PyTorch's rule: size-1 dims' strides don't matter)."""
    s = _check(s, "is_contiguous")
    if s.size == 0:
        return True
    expected = 1
    for n, st in zip(reversed(s.shape), reversed(s.strides)):
        if n != 1:
            if st != expected:
                return False
            expected *= n
    return True


# --------------------------------------------------------------------------- views (no copies)


def transpose(s: StridedArray, dim0: int, dim1: int) -> StridedArray:
    """Swap two dims: swap their sizes and strides."""
    s = _check(s, "transpose")
    d0, d1 = canonical_dim(dim0, s.ndim), canonical_dim(dim1, s.ndim)
    if s.ndim == 0:
        return s
    shape, strides = list(s.shape), list(s.strides)
    shape[d0], shape[d1] = shape[d1], shape[d0]
    strides[d0], strides[d1] = strides[d1], strides[d0]
    return _like(s, shape, strides)


def permute(s: StridedArray, dims: Sequence[int]) -> StridedArray:
    """Reorder the dims: dim ``i`` of the result is dim ``dims[i]`` of ``s``."""
    s = _check(s, "permute")
    dims = permutation(dims, s.ndim)
    return _like(s, [s.shape[d] for d in dims], [s.strides[d] for d in dims])


def _no_0d(s: StridedArray) -> None:
    if s.ndim == 0:
        raise IndexError(ZERO_DIM_INDEX)


def select(s: StridedArray, dim: int, index: int) -> StridedArray:
    """``s[..., index, ...]`` at ``dim``: move the offset by ``index * stride`` and drop the dim."""
    s = _check(s, "select")
    _no_0d(s)
    d = canonical_dim(dim, s.ndim)
    i, n = as_int(index, "index"), s.shape[d]
    if not -n <= i < n:
        raise IndexError(f"select(): index {i} out of range for tensor of size {list(s.shape)} "
                         f"at dimension {d}")
    i %= n
    return _like(s, s.shape[:d] + s.shape[d + 1:], s.strides[:d] + s.strides[d + 1:],
                 s.offset + i * s.strides[d])


def slice(s: StridedArray, dim: int, start: int | None = None, stop: int | None = None,
          step: int = 1) -> StridedArray:
    """``start:stop:step`` along ``dim``, clamped like Python's slices; the stride times step."""
    s = _check(s, "slice")
    _no_0d(s)
    d = canonical_dim(dim, s.ndim)
    step = as_int(step, "step")
    if step <= 0:
        raise ValueError(f"slice step must be positive, got {step} (negative steps would need a "
                         f"negative stride, which is not supported)")
    start = None if start is None else as_int(start, "start")
    stop = None if stop is None else as_int(stop, "stop")
    lo, hi, _ = builtins.slice(start, stop, step).indices(s.shape[d])
    n = max(0, -(-(hi - lo) // step))
    shape = s.shape[:d] + (n,) + s.shape[d + 1:]
    strides = s.strides[:d] + (s.strides[d] * step,) + s.strides[d + 1:]
    return _like(s, shape, strides, s.offset + lo * s.strides[d])


def narrow(s: StridedArray, dim: int, start: int, length: int) -> StridedArray:
    """``length`` elements of ``dim`` from ``start`` (torch.narrow)."""
    s = _check(s, "narrow")
    _no_0d(s)
    d = canonical_dim(dim, s.ndim)
    start, length, n = as_int(start, "start"), as_int(length, "length"), s.shape[d]
    if length < 0:
        raise ShapeError("narrow(): length must be non-negative.")
    if not -n <= start <= n:
        raise IndexError(f"start out of range (expected to be in range of [{-n}, {n}], but got "
                         f"{start})")
    start = start + n if start < 0 else start
    if start + length > n:
        raise ShapeError(f"start ({start}) + length ({length}) exceeds dimension size ({n}).")
    return slice(s, d, start, start + length)


def expand(s: StridedArray, shape: Sequence[int]) -> StridedArray:
    """Broadcast size-1 dims (and new leading dims) to ``shape`` with stride 0; -1 keeps a size."""
    s = _check(s, "expand")
    sizes = expand_shape(s.shape, shape)
    lead = len(sizes) - s.ndim
    strides = [0] * lead + [st if n == want else 0
                            for n, st, want in zip(s.shape, s.strides, sizes[lead:])]
    return _like(s, sizes, strides)


def squeeze(s: StridedArray, dim: int | Sequence[int] | None = None) -> StridedArray:
    """Drop size-1 dims (all of them, or those among ``dim``; other dims are left alone)."""
    s = _check(s, "squeeze")
    if dim is None:
        dims = set(range(s.ndim))
    elif isinstance(dim, Sequence):
        dims = {canonical_dim(d, s.ndim) for d in dim}
    else:
        dims = {canonical_dim(dim, s.ndim)}
    keep = [d for d in range(s.ndim) if not (d in dims and s.shape[d] == 1)]
    return _like(s, [s.shape[d] for d in keep], [s.strides[d] for d in keep])


def unsqueeze(s: StridedArray, dim: int) -> StridedArray:
    """Insert a size-1 dim at ``dim`` (PyTorch's stride for it: the next dim's size * stride)."""
    s = _check(s, "unsqueeze")
    d = canonical_dim(dim, s.ndim + 1)
    stride = 1 if d >= s.ndim else s.shape[d] * s.strides[d]
    return _like(s, s.shape[:d] + (1,) + s.shape[d:], s.strides[:d] + (stride,) + s.strides[d:])


def unfold(s: StridedArray, dim: int, size: int, step: int) -> StridedArray:
    """PyTorch's ``Tensor.unfold``: every window of ``size`` elements along ``dim``, ``step``
    apart. ``dim`` becomes the window count (stride times ``step``) and the window is a new last
    dim with ``dim``'s stride, so windows overlap in storage: nothing is copied."""
    s = _check(s, "unfold")
    d, size, step = unfold_dim(s.shape, dim, size, step)
    if s.ndim == 0:
        return _like(s, (size,), (1,))
    n, stride = s.shape[d], s.strides[d]
    shape = s.shape[:d] + ((n - size) // step + 1,) + s.shape[d + 1:] + (size,)
    return _like(s, shape, s.strides[:d] + (stride * step,) + s.strides[d + 1:] + (stride,))


def _view_strides(old_shape: Shape, old_strides: Shape, new_shape: Shape) -> Shape | None:
    """Strides giving ``new_shape`` over the same elements, or None (PyTorch's computeStride).

    A view is possible when each run of old dims that is contiguous in memory ("chunk") maps onto
    a run of new dims with the same element count.
    """
    if not old_shape:
        return (1,) * len(new_shape)
    numel = math.prod(old_shape)
    if numel == 0:
        return old_strides if old_shape == new_shape else contiguous_strides(new_shape)
    new_strides = [0] * len(new_shape)
    view_d = len(new_shape) - 1
    chunk_base = old_strides[-1]
    tensor_numel = view_numel = 1
    for d in range(len(old_shape) - 1, -1, -1):
        tensor_numel *= old_shape[d]
        if d == 0 or (old_shape[d - 1] != 1 and old_strides[d - 1] != tensor_numel * chunk_base):
            while view_d >= 0 and (view_numel < tensor_numel or new_shape[view_d] == 1):
                new_strides[view_d] = view_numel * chunk_base
                view_numel *= new_shape[view_d]
                view_d -= 1
            if view_numel != tensor_numel:
                return None
            if d > 0:
                chunk_base = old_strides[d - 1]
                tensor_numel = view_numel = 1
    return tuple(new_strides) if view_d == -1 else None


def view(s: StridedArray, shape: Sequence[int]) -> StridedArray:
    """The same elements under ``shape`` without copying; raises when the strides can't say it."""
    s = _check(s, "view")
    new_shape = infer_shape(shape, s.size)
    strides = _view_strides(s.shape, s.strides, new_shape)
    if strides is None:
        raise ShapeError(
            f"view size is not compatible with input tensor's size and stride (at least one "
            f"dimension spans across two contiguous subspaces): shape {list(s.shape)} with "
            f"strides {list(s.strides)} cannot be viewed as {list(new_shape)}. Use "
            f"reshape(...) instead (it copies when a view is impossible).")
    return _like(s, new_shape, strides)


def item(s: StridedArray) -> Any:
    """The single element as a Python number (a 0-d array when traced under jit/vmap/grad)."""
    s = _check(s, "item")
    if s.size != 1:
        raise ShapeError(f"a Tensor with {s.size} elements cannot be converted to Scalar")
    value = s.storage[s.offset]
    return value if isinstance(value, jax.core.Tracer) else value.item()


def getitem(s: StridedArray, index: Any) -> StridedArray:
    """Basic indexing (ints, slices with positive steps, None, Ellipsis) as views."""
    s = _check(s, "getitem")
    index = index if isinstance(index, tuple) else (index,)
    n_ellipsis = builtins.sum(i is Ellipsis for i in index)
    if n_ellipsis > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    used = builtins.sum(i is not None and i is not Ellipsis for i in index)
    if s.ndim == 0 and used:
        _no_0d(s)
    if used > s.ndim:
        raise IndexError(f"too many indices for tensor of dimension {s.ndim}")
    if n_ellipsis:
        k = index.index(Ellipsis)
        index = index[:k] + (builtins.slice(None),) * (s.ndim - used) + index[k + 1:]
    out, d = s, 0
    for i in index:
        if i is None:
            out, d = unsqueeze(out, d), d + 1
        elif isinstance(i, builtins.slice):
            out, d = slice(out, d, i.start, i.stop, 1 if i.step is None else i.step), d + 1
        elif isinstance(i, int | np.integer) and not isinstance(i, bool):
            out = select(out, d, i)
        else:
            raise TypeError(f"StridedArray indices must be ints, slices, None or ..., not "
                            f"{type(i).__name__}; gather with integer arrays on to_array(s)")
    return out
