"""Tensor's operators and methods, installed in one place.

The op methods and operators come from the registry (each op declares its own), the in-place
methods (``add_``, ``+=``, ...) from `funcdl.tape.inplace`; ``backward``, the comparisons and the
transposing properties are added here because they are no ops.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from funcdl.tape import autograd, inplace, registry
from funcdl.tape.shape import permute, transpose
from funcdl.tape.tensor import Tensor, constant, unwrap

COMPARISONS = {"__lt__": jnp.less, "__le__": jnp.less_equal, "__gt__": jnp.greater,
               "__ge__": jnp.greater_equal, "__eq__": jnp.equal, "__ne__": jnp.not_equal}


def _comparison(fn: Any) -> Any:
    def compare(self: Tensor, other: Any) -> Any:  # a plain boolean array: no gradient
        return fn(self.data, constant(unwrap(other)))

    return compare


def _t(self: Tensor) -> Any:
    """``t.t()``: the transpose of a 2-D tensor (fewer dims are returned as they are)."""
    return transpose(self, 0, 1) if self.ndim == 2 else self


def install() -> None:
    """Give `Tensor` every op method and operator, ``backward``, comparisons, ``T`` and ``mT``."""
    for name, fn in (registry.tensor_methods() | inplace.METHODS).items():
        setattr(Tensor, name, fn)
    for name, fn in COMPARISONS.items():
        setattr(Tensor, name, _comparison(fn))
    Tensor.__pos__ = lambda self: self
    Tensor.t = _t
    Tensor.T = property(lambda self: permute(self, tuple(range(self.ndim))[::-1]),
                        doc="All dims reversed (``torch.Tensor.T``).")
    Tensor.mT = property(lambda self: transpose(self, -2, -1),
                         doc="The last two dims swapped (``torch.Tensor.mT``).")
    Tensor.backward = autograd.tensor_backward
