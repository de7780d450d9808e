"""Batch normalisation layers with ``torch.nn``'s arguments and buffers: ``BatchNorm1d``,
``BatchNorm2d``.

The running statistics are ``nnx.BatchStat`` variables, not parameters: the optimizer leaves them
alone, ``fit``'s train step carries them (its ``rest``), and ``load_torch_state_dict`` reads
torch's ``running_mean``, ``running_var`` and ``num_batches_tracked`` into them. ``model.train()``
/ ``model.eval()`` switch between batch and running statistics (NNX's ``use_running_average``,
torch's ``training``); like a torch module, a new one is in training mode.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx

from funcdl import tape as F
from funcdl.layers.basic import check_positive, value
from funcdl.layers.counterpart import Build, Example, sample, torch_layer
from funcdl.layers.module import Module
from funcdl.tape.tensor import constant

__all__ = ["BatchNorm1d", "BatchNorm2d"]

_ARGS = ("num_features", "eps", "momentum", "affine", "track_running_stats")


def _declare(name: str, shape: tuple):
    def keys(m: _BatchNorm) -> dict:
        return {"weight": m.weight, "bias": m.bias, "running_mean": m.running_mean,
                "running_var": m.running_var, "num_batches_tracked": m.num_batches_tracked}

    def to_torch(m: _BatchNorm, b: Build) -> Any:
        return getattr(b.torch.nn, name)(**{a: getattr(m, a) for a in _ARGS},
                                         bias=m.bias is not None)

    def declare(cls: type) -> type:
        return torch_layer(
            f"torch.nn.{name}", keys=keys,
            example=lambda torch: Example(cls(3, momentum=0.2), getattr(torch.nn, name)(
                3, momentum=0.2), sample(*shape)),
            from_torch=lambda t, b: cls(**{a: getattr(t, a) for a in _ARGS},
                                        bias=t.bias is not None),
            to_torch=to_torch)(cls)

    return declare


class _BatchNorm(Module):
    dims: tuple[int, ...] = ()  # the input ranks accepted

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, *, bias: bool = True,
                 dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        check_positive(num_features=num_features)
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        c = (num_features,)
        self.weight = nnx.Param(jnp.ones(c, dtype)) if affine else None
        self.bias = nnx.Param(jnp.zeros(c, dtype)) if affine and bias else None
        stats = track_running_stats
        self.running_mean = nnx.BatchStat(jnp.zeros(c, dtype)) if stats else None
        self.running_var = nnx.BatchStat(jnp.ones(c, dtype)) if stats else None
        self.num_batches_tracked = nnx.BatchStat(jnp.zeros((), jnp.int32)) if stats else None
        self.use_running_average = False  # torch's `not training`; nnx's train()/eval() set it

    def _check(self, x: Any) -> None:
        if x.ndim not in self.dims:
            want = " or ".join(f"{d}D" for d in self.dims)
            raise ValueError(f"expected {want} input (got {x.ndim}D input)")

    def __call__(self, x):
        self._check(x)
        training = not self.use_running_average
        factor = 0.0 if self.momentum is None else self.momentum
        if training and self.track_running_stats:
            count = self.num_batches_tracked.get_value() + 1
            self.num_batches_tracked.set_value(count)
            if self.momentum is None:  # a cumulative average over the batches seen
                factor = 1.0 / count
        stats = (value(self.running_mean), value(self.running_var)) if (
            self.track_running_stats) else (None, None)
        weight = None if self.weight is None else value(self.weight)
        bias = None if self.bias is None else value(self.bias)
        out = F.batch_norm(x, *stats, weight, bias, training or stats[0] is None, factor,
                           self.eps)
        if not isinstance(out, tuple):
            return out
        y, mean, var = out
        self.running_mean.set_value(constant(mean))
        self.running_var.set_value(constant(var))
        return y


@_declare("BatchNorm1d", (4, 3, 5))
class BatchNorm1d(_BatchNorm):
    """``nn.BatchNorm1d(num_features, eps=1e-5, momentum=0.1, affine=True,
    track_running_stats=True)`` over ``(N, C)`` or ``(N, C, L)``."""

    dims = (2, 3)


@_declare("BatchNorm2d", (4, 3, 5, 4))
class BatchNorm2d(_BatchNorm):
    """``nn.BatchNorm2d(num_features, eps=1e-5, momentum=0.1, affine=True,
    track_running_stats=True)`` over ``(N, C, H, W)``: in training, each channel normalised by
    the batch's mean and biased variance while the running statistics move by ``momentum``
    (``None``: a cumulative average) with the unbiased variance; in eval, by the running ones."""

    dims = (4,)
