"""Gradient clipping by global norm (torch's formula) and gradient accumulation."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class ClipGradNormState(NamedTuple):
    grad_norm: jax.Array  # total norm of the last gradients seen, before clipping (for logging)


def clip_grad_norm(max_norm: float, norm_type: float = 2.0) -> optax.GradientTransformation:
    """``torch.nn.utils.clip_grad_norm_`` as a transform to chain before the optimizer.

    ``total = norm([norm(g) for g in leaves])`` and every gradient is multiplied by
    ``min(max_norm / (total + 1e-6), 1)``. Unlike ``optax.clip_by_global_norm`` (which scales by
    ``max_norm / total`` only when ``total >= max_norm``) the 1e-6 is there, as in torch, so the
    numbers match. The state keeps the pre-clipping norm: ``state.grad_norm``.
    """
    if not (max_norm > 0 and math.isfinite(max_norm)):
        raise ValueError(f"max_norm must be a positive finite number, got {max_norm}")
    if not norm_type > 0:
        raise ValueError(f"norm_type must be positive (2.0, 1.0, inf, ...), got {norm_type}")

    def norm(x: jax.Array) -> jax.Array:
        x = jnp.ravel(x)
        return jnp.linalg.norm(x.astype(jnp.promote_types(x.dtype, jnp.float32)), ord=norm_type)

    def init(params):
        return ClipGradNormState(jnp.zeros([], jnp.float32))

    def update(grads, state, params=None):
        leaves = jax.tree.leaves(grads)
        if not leaves:
            return grads, state
        total = norm(jnp.stack([norm(g) for g in leaves]))
        coef = jnp.minimum(max_norm / (total + 1e-6), 1.0)
        clipped = jax.tree.map(lambda g: g * coef.astype(g.dtype), grads)
        return clipped, ClipGradNormState(total)

    return optax.GradientTransformation(init, update)


class AccumulateState(NamedTuple):
    mini_step: jax.Array  # calls since the last real update, 0 .. every_k - 1
    grad_sum: optax.Updates
    inner_state: optax.OptState


def accumulate(opt: optax.GradientTransformation, every_k: int) -> optax.GradientTransformation:
    """Gradient accumulation: ``every_k`` calls add up their gradients; the last of them hands
    their mean to ``opt`` and returns its updates, the others return zeros.

    Same results as ``optax.MultiSteps(opt, every_k)``, but the inner optimizer runs only on the
    emitting call (``lax.cond``), not on every call with its result thrown away; the sum is divided
    once by ``every_k`` (MultiSteps keeps a running mean). ``opt``'s step count, and so any
    schedule, advances once per ``every_k`` calls.
    """
    if isinstance(every_k, bool) or not isinstance(every_k, int) or every_k < 1:
        raise ValueError(f"every_k must be a positive integer, got {every_k!r}")

    def init(params):
        return AccumulateState(jnp.zeros([], jnp.int32), optax.tree.zeros_like(params),
                               opt.init(params))

    def update(grads, state, params=None):
        grad_sum = jax.tree.map(jnp.add, state.grad_sum, grads)
        mean = jax.tree.map(lambda s, g: (s / every_k).astype(g.dtype), grad_sum, grads)
        out = jax.eval_shape(opt.update, mean, state.inner_state, params)[0]

        def emit(_):
            updates, inner = opt.update(mean, state.inner_state, params)
            return updates, inner, optax.tree.zeros_like(grad_sum)

        def hold(_):
            return optax.tree.zeros_like(out), state.inner_state, grad_sum

        done = state.mini_step == every_k - 1
        updates, inner, grad_sum = jax.lax.cond(done, emit, hold, None)
        mini_step = jnp.where(done, 0, state.mini_step + 1)
        return updates, AccumulateState(mini_step, grad_sum, inner)

    return optax.GradientTransformation(init, update)
