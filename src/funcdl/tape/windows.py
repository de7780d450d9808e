"""Sliding windows and padding: ``pad``, ``unfold`` (im2col) and its adjoint ``fold`` (col2im).

All three are built on one pair of linear functions, each the other's gradient:

* ``unfold_dim(x, dim, size, step, dilation)`` -- PyTorch's ``Tensor.unfold`` (``t.unfold`` here
  too), plus a dilation: the windows along ``dim`` as a new last dim. Its forward is `funcdl.ops`'
  zero-copy ``unfold`` view of ``x``, lowered once (``ops.to_array``);
* ``fold_dim(g, dim, size, step, dilation, length)`` -- the sum of every window back into place,
  one ``lax.pad`` per window offset (the interior padding spaces the windows ``step`` apart).

A convolution's and a pooling layer's windows are these, one spatial dim at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
from jax import lax

from funcdl import ops
from funcdl.ops import shapes
from funcdl.ops.shapes import ShapeError, as_int, canonical_dim, conv_output_size
from funcdl.tape.cases import Case, array, call
from funcdl.tape.registry import op
from funcdl.tape.shape import permute, reshape
from funcdl.tape.tensor import apply, shape_of, unwrap


def tuple_arg(v: Any, n: int, name: str, fn: str = "") -> tuple[int, ...]:
    """An int or ``n`` ints (PyTorch's ``_pair``/``_single``), as a tuple of ``n`` ints."""
    if isinstance(v, int) and not isinstance(v, bool):
        return (v,) * n
    vals = tuple(as_int(x, name) for x in v)
    if len(vals) == 1:
        return vals * n
    if len(vals) != n:
        where = f"{fn}: " if fn else ""
        count = {1: "one", 2: "two", 3: "three"}.get(n, str(n))
        raise ShapeError(f"{where}{name} must either be a single int, or a tuple of {count} ints")
    return vals


# --------------------------------------------------------------------------- the window pair


def window_view(view: ops.StridedArray, d: int, size: int, step: int,
                dilation: int = 1) -> ops.StridedArray:
    """``view.unfold(d, ...)`` of windows of ``size`` elements ``dilation`` apart: still a view
    (every ``dilation``-th element of a wider window)."""
    view = ops.unfold(view, d, (size - 1) * dilation + 1, step)
    return ops.slice(view, -1, None, None, dilation) if dilation > 1 else view


def _unfold_forward(x: Any, d: int, size: int, step: int, dilation: int) -> Any:
    return ops.to_array(window_view(ops.from_array(x), d, size, step, dilation))


def unfold_dim(x: Any, dim: int, size: int, step: int, dilation: int = 1) -> Any:
    """The windows of ``size`` elements (``dilation`` apart) along ``dim``, ``step`` apart, as a
    new last dim; ``dim`` becomes the window count (``Tensor.unfold`` when ``dilation`` is 1)."""
    x = unwrap(x)
    shape = shape_of(x)
    if not shape:  # a 0-d tensor has one window: of its element (size 1) or empty
        return reshape(unfold_dim(reshape(x, (1,)), 0, size, step), (size,))
    d, size, step = shapes.unfold_dim(shape, dim, (size - 1) * dilation + 1, step)
    size = (size - 1) // dilation + 1
    length = shape[d]
    return apply("UnfoldBackward0", lambda x: _unfold_forward(x, d, size, step, dilation), (x,),
                 (lambda g, z, x: fold_dim(g, d, size, step, dilation, length),),
                 tangents="linear")


def _fold_forward(g: Any, d: int, size: int, step: int, dilation: int, length: int) -> Any:
    count = g.shape[d]
    total = None
    for j in range(size):  # window offset j lands at j * dilation + o * step
        config = [(0, 0, 0)] * (g.ndim - 1)
        lo = j * dilation
        config[d] = (lo, length - lo - (count - 1) * step - 1, step - 1)
        part = lax.pad(g[..., j], jnp.zeros((), g.dtype), config)
        total = part if total is None else total + part
    return total


def fold_dim(g: Any, dim: int, size: int, step: int, dilation: int, length: int) -> Any:
    """The adjoint of `unfold_dim`: each window of ``g`` (windows along ``dim``, offsets in the
    last dim) added back at its place in a dim of ``length``; overlaps sum."""
    g = unwrap(g)
    d = canonical_dim(dim, len(shape_of(g)) - 1)
    return apply("UnfoldBackwardBackward0",
                 lambda g: _fold_forward(g, d, size, step, dilation, length), (g,),
                 (lambda t, z, g: unfold_dim(t, d, size, step, dilation),),
                 tangents="linear")


def unfold_method(self: Any, dimension: int, size: int, step: int) -> Any:
    """``Tensor.unfold(dimension, size, step)``: PyTorch's sliding windows, differentiable."""
    return unfold_dim(self, dimension, size, step)


# --------------------------------------------------------------------------- pad


def _pad_case(d: Any) -> Any:
    widths = d.choice([(1, 2), (0, 1, 2, 0), (-1, 1), (2, -1, 1, 1)], "pad")
    value = d.choice([0.0, -1.5], "value")
    return call(array(d, (2, 3, 4)), widths, value=value)


@op(Case("widths, crops, value", _pad_case), torch="torch.nn.functional.pad")
def pad(input: Any, pad: Sequence[int], mode: str = "constant", value: float | None = None
        ) -> Any:
    """``torch.nn.functional.pad`` in ``"constant"`` mode: ``pad`` holds (before, after) widths
    for the last dims, last dim first; negative widths crop. The gradient crops back."""
    if mode != "constant":
        raise NotImplementedError(f"funcdl.tape.pad supports mode='constant' only, got "
                                  f"mode={mode!r}")
    widths = tuple(as_int(p, "pad") for p in pad)
    shape = shape_of(unwrap(input))
    if len(widths) % 2:
        raise ShapeError("Padding length must be divisible by 2")
    if len(widths) // 2 > len(shape):
        raise ShapeError(f"Padding length should be less than or equal to two times the input "
                         f"dimension but got padding length {len(widths)} and input of dimension "
                         f"{len(shape)}")
    return constant_pad(input, widths, 0.0 if value is None else value)


def constant_pad(x: Any, widths: tuple[int, ...], value: float = 0.0) -> Any:
    """`pad` without the argument checks: ``value`` around ``x`` (negative widths crop)."""
    x = unwrap(x)
    shape = shape_of(x)
    config = [(0, 0, 0)] * len(shape)
    for i in range(len(widths) // 2):
        d = len(shape) - 1 - i
        config[d] = (widths[2 * i], widths[2 * i + 1], 0)
        if shape[d] + widths[2 * i] + widths[2 * i + 1] < 0:
            raise ShapeError("narrow(): length must be non-negative.")
    back = tuple(-w for w in widths)
    return apply("ConstantPadNdBackward0",
                 lambda x: lax.pad(x, jnp.asarray(value, x.dtype), config), (x,),
                 (lambda g, z, x: constant_pad(g, back),),
                 tangents=(lambda t, z, x: constant_pad(t, widths),))


# --------------------------------------------------------------------------- unfold, fold


def _im2col_args(kernel_size: Any, dilation: Any, padding: Any, stride: Any) -> tuple:
    k = tuple_arg(kernel_size, 2, "kernel_size")
    d, p, s = (tuple_arg(v, 2, n) for v, n in ((dilation, "dilation"), (padding, "padding"),
                                                (stride, "stride")))
    for name, label, v, strict in (("kernel size", "kernel", k, True),
                                   ("dilation", "dilation", d, True),
                                   ("stride", "stride", s, True), ("padding", "pad", p, False)):
        if min(v) < 0 or (strict and min(v) == 0):
            bound = "greater than zero" if strict else "non-negative"
            raise ShapeError(f"{name} should be {bound}, but got {label}_height: {v[0]} "
                             f"{label}_width: {v[1]}")
    return k, d, p, s


def _blocks(size: Sequence[int], k: tuple, d: tuple, p: tuple, s: tuple) -> tuple[int, int]:
    blocks = tuple(conv_output_size(n, k[i], s[i], (p[i], p[i]), d[i]) for i, n in enumerate(size))
    if min(blocks) < 1:
        raise ShapeError(f"Given input with spatial size {tuple(size)}, kernel_size={k}, "
                         f"dilation={d}, padding={p}, calculated shape of the array of sliding "
                         f"blocks as {blocks}, but its components must be at least one.")
    return blocks


def _unfold_case(d: Any) -> Any:
    k = d.choice([2, (2, 3), 1], "kernel")
    x = array(d, d.choice([(2, 2, 5, 4), (3, 4, 4)], "batched or not"))
    return call(x, k, dilation=d.choice([1, (2, 1)], "dilation"),
                padding=d.choice([0, 1], "padding"), stride=d.choice([1, 2], "stride"))


@op(Case("batch, kernel, dilation, padding, stride", _unfold_case),
    torch="torch.nn.functional.unfold", method=unfold_method)
def unfold(input: Any, kernel_size: Any, dilation: Any = 1, padding: Any = 0,
           stride: Any = 1) -> Any:
    """``torch.nn.functional.unfold`` (im2col): ``(N, C, H, W)`` to ``(N, C*kh*kw, L)``, each
    column one flattened window. ``t.unfold(dim, size, step)`` is ``Tensor.unfold`` instead."""
    x = unwrap(input)
    shape = shape_of(x)
    if len(shape) not in (3, 4):
        raise ShapeError(f"Input Error: Only 3D or 4D input Tensors are supported (got "
                         f"{len(shape)}D)")
    k, d, p, s = _im2col_args(kernel_size, dilation, padding, stride)
    _blocks(shape[-2:], k, d, p, s)
    n = len(shape)
    w = constant_pad(x, (p[1], p[1], p[0], p[0])) if max(p) else x
    w = unfold_dim(unfold_dim(w, n - 2, k[0], s[0], d[0]), n - 1, k[1], s[1], d[1])
    lead = tuple(range(n - 3))  # the batch dim, when there is one
    w = permute(w, lead + (n - 3, n, n + 1, n - 2, n - 1))  # (N, C, kh, kw, OH, OW)
    wshape = shape_of(w)
    return reshape(w, wshape[:-5] + (wshape[-5] * k[0] * k[1], wshape[-2] * wshape[-1]))


def _fold_case(d: Any) -> Any:
    out = d.choice([(4, 5), (3, 3)], "output size")
    k, s = d.choice([(2, 1), ((2, 3), 2)], "kernel, stride")
    kk = tuple_arg(k, 2, "k")
    blocks = [conv_output_size(n, kk[i], s, (1, 1)) for i, n in enumerate(out)]
    return call(array(d, (2, 3 * kk[0] * kk[1], blocks[0] * blocks[1])), out, k, padding=1,
                stride=s)


@op(Case("kernel, padding, stride", _fold_case), torch="torch.nn.functional.fold")
def fold(input: Any, output_size: Any, kernel_size: Any, dilation: Any = 1, padding: Any = 0,
         stride: Any = 1) -> Any:
    """``torch.nn.functional.fold`` (col2im), the adjoint of `unfold`: each column is a window
    added back into an ``(N, C, *output_size)`` image; overlapping windows sum."""
    x = unwrap(input)
    shape = shape_of(x)
    if len(shape) not in (2, 3) or 0 in shape[-2:]:
        raise ShapeError(f"Expected 2D or 3D (batch mode) tensor for input with possibly 0 batch "
                         f"size and non-zero dimensions for input, but got: {list(shape)}")
    size = tuple_arg(output_size, 2, "output_size")
    k, d, p, s = _im2col_args(kernel_size, dilation, padding, stride)
    if shape[-2] % (k[0] * k[1]):
        raise ShapeError(f"Expected size of input's dimension {len(shape) - 2} to be divisible "
                         f"by the product of kernel_size, but got input.size({len(shape) - 2})="
                         f"{shape[-2]} and kernel_size={k}.")
    oh, ow = _blocks(size, k, d, p, s)
    if shape[-1] != oh * ow:
        raise ShapeError(f"Given output_size={size}, kernel_size={k}, dilation={d}, padding={p}, "
                         f"stride={s}, expected size of input's dimension {len(shape) - 1} to "
                         f"match the calculated number of sliding blocks {oh} * {ow} = "
                         f"{oh * ow}, but got input.size({len(shape) - 1})={shape[-1]}.")
    lead = shape[:-2]
    c = len(lead)  # the channel dim, after the batch dim when there is one
    w = reshape(x, lead + (shape[-2] // (k[0] * k[1]), k[0], k[1], oh, ow))
    w = permute(w, tuple(range(c + 1)) + (c + 3, c + 4, c + 1, c + 2))  # (N, C, OH, OW, kh, kw)
    w = fold_dim(fold_dim(w, c + 2, k[1], s[1], d[1], size[1] + 2 * p[1]), c + 1, k[0], s[0],
                 d[0], size[0] + 2 * p[0])
    return constant_pad(w, (-p[1], -p[1], -p[0], -p[0])) if max(p) else w
