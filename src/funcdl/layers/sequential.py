"""The glue torch models are built with: ``Sequential``, the activation modules (``ReLU``,
``GELU``, ...), and ``SequenceFirst``, which gives a batch-first funcdl layer the ``(T, B, D)``
convention of a torch module built with ``batch_first=False``.

Each declares its torch counterpart, so ``from_torch`` converts an ``nn.Sequential`` of supported
modules and ``to_torch`` builds one back.
"""

from __future__ import annotations

from typing import Any

from flax import nnx

from funcdl import tape as F
from funcdl.layers.basic import activation_fn
from funcdl.layers.counterpart import Build, Example, UnsupportedModuleError, sample, torch_layer
from funcdl.layers.module import Module

__all__ = ["Sequential", "SequenceFirst", "ReLU", "GELU", "Tanh", "Sigmoid", "SiLU", "Identity",
           "LeakyReLU", "activation_module", "activation_name"]


@torch_layer(
    "torch.nn.Sequential",
    keys=lambda m: {str(i): layer for i, layer in enumerate(m.layers)},
    example=lambda torch: Example(
        Sequential(_linear(4, 3), ReLU(), _linear(3, 2)),
        torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)),
        sample(5, 4)),
    from_torch=lambda t, b: Sequential(*[b.child(c) for c in t]),
    to_torch=lambda m, b: b.torch.nn.Sequential(*[b.child(c) for c in m.layers]),
)
class Sequential(Module):
    """Modules applied in turn, ``nn.Sequential``'s way: ``seq(x) = layers[-1](...layers[0](x))``;
    torch keys ``"0.weight"``, ``"2.bias"``, ... by position."""

    def __init__(self, *layers: nnx.Module):
        for i, layer in enumerate(layers):
            if not isinstance(layer, nnx.Module):
                raise TypeError(f"Sequential takes nnx.Modules; item {i} is a "
                                f"{type(layer).__name__}")
        self.layers = nnx.List(layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> nnx.Module:
        return self.layers[i]

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def _linear(a: int, b: int):
    from funcdl.layers.basic import Linear

    return Linear(a, b, rngs=nnx.Rngs(0))


def _seq_first_to_torch(m: SequenceFirst, b: Build) -> Any:
    tm = b.child(m.module)
    # torch reads batch_first from each attention module at call time (the encoder's nested-
    # tensor path, fixed at construction, is off in every to_torch encoder).
    for sub in tm.modules():
        if isinstance(sub, b.torch.nn.MultiheadAttention):
            sub.batch_first = False
    return tm


@torch_layer(None, keys=lambda m: {"": m.module}, to_torch=_seq_first_to_torch)
class SequenceFirst(Module):
    """``module`` with inputs and output in ``(T, B, D)`` order, as a torch module built with
    ``batch_first=False`` (torch's default for ``nn.MultiheadAttention`` and the encoder) takes
    them: 3-D positional inputs are transposed to ``(B, T, D)`` on the way in, the output back.
    Masks pass unchanged (torch's ``key_padding_mask`` is ``(B, S)`` either way). Same torch keys
    as ``module``; ``from_torch`` wraps a sequence-first module in it."""

    def __init__(self, module: nnx.Module):
        self.module = module

    def __call__(self, x, *args, **kwargs):
        args = [F.transpose(a, 0, 1) if getattr(a, "ndim", 0) == 3 else a for a in args]
        return F.transpose(self.module(F.transpose(x, 0, 1), *args, **kwargs), 0, 1)


class _Activation(Module):
    """An activation as a module (no parameters); ``name`` is its ``activation_fn`` name."""

    name = "identity"

    def __call__(self, x):
        return activation_fn(self.name)(x)


def _activation(short: str, name: str) -> type:
    """The module class of ``torch.nn.<short>`` (no arguments), computing ``activation_fn(name)``,
    declared as that class's counterpart."""
    cls = type(short, (_Activation,), {"name": name, "__module__": __name__,
                                        "__doc__": f"``nn.{short}()``: ``{name}``."})
    return torch_layer(
        f"torch.nn.{short}", keys=lambda m: {},
        example=lambda torch: Example(cls(), getattr(torch.nn, short)(), sample(3, 4)),
        from_torch=lambda t, b: cls(),
        to_torch=lambda m, b: getattr(b.torch.nn, short)())(cls)


ReLU = _activation("ReLU", "relu")
Tanh = _activation("Tanh", "tanh")
Sigmoid = _activation("Sigmoid", "sigmoid")
SiLU = _activation("SiLU", "silu")
Identity = _activation("Identity", "identity")


@torch_layer(
    "torch.nn.GELU",
    keys=lambda m: {},
    example=lambda torch: Example(GELU("tanh"), torch.nn.GELU(approximate="tanh"), sample(3, 4)),
    from_torch=lambda t, b: GELU(t.approximate),
    to_torch=lambda m, b: b.torch.nn.GELU(approximate=m.approximate),
)
class GELU(_Activation):
    """``nn.GELU``: exact (``approximate="none"``) or the tanh approximation."""

    def __init__(self, approximate: str = "none"):
        if approximate not in ("none", "tanh"):
            raise ValueError(f"approximate argument must be either none or tanh, got "
                             f"{approximate!r}")
        self.approximate = approximate
        self.name = "gelu" if approximate == "none" else "gelu_tanh"


@torch_layer(
    "torch.nn.LeakyReLU",
    keys=lambda m: {},
    example=lambda torch: Example(LeakyReLU(0.2), torch.nn.LeakyReLU(0.2), sample(3, 4)),
    from_torch=lambda t, b: LeakyReLU(t.negative_slope),
    to_torch=lambda m, b: b.torch.nn.LeakyReLU(m.negative_slope),
)
class LeakyReLU(Module):
    """``nn.LeakyReLU(negative_slope)``."""

    def __init__(self, negative_slope: float = 0.01):
        self.negative_slope = float(negative_slope)

    def __call__(self, x):
        return F.leaky_relu(x, self.negative_slope)


_BY_NAME = {"relu": ReLU, "tanh": Tanh, "sigmoid": Sigmoid, "silu": SiLU, "identity": Identity,
            "gelu": GELU, "gelu_tanh": lambda: GELU("tanh")}


def activation_module(name: str | None) -> nnx.Module:
    """The module of an ``activation_fn`` name (``"gelu_tanh"`` -> ``GELU("tanh")``)."""
    activation_fn(name)  # the one error for a bad name
    return _BY_NAME["identity" if name is None else name]()


def activation_name(fn: Any, b: Build) -> str:
    """The ``activation_fn`` name of a torch activation: a function (``F.relu``, ``F.gelu``,
    ``torch.tanh``, ...) or a module (through its declaration)."""
    torch = b.torch
    if isinstance(fn, torch.nn.Module):
        module = b.child(fn)
        if isinstance(module, _Activation):
            return module.name
    functions = {torch.nn.functional.relu: "relu", torch.nn.functional.gelu: "gelu",
                 torch.tanh: "tanh", torch.nn.functional.tanh: "tanh", torch.sigmoid: "sigmoid",
                 torch.nn.functional.sigmoid: "sigmoid", torch.nn.functional.silu: "silu"}
    try:
        return functions[fn]
    except (KeyError, TypeError):
        name = getattr(fn, "__name__", None) or type(fn).__name__
        raise UnsupportedModuleError(
            f"from_torch: the activation {name} is not supported (supported: "
            f"{', '.join(sorted(_BY_NAME))} as functions or modules)") from None

