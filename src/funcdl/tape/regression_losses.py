"""Regression losses with ``torch.nn.functional``'s names, arguments and reductions: ``l1_loss``,
``smooth_l1_loss``, ``huber_loss``, ``poisson_nll_loss``.

Each is composed of funcdl's functions (its gradient is theirs, as accurate as a hand-written
rule and one fused kernel under jit), and each is written so the slopes at its kinks are torch's:
0 where input == target, the linear branch's on the |d| == beta (delta) boundary.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from funcdl.tape.cases import Case, array, boolean, call, shape
from funcdl.tape.elementwise import abs, add, div, exp, log, mul, sub, where
from funcdl.tape.losses import (
    REDUCTIONS,
    apply_reduction,
    check_reduction,
    in_float32,
    warn_target_size,
)
from funcdl.tape.reductions import sum
from funcdl.tape.registry import op
from funcdl.tape.tensor import constant, shape_of, unwrap


def _distance(input: Any, target: Any) -> Any:
    """|input - target| (broadcast); 16-bit inputs in float32, as funcdl's other losses. Each
    caller warns first, as torch, when the shapes differ (the warning points at its caller)."""
    input, target = in_float32(unwrap(input), unwrap(target))
    return abs(sub(input, target))


def _check_weight(weight: Any, input: Any, reduction: str) -> Any:
    """torch's checks of an elementwise ``weight`` (the input's shape exactly)."""
    if shape_of(weight) != shape_of(input):
        raise ValueError("Weights and input must have the same size.")
    if reduction not in REDUCTIONS:
        raise ValueError(f"Invalid reduction mode: {reduction}. Expected one of 'none', 'mean', "
                         "'sum'.")
    return in_float32(unwrap(weight))[0]


def _case(label: str, scale: float = 1.0, weight: bool = False, **choices: Any) -> Case:
    """``op(input, target, reduction=..., **choices)``, input and target of one drawn shape
    (their differences spread by ``scale``); half the draws with an elementwise ``weight``."""

    def make(d: Any) -> Any:
        s = shape(d)
        kwargs = {k: d.choice(v, k) for k, v in choices.items()}
        if weight and boolean(d, "weight"):
            kwargs["weight"] = array(d, s, "pos")
        return call(array(d, s) * scale, array(d, s) * scale,
                    reduction=d.choice(REDUCTIONS, "reduction"), **kwargs)

    return Case(label, make)


@op(_case("reductions, weight", weight=True), torch="torch.nn.functional.l1_loss")
def l1_loss(input: Any, target: Any, *, reduction: str = "mean", weight: Any = None) -> Any:
    """Mean absolute error. With ``weight`` (the input's shape) torch's weighted mean:
    sum(weight |d|) / sum(weight)."""
    warn_target_size(input, target)
    if weight is None:
        check_reduction(reduction)
        return apply_reduction(_distance(input, target), reduction)
    w = _check_weight(weight, input, reduction)
    loss = mul(_distance(input, target), w)
    return div(sum(loss), sum(w)) if reduction == "mean" else apply_reduction(loss, reduction)


@op(_case("beta", scale=1.5, beta=[1.0, 0.5, 0.0]), torch="torch.nn.functional.smooth_l1_loss")
def smooth_l1_loss(input: Any, target: Any, *, reduction: str = "mean", beta: float = 1.0
                   ) -> Any:
    """0.5 d^2 / beta where |d| < beta, else |d| - 0.5 beta (``beta=0`` is l1_loss)."""
    check_reduction(reduction)
    if beta < 0:
        raise RuntimeError("smooth_l1_loss does not support negative values for beta.")
    warn_target_size(input, target)
    d = _distance(input, target)
    if beta == 0:  # torch's l1 branch: 0.5 d^2 / 0 would put inf * 0 = NaN in the gradient
        return apply_reduction(d, reduction)
    inside = constant(d) < beta
    return apply_reduction(where(inside, mul(0.5 / beta, mul(d, d)), sub(d, 0.5 * beta)),
                           reduction)


@op(_case("delta, weight", scale=1.5, weight=True, delta=[1.0, 0.5]),
    torch="torch.nn.functional.huber_loss")
def huber_loss(input: Any, target: Any, reduction: str = "mean", delta: float = 1.0,
               weight: Any = None) -> Any:
    """0.5 d^2 where |d| < delta, else delta (|d| - 0.5 delta). With ``weight`` (the input's
    shape) the mean is torch's plain mean of weight * loss (not sum(weight * loss) / sum(weight)
    as for l1_loss and mse_loss: torch's own inconsistency, kept for parity)."""
    if delta <= 0:
        raise RuntimeError("huber_loss does not support non-positive values for delta.")
    if weight is None:
        check_reduction(reduction)
    else:
        weight = _check_weight(weight, input, reduction)
    warn_target_size(input, target)
    d = _distance(input, target)
    loss = where(constant(d) < delta, mul(0.5, mul(d, d)), mul(delta, sub(d, 0.5 * delta)))
    return apply_reduction(loss if weight is None else mul(loss, weight), reduction)


def _poisson_case(d: Any) -> Any:
    s = shape(d)
    log_input = boolean(d, "log_input")
    counts = np.random.default_rng(d.seed("counts")).choice([0.5, 1.0, 2.0, 3.0, 7.0], s)
    return call(array(d, s, "normal" if log_input else "pos"), counts.astype(np.float32),
                log_input, boolean(d, "full"), reduction=d.choice(REDUCTIONS, "reduction"))


@op(Case("log_input, full", _poisson_case), torch="torch.nn.functional.poisson_nll_loss")
def poisson_nll_loss(input: Any, target: Any, log_input: bool = True, full: bool = False, *,
                     eps: float = 1e-8, reduction: str = "mean") -> Any:
    """Negative log-likelihood of ``target`` under a Poisson of rate exp(input) (``log_input``)
    or input: exp(x) - t x, or x - t log(x + eps); ``full`` adds Stirling's t log t - t +
    0.5 log(2 pi t) where t > 1. Unlike torch, a target that broadcasts warns (as l1_loss does),
    and the target's gradient stays finite at t = 0 with ``full`` (torch's is NaN)."""
    check_reduction(reduction)
    warn_target_size(input, target)
    x, t = in_float32(unwrap(input), unwrap(target))
    loss = sub(exp(x), mul(t, x)) if log_input else sub(x, mul(t, log(add(x, eps))))
    if full:
        big = constant(t) > 1
        safe = where(big, t, 2.0)  # log never sees t <= 1, so masked entries get a 0 gradient
        stirling = add(sub(mul(t, log(safe)), t), mul(0.5, log(mul(2 * math.pi, safe))))
        loss = add(loss, where(big, stirling, 0.0))
    return apply_reduction(loss, reduction)
