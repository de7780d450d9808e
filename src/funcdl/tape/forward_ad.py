"""Forward-mode AD with dual tensors, as ``torch.autograd.forward_ad``.

    with forward_ad.dual_level():
        x = forward_ad.make_dual(primal, tangent)
        y = f(x)                                   # every op carries the tangent along
        value, jvp = forward_ad.unpack_dual(y)

Each op's tangent rule sits beside its backward rules (``apply(..., tangents=...)``); a tangent
made in a level is visible only inside it, and levels do not nest (torch's rule).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from typing import Any, NamedTuple

import jax.numpy as jnp

from funcdl.tape.tensor import _DUAL_LEVEL, Tensor, apply, constant, tangent_at, unwrap

_LEVELS = itertools.count()


class UnpackedDualTensor(NamedTuple):
    """What `unpack_dual` returns: the primal and its tangent (None when it has none)."""

    primal: Any
    tangent: Any


@contextlib.contextmanager
def dual_level() -> Iterator[int]:
    """A forward-mode level: tangents made inside it are dropped when it ends."""
    if _DUAL_LEVEL.get() is not None:
        raise RuntimeError("Nested forward mode AD is not supported at the moment")
    level = next(_LEVELS)
    token = _DUAL_LEVEL.set(level)
    try:
        yield level
    finally:
        _DUAL_LEVEL.reset(token)


def make_dual(tensor: Any, tangent: Any) -> Tensor:
    """A Tensor with ``tensor``'s value (and graph) carrying ``tangent`` in the current level."""
    level = _DUAL_LEVEL.get()
    if level is None:
        raise RuntimeError("Trying to create a dual Tensor for forward AD but no level exists, "
                           "make sure to enter_dual_level() first.")
    tensor, tangent = unwrap(tensor), constant(unwrap(tangent))
    base = tensor if isinstance(tensor, Tensor) else Tensor(tensor)
    if not jnp.issubdtype(base.dtype, jnp.inexact):
        raise ValueError(f"Expected primal to be floating point or complex, but got: {base.dtype}")
    if tuple(jnp.shape(tangent)) != tuple(base.shape):
        raise RuntimeError(
            "Trying to set a forward gradient that has a different size than that of the "
            f"original Tensor, this is not supported. Tensor is of size {list(base.shape)} while "
            f"the given forward gradient is of size {list(jnp.shape(tangent))}.")
    # a view of ``tensor`` (as in torch): gradients of the dual flow back into it
    dual = apply("AliasBackward0", lambda x: x, (base,), (lambda g, z, x: g,), tangents="linear")
    dual._tangent = (level, jnp.asarray(tangent, base.dtype))
    return dual


def unpack_dual(tensor: Any) -> UnpackedDualTensor:
    """``(primal, tangent)`` of ``tensor`` in the current level (tangent None outside one)."""
    level = _DUAL_LEVEL.get()
    tangent = None if level is None else tangent_at(tensor, level)
    primal = tensor.data if isinstance(tensor, Tensor) else tensor
    return UnpackedDualTensor(primal, tangent)
