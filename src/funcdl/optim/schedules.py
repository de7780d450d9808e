"""Learning-rate schedules (functions of the step count) and ReduceLROnPlateau (host-side).

A schedule passed as ``lr`` is evaluated by ``optax.inject_hyperparams`` at the optimizer's update
count, so update ``n`` (from 0) uses ``schedule(n)``: the same lr torch uses when its scheduler's
``step()`` is called once after every ``optimizer.step()``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import jax
import optax

from funcdl.optim.optimizers import _the_lr_holder, get_lr, set_lr


def _check_positive_int(name: str, value: Any, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = "a non-negative" if allow_zero else "a positive"
        raise ValueError(f"{name} must be {bound} integer, got {value!r}")


def warmup_cosine(peak_lr: float, warmup_steps: int, total_steps: int, final_lr: float = 0.0, *,
                  init_lr: float = 0.0) -> optax.Schedule:
    """Linear warmup from ``init_lr`` to ``peak_lr`` over ``warmup_steps``, then a half cosine to
    ``final_lr`` at ``total_steps``, held there afterwards.

    Equals torch's ``SequentialLR([LinearLR(start_factor=init_lr / peak_lr, total_iters=warmup),
    CosineAnnealingLR(T_max=total - warmup, eta_min=final_lr)], milestones=[warmup])`` up to
    ``total_steps`` (torch's cosine then rises again; this one stays at ``final_lr``).
    """
    _check_positive_int("warmup_steps", warmup_steps, allow_zero=True)
    _check_positive_int("total_steps", total_steps)
    if total_steps <= warmup_steps:
        raise ValueError(
            f"total_steps ({total_steps}) must exceed warmup_steps ({warmup_steps}): the cosine "
            "part needs at least one step"
        )
    if not (peak_lr > 0 and 0 <= final_lr <= peak_lr and 0 <= init_lr <= peak_lr):
        raise ValueError(
            "need 0 <= init_lr <= peak_lr, 0 <= final_lr <= peak_lr and peak_lr > 0; got "
            f"init_lr={init_lr}, peak_lr={peak_lr}, final_lr={final_lr}"
        )
    return optax.warmup_cosine_decay_schedule(
        init_value=init_lr, peak_value=peak_lr, warmup_steps=warmup_steps,
        decay_steps=total_steps, end_value=final_lr)


def step_decay(lr: float, step_size: int, gamma: float = 0.1) -> optax.Schedule:
    """``lr * gamma ** (step // step_size)``: torch's ``StepLR``."""
    _check_positive_int("step_size", step_size)
    if not lr >= 0:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not gamma > 0:
        raise ValueError(f"gamma must be positive, got {gamma}")
    return optax.exponential_decay(
        init_value=lr, transition_steps=step_size, decay_rate=gamma, staircase=True)


class ReduceLROnPlateau:
    """torch's ``ReduceLROnPlateau``, acting on a funcdl optimizer state instead of an optimizer.

    Call ``opt_state = plateau.step(val_loss, opt_state)`` once per evaluation. After more than
    ``patience`` evaluations without improvement (by ``threshold``, relative or absolute), the lr
    becomes ``max(lr * factor, min_lr)`` (skipped when that changes it by no more than ``eps``),
    then ``cooldown`` evaluations are ignored. The optimizer needs a constant ``lr``.
    """

    def __init__(self, mode: Literal["min", "max"] = "min", factor: float = 0.1,
                 patience: int = 10, threshold: float = 1e-4,
                 threshold_mode: Literal["rel", "abs"] = "rel", cooldown: int = 0,
                 min_lr: float = 0.0, eps: float = 1e-8) -> None:
        if factor >= 1.0:
            raise ValueError("Factor should be < 1.0.")
        if factor < 0:
            raise ValueError(f"factor must be in [0, 1), got {factor}")
        _check_positive_int("patience", patience, allow_zero=True)
        _check_positive_int("cooldown", cooldown, allow_zero=True)
        if not min_lr >= 0:
            raise ValueError(f"min_lr must be >= 0, got {min_lr}")
        self.factor = factor
        self.patience = patience
        self.cooldown = cooldown
        self.min_lr = min_lr
        self.eps = eps
        self.last_epoch = 0
        self._init_is_better(mode, threshold, threshold_mode)
        self.best = self.mode_worse
        self.cooldown_counter = 0
        self.num_bad_epochs = 0

    def _init_is_better(self, mode: str, threshold: float, threshold_mode: str) -> None:
        if mode not in {"min", "max"}:
            raise ValueError(f"mode {mode} is unknown! Use 'min' or 'max'.")
        if threshold_mode not in {"rel", "abs"}:
            raise ValueError(f"threshold mode {threshold_mode} is unknown! Use 'rel' or 'abs'.")
        self.mode = mode
        self.threshold = threshold
        self.threshold_mode = threshold_mode
        self.mode_worse = math.inf if mode == "min" else -math.inf

    def is_better(self, a: float, best: float) -> bool:
        """Whether metric ``a`` improves on ``best`` by more than the threshold."""
        if self.mode == "min" and self.threshold_mode == "rel":
            return a < best * (1.0 - self.threshold)
        if self.mode == "min":
            return a < best - self.threshold
        if self.threshold_mode == "rel":
            return a > best * (self.threshold + 1.0)
        return a > best + self.threshold

    @property
    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def step(self, metric: float | jax.Array, opt_state: Any) -> Any:
        """Record one evaluation's ``metric``; return ``opt_state``, with a lower lr if it
        plateaued."""
        _, holder = _the_lr_holder(opt_state)
        if "lr" in holder.hyperparams_states:
            raise ValueError(
                "ReduceLROnPlateau needs an optimizer built with a constant lr; this one's lr "
                "is a schedule, which would overwrite the reduced value at the next step."
            )
        current = float(metric)
        self.last_epoch += 1
        if self.is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.in_cooldown:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # bad epochs in cooldown do not count, as in torch
        if self.num_bad_epochs > self.patience:
            old_lr = get_lr(opt_state)
            new_lr = max(old_lr * self.factor, self.min_lr)
            if old_lr - new_lr > self.eps:
                opt_state = set_lr(opt_state, new_lr)
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        return opt_state

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (plain Python values; ``best`` may be +-inf)."""
        return dict(vars(self))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        vars(self).update(state_dict)
        self._init_is_better(self.mode, self.threshold, self.threshold_mode)

