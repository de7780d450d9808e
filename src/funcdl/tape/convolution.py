"""Convolutions with ``torch.nn.functional``'s names, arguments and NC(H)W layout: ``conv1d``,
``conv2d``, ``conv_transpose1d``, ``conv_transpose2d``.

All four are one differentiable primitive, `conv_general` (``lax.conv_general_dilated``), whose
gradients are convolutions written with `conv_general` itself, so they differentiate again
(``create_graph``, Hessians): the input gradient is a transposed convolution (the output gradient
spread by the stride and convolved with the flipped kernel), the weight gradient a convolution of
the input with the output gradient. These are the rules ``jax.grad`` applies
(``jax._src.lax.convolution``), so both engines compile the same program. A transposed convolution
is that input gradient, run forward.

XLA:CPU convolves channels-last arrays faster than NCHW ones (1.05x to 1.5x in this machine's
runs of benchmarks/bench_conv.py and a direct comparison), so the NC(H)W functions transpose their
operands to channels-last around the primitive (see ``CHANNELS_LAST``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax import lax

from funcdl.ops.shapes import ShapeError, same_padding
from funcdl.tape.cases import Case, array, boolean, call
from funcdl.tape.elementwise import add
from funcdl.tape.registry import op
from funcdl.tape.shape import permute, reshape, squeeze, unsqueeze
from funcdl.tape.tensor import apply, shape_of, unwrap

CHANNELS_LAST = True  # compute in (N, *spatial, C) / (*kernel, I, O): faster on XLA:CPU


@dataclasses.dataclass(frozen=True)
class ConvSpec:
    """Everything of a convolution but its operands: ``lax.conv_general_dilated``'s arguments."""

    strides: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    lhs_dilation: tuple[int, ...]
    rhs_dilation: tuple[int, ...]
    dims: lax.ConvDimensionNumbers  # (lhs, rhs, out) specs: (batch/out, feature/in, *spatial)
    feature_groups: int = 1
    batch_groups: int = 1


def flip(x: Any, dims: Sequence[int]) -> Any:
    """``x`` reversed along ``dims`` (``torch.flip``); its own gradient."""
    x = unwrap(x)
    dims = tuple(dims)
    return apply("FlipBackward0", lambda x: lax.rev(x, dims), (x,),
                 (lambda g, z, x: flip(g, dims),),
                 tangents="linear")


def conv_general(x: Any, w: Any, spec: ConvSpec) -> Any:
    """``lax.conv_general_dilated(x, w, ...)`` with ``spec``; differentiable by both engines, to
    any order (its rules are convolutions)."""
    x, w = unwrap(x), unwrap(w)
    xs, ws = shape_of(x), shape_of(w)

    def forward(x: Any, w: Any) -> Any:
        return lax.conv_general_dilated(x, w, spec.strides, spec.padding, spec.lhs_dilation,
                                        spec.rhs_dilation, spec.dims, spec.feature_groups,
                                        spec.batch_groups)

    return apply("ConvolutionBackward0", forward, (x, w),
                 (lambda g, z, x, w: input_grad(g, xs, w, spec),
                  lambda g, z, x, w: weight_grad(g, x, ws, spec)),
                 tangents=(lambda t, z, x, w: conv_general(t, w, spec),
                           lambda t, z, x, w: conv_general(x, t, spec)))


# --------------------------------------------------------------------------- the two gradients


def _dilate(shape: Sequence[int], dilation: Sequence[int]) -> np.ndarray:
    return np.array([0 if n == 0 else 1 + r * (n - 1) for n, r in zip(shape, dilation)])


def _axis_out_of(x: Any, src: int, size: int) -> Any:
    """Split dim ``src`` into ``(size, rest)``."""
    shape = list(shape_of(x))
    shape[src:src + 1] = [size, shape[src] // size]
    return reshape(x, tuple(shape))


def _axis_into(x: Any, src: int, dst: int) -> Any:
    """Merge dim ``src`` into dim ``dst`` (numbered without ``src``), ``src`` as the major part."""
    shape = shape_of(x)
    perm = [i for i in range(len(shape)) if i != src]
    perm.insert(dst, src)
    new = [n for i, n in enumerate(shape) if i != src]
    new[dst] *= shape[src]
    return reshape(permute(x, tuple(perm)), tuple(new))


def _spatial(shape: Sequence[int], spec: Sequence[int]) -> np.ndarray:
    return np.take(np.asarray(shape), spec[2:])


def input_grad(g: Any, x_shape: tuple[int, ...], w: Any, spec: ConvSpec) -> Any:
    """d conv / d x applied to ``g``: ``g`` spread by the strides, convolved with the flipped
    kernel (in and out channels swapped), also a transposed convolution's forward."""
    lhs_spec, rhs_spec, out_spec = spec.dims
    ws = shape_of(w)
    groups = max(spec.feature_groups, spec.batch_groups)
    if groups > 1:  # the group axis moves into the kernel's new output-channel dim
        w = _axis_into(_axis_out_of(w, rhs_spec[0], groups), rhs_spec[0], rhs_spec[1])
    lhs_d = _dilate(_spatial(x_shape, lhs_spec), spec.lhs_dilation)
    rhs_d = _dilate(_spatial(ws, rhs_spec), spec.rhs_dilation)
    out_d = _dilate(_spatial(shape_of(g), out_spec), spec.strides)
    before = rhs_d - np.array([lo for lo, _ in spec.padding]) - 1
    after = lhs_d + rhs_d - 1 - out_d - before
    trans = lax.ConvDimensionNumbers(out_spec, (rhs_spec[1], rhs_spec[0]) + rhs_spec[2:],
                                     lhs_spec)
    out = conv_general(g, flip(w, rhs_spec[2:]), ConvSpec(
        spec.lhs_dilation, tuple((int(a), int(b)) for a, b in zip(before, after)), spec.strides,
        spec.rhs_dilation, trans, groups))
    if spec.batch_groups > 1:
        out = _axis_into(_axis_out_of(out, lhs_spec[1], spec.batch_groups), lhs_spec[1],
                         lhs_spec[0])
    return out


def weight_grad(g: Any, x: Any, w_shape: tuple[int, ...], spec: ConvSpec) -> Any:
    """d conv / d w applied to ``g``: the input convolved with the output gradient (the batch
    summed as the contraction, the strides as the kernel's dilation)."""
    if np.size(shape_of(g)) == 0 or 0 in shape_of(g):
        return jnp.zeros(w_shape, unwrap(x).dtype)
    lhs_spec, rhs_spec, out_spec = spec.dims
    lhs_d = _dilate(_spatial(shape_of(x), lhs_spec), spec.lhs_dilation)
    rhs_d = _dilate(_spatial(w_shape, rhs_spec), spec.rhs_dilation)
    out_d = _dilate(_spatial(shape_of(g), out_spec), spec.strides)
    pads = tuple((lo, int(o - i + r - lo - 1)) for (lo, _), o, i, r
                 in zip(spec.padding, out_d, lhs_d, rhs_d))
    swap = [(s[1], s[0]) + tuple(s[2:]) for s in spec.dims]
    trans = lax.ConvDimensionNumbers(swap[0], swap[2], swap[1])
    feature, batch = ((spec.batch_groups, 1) if spec.batch_groups > 1
                      else (1, spec.feature_groups))
    return conv_general(x, g, ConvSpec(spec.rhs_dilation, pads, spec.lhs_dilation, spec.strides,
                                       trans, feature, batch))


# --------------------------------------------------------------------------- argument checks


def _args(value: Any, nd: int, name: str) -> tuple[int, ...]:
    vals = (value,) * nd if isinstance(value, int | np.integer) else tuple(value)
    if len(vals) == 1:
        vals = vals * nd
    if len(vals) != nd:
        raise ShapeError(f"expected {name} to be a single integer value or a list of {nd} values "
                         f"to match the convolution dimensions, but got {name}={list(vals)}")
    return tuple(int(v) for v in vals)


def _check_args(nd: int, stride: Any, padding: Any, dilation: Any, groups: Any) -> tuple:
    stride, dilation = _args(stride, nd, "stride"), _args(dilation, nd, "dilation")
    if isinstance(padding, str):
        if padding not in ("valid", "same"):
            raise ShapeError(f"Invalid padding string: {padding!r}")
        if padding == "same" and max(stride) > 1:
            raise ShapeError("padding='same' is not supported for strided convolutions")
    else:
        padding = _args(padding, nd, "padding")
        if min(padding) < 0:
            raise ShapeError("negative padding is not supported")
    if min(stride) <= 0:
        raise ShapeError("non-positive stride is not supported")
    if min(dilation) < 0:
        raise ShapeError("dilation should be greater than zero")
    if min(dilation) == 0:
        raise ShapeError("non-positive dilation is not supported")
    if not isinstance(groups, int | np.integer) or groups <= 0:
        raise ShapeError("non-positive groups is not supported")
    return stride, padding, dilation, int(groups)


def _check_input(name: str, nd: int, xs: tuple[int, ...]) -> None:
    if len(xs) not in (nd + 1, nd + 2):
        raise ShapeError(f"Expected {nd + 1}D (unbatched) or {nd + 2}D (batched) input to {name}, "
                         f"but got input of size: {list(xs)}")


def _check_weight(nd: int, xs: tuple, ws: tuple, stride: tuple, groups: int,
                  transposed: bool) -> None:
    if len(ws) < 3:
        raise ShapeError("weight should have at least three dimensions")
    if len(ws) != nd + 2:  # torch words it as the stride not matching the weight's dims
        raise ShapeError(f"expected stride to be a single integer value or a list of "
                         f"{len(ws) - 2} values to match the convolution dimensions, but got "
                         f"stride={list(stride)}")
    if ws[0] % groups:
        raise ShapeError(f"Given groups={groups}, expected weight to be divisible by {groups} at "
                         f"dimension 0, but got weight of size [{list(ws)}] instead")
    channels = ws[0] if transposed else ws[1] * groups
    if xs[1] != channels:
        what = "transposed=1" if transposed else f"groups={groups}"
        raise ShapeError(f"Given {what}, weight of size {list(ws)}, expected input{list(xs)} to "
                         f"have {channels} channels, but got {xs[1]} channels instead")


def _check_bias(ws: tuple, b: Any, out_channels: int) -> None:
    if b is not None and shape_of(b) != (out_channels,):
        raise ShapeError(f"Given weight of size {list(ws)}, expected bias to be 1-dimensional "
                         f"with {out_channels} elements, but got bias of size "
                         f"{list(shape_of(b))} instead")


def _check_dtypes(x: Any, w: Any) -> None:
    if x.dtype != w.dtype:
        raise ShapeError(f"Input type ({x.dtype}) and weight type ({w.dtype}) should be the same")


def _by(sizes: Sequence[int]) -> str:
    return " x ".join(map(str, sizes))


def _pairs(padding: Any, kernel: Sequence[int], dilation: Sequence[int]) -> tuple:
    if padding == "valid":
        return ((0, 0),) * len(kernel)
    if padding == "same":
        return tuple(same_padding(k, d) for k, d in zip(kernel, dilation))
    return tuple((p, p) for p in padding)


# --------------------------------------------------------------------------- layouts


def _numbers(nd: int) -> lax.ConvDimensionNumbers:
    """Dimension numbers of the arrays `conv_general` receives from the NC(H)W functions."""
    spatial = tuple(range(2, nd + 2))
    if CHANNELS_LAST:  # x (N, *S, C), w (*K, I, O)
        return lax.ConvDimensionNumbers((0, nd + 1) + tuple(range(1, nd + 1)),
                                        (nd + 1, nd) + tuple(range(nd)),
                                        (0, nd + 1) + tuple(range(1, nd + 1)))
    return lax.ConvDimensionNumbers((0, 1) + spatial, (0, 1) + spatial, (0, 1) + spatial)


def _to_layout(x: Any, w: Any, nd: int) -> tuple[Any, Any]:
    if not CHANNELS_LAST:
        return x, w
    return (permute(x, (0,) + tuple(range(2, nd + 2)) + (1,)),
            permute(w, tuple(range(2, nd + 2)) + (1, 0)))


def _from_layout(y: Any, nd: int) -> Any:
    return permute(y, (0, nd + 1) + tuple(range(1, nd + 1))) if CHANNELS_LAST else y


def _with_bias(y: Any, b: Any, nd: int, batched: bool) -> Any:
    if b is not None:
        y = add(y, reshape(b, (-1,) + (1,) * nd))
    return y if batched else squeeze(y, 0)


# --------------------------------------------------------------------------- the functions


def _conv(name: str, nd: int, input: Any, weight: Any, bias: Any, stride: Any, padding: Any,
          dilation: Any, groups: Any) -> Any:
    x, w, b = unwrap(input), unwrap(weight), unwrap(bias)
    xs, ws = shape_of(x), shape_of(w)
    _check_input(name, nd, xs)
    stride, padding, dilation, groups = _check_args(nd, stride, padding, dilation, groups)
    batched = len(xs) == nd + 2
    xs = xs if batched else (1,) + xs
    _check_weight(nd, xs, ws, stride, groups, transposed=False)
    _check_bias(ws, b, ws[0])
    _check_dtypes(x, w)
    pads = _pairs(padding, ws[2:], dilation)
    padded = tuple(n + lo + hi for n, (lo, hi) in zip(xs[2:], pads))
    extent = tuple(d * (k - 1) + 1 for k, d in zip(ws[2:], dilation))
    if any(e > n for e, n in zip(extent, padded)):
        raise ShapeError(f"Calculated padded input size per channel: ({_by(padded)}). Kernel "
                         f"size: ({_by(extent)}). Kernel size can't be greater than actual input "
                         "size")
    x = x if batched else unsqueeze(x, 0)
    spec = ConvSpec(stride, pads, (1,) * nd, dilation, _numbers(nd), groups)
    y = _from_layout(conv_general(*_to_layout(x, w, nd), spec), nd)
    return _with_bias(y, b, nd, batched)


def _conv_transpose(name: str, nd: int, input: Any, weight: Any, bias: Any, stride: Any,
                    padding: Any, output_padding: Any, groups: Any, dilation: Any) -> Any:
    x, w, b = unwrap(input), unwrap(weight), unwrap(bias)
    xs, ws = shape_of(x), shape_of(w)
    _check_input(name, nd, xs)
    if isinstance(padding, str):
        raise TypeError(f"{name}(): argument 'padding' must be tuple of ints, not str")
    stride, padding, dilation, groups = _check_args(nd, stride, padding, dilation, groups)
    extra = _args(output_padding, nd, "output_padding")
    batched = len(xs) == nd + 2
    xs = xs if batched else (1,) + xs
    _check_weight(nd, xs, ws, stride, groups, transposed=True)
    if any(e >= s and e >= d for e, s, d in zip(extra, stride, dilation)):
        lead = [(0, 1, 1)] if nd == 1 else []  # torch checks conv_transpose1d as a 2-D one
        e, s, d = zip(*(lead + list(zip(extra, stride, dilation))))
        raise ShapeError(f"output padding must be smaller than either stride or dilation, but got "
                         f"output_padding_height: {e[0]} output_padding_width: {e[1]} "
                         f"stride_height: {s[0]} stride_width: {s[1]} dilation_height: {d[0]} "
                         f"dilation_width: {d[1]}")
    out_channels = ws[1] * groups
    _check_bias(ws, b, out_channels)
    _check_dtypes(x, w)
    size = tuple((n - 1) * s - 2 * p + d * (k - 1) + e + 1 for n, s, p, d, k, e
                 in zip(xs[2:], stride, padding, dilation, ws[2:], extra))
    if min(size) < 1:
        raise ShapeError(f"Given input size per channel: ({_by(xs[2:])}). Calculated output "
                         f"size per channel: ({_by(size)}). Output size is too small")
    x = x if batched else unsqueeze(x, 0)
    # the input gradient of the convolution that maps the output back onto the input
    spec = ConvSpec(stride, tuple((p, p) for p in padding), (1,) * nd, dilation, _numbers(nd),
                    groups)
    out_shape = (xs[0], out_channels) + size
    if CHANNELS_LAST:
        out_shape = (xs[0],) + size + (out_channels,)
    xl, wl = _to_layout(x, w, nd)
    y = _from_layout(input_grad(xl, out_shape, wl, spec), nd)
    return _with_bias(y, b, nd, batched)


# --------------------------------------------------------------------------- declarations


def _conv_case(nd: int, transposed: bool = False) -> Case:
    """Random configurations: batch (none, 1, 2), groups (depthwise included), strides,
    paddings ("same" with even kernels, "valid"), dilations, bias."""

    def make(d: Any) -> Any:
        groups = d.choice([1, 2], "groups")
        c_in, c_out = groups * d.choice([1, 2], "in/groups"), groups * d.choice([1, 2], "out/g")
        kernel = tuple(d.choice([1, 2, 3], "kernel") for _ in range(nd))
        stride = tuple(d.choice([1, 2], "stride") for _ in range(nd))
        dilation = tuple(d.choice([1, 2], "dilation") for _ in range(nd))
        batch = d.choice([(), (1,), (2,)], "batch")
        x = array(d, batch + (c_in,) + (6, 5)[:nd])
        bias = array(d, (c_out,)) if boolean(d, "bias") else None
        if transposed:
            w = array(d, (c_in, c_out // groups) + kernel)
            extra = tuple(d.integer(0, max(s, dl) - 1, "output_padding")
                          for s, dl in zip(stride, dilation))
            return call(x, w, bias, stride, d.choice([0, 1], "padding"), extra, groups, dilation)
        w = array(d, (c_out, c_in // groups) + kernel)
        padding = d.choice(["same", "valid", 0, 1], "padding")
        if padding == "same":
            stride = 1
        return call(x, w, bias, stride, padding, dilation, groups)

    label = "batch, groups, stride, padding, dilation, bias"
    return Case(label + (", output_padding" if transposed else ""), make, rtol=1e-4, atol=1e-5)


@op(_conv_case(1), torch="torch.nn.functional.conv1d")
def conv1d(input: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0,
           dilation: Any = 1, groups: int = 1) -> Any:
    """``torch.nn.functional.conv1d``: ``(N, C_in, L)`` (or unbatched) with weight ``(C_out,
    C_in / groups, k)``; ``padding`` an int, a tuple, ``"valid"`` or ``"same"``."""
    return _conv("conv1d", 1, input, weight, bias, stride, padding, dilation, groups)


@op(_conv_case(2), torch="torch.nn.functional.conv2d")
def conv2d(input: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0,
           dilation: Any = 1, groups: int = 1) -> Any:
    """``torch.nn.functional.conv2d``: ``(N, C_in, H, W)`` (or unbatched) with weight ``(C_out,
    C_in / groups, kh, kw)``; ``padding="same"`` pads an even kernel's extra row and column at
    the bottom and right, as torch does."""
    return _conv("conv2d", 2, input, weight, bias, stride, padding, dilation, groups)


@op(_conv_case(1, transposed=True), torch="torch.nn.functional.conv_transpose1d")
def conv_transpose1d(input: Any, weight: Any, bias: Any = None, stride: Any = 1,
                     padding: Any = 0, output_padding: Any = 0, groups: int = 1,
                     dilation: Any = 1) -> Any:
    """``torch.nn.functional.conv_transpose1d``: the gradient of ``conv1d`` with respect to its
    input, as a function; weight ``(C_in, C_out / groups, k)``."""
    return _conv_transpose("conv_transpose1d", 1, input, weight, bias, stride, padding,
                           output_padding, groups, dilation)


@op(_conv_case(2, transposed=True), torch="torch.nn.functional.conv_transpose2d")
def conv_transpose2d(input: Any, weight: Any, bias: Any = None, stride: Any = 1,
                     padding: Any = 0, output_padding: Any = 0, groups: int = 1,
                     dilation: Any = 1) -> Any:
    """``torch.nn.functional.conv_transpose2d``: the gradient of ``conv2d`` with respect to its
    input, as a function; weight ``(C_in, C_out / groups, kh, kw)``."""
    return _conv_transpose("conv_transpose2d", 2, input, weight, bias, stride, padding,
                           output_padding, groups, dilation)
