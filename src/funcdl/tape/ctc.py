"""Connectionist temporal classification: `ctc_loss` with ``torch.nn.functional.ctc_loss``'s
layout, semantics and errors.

The loss is -log p(target | input), summed over every alignment of the target with the frames
(labels, repeated, with blanks between and around them). It is computed in log space by the
forward (alpha) recursion, a `scan` over time; its backward comes from the alpha and beta
recursions: dloss/dlog_probs[t, c] = -(posterior of label c at frame t). Both recursions are
written with funcdl.tape's functions, so on plain arrays they are plain JAX (``jax.grad`` then
differentiates the alpha recursion itself: the independent reference), and under
``create_graph`` the backward is recorded (second derivatives).

torch's own gradient is ``exp(log_probs) - posterior``: the gradient with respect to the logits
when ``log_probs = log_softmax(logits)``, which is how ctc_loss is used. Through a log_softmax the
two agree; funcdl returns the true derivative with respect to ``log_probs`` (what ``jax.grad``
gives), and torch's differs from it by ``exp(log_probs)`` on the valid frames.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcdl.tape.cases import Case, array, call
from funcdl.tape.elementwise import add, astype, exp, log, mul, neg, sub, where
from funcdl.tape.indexing import getitem, index_add_into
from funcdl.tape.recurrence import scan
from funcdl.tape.reductions import sum
from funcdl.tape.registry import op
from funcdl.tape.shape import concatenate, squeeze, unsqueeze
from funcdl.tape.tensor import Tensor, _concrete, apply, constant, shape_of, unwrap

REDUCTIONS = ("mean", "sum", "none")
_CHECKING = "(while checking arguments for ctc_loss_allocate_outputs)"


def _lse(*xs: Any) -> Any:
    """log(sum(exp(xs))) elementwise, -inf where every term is -inf, with finite gradients there
    (the shift is a constant: the result does not depend on it)."""
    m = constant(xs[0])
    for x in xs[1:]:
        m = jnp.maximum(m, constant(x))
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    s = exp(sub(xs[0], m))
    for x in xs[1:]:
        s = add(s, exp(sub(x, m)))
    alive = constant(s) > 0
    return where(alive, add(log(where(alive, s, 1.0)), m), -math.inf)


def _shift(x: Any, k: int, fill: float = -math.inf) -> Any:
    """``x`` moved ``k`` states along its last axis (right for k > 0), ``fill`` entering."""
    n = shape_of(x)[-1]
    k = max(-n, min(n, k))
    pad = jnp.full(shape_of(x)[:-1] + (abs(k),), fill, jnp.result_type(constant(x)))
    if k > 0:
        return concatenate([pad, getitem(x, (Ellipsis, slice(0, n - k)))], -1)
    return concatenate([getitem(x, (Ellipsis, slice(-k, n))), pad], -1)


class _Alignment:
    """A batch's extended targets (blank, l1, blank, l2, ..., blank) and lengths, as arrays."""

    def __init__(self, targets: Any, input_lengths: Any, target_lengths: Any, blank: int,
                 n_classes: int, frames: int) -> None:
        n, s = targets.shape
        self.frames, self.n_classes = frames, n_classes
        self.input_lengths = input_lengths
        states = 2 * s + 1
        pos = jnp.arange(states)
        label = jnp.take_along_axis(targets, jnp.clip((pos - 1) // 2, 0, max(s - 1, 0))[None]
                                    .repeat(n, 0), 1) if s else jnp.zeros((n, states), int)
        used = pos[None] < 2 * target_lengths[:, None] + 1
        self.ext = jnp.where((pos[None] % 2 == 1) & used, label, blank)  # (N, S')
        prev2 = jnp.concatenate([jnp.full((n, 2), -1), self.ext], 1)[:, :states]
        self.skip = (pos[None] % 2 == 1) & (self.ext != prev2)  # may come from two states back
        self.last = 2 * target_lengths  # the final label state is last - 1, the final blank last
        self.index = (slice(None), jnp.arange(n)[:, None], self.ext)  # lp[t, n, ext[n, s]]

    def emissions(self, lp: Any) -> Any:
        return getitem(lp, self.index)  # (T, N, S')

    def alphas(self, lp: Any) -> tuple[Any, Any]:
        """alpha[t, n, s] = log p(frames 0..t end in state s), frozen after each input length;
        and log p(target) per sample."""
        emit = self.emissions(lp)
        n, states = self.ext.shape
        start = jnp.full((n, states), -math.inf, emit.dtype).at[:, 0].set(0.0)  # before frame 0
        skip, lengths = self.skip, self.input_lengths

        def step(alpha: Any, x: Any) -> tuple:
            e, t = x
            new = add(_lse(alpha, _shift(alpha, 1), where(skip, _shift(alpha, 2), -math.inf)), e)
            alpha = where((t < lengths)[:, None], new, alpha)
            return alpha, alpha

        final, alphas = scan(step, start, (emit, jnp.arange(self.frames)))
        return alphas, _lse(*self._at_ends(final))

    def _at_ends(self, v: Any) -> tuple[Any, Any]:
        rows = jnp.arange(self.ext.shape[0])
        below = jnp.maximum(self.last - 1, 0)
        return getitem(v, (rows, self.last)), where(self.last > 0, getitem(v, (rows, below)),
                                                    -math.inf)

    def betas(self, lp: Any) -> Any:
        """beta[t, n, s] = log p(frames t+1.. | state s at frame t), for t < the input length."""
        emit = self.emissions(lp)
        n, states = self.ext.shape
        pos = jnp.arange(states)[None]
        end = jnp.where((pos == self.last[:, None]) | (pos == self.last[:, None] - 1), 0.0,
                        -math.inf).astype(emit.dtype)
        nxt = concatenate([getitem(emit, slice(1, None)), jnp.zeros((1, n, states), emit.dtype)])
        skip_ahead = _shift(jnp.where(self.skip, 0.0, -math.inf), -2)  # state s+2 may be skipped to
        lengths = self.input_lengths

        def step(beta: Any, x: Any) -> tuple:
            e, t = x
            v = add(e, beta)
            new = _lse(v, _shift(v, -1), add(_shift(v, -2), skip_ahead))
            beta = where((t < lengths - 1)[:, None], new, end)
            return beta, beta

        _, betas = scan(step, end, (nxt, jnp.arange(self.frames)), reverse=True)
        return betas

    def nll_gradient(self, lp: Any, alphas: Any, logp: Any, zero_infinity: bool) -> Any:
        """d(-log p(target))/d log_probs per sample, (T, N, C): minus the label posteriors."""
        gamma = exp(sub(add(alphas, self.betas(lp)), unsqueeze(logp, -1)))
        valid = jnp.arange(self.frames)[:, None] < self.input_lengths[None]  # (T, N)
        if zero_infinity:
            valid = valid & jnp.isfinite(constant(logp))[None]
        gamma = where(valid[..., None], gamma, 0.0)
        return neg(index_add_into(gamma, self.index, (self.frames,) + self.ext.shape[:1]
                                  + (self.n_classes,)))


def _ctc_case(d: Any) -> Any:
    """Random lengths, a repeated label, each reduction; alignments that cannot exist only with
    zero_infinity (their loss is inf and their gradient NaN otherwise, as torch's)."""
    zero_infinity = bool(d.choice([False, True], "zero_infinity"))
    t, n, s = 5, d.choice([1, 3], "batch"), d.choice([0, 3], "S")
    rng = np.random.default_rng(d.seed("targets"))
    targets = rng.integers(1, 3, (n, s))
    if s > 1:
        targets[0, 1] = targets[0, 0]  # a repeated label needs a blank between
    target_lengths = rng.integers(0, s + 1, n)
    low = 1 if zero_infinity else np.minimum(t, 2 * target_lengths + 1)
    input_lengths = rng.integers(low, t + 1, n)
    x = array(d, (t, n, 3))
    lp = x - np.log(np.exp(x).sum(-1, keepdims=True))
    return call(log_probs=lp.astype(np.float32), targets=targets, input_lengths=input_lengths,
                target_lengths=target_lengths, reduction=d.choice(REDUCTIONS, "reduction"),
                zero_infinity=zero_infinity)


@op(Case("random lengths, reductions, zero_infinity", _ctc_case, rtol=1e-4, atol=1e-5,
         # torch's gradient is the logits' (see the module docstring): tests/test_tape_ctc.py
         # compares gradients through a log_softmax
         torch_no_grad=("log_probs",)),
    torch="torch.nn.functional.ctc_loss")
def ctc_loss(log_probs: Any, targets: Any, input_lengths: Any, target_lengths: Any,
             blank: int = 0, reduction: str = "mean", zero_infinity: bool = False) -> Any:
    """``torch.nn.functional.ctc_loss``: ``log_probs`` (T, N, C) (or (T, C)), ``targets`` padded
    (N, S) or concatenated 1-D; "mean" divides each loss by its target length, then averages.
    An impossible alignment gives inf (0 with ``zero_infinity``, with a zero gradient)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"{reduction} is not a valid value for reduction")
    lp = unwrap(log_probs)
    if jnp.issubdtype(jnp.result_type(constant(lp)), jnp.integer):
        raise NotImplementedError(f'"ctc_loss_cpu" not implemented for '
                                  f"'{jnp.result_type(constant(lp)).name}'")
    if jnp.result_type(constant(lp)) in (jnp.float16, jnp.bfloat16):
        lp = astype(lp, jnp.float32)
    batched = len(shape_of(lp)) == 3
    if not batched:
        lp = unsqueeze(lp, 1)
    frames, n, n_classes = shape_of(lp)
    if not 0 <= blank < n_classes:
        raise RuntimeError("blank must be in label range")
    lengths = [_lengths(v, n, name) for v, name in ((input_lengths, "input_lengths"),
                                                    (target_lengths, "target_lengths"))]
    _check_lengths(lengths[0], "input_lengths", 0, frames)
    _check_lengths(lengths[1], "target_lengths", 0, None)
    padded = _padded_targets(targets, lengths[1], n, n_classes)
    a = _Alignment(padded, lengths[0], lengths[1], blank, n_classes, frames)
    weights = _mean_weights(lengths[1], n)
    cache: dict[str, Any] = {}

    def nll(lp: Any) -> Any:
        alphas, logp = a.alphas(lp)
        if isinstance(lp, jax.Array | np.ndarray):
            cache.update(alphas=alphas, logp=logp)
        loss = neg(logp)
        return where(jnp.isinf(constant(loss)), 0.0, loss) if zero_infinity else loss

    def forward(lp: Any) -> Any:
        loss = nll(lp)
        if reduction == "none":
            return loss if batched else squeeze(loss, 0)
        return sum(mul(loss, weights)) if reduction == "mean" else sum(loss)

    def per_sample(lp: Any) -> Any:  # dloss_n/dlp, (T, N, C)
        if isinstance(lp, Tensor) or "alphas" not in cache:
            alphas, logp = a.alphas(lp)
        else:
            alphas, logp = cache["alphas"], cache["logp"]
        return a.nll_gradient(lp, alphas, logp, zero_infinity)

    def rule(g: Any, z: Any, lp: Any) -> Any:
        if reduction == "none":
            scale = g if batched else unsqueeze(g, 0)  # (N,)
        else:
            scale = mul(g, weights) if reduction == "mean" else g  # (N,) or ()
        return mul(per_sample(lp), unsqueeze(scale, -1))

    def tangent(t: Any, z: Any, lp: Any) -> Any:
        dots = sum(mul(per_sample(lp), t), (0, 2))  # (N,)
        if reduction == "none":
            return dots if batched else squeeze(dots, 0)
        return sum(mul(dots, weights)) if reduction == "mean" else sum(dots)

    return apply("CtcLossBackward0", forward, (lp,), (rule,), tangents=(tangent,))


def _lengths(v: Any, n: int, name: str) -> Any:
    v = jnp.asarray(constant(unwrap(v)))
    if v.ndim == 0:
        v = v[None]
    if v.shape != (n,):
        raise RuntimeError(f"{name} must be of size batch_size")
    return v.astype(jnp.int32)


def _check_lengths(v: Any, name: str, low: int, high: int | None) -> None:
    if not _concrete(v):
        return
    if v.size and int(v.min()) < low:
        raise RuntimeError(f"Expected {name} to have value at least {low}, but got value "
                           f"{int(v.min())} {_CHECKING}")
    if high is not None and v.size and int(v.max()) > high:
        raise RuntimeError(f"Expected {name} to have value at most {high}, but got value "
                           f"{int(v.max())} {_CHECKING}")


def _padded_targets(targets: Any, target_lengths: Any, n: int, n_classes: int) -> Any:
    """(N, S) targets from either layout (torch's size errors for short ones)."""
    t = jnp.asarray(constant(unwrap(targets)))
    if not jnp.issubdtype(t.dtype, jnp.integer):
        t = t.astype(jnp.int32)
    if t.ndim not in (1, 2):
        raise RuntimeError(f"Expected 1 to 2 dimensions, but got {t.ndim}-dimensional tensor for "
                           f"argument #2 'targets' {_CHECKING}")
    concrete = _concrete(target_lengths)
    if t.ndim == 2:
        need = int(target_lengths.max()) if concrete and target_lengths.size else 0
        if t.shape[1] < need:
            raise RuntimeError(f"Expected tensor to have size at least {need} at dimension 1, "
                               f"but got size {t.shape[1]} for argument #2 'targets' {_CHECKING}")
    else:
        if concrete and t.shape[0] != int(target_lengths.sum()):
            raise RuntimeError(f"Expected tensor to have size {int(target_lengths.sum())} at "
                               f"dimension 0, but got size {t.shape[0]} for argument #2 "
                               f"'targets' {_CHECKING}")
        width = int(target_lengths.max()) if concrete and target_lengths.size else t.shape[0]
        starts = jnp.cumsum(target_lengths) - target_lengths
        pos = jnp.clip(starts[:, None] + jnp.arange(width)[None], 0, max(t.shape[0] - 1, 0))
        t = t[pos] if t.shape[0] else jnp.zeros((n, width), t.dtype)
    used = jnp.arange(t.shape[1])[None] < target_lengths[:, None]
    if _concrete(t) and concrete and bool(jnp.any(used & ((t < 0) | (t >= n_classes)))):
        bad = int(t[used & ((t < 0) | (t >= n_classes))][0])
        raise IndexError(f"ctc_loss: target {bad} is out of range for {n_classes} classes "
                         f"(torch reads out of bounds here)")
    return jnp.where(used, t, 0).astype(jnp.int32)


def _mean_weights(target_lengths: Any, n: int) -> Any:
    """Per-sample factors of the "mean" reduction: 1 / (N * max(target length, 1))."""
    return 1.0 / (n * jnp.maximum(target_lengths, 1).astype(jnp.float32))
