"""The layers between a CNN's convolutions and its head: pooling (``MaxPool1d/2d``,
``AvgPool1d/2d``, ``AdaptiveAvgPool2d``, ``AdaptiveMaxPool2d``) and ``Flatten``, with
``torch.nn``'s arguments. None has parameters."""

from __future__ import annotations

from typing import Any

from funcdl import tape as F
from funcdl.layers.counterpart import Example, sample, torch_layer
from funcdl.layers.module import Module

__all__ = ["MaxPool1d", "MaxPool2d", "AvgPool1d", "AvgPool2d", "AdaptiveAvgPool2d",
           "AdaptiveMaxPool2d", "Flatten"]


def _declare(name: str, example: tuple, shape: tuple, read: tuple[str, ...]):
    """Declare a parameterless layer as ``torch.nn.<name>``: ``example`` its arguments for both,
    ``shape`` the example input's, ``read`` the attributes (torch's names) that configure it."""
    def declare(cls: type) -> type:
        return torch_layer(
            f"torch.nn.{name}", keys=lambda m: {},
            example=lambda torch: Example(cls(*example), getattr(torch.nn, name)(*example),
                                          sample(*shape)),
            from_torch=lambda t, b: cls(**{a: getattr(t, a) for a in read}),
            to_torch=lambda m, b: getattr(b.torch.nn, name)(**{a: getattr(m, a) for a in read}),
        )(cls)

    return declare


class _Pool(Module):
    """Keeps torch's constructor arguments as attributes of the same names."""

    function: Any = None

    def __init__(self, **arguments: Any):
        for name, v in arguments.items():
            setattr(self, name, tuple(v) if isinstance(v, list) else v)


_MAX = ("kernel_size", "stride", "padding", "dilation", "return_indices", "ceil_mode")


class _MaxPool(_Pool):
    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,
                 return_indices: bool = False, ceil_mode: bool = False):
        super().__init__(kernel_size=kernel_size, stride=stride if stride is not None
                         else kernel_size, padding=padding, dilation=dilation,
                         return_indices=return_indices, ceil_mode=ceil_mode)

    def __call__(self, x):
        return type(self).function(x, self.kernel_size, self.stride, self.padding, self.dilation,
                                   self.ceil_mode, self.return_indices)


@_declare("MaxPool1d", (3, 2, 1), (2, 3, 8), _MAX)
class MaxPool1d(_MaxPool):
    """``nn.MaxPool1d(kernel_size, stride=None, padding=0, dilation=1, return_indices=False,
    ceil_mode=False)``."""

    function = staticmethod(F.max_pool1d)


@_declare("MaxPool2d", (3, 2, 1, 1, False, True), (2, 3, 7, 6), _MAX)
class MaxPool2d(_MaxPool):
    """``nn.MaxPool2d(kernel_size, stride=None, padding=0, dilation=1, return_indices=False,
    ceil_mode=False)``: each window's maximum; its gradient to the first maximum, as torch."""

    function = staticmethod(F.max_pool2d)


_AVG = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad")


@_declare("AvgPool1d", (3, 2, 1, True, False), (2, 3, 8), _AVG)
class AvgPool1d(_Pool):
    """``nn.AvgPool1d(kernel_size, stride=None, padding=0, ceil_mode=False,
    count_include_pad=True)``."""

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0,
                 ceil_mode: bool = False, count_include_pad: bool = True):
        super().__init__(kernel_size=kernel_size, stride=stride if stride is not None
                         else kernel_size, padding=padding, ceil_mode=ceil_mode,
                         count_include_pad=count_include_pad)

    def __call__(self, x):
        return F.avg_pool1d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad)


@_declare("AvgPool2d", (3, 2, 1, True, False), (2, 3, 7, 6), _AVG + ("divisor_override",))
class AvgPool2d(_Pool):
    """``nn.AvgPool2d(kernel_size, stride=None, padding=0, ceil_mode=False,
    count_include_pad=True, divisor_override=None)``."""

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0,
                 ceil_mode: bool = False, count_include_pad: bool = True,
                 divisor_override: int | None = None):
        super().__init__(kernel_size=kernel_size, stride=stride if stride is not None
                         else kernel_size, padding=padding, ceil_mode=ceil_mode,
                         count_include_pad=count_include_pad, divisor_override=divisor_override)

    def __call__(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad, self.divisor_override)


@_declare("AdaptiveAvgPool2d", ((3, 2),), (2, 3, 7, 5), ("output_size",))
class AdaptiveAvgPool2d(_Pool):
    """``nn.AdaptiveAvgPool2d(output_size)``: ``AdaptiveAvgPool2d(1)`` is a global average."""

    def __init__(self, output_size: Any):
        super().__init__(output_size=output_size)

    def __call__(self, x):
        return F.adaptive_avg_pool2d(x, self.output_size)


@_declare("AdaptiveMaxPool2d", ((3, 2),), (2, 3, 7, 5), ("output_size", "return_indices"))
class AdaptiveMaxPool2d(_Pool):
    """``nn.AdaptiveMaxPool2d(output_size, return_indices=False)``."""

    def __init__(self, output_size: Any, return_indices: bool = False):
        super().__init__(output_size=output_size, return_indices=return_indices)

    def __call__(self, x):
        return F.adaptive_max_pool2d(x, self.output_size, self.return_indices)


@_declare("Flatten", (1, -1), (2, 3, 4, 5), ("start_dim", "end_dim"))
class Flatten(_Pool):
    """``nn.Flatten(start_dim=1, end_dim=-1)``: dims ``start_dim..end_dim`` as one."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__(start_dim=start_dim, end_dim=end_dim)

    def __call__(self, x):
        shape = tuple(x.shape)
        n = max(len(shape), 1)
        lo, hi = self.start_dim % n, self.end_dim % n
        if lo > hi:
            raise RuntimeError("flatten() has invalid args: start_dim cannot come after end_dim")
        size = 1
        for s in shape[lo:hi + 1]:
            size *= s
        return F.reshape(x, shape[:lo] + (size,) + shape[hi + 1:])
