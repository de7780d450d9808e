"""PyTorch's shape rules, written once: dim wrapping, broadcasting, ``-1`` inference, ``expand``,
permutations and integer indices.

`funcdl.ops` (views of a StridedArray) and `funcdl.tape` (the differentiable functions) both check
their arguments here, so a bad shape gets PyTorch's words and PyTorch's exception type: IndexError
for a dim or an index out of range, RuntimeError (`ShapeError`) for shapes that do not fit.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any

import numpy as np

Shape = tuple[int, ...]

ZERO_DIM_INDEX = ("invalid index of a 0-dim tensor. Use `tensor.item()` in Python or "
                  "`tensor.item<T>()` in C++ to convert a 0-dim tensor to a number")


class ShapeError(RuntimeError, ValueError):
    """Shapes that do not fit. PyTorch raises RuntimeError; it is also a ValueError because
    `funcdl.ops` raised ValueError before the rules were shared, and callers may catch that."""


def as_int(v: Any, what: str, pos: int | None = None) -> int:
    """``v`` as a Python int; bools, floats and other non-integers raise a TypeError."""
    if not isinstance(v, bool | np.bool_):
        try:
            return operator.index(v)
        except TypeError:
            pass
    where = "" if pos is None else f" at pos {pos}"
    raise TypeError(f"{what} must be an int, but found element of type {type(v).__name__}{where}"
                    f" (got {v!r}); pass integers")


def as_ints(seq: Any, what: str) -> Shape:
    """A tuple of Python ints from an int or a sequence of ints (TypeError otherwise)."""
    if isinstance(seq, int | np.integer) and not isinstance(seq, bool | np.bool_):
        return (int(seq),)
    if not isinstance(seq, Sequence | np.ndarray):
        raise TypeError(f"{what} must be a tuple of ints, but got {type(seq).__name__} ({seq!r})")
    return tuple(as_int(v, f"{what}: every element", i) for i, v in enumerate(seq))


def canonical_dim(dim: Any, ndim: int) -> int:
    """``dim`` wrapped into ``[0, ndim)``; a 0-d array accepts -1 and 0, as in PyTorch."""
    dim = as_int(dim, "dim")
    n = max(ndim, 1)
    if not -n <= dim < n:
        raise IndexError(
            f"Dimension out of range (expected to be in range of [{-n}, {n - 1}], but got {dim})")
    return dim % n


def canonical_dims(dim: Any, ndim: int) -> tuple[int, ...]:
    """``None``, an int or a sequence of ints as a sorted tuple of non-negative dims.

    ``None`` and ``()`` mean every dim (``torch.sum(x, dim=())`` reduces everything too). A 0-d
    array has no dims to reduce, so it gives ``()`` whatever valid dim was asked.
    """
    if dim is None:
        return tuple(range(ndim))
    dims = (dim,) if isinstance(dim, int | np.integer) and not isinstance(dim, bool) else dim
    if not isinstance(dims, Sequence):
        raise TypeError(f"dim must be None, an int or a tuple of ints, not {type(dim).__name__}")
    if len(dims) == 0:
        return tuple(range(ndim))
    out: list[int] = []
    for d in dims:
        c = canonical_dim(d, ndim)
        if c in out:
            raise ShapeError(f"dim {c} appears multiple times in the list of dims")
        out.append(c)
    return tuple(sorted(out)) if ndim else ()


def broadcast_shapes(*shapes: Sequence[int]) -> Shape:
    """NumPy's broadcasting of ``shapes``, failing with PyTorch's message."""
    out: Shape = ()
    for shape in shapes:
        shape = tuple(shape)
        n = max(len(out), len(shape))
        a, b = (1,) * (n - len(out)) + out, (1,) * (n - len(shape)) + shape
        for i, (sa, sb) in enumerate(zip(a, b)):
            if sa != sb and sa != 1 and sb != 1:
                raise ShapeError(f"The size of tensor a ({sa}) must match the size of tensor "
                                 f"b ({sb}) at non-singleton dimension {i}")
        out = tuple(sa if sb == 1 else sb for sa, sb in zip(a, b))
    return out


def infer_shape(shape: Any, numel: int) -> Shape:
    """``shape`` (an int or ints) with one -1 filled in so it holds ``numel`` elements."""
    shape = as_ints(shape, "shape")
    infer = None
    for i, n in enumerate(shape):
        if n == -1:
            if infer is not None:
                raise ShapeError("only one dimension can be inferred")
            infer = i
        elif n < 0:
            raise ShapeError(f"invalid shape dimension {n} at index {i} of shape {list(shape)}")
    known = math.prod(n for n in shape if n != -1)
    if infer is not None and known != 0 and numel % known == 0:
        return shape[:infer] + (numel // known,) + shape[infer + 1:]
    if infer is None and known == numel:
        return shape
    raise ShapeError(f"shape '{list(shape)}' is invalid for input of size {numel}")


def expand_shape(shape: Sequence[int], target: Any) -> Shape:
    """The shape ``expand(target)`` gives a tensor of ``shape``: size-1 dims and new leading dims
    take the target's size; -1 keeps a size."""
    shape, target = tuple(shape), as_ints(target, "size")
    if len(target) < len(shape):
        raise ShapeError(
            f"expand(shape={list(shape)}, size={list(target)}): the number of sizes provided "
            f"({len(target)}) must be greater or equal to the number of dimensions in the tensor "
            f"({len(shape)})")
    lead = len(target) - len(shape)
    out = [0] * len(target)
    for i in reversed(range(len(target))):  # torch reports the last offending dim
        want = target[i]
        have = shape[i - lead] if i >= lead else None
        if want == -1:
            if have is None:
                raise ShapeError(f"The expanded size of the tensor (-1) isn't allowed in a "
                                 f"leading, non-existing dimension {i}")
            want = have
        if want < 0:
            raise ShapeError(f"Trying to create tensor with negative dimension {want}: "
                             f"{list(target)}")
        if have is not None and have != 1 and have != want:
            raise ShapeError(
                f"The expanded size of the tensor ({want}) must match the existing size ({have}) "
                f"at non-singleton dimension {i}.  Target sizes: {list(target)}.  Tensor sizes: "
                f"{list(shape)}")
        out[i] = want
    return tuple(out)


def permutation(dims: Any, ndim: int) -> Shape:
    """``dims`` as a permutation of ``range(ndim)`` (negative dims wrapped)."""
    dims = as_ints(dims, "dims")
    if len(dims) != ndim:
        raise ShapeError(
            f"permute(): number of dimensions in the tensor input does not match the length of "
            f"the desired ordering of dimensions i.e. input.dim() = {ndim} is not equal to "
            f"len(dims) = {len(dims)}")
    perm = tuple(canonical_dim(d, ndim) for d in dims)
    if len(set(perm)) != len(perm):
        raise ShapeError("permute(): duplicate dims are not allowed.")
    return perm


def check_index(index: Any, shape: Sequence[int]) -> None:
    """PyTorch's errors for ``x[index]``: indexing a 0-d tensor, too many indices, an integer out
    of bounds (JAX would clamp it silently). Array indices are left to the caller."""
    parts = index if isinstance(index, tuple) else (index,)
    if not shape and any(p is not Ellipsis and p is not None for p in parts):
        raise IndexError(ZERO_DIM_INDEX)
    dim = 0
    for p in parts:
        if p is Ellipsis:
            return  # the dims after it are counted from the end; leave those to the caller
        if p is None:
            continue
        if dim >= len(shape) and not isinstance(p, bool):
            raise IndexError(f"too many indices for tensor of dimension {len(shape)}")
        if isinstance(p, int | np.integer) and not isinstance(p, bool):
            if not -shape[dim] <= p < shape[dim]:
                raise IndexError(f"index {p} is out of bounds for dimension {dim} with size "
                                 f"{shape[dim]}")
        is_mask = getattr(p, "dtype", None) == np.bool_
        dim += getattr(p, "ndim", 0) if is_mask else 1


# --------------------------------------------------------------------------- windows (conv, pool)


def unfold_dim(shape: Sequence[int], dim: Any, size: Any, step: Any) -> tuple[int, int, int]:
    """``(dim, size, step)`` checked as ``Tensor.unfold`` checks them (dim wrapped)."""
    d = canonical_dim(dim, len(shape))
    size, step = as_int(size, "size"), as_int(step, "step")
    n = shape[d] if len(shape) else 1
    if size > n:
        raise ShapeError(f"maximum size for tensor at dimension {d} is {n} but size is {size}")
    if size < 0:
        raise ShapeError(f"size is {size} but must be >= 0")
    if step <= 0:
        raise ShapeError(f"step is {step} but must be > 0")
    return d, size, step


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: tuple[int, int] = (0, 0),
                     dilation: int = 1) -> int:
    """Windows of a (dilated) kernel that fit in ``size`` padded by ``padding`` (lo, hi)."""
    return (size + padding[0] + padding[1] - dilation * (kernel - 1) - 1) // stride + 1


def same_padding(kernel: int, dilation: int = 1) -> tuple[int, int]:
    """``padding="same"`` as PyTorch pads: the odd element of an even kernel goes on the right."""
    total = dilation * (kernel - 1)
    return total // 2, total - total // 2


def pool_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1,
                     ceil_mode: bool = False) -> int:
    """PyTorch's ``pooling_output_shape``: ``ceil_mode`` rounds up, but the last window must
    start inside the input or its left padding."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = span // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out
