"""Normalisation layers beyond ``LayerNorm``: ``RMSNorm`` (LLaMA's), at parity with
``torch.nn.RMSNorm``."""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from flax import nnx

from funcdl import tape as F
from funcdl.layers.basic import value
from funcdl.layers.counterpart import Example, sample, torch_layer
from funcdl.layers.module import Module

__all__ = ["RMSNorm"]


def _rms_from_torch(t, b) -> RMSNorm:
    return RMSNorm(tuple(t.normalized_shape), eps=t.eps,
                   elementwise_affine=t.elementwise_affine)


@torch_layer(
    "torch.nn.RMSNorm",
    keys=lambda m: {"weight": m.weight},  # None without elementwise_affine
    example=lambda torch: Example(RMSNorm(4, eps=1e-6), torch.nn.RMSNorm(4, eps=1e-6),
                                  sample(3, 4) * 3),
    from_torch=_rms_from_torch,
    to_torch=lambda m, b: b.torch.nn.RMSNorm(m.normalized_shape, eps=m.eps,
                                             elementwise_affine=m.weight is not None),
)
class RMSNorm(Module):
    """``nn.RMSNorm(normalized_shape, eps=None, elementwise_affine=True)``:
    ``x / sqrt(mean(x^2) + eps) * weight`` over the trailing ``normalized_shape`` dims, ``weight``
    ones. ``eps=None`` is torch's (float32's machine epsilon for 16-bit and float32 inputs); 16-bit
    inputs are normalised in float32, as torch does."""

    def __init__(self, normalized_shape: int | Sequence[int], eps: float | None = None,
                 elementwise_affine: bool = True, *, dtype=jnp.float32,
                 rngs: nnx.Rngs | None = None):
        shape = (normalized_shape,) if isinstance(normalized_shape, int) \
            else tuple(int(n) for n in normalized_shape)
        if not shape or any(n < 1 for n in shape):
            raise ValueError(f"normalized_shape must be positive sizes, got {normalized_shape!r}")
        self.normalized_shape = shape
        self.eps = eps
        self.weight = nnx.Param(jnp.ones(shape, dtype)) if elementwise_affine else None

    def __call__(self, x):
        weight = None if self.weight is None else value(self.weight)
        return F.rms_norm(x, self.normalized_shape, weight, self.eps)
