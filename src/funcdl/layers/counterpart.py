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
transpose), ``Part(var, start, stop)`` (columns of a fused parameter: a separate ``query`` weight
inside ``MultiHeadAttention``'s fused q/k/v projection), a child module (its own keys, prefixed
``"key."``; the key ``""`` adds no prefix), a mapping of further keys (prefixed likewise),
``Row(module_or_mapping, i)`` (row ``i`` of a module whose parameters are stacked along axis 0),
``Tied(target)`` (a second name for a tensor another key already names: a decoder tied to its
embedding), or None (absent: an optional bias, say).

``from_torch(t, build)`` builds the funcdl module of a live torch module ``t``'s configuration
(sizes, eps, activation, norm_first, ...; ``layers.from_torch`` then copies the weights by the
keys), and ``to_torch(m, build)`` the torch module of ``m``'s; ``build`` (a ``Build``) converts
child modules and carries the ``torch`` package and the ``rngs``. A configuration funcdl cannot
compute raises ``UnsupportedModuleError`` naming it. A later layer plugs into ``from_torch`` /
``to_torch`` by declaring these two builders; nothing else lists it.

PyTorch is never imported here: an example and a builder receive the ``torch`` module from their
caller. A subclass inherits its base's declaration unless it declares its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
from flax import nnx

__all__ = ["TorchLayer", "torch_layer", "declaration", "declared_layers", "Transposed", "Part",
           "Row", "Tied", "Example", "Build", "UnsupportedModuleError", "sample"]


class Transposed(NamedTuple):
    """A Variable (or a ``Part`` of one) that torch stores transposed (``nn.Linear.weight`` is
    ``[out, in]``)."""

    var: Any


class Part(NamedTuple):
    """Columns ``start:stop`` of a Variable's last axis (in funcdl's layout): one of q, k, v in a
    fused projection. ``Transposed(Part(...))`` when torch stores that block transposed."""

    var: nnx.Variable
    start: int
    stop: int


class Row(NamedTuple):
    """Row ``index`` of every parameter of ``module`` (a module, or a mapping of keys over its
    Variables), whose parameters are stacked on axis 0."""

    module: Any
    index: int


class Tied(NamedTuple):
    """A second torch key for a tensor that another key names (``Variable``, ``Transposed`` or
    ``Part``): written out with the state dict, optional on load, and when it is loaded together
    with the key it repeats, the two must hold the same values."""

    target: Any


class Example(NamedTuple):
    """A small funcdl module, its torch twin of the same configuration, and an input for both.

    ``call(torch_module, x)`` runs the torch side where its signature differs from funcdl's.
    """

    module: nnx.Module
    torch_module: Any
    input: np.ndarray
    call: Callable[[Any, Any], Any] | None = None


class Build(NamedTuple):
    """What a ``from_torch`` / ``to_torch`` builder receives besides the module."""

    child: Callable[[Any], Any]  # converts a child module the same way
    torch: Any  # the torch package
    rngs: nnx.Rngs | None = None  # from_torch: the new funcdl module's rngs (dropout streams)


class UnsupportedModuleError(TypeError):
    """A torch module (or a configuration of one) that funcdl has no counterpart for."""


@dataclasses.dataclass(frozen=True)
class TorchLayer:
    """One layer's declaration (see the module docstring).

    ``torch``: the counterpart's dotted name, or None for a funcdl-only module. ``keys(m)``: torch
    key -> where it lives in ``m``; None means "its children under their attribute names", as for
    any undeclared module. ``example(torch)``: an ``Example`` (the tests require one with a
    counterpart). ``from_torch(t, build)``: the funcdl module of the live torch module ``t``'s
    configuration (``torch`` names its class); ``to_torch(m, build)``: the torch module of ``m``'s.
    """

    torch: str | None
    keys: Callable[[Any], Mapping[str, Any]] | None = None
    example: Callable[[Any], Example] | None = None
    from_torch: Callable[[Any, Build], nnx.Module] | None = None
    to_torch: Callable[[Any, Build], Any] | None = None


_DECLARED: list[type] = []  # every declared class, in definition order (for from_torch's lookup)


def torch_layer(torch: str | None, *, keys=None, example=None, from_torch=None,
                to_torch=None) -> Callable[[type], type]:
    """Class decorator: store a ``TorchLayer`` on the class as ``torch_declaration``."""
    if from_torch is not None and torch is None:
        raise TypeError("a from_torch builder needs the torch class it reads (torch=...)")

    def declare(cls: type) -> type:
        if from_torch is not None:
            for other in _DECLARED:
                decl = vars(other).get("torch_declaration")
                if decl.torch == torch and decl.from_torch is not None and other is not cls:
                    raise TypeError(f"{cls.__name__} and {other.__name__} both declare a "
                                    f"from_torch builder for {torch}: keep one")
        cls.torch_declaration = TorchLayer(torch, keys, example, from_torch, to_torch)
        if cls not in _DECLARED:
            _DECLARED.append(cls)
        return cls

    return declare


def declared_layers() -> list[type]:
    """Every class declared with ``torch_layer`` so far (its own declaration, not inherited)."""
    return list(_DECLARED)


def declaration(cls: type, *, inherit: bool = True) -> TorchLayer | None:
    """``cls``'s declaration; with ``inherit`` (as the loader does) the nearest base's."""
    if inherit:
        return getattr(cls, "torch_declaration", None)
    return vars(cls).get("torch_declaration")


def sample(*shape: int) -> np.ndarray:
    """A fixed float32 standard-normal input for examples (the same on every call)."""
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)
