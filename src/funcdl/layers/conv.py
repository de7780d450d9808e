"""Convolution layers with ``torch.nn``'s constructor arguments, parameter layout, state-dict keys
and initialisation: ``Conv1d``, ``Conv2d``, ``ConvTranspose1d``, ``ConvTranspose2d``.

The weight is stored as torch stores it (``(out, in / groups, *kernel)``; transposed:
``(in, out / groups, *kernel)``), so a torch ``state_dict`` loads unchanged. Both are initialised
uniform in ``+-1/sqrt(fan_in)``, torch's ``kaiming_uniform_(a=sqrt(5))`` bound.
"""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
from flax import nnx

from funcdl import tape as F
from funcdl.layers.basic import _uniform, check_positive, unsupported, value
from funcdl.layers.counterpart import Build, Example, sample, torch_layer
from funcdl.layers.module import Module

__all__ = ["Conv1d", "Conv2d", "ConvTranspose1d", "ConvTranspose2d"]

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _tuple(v: Any, nd: int) -> tuple[int, ...]:
    return (int(v),) * nd if isinstance(v, int) else tuple(int(x) for x in v)


class _ConvNd(Module):
    """What the four layers share: arguments, checks, parameters, torch conversion."""

    nd = 2
    transposed = False
    function: Any = None  # the tape function, e.g. F.conv2d

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1,
                 padding: Any = 0, dilation: Any = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", *, output_padding: Any = 0, dtype=jnp.float32,
                 rngs: nnx.Rngs):
        check_positive(in_channels=in_channels, out_channels=out_channels)
        if not isinstance(groups, int) or groups <= 0:
            raise ValueError("groups must be a positive integer")
        if in_channels % groups:
            raise ValueError("in_channels must be divisible by groups")
        if out_channels % groups:
            raise ValueError("out_channels must be divisible by groups")
        self._check_padding(padding, stride, padding_mode)
        nd = self.nd
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride = _tuple(kernel_size, nd), _tuple(stride, nd)
        self.padding = padding if isinstance(padding, str) else _tuple(padding, nd)
        self.dilation, self.output_padding = _tuple(dilation, nd), _tuple(output_padding, nd)
        self.padding_mode = padding_mode
        rows, cols = (in_channels, out_channels) if self.transposed else (out_channels,
                                                                          in_channels)
        shape = (rows, cols // groups) + self.kernel_size
        bound = 1.0 / math.sqrt(shape[1] * math.prod(self.kernel_size))  # 1/sqrt(fan_in)
        self.weight = nnx.Param(_uniform(rngs.params(), shape, bound, dtype))
        self.bias = (nnx.Param(_uniform(rngs.params(), (out_channels,), bound, dtype)) if bias
                     else None)

    def _check_padding(self, padding: Any, stride: Any, padding_mode: str) -> None:
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {set(PADDING_MODES)}, but got "
                             f"padding_mode={padding_mode!r}")
        if padding_mode != "zeros":
            raise NotImplementedError(f"padding_mode={padding_mode!r}: funcdl pads with zeros "
                                      "only")
        if isinstance(padding, str):
            if self.transposed or padding not in ("same", "valid"):
                raise ValueError(f"Invalid padding string {padding!r}, should be one of "
                                 "{'same', 'valid'}")
            if padding == "same" and max(_tuple(stride, self.nd)) > 1:
                raise ValueError("padding='same' is not supported for strided convolutions")

    def __call__(self, x):
        w, b = value(self.weight), None if self.bias is None else value(self.bias)
        if self.transposed:
            return type(self).function(x, w, b, self.stride, self.padding, self.output_padding,
                                       self.groups, self.dilation)
        return type(self).function(x, w, b, self.stride, self.padding, self.dilation,
                                   self.groups)


def _from_torch(cls: type):
    def build(t: Any, b: Build) -> _ConvNd:
        if t.padding_mode != "zeros":
            raise unsupported(t, f"padding_mode={t.padding_mode!r}")
        extra = {"output_padding": t.output_padding} if cls.transposed else {}
        return cls(t.in_channels, t.out_channels, t.kernel_size, stride=t.stride,
                   padding=t.padding, dilation=t.dilation, groups=t.groups,
                   bias=t.bias is not None, rngs=b.rngs, **extra)

    return build


def _to_torch(name: str):
    def build(m: _ConvNd, b: Build) -> Any:
        args = dict(stride=m.stride, padding=m.padding, dilation=m.dilation, groups=m.groups,
                    bias=m.bias is not None)
        if m.transposed:
            args["output_padding"] = m.output_padding
        return getattr(b.torch.nn, name)(m.in_channels, m.out_channels, m.kernel_size, **args)

    return build


def _declare(name: str, example: tuple, shape: tuple):
    """Declare a conv layer as the counterpart of ``torch.nn.<name>``; ``example``: its arguments
    (the same for both), ``shape``: the example input's."""
    def declare(cls: type) -> type:
        return torch_layer(
            f"torch.nn.{name}",
            keys=lambda m: {"weight": m.weight, "bias": m.bias},
            example=lambda torch: Example(cls(*example, rngs=nnx.Rngs(0)),
                                          getattr(torch.nn, name)(*example), sample(*shape)),
            from_torch=_from_torch(cls), to_torch=_to_torch(name))(cls)

    return declare


@_declare("Conv1d", (4, 6, 3, 2, 1, 1, 2), (2, 4, 9))
class Conv1d(_ConvNd):
    """``nn.Conv1d(in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
    groups=1, bias=True)`` over ``(N, C, L)`` or ``(C, L)``."""

    nd = 1
    function = staticmethod(F.conv1d)


@_declare("Conv2d", (4, 6, 3, 1, "same", 2, 2), (2, 4, 7, 6))
class Conv2d(_ConvNd):
    """``nn.Conv2d(in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
    groups=1, bias=True)`` over ``(N, C, H, W)`` or ``(C, H, W)``; ``padding`` an int, a pair,
    ``"valid"`` or ``"same"``; weight ``(out, in / groups, kh, kw)``."""

    nd = 2
    function = staticmethod(F.conv2d)


class _ConvTransposeNd(_ConvNd):
    transposed = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1,
                 padding: Any = 0, output_padding: Any = 0, groups: int = 1, bias: bool = True,
                 dilation: Any = 1, padding_mode: str = "zeros", *, dtype=jnp.float32,
                 rngs: nnx.Rngs):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, padding_mode, output_padding=output_padding, dtype=dtype,
                         rngs=rngs)


@_declare("ConvTranspose1d", (4, 6, 3, 2, 1, 1, 2), (2, 4, 5))
class ConvTranspose1d(_ConvTransposeNd):
    """``nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride=1, padding=0,
    output_padding=0, groups=1, bias=True, dilation=1)``; weight ``(in, out / groups, k)``."""

    nd = 1
    function = staticmethod(F.conv_transpose1d)


@_declare("ConvTranspose2d", (4, 6, 3, 2, 1, 1, 2), (2, 4, 4, 3))
class ConvTranspose2d(_ConvTransposeNd):
    """``nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride=1, padding=0,
    output_padding=0, groups=1, bias=True, dilation=1)``: the gradient of a ``Conv2d`` with
    respect to its input, as a layer; weight ``(in, out / groups, kh, kw)``."""

    nd = 2
    function = staticmethod(F.conv_transpose2d)
