"""Shape ops: reshape, transpose, permute, squeeze, expand, concatenate, stack, split.

Their gradients only move elements back: a reshape of ``g``, the inverse permutation, a sum over
expanded dims (done by the engine), or a slice of ``g`` for each joined input.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from funcdl.ops.shapes import canonical_dim, canonical_dims, expand_shape, infer_shape, permutation
from funcdl.tape.cases import Case, array, boolean, call, dim, dims, shape, two_shapes
from funcdl.tape.indexing import getitem
from funcdl.tape.registry import op
from funcdl.tape.tensor import apply, shape_of, unwrap


def _reshape_case(d: Any) -> Any:
    s = shape(d)
    n = int(np.prod(s))
    return call(array(d, s), d.choice([(n,), (-1,), (1, n), (n, 1, -1)], "new shape"))


def _reshape_method(self: Any, *shape: Any) -> Any:
    """``t.reshape(2, 3)`` and ``t.reshape((2, 3))``, as in PyTorch."""
    return reshape(self, shape[0] if len(shape) == 1 else shape)


@op(Case("-1 inferred", _reshape_case),
    Case("3-D to 2-D", lambda d: call(array(d, (2, 3, 4)), (6, -1))),
    torch="torch.reshape", method=_reshape_method, aliases=("view",))
def reshape(x: Any, shape: Sequence[int] | int) -> Any:
    """The same elements in a new shape (one -1 is inferred)."""
    x = unwrap(x)
    old = shape_of(x)
    new = infer_shape(shape, int(np.prod(old)))
    if new == old:
        return x
    return apply("ViewBackward0", lambda x: jnp.reshape(x, new), (x,),
                 (lambda g, z, x: reshape(g, old),),
                 tangents="linear")


def _two_dims_case(d: Any) -> Any:
    s = shape(d, 1)
    return call(array(d, s), dim(d, len(s)), dim(d, len(s)))


@op(Case("two dims", _two_dims_case), torch="torch.transpose", method=True)
def transpose(x: Any, dim0: int, dim1: int) -> Any:
    """Swap two dims."""
    x = unwrap(x)
    n = len(shape_of(x))
    d0, d1 = canonical_dim(dim0, n), canonical_dim(dim1, n)
    return apply("TransposeBackward0", lambda x: jnp.swapaxes(x, d0, d1), (x,),
                 (lambda g, z, x: transpose(g, d0, d1),),
                 tangents="linear")


def _permute_case(d: Any) -> Any:
    s = shape(d, 1)
    left = list(range(len(s)))
    perm = tuple(left.pop(d.integer(0, len(left) - 1, "dim")) for _ in range(len(s)))
    return call(array(d, s), perm)


@op(Case("a permutation", _permute_case), torch="torch.permute", method=True)
def permute(x: Any, dims: Sequence[int]) -> Any:
    """Reorder the dims: output dim i is input dim ``dims[i]``."""
    x = unwrap(x)
    perm = permutation(dims, len(shape_of(x)))
    inverse = tuple(int(i) for i in np.argsort(perm))
    return apply("PermuteBackward0", lambda x: jnp.transpose(x, perm), (x,),
                 (lambda g, z, x: permute(g, inverse),),
                 tangents="linear")


def _squeeze_case(d: Any) -> Any:
    s = tuple(d.choice([1, 3], "side") for _ in range(d.integer(1, 4, "ndim")))
    return call(array(d, s), dims(d, len(s)))


def _torch_squeeze(x: Any, dim: Any = None) -> Any:
    import torch

    return torch.squeeze(x) if dim is None else torch.squeeze(x, dim)


@op(Case("dims", _squeeze_case), torch=_torch_squeeze, method=True)
def squeeze(x: Any, dim: int | Sequence[int] | None = None) -> Any:
    """Drop size-1 dims (only those in ``dim`` when given; others are left, as in PyTorch)."""
    x = unwrap(x)
    old = shape_of(x)
    drop = canonical_dims(dim, len(old))
    new = tuple(n for i, n in enumerate(old) if not (i in drop and n == 1))
    return apply("SqueezeBackward0" if dim is None else "SqueezeBackward1",
                 lambda x: jnp.reshape(x, new), (x,), (lambda g, z, x: reshape(g, old),),
                 tangents="linear")


def _unsqueeze_case(d: Any) -> Any:
    s = shape(d)
    return call(array(d, s), d.integer(-len(s) - 1, len(s), "dim"))


@op(Case("any dim", _unsqueeze_case), torch="torch.unsqueeze", method=True)
def unsqueeze(x: Any, dim: int) -> Any:
    """Insert a size-1 dim at ``dim`` (range [-ndim-1, ndim])."""
    x = unwrap(x)
    old = shape_of(x)
    d = canonical_dim(dim, len(old) + 1)
    new = old[:d] + (1,) + old[d:]
    return apply("UnsqueezeBackward0", lambda x: jnp.reshape(x, new), (x,),
                 (lambda g, z, x: reshape(g, old),),
                 tangents="linear")


def _expand_case(d: Any) -> Any:
    sa, sb = two_shapes(d)
    target = tuple(np.broadcast_shapes(sa, sb))
    lead = len(target) - len(sa)
    spec = tuple(-1 if i >= lead and sa[i - lead] == n and boolean(d, "keep") else n
                 for i, n in enumerate(target))
    return call(array(d, sa), spec)


@op(Case("-1 keeps a size", _expand_case), torch="torch.Tensor.expand", method=True)
def expand(x: Any, *shape: Any) -> Any:
    """``torch.expand``: broadcast to ``shape``; -1 keeps a size. Gradient sums back."""
    x = unwrap(x)
    if len(shape) == 1 and not isinstance(shape[0], int | np.integer):
        shape = tuple(shape[0])
    old = shape_of(x)
    new = expand_shape(old, shape)
    if new == old:
        return x
    return apply("ExpandBackward0", lambda x: jnp.broadcast_to(x, new), (x,),
                 (lambda g, z, x: g,),
                 tangents="linear")  # the engine sums g back to x's shape


def _broadcast_to_case(d: Any) -> Any:
    sa, sb = two_shapes(d)
    return call(array(d, sa), tuple(np.broadcast_shapes(sa, sb)))


@op(Case("broadcast", _broadcast_to_case), torch="torch.broadcast_to")
def broadcast_to(x: Any, shape: Sequence[int]) -> Any:
    """Broadcast to ``shape`` (NumPy rules, PyTorch's errors)."""
    return expand(x, tuple(shape))


def _slicer(d: int, start: int, stop: int) -> tuple:
    """The index of ``[start:stop]`` along dim ``d``."""
    return (slice(None),) * d + (slice(int(start), int(stop)),)


def _concatenate_case(d: Any) -> Any:
    s = shape(d, 1)
    k = dim(d, len(s)) % len(s)
    sizes = [d.integer(1, 3, "size") for _ in range(d.integer(1, 3, "count"))]
    return call([array(d, s[:k] + (n,) + s[k + 1:]) for n in sizes], k - len(s) * boolean(d))


@op(Case("pieces", _concatenate_case), torch="torch.cat", aliases=("cat",))
def concatenate(xs: Sequence[Any], dim: int = 0) -> Any:
    """Join along an existing dim (``torch.cat``)."""
    xs = tuple(unwrap(x) for x in xs)
    if not xs:
        raise RuntimeError("torch.cat(): expected a non-empty list of Tensors")
    shapes = [shape_of(x) for x in xs]
    d = canonical_dim(dim, len(shapes[0]))
    for k, s in enumerate(shapes[1:], start=1):
        if len(s) != len(shapes[0]):
            raise RuntimeError(f"Tensors must have same number of dimensions: got "
                               f"{len(shapes[0])} and {len(s)}")
        for i, (n0, n) in enumerate(zip(shapes[0], s)):
            if i != d and n0 != n:
                raise RuntimeError(f"Sizes of tensors must match except in dimension {d}. "
                                   f"Expected size {n0} but got size {n} for tensor number {k} "
                                   "in the list.")
    starts = np.cumsum([0] + [s[d] for s in shapes])

    def piece(k: int) -> Any:
        index = _slicer(d, starts[k], starts[k + 1])
        return lambda g, z, *xs: getitem(g, index)

    return apply("CatBackward0", lambda *xs: jnp.concatenate(xs, axis=d), xs,
                 tuple(piece(k) for k in range(len(xs))),
                 tangents="linear")


def _stack_case(d: Any) -> Any:
    s = shape(d)
    k = d.integer(-len(s) - 1, len(s), "dim")
    return call([array(d, s) for _ in range(d.integer(1, 3, "count"))], k)


@op(Case("pieces", _stack_case), torch="torch.stack")
def stack(xs: Sequence[Any], dim: int = 0) -> Any:
    """Join along a new dim."""
    xs = tuple(unwrap(x) for x in xs)
    if not xs:
        raise RuntimeError("stack expects a non-empty TensorList")
    shapes = [shape_of(x) for x in xs]
    for k, s in enumerate(shapes[1:], start=1):
        if s != shapes[0]:
            raise RuntimeError(f"stack expects each tensor to be equal size, but got "
                               f"{list(shapes[0])} at entry 0 and {list(s)} at entry {k}")
    d = canonical_dim(dim, len(shapes[0]) + 1)

    def piece(k: int) -> Any:
        index = (slice(None),) * d + (k,)
        return lambda g, z, *xs: getitem(g, index)

    return apply("StackBackward0", lambda *xs: jnp.stack(xs, axis=d), xs,
                 tuple(piece(k) for k in range(len(xs))),
                 tangents="linear")


def _split_case(d: Any) -> Any:
    s = shape(d, 1)
    k = dim(d, len(s))
    n = s[k]
    how = d.choice([1, 2, 4, [n - 1, 1] if n > 1 else [1]], "split")
    return call(array(d, s), how, k)


@op(Case("sizes or sections", _split_case), torch="torch.split")
def split(x: Any, split_size_or_sections: int | Sequence[int], dim: int = 0) -> tuple:
    """``torch.split``: chunks of a given size (the last may be smaller) or of listed sizes."""
    x = unwrap(x)
    shape = shape_of(x)
    d = canonical_dim(dim, len(shape))
    n = shape[d]
    if isinstance(split_size_or_sections, int | np.integer):
        size = int(split_size_or_sections)
        if size <= 0:
            raise RuntimeError(f"split_size can only be 0 if dimension size is 0, but got "
                               f"dimension size of {n}" if size == 0 else
                               f"split expects split_size be non-negative, but got "
                               f"split_size={size}")
        sizes = [builtins.min(size, n - s) for s in range(0, n, size)] or [0]
    else:
        sizes = [int(s) for s in split_size_or_sections]
        if builtins.sum(sizes) != n:
            raise RuntimeError(f"split_with_sizes expects split_sizes to sum exactly to {n} "
                               f"(input tensor's size at dimension {d}), but got "
                               f"split_sizes={sizes}")
    starts = np.cumsum([0] + sizes)
    return tuple(getitem(x, _slicer(d, starts[k], starts[k + 1])) for k in range(len(sizes)))
