"""PyTorch's SGD, Adagrad, RMSprop, Adam and AdamW as optax transformations, rule for rule.

Each factory returns ``optax.inject_hyperparams(...)(lr=lr)``: the learning rate lives in the
optimizer state (``state.hyperparams["lr"]``), so `get_lr` reads it and `set_lr` changes it without
recompiling a jitted step. Every other option is a Python constant baked into the update.

Where an optax transform computes exactly what ``torch.optim``'s single-tensor path computes, it is
used (``scale(-1)`` for ``maximize``, ``add_decayed_weights`` for coupled L2, ``trace`` for momentum
without dampening, ``scale_by_learning_rate``). Where the rules differ, a small transform below
repeats torch's arithmetic in torch's order, and its docstring says what optax does differently.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax import InjectStatefulHyperparamsState

LearningRate = float | Callable[[jax.Array], jax.Array]

# torch.optim switches that choose a kernel, not a rule: XLA compiles the whole update anyway.
_TORCH_ONLY = ("foreach", "fused", "capturable", "differentiable")


def _torch_options(factory: Callable[..., optax.GradientTransformation]):
    """Reject unknown keyword options with the valid names (and a close match, if any)."""
    valid = list(inspect.signature(factory).parameters)

    @functools.wraps(factory)
    def checked(*args: Any, **kwargs: Any) -> optax.GradientTransformation:
        for name in kwargs:
            if name in valid:
                continue
            if name in _TORCH_ONLY:
                why = " It selects a PyTorch kernel; funcdl's update is compiled by XLA instead."
            else:
                close = difflib.get_close_matches(name, valid, n=1)
                why = f" Did you mean {close[0]!r}?" if close else ""
            raise TypeError(
                f"{factory.__name__}() got an unexpected keyword argument {name!r}.{why} "
                f"Valid options: {', '.join(valid)}."
            )
        return factory(*args, **kwargs)

    return checked


def _check_lr(lr: Any) -> LearningRate:
    """A schedule as it is; a number (Python, numpy scalar or 0-d array, as torch accepts) as a
    float; torch's errors for anything else."""
    if callable(lr):
        return lr
    number = isinstance(lr, numbers.Real) or (
        np.ndim(lr) == 0 and np.issubdtype(getattr(lr, "dtype", np.object_), np.number))
    if isinstance(lr, bool | np.bool_) or not number:
        raise TypeError(
            f"lr must be a number or a schedule (a callable of the step count), got {lr!r}"
        )
    if not float(lr) >= 0.0:
        raise ValueError(f"Invalid learning rate: {lr}")
    return float(lr)


def _check_nonnegative(**values: float) -> None:
    """torch's checks, in torch's words: ``Invalid weight_decay value: -1``."""
    for name, value in values.items():
        if not value >= 0.0:
            word = "epsilon" if name == "eps" else name
            raise ValueError(f"Invalid {word} value: {value}")


def _with_lr(make: Callable[[jax.Array], optax.GradientTransformation],
             lr: LearningRate) -> optax.GradientTransformation:
    """Inject ``lr`` (a float or a schedule) as the only hyperparameter held in the state."""

    def inner(lr):
        return make(lr)

    return optax.inject_hyperparams(inner)(lr=lr)


def _grad_prefix(maximize: bool, weight_decay: float) -> list[optax.GradientTransformation]:
    """torch's first two lines: ``grad = -grad`` if maximize, then ``grad + weight_decay * p``."""
    steps = []
    if maximize:
        steps.append(optax.scale(-1.0))
    if weight_decay != 0:
        steps.append(optax.add_decayed_weights(weight_decay))
    return steps


def _lerp(start: jax.Array, end: jax.Array, weight: float) -> jax.Array:
    """``torch.lerp`` on CPU: two formulas, chosen by the weight, for accuracy near both ends."""
    if weight < 0.5:
        return start + weight * (end - start)
    return end - (end - start) * (1 - weight)


def _one_minus_pow(beta: float, step: jax.Array, dtype: Any) -> jax.Array:
    """``1 - beta**step``, accurate in float32.

    torch evaluates the bias corrections in float64 on the host. Rounding ``beta`` to float32 first
    and then powering loses ~2e-5 relative for ``beta=0.999, step=1``; ``-expm1(step * log(beta))``
    with ``log(beta)`` taken in float64 stays within a few ulp of torch's value.
    """
    log_beta = math.log(beta) if beta > 0 else -math.inf
    dtype = jnp.promote_types(dtype, jnp.float32)  # never in bfloat16
    return -jnp.expm1(step.astype(dtype) * log_beta).astype(dtype)


# --- SGD ------------------------------------------------------------------------------------------


class DampenedMomentumState(NamedTuple):
    count: jax.Array
    momentum_buffer: optax.Updates


def _dampened_momentum(momentum: float, dampening: float) -> optax.GradientTransformation:
    """torch SGD's buffer with dampening: ``buf = grad`` on the first step, then
    ``buf = momentum * buf + (1 - dampening) * grad``. ``optax.trace`` has no dampening."""

    def init(params):
        return DampenedMomentumState(jnp.zeros([], jnp.int32), optax.tree.zeros_like(params))

    def update(grads, state, params=None):
        first = state.count == 0
        buf = jax.tree.map(
            lambda b, g: jnp.where(first, g, b * momentum + (1 - dampening) * g),
            state.momentum_buffer, grads)
        return buf, DampenedMomentumState(optax.safe_increment(state.count), buf)

    return optax.GradientTransformation(init, update)


@_torch_options
def sgd(lr: LearningRate = 1e-3, momentum: float = 0, dampening: float = 0,
        weight_decay: float = 0, nesterov: bool = False, *,
        maximize: bool = False) -> optax.GradientTransformation:
    """``torch.optim.SGD``: coupled L2, momentum (first buffer = raw gradient), Nesterov."""
    lr = _check_lr(lr)
    _check_nonnegative(momentum=momentum, weight_decay=weight_decay)
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    def make(lr):
        steps = _grad_prefix(maximize, weight_decay)
        if momentum != 0 and dampening == 0:
            # optax.trace with zero init: first buffer is 0 * momentum + grad = grad, as in torch.
            steps.append(optax.trace(decay=momentum, nesterov=nesterov))
        elif momentum != 0:
            steps.append(_dampened_momentum(momentum, dampening))
        steps.append(optax.scale_by_learning_rate(lr))
        return optax.chain(*steps)

    return _with_lr(make, lr)


# --- Adagrad --------------------------------------------------------------------------------------


class TorchAdagradState(NamedTuple):
    count: jax.Array
    sum: optax.Updates


def _torch_adagrad(lr: jax.Array, lr_decay: float, initial_accumulator_value: float,
                   eps: float) -> optax.GradientTransformation:
    """``param -= clr * grad / (sqrt(sum) + eps)``, ``clr = lr / (1 + (step - 1) * lr_decay)``.

    ``optax.scale_by_rss`` puts eps inside the square root (``rsqrt(sum + eps)``), starts the sum
    at 0.1 and has no lr_decay.
    """

    def init(params):
        total = optax.tree.full_like(params, initial_accumulator_value)
        return TorchAdagradState(jnp.zeros([], jnp.int32), total)

    def update(grads, state, params=None):
        step = optax.safe_increment(state.count)
        clr = lr / (1 + (step - 1).astype(lr.dtype) * lr_decay)
        total = jax.tree.map(lambda s, g: s + g * g, state.sum, grads)
        updates = jax.tree.map(lambda g, s: (-clr * g) / (jnp.sqrt(s) + eps), grads, total)
        return updates, TorchAdagradState(step, total)

    return optax.GradientTransformation(init, update)


@_torch_options
def adagrad(lr: LearningRate = 1e-2, lr_decay: float = 0, weight_decay: float = 0,
            initial_accumulator_value: float = 0, eps: float = 1e-10, *,
            maximize: bool = False) -> optax.GradientTransformation:
    """``torch.optim.Adagrad``: per-step lr decay, sums start at ``initial_accumulator_value``."""
    lr = _check_lr(lr)
    _check_nonnegative(lr_decay=lr_decay, weight_decay=weight_decay, eps=eps)
    if not initial_accumulator_value >= 0.0:
        raise ValueError(
            f"Invalid initial_accumulator_value value: {initial_accumulator_value}")

    def make(lr):
        core = _torch_adagrad(lr, lr_decay, initial_accumulator_value, eps)
        return optax.chain(*_grad_prefix(maximize, weight_decay), core)

    return _with_lr(make, lr)


# --- RMSprop --------------------------------------------------------------------------------------


class TorchRMSpropState(NamedTuple):
    square_avg: optax.Updates
    grad_avg: optax.Updates  # () unless centered
    momentum_buffer: optax.Updates  # () unless momentum > 0


def _torch_rmsprop(lr: jax.Array, alpha: float, eps: float, momentum: float,
                   centered: bool) -> optax.GradientTransformation:
    """``avg = sqrt(square_avg [- grad_avg**2]) + eps``; step ``grad / avg`` through an optional
    momentum buffer.

    ``optax.rmsprop`` puts eps inside the square root (optax#532) and, centered, subtracts the
    squared mean before adding eps inside the root as well.
    """

    def init(params):
        # A fresh zeros tree per buffer, so a jitted step may donate the state.
        def zeros():
            return optax.tree.zeros_like(params)

        return TorchRMSpropState(zeros(), zeros() if centered else (),
                                 zeros() if momentum > 0 else ())

    def update(grads, state, params=None):
        sq = jax.tree.map(lambda s, g: s * alpha + ((1 - alpha) * g) * g, state.square_avg, grads)
        if centered:
            mean = jax.tree.map(lambda m, g: _lerp(m, g, 1 - alpha), state.grad_avg, grads)
            avg = jax.tree.map(lambda s, m: jnp.sqrt(s - m * m) + eps, sq, mean)
        else:
            mean = ()
            avg = jax.tree.map(lambda s: jnp.sqrt(s) + eps, sq)
        if momentum > 0:
            buf = jax.tree.map(lambda b, g, a: b * momentum + g / a,
                               state.momentum_buffer, grads, avg)
            updates = jax.tree.map(lambda b: -lr * b, buf)
        else:
            buf = ()
            updates = jax.tree.map(lambda g, a: (-lr * g) / a, grads, avg)
        return updates, TorchRMSpropState(sq, mean, buf)

    return optax.GradientTransformation(init, update)


@_torch_options
def rmsprop(lr: LearningRate = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
            weight_decay: float = 0, momentum: float = 0, centered: bool = False, *,
            maximize: bool = False) -> optax.GradientTransformation:
    """``torch.optim.RMSprop``: eps outside the square root, optional centering and momentum."""
    lr = _check_lr(lr)
    _check_nonnegative(eps=eps, momentum=momentum, weight_decay=weight_decay, alpha=alpha)

    def make(lr):
        core = _torch_rmsprop(lr, alpha, eps, momentum, centered)
        return optax.chain(*_grad_prefix(maximize, weight_decay), core)

    return _with_lr(make, lr)


# --- Adam / AdamW ---------------------------------------------------------------------------------


class TorchAdamState(NamedTuple):
    count: jax.Array
    exp_avg: optax.Updates
    exp_avg_sq: optax.Updates
    max_exp_avg_sq: optax.Updates  # () unless amsgrad


def _torch_adam(lr: jax.Array, beta1: float, beta2: float, eps: float, amsgrad: bool,
                decoupled_weight_decay: float) -> optax.GradientTransformation:
    """torch's Adam step: ``param -= (lr / bc1) * exp_avg / (sqrt(v) / sqrt(bc2) + eps)``.

    ``optax.scale_by_adam`` bias-corrects the moments themselves (``sqrt(nu / bc2) + eps``), updates
    them as ``(1 - b) * g + b * m`` rather than torch's lerp, and has no AMSGrad maximum. AdamW's
    decay multiplies the parameter by ``1 - lr * weight_decay`` before the step, as torch does.
    """

    def init(params):
        # A fresh zeros tree per moment, so a jitted step may donate the state.
        def zeros():
            return optax.tree.zeros_like(params)

        return TorchAdamState(jnp.zeros([], jnp.int32), zeros(), zeros(),
                              zeros() if amsgrad else ())

    def update(grads, state, params=None):
        step = optax.safe_increment(state.count)
        m = jax.tree.map(lambda m, g: _lerp(m, g, 1 - beta1), state.exp_avg, grads)
        v = jax.tree.map(lambda v, g: v * beta2 + ((1 - beta2) * g) * g, state.exp_avg_sq, grads)
        vmax = jax.tree.map(jnp.maximum, state.max_exp_avg_sq, v) if amsgrad else ()
        step_size = (lr / _one_minus_pow(beta1, step, lr.dtype)).astype(lr.dtype)
        bc2_sqrt = jnp.sqrt(_one_minus_pow(beta2, step, lr.dtype)).astype(lr.dtype)
        updates = jax.tree.map(lambda m, v: (-step_size * m) / (jnp.sqrt(v) / bc2_sqrt + eps),
                               m, vmax if amsgrad else v)
        if decoupled_weight_decay != 0:
            if params is None:
                raise ValueError("adamw's weight decay needs params: call update(grads, state, "
                                 "params)")
            keep = 1 - lr * decoupled_weight_decay
            # (p * keep - p) is exact, so p + update rounds like torch's p.mul_(keep) then step.
            updates = jax.tree.map(lambda u, p: (p * keep - p) + u, updates, params)
        return updates, TorchAdamState(step, m, v, vmax)

    return optax.GradientTransformation(init, update)


def _check_betas(betas: Any) -> tuple[float, float]:
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    for i, beta in enumerate(betas):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {beta}")
    return float(betas[0]), float(betas[1])


@_torch_options
def adam(lr: LearningRate = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
         weight_decay: float = 0, amsgrad: bool = False, *, maximize: bool = False,
         decoupled_weight_decay: bool = False) -> optax.GradientTransformation:
    """``torch.optim.Adam``: coupled L2 in the gradient (unless ``decoupled_weight_decay``)."""
    lr = _check_lr(lr)
    _check_nonnegative(eps=eps)
    beta1, beta2 = _check_betas(betas)
    _check_nonnegative(weight_decay=weight_decay)
    coupled = 0 if decoupled_weight_decay else weight_decay
    decoupled = weight_decay if decoupled_weight_decay else 0

    def make(lr):
        core = _torch_adam(lr, beta1, beta2, eps, amsgrad, decoupled)
        return optax.chain(*_grad_prefix(maximize, coupled), core)

    return _with_lr(make, lr)


@_torch_options
def adamw(lr: LearningRate = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
          weight_decay: float = 1e-2, amsgrad: bool = False, *,
          maximize: bool = False) -> optax.GradientTransformation:
    """``torch.optim.AdamW``: ``param *= 1 - lr * weight_decay``, then the Adam step."""
    return adam(lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                decoupled_weight_decay=True)


# --- the learning rate in the state ---------------------------------------------------------------


def _lr_holders(state: Any, path: tuple = ()) -> list[tuple[tuple, InjectStatefulHyperparamsState]]:
    """Every (path, inject_hyperparams state holding "lr") inside ``state``, depth first."""
    if isinstance(state, InjectStatefulHyperparamsState):
        return [(path, state)] if "lr" in state.hyperparams else []
    if isinstance(state, (tuple, list)):
        return [hit for i, s in enumerate(state) for hit in _lr_holders(s, (*path, i))]
    if isinstance(state, dict):
        return [hit for k, s in state.items() for hit in _lr_holders(s, (*path, k))]
    return []


def _the_lr_holder(state: Any) -> tuple[tuple, InjectStatefulHyperparamsState]:
    holders = _lr_holders(state)
    if len(holders) != 1:
        found = "no learning rate" if not holders else f"{len(holders)} learning rates"
        raise ValueError(
            f"opt_state holds {found}; get_lr/set_lr expect the state of one funcdl.optim "
            "optimizer (sgd, adagrad, rmsprop, adam, adamw), possibly chained or wrapped."
        )
    return holders[0]


def _unwrap(leaf: Any) -> Any:
    # nnx.Optimizer wraps each state leaf in an OptState Variable.
    return leaf.get_value() if hasattr(leaf, "get_value") else leaf


def get_lr(opt_state: Any) -> float:
    """The learning rate in ``opt_state``: the one set (constant lr, or after `set_lr`) or, for a
    schedule, the value the last update used (``schedule(0)`` before the first update).

    A Python float (the shortest decimal that rounds to the stored float32); under ``jax.jit`` the
    traced scalar is returned instead.
    """
    _, holder = _the_lr_holder(opt_state)
    lr = _unwrap(holder.hyperparams["lr"])
    if isinstance(lr, jax.core.Tracer):
        return lr
    # The shortest decimal that rounds to the stored value: 0.1, not 0.10000000149011612.
    return float(str(np.asarray(lr)[()]))


def _replace_at(state: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(state, dict):
        return {**state, head: _replace_at(state[head], rest, new)}
    items = list(state)
    items[head] = _replace_at(items[head], rest, new)
    if isinstance(state, list):
        return items
    return type(state)(*items) if hasattr(state, "_fields") else tuple(items)


def set_lr(opt_state: Any, lr: float | jax.Array) -> Any:
    """A copy of ``opt_state`` whose next updates use learning rate ``lr`` (no recompilation: the
    lr is an array in the state). A scheduled lr cannot be overridden and raises ValueError."""
    if not isinstance(lr, jax.core.Tracer):
        _check_lr(float(lr))
    path, holder = _the_lr_holder(opt_state)
    if "lr" in holder.hyperparams_states:
        raise ValueError(
            "set_lr cannot change a learning rate given as a schedule: the schedule recomputes it "
            "every step. Build the optimizer with a constant lr to drive it by hand or with "
            "ReduceLROnPlateau."
        )
    old = holder.hyperparams["lr"]
    value = jnp.asarray(lr, dtype=jnp.result_type(_unwrap(old)))
    if hasattr(old, "get_value"):
        value = old.copy(value)
    new = holder._replace(hyperparams={**holder.hyperparams, "lr": value})
    return _replace_at(opt_state, path, new)
