"""Each layer's torch facts, declared once beside the layer: its ``torch.nn`` counterpart, where
each of the counterpart's ``state_dict`` tensors lives in the funcdl module, and a small example
pair that the parity tests build.

``torch_io`` walks modules through these declarations; tests derive the key, shape and forward
parity of every declared layer from them, and fail for a public layer without one.

    @torch_layer("torch.nn.Linear",
                 keys=lambda m: {"weight": Transposed(m.w), "bias": m.b},
                 example=lambda torch: Example(Linear(3, 2, rngs=nnx.Rngs(0)),
                                               torch.nn.Linear(3, 2), sample(4, 3)))
    class Linear(nnx.Module): ...

A key maps to an ``nnx.Variable`` (one tensor), ``Transposed(var)`` (torch stores the
transpose), a child module (its own keys, prefixed ``"key."``), ``Row(module, i)`` (row ``i`` of
a module whose parameters are stacked along axis 0), or None (absent: an optional bias, say).
PyTorch is never imported here: an example receives the ``torch`` module from its caller.
A subclass inherits its base's declaration unless it declares its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
from flax import nnx

__all__ = ["TorchLayer", "torch_layer", "declaration", "Transposed", "Row", "Example", "sample"]


class Transposed(NamedTuple):
    """A Variable that torch stores transposed (``nn.Linear.weight`` is ``[out, in]``)."""

    var: nnx.Variable


class Row(NamedTuple):
    """Row ``index`` of every parameter of ``module``, whose parameters are stacked on axis 0."""

    module: nnx.Module
    index: int


class Example(NamedTuple):
    """A small funcdl module, its torch twin of the same configuration, and an input for both.

    ``call(torch_module, x)`` runs the torch side where its signature differs from funcdl's.
    """

    module: nnx.Module
    torch_module: Any
    input: np.ndarray
    call: Callable[[Any, Any], Any] | None = None


@dataclasses.dataclass(frozen=True)
class TorchLayer:
    """One layer's declaration (see the module docstring).

    ``torch``: the counterpart's dotted name, or None for a funcdl-only module. ``keys(m)``: torch
    key -> where it lives in ``m``; None means "its children under their attribute names", as for
    any undeclared module. ``example(torch)``: an ``Example`` (the tests require one with a
    counterpart). More torch facts belong here as they are needed: how to read a live torch
    module's configuration, say.
    """

    torch: str | None
    keys: Callable[[Any], Mapping[str, Any]] | None = None
    example: Callable[[Any], Example] | None = None


def torch_layer(torch: str | None, *, keys=None, example=None) -> Callable[[type], type]:
    """Class decorator: store a ``TorchLayer`` on the class as ``torch_declaration``."""

    def declare(cls: type) -> type:
        cls.torch_declaration = TorchLayer(torch, keys, example)
        return cls

    return declare


def declaration(cls: type, *, inherit: bool = True) -> TorchLayer | None:
    """``cls``'s declaration; with ``inherit`` (as the loader does) the nearest base's."""
    if inherit:
        return getattr(cls, "torch_declaration", None)
    return vars(cls).get("torch_declaration")


def sample(*shape: int) -> np.ndarray:
    """A fixed float32 standard-normal input for examples (the same on every call)."""
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)
