"""The module forms of the course's activations (``nn.ELU``, ``nn.PReLU``, ``nn.GLU``, ...), each
declared as its torch counterpart, so ``from_torch`` / ``to_torch`` convert them and the
declaration tests check them against torch. ``PReLU`` learns its slopes; the others hold only
their arguments. (``ReLU``, ``GELU``, ``Tanh``, ``Sigmoid``, ``SiLU``, ``LeakyReLU`` and
``Identity`` live in ``funcdl.layers.sequential``.)
"""

from __future__ import annotations

import inspect
import warnings

import jax.numpy as jnp
from flax import nnx

from funcdl import tape as F
from funcdl.layers.basic import value
from funcdl.layers.counterpart import Example, sample, torch_layer
from funcdl.layers.module import Module
from funcdl.tape.tensor import shape_of

__all__ = ["ELU", "SELU", "CELU", "ReLU6", "Hardtanh", "Hardsigmoid", "Hardswish", "Mish",
           "Softsign", "Tanhshrink", "LogSigmoid", "GLU", "Softplus", "Softmax", "LogSoftmax",
           "PReLU"]


class _Functional(Module):
    """``funcdl.tape.<fn>(x, **arguments)``: the module's constructor arguments (static)."""

    fn = ""

    def __init__(self):  # no arguments (subclasses with some define their own)
        pass

    def __call__(self, x):
        return getattr(F, self.fn)(x, **self._arguments())

    def _arguments(self) -> dict:
        return {name: getattr(self, name) for name in _fields(type(self))}


def _fields(cls: type) -> list[str]:
    """The constructor's argument names (each stored under its own name)."""
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


def _counterpart(short: str, **example):
    """Declare an activation module as ``torch.nn.<short>``'s counterpart: no state dict keys,
    arguments read from and given to the torch module by name; ``example``: a non-default
    configuration the declaration tests compare with torch."""

    def declare(cls: type) -> type:
        def to_torch(m, b):
            return getattr(b.torch.nn, short)(**{f: getattr(m, f) for f in _fields(cls)})

        return torch_layer(
            f"torch.nn.{short}", keys=lambda m: {},
            example=lambda torch: Example(cls(**example), getattr(torch.nn, short)(**example),
                                          sample(3, 4)),
            from_torch=lambda t, b: cls(**{f: getattr(t, f) for f in _fields(cls)}),
            to_torch=to_torch)(cls)

    return declare


@_counterpart("ELU", alpha=0.5)
class ELU(_Functional):
    """``nn.ELU(alpha)``: x where x > 0, else alpha (e^x - 1)."""

    fn = "elu"

    def __init__(self, alpha: float = 1.0):
        self.alpha = float(alpha)


@_counterpart("SELU")
class SELU(_Functional):
    """``nn.SELU()``: scale * elu(x, alpha) with the self-normalising constants."""

    fn = "selu"


@_counterpart("CELU", alpha=2.0)
class CELU(_Functional):
    """``nn.CELU(alpha)``: x where x > 0, else alpha (e^(x / alpha) - 1)."""

    fn = "celu"

    def __init__(self, alpha: float = 1.0):
        if alpha == 0:
            raise RuntimeError("ZeroDivisionError: alpha cannot be 0 for CELU")
        self.alpha = float(alpha)


@_counterpart("ReLU6")
class ReLU6(_Functional):
    """``nn.ReLU6()``: min(max(x, 0), 6)."""

    fn = "relu6"


@_counterpart("Hardtanh", min_val=-0.5, max_val=2.0)
class Hardtanh(_Functional):
    """``nn.Hardtanh(min_val, max_val)``: x clipped to [min_val, max_val]."""

    fn = "hardtanh"

    def __init__(self, min_val: float = -1.0, max_val: float = 1.0):
        if min_val > max_val:
            raise ValueError("min_val cannot be greater than max_val")
        self.min_val, self.max_val = float(min_val), float(max_val)


@_counterpart("Hardsigmoid")
class Hardsigmoid(_Functional):
    """``nn.Hardsigmoid()``: relu6(x + 3) / 6."""

    fn = "hardsigmoid"


@_counterpart("Hardswish")
class Hardswish(_Functional):
    """``nn.Hardswish()``: x relu6(x + 3) / 6."""

    fn = "hardswish"


@_counterpart("Mish")
class Mish(_Functional):
    """``nn.Mish()``: x tanh(softplus(x))."""

    fn = "mish"


@_counterpart("Softsign")
class Softsign(_Functional):
    """``nn.Softsign()``: x / (1 + |x|)."""

    fn = "softsign"


@_counterpart("Tanhshrink")
class Tanhshrink(_Functional):
    """``nn.Tanhshrink()``: x - tanh(x)."""

    fn = "tanhshrink"


@_counterpart("LogSigmoid")
class LogSigmoid(_Functional):
    """``nn.LogSigmoid()``: log(sigmoid(x)), stable for large |x|."""

    fn = "logsigmoid"


@_counterpart("GLU", dim=1)
class GLU(_Functional):
    """``nn.GLU(dim)``: a * sigmoid(b), a and b the halves of x along ``dim``."""

    fn = "glu"

    def __init__(self, dim: int = -1):
        self.dim = int(dim)


@_counterpart("Softplus", beta=2.0, threshold=1.0)
class Softplus(_Functional):
    """``nn.Softplus(beta, threshold)``: log(1 + e^(beta x)) / beta, linear above threshold."""

    fn = "softplus"

    def __init__(self, beta: float = 1.0, threshold: float = 20.0):
        self.beta, self.threshold = float(beta), float(threshold)


def _implicit_dim(name: str, ndim: int) -> int:
    """torch's legacy dim for ``nn.Softmax()`` without one, with its warning."""
    warnings.warn(f"Implicit dimension choice for {name} has been deprecated. Change the call to "
                  "include dim=X as an argument.", UserWarning, stacklevel=3)
    return 0 if ndim in (0, 1, 3) else 1


class _AlongDim(_Functional):
    def __call__(self, x):
        dim = self.dim if self.dim is not None else _implicit_dim(self.fn, len(shape_of(x)))
        return getattr(F, self.fn)(x, dim)


@_counterpart("Softmax", dim=0)
class Softmax(_AlongDim):
    """``nn.Softmax(dim)``: the seed's ``self.softmax = nn.Softmax(dim=-1)``."""

    fn = "softmax"

    def __init__(self, dim: int | None = None):
        self.dim = dim


@_counterpart("LogSoftmax", dim=1)
class LogSoftmax(_AlongDim):
    """``nn.LogSoftmax(dim)``."""

    fn = "log_softmax"

    def __init__(self, dim: int | None = None):
        self.dim = dim


@torch_layer(
    "torch.nn.PReLU",
    keys=lambda m: {"weight": m.weight},
    example=lambda torch: Example(PReLU(4, init=0.1), torch.nn.PReLU(4, init=0.1), sample(3, 4)),
    from_torch=lambda t, b: PReLU(t.num_parameters),
    to_torch=lambda m, b: b.torch.nn.PReLU(m.num_parameters),
)
class PReLU(Module):
    """``nn.PReLU(num_parameters, init)``: x where x > 0, else weight * x, with a learned slope
    (one, or one per channel: dim 1 of the input), initialised to ``init``."""

    def __init__(self, num_parameters: int = 1, init: float = 0.25, *, dtype=jnp.float32):
        if num_parameters < 1:
            raise ValueError(f"num_parameters must be positive, got {num_parameters}")
        self.num_parameters = num_parameters
        self.weight = nnx.Param(jnp.full((num_parameters,), init, dtype))

    def __call__(self, x):
        return F.prelu(x, value(self.weight))
