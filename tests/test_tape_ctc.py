"""tape.ctc_loss against torch.nn.functional.ctc_loss beyond the registry's random case: one batch
holding every awkward situation (random lengths, a repeated label needing a blank between, an
empty target, an alignment that cannot exist), every reduction, zero_infinity both ways, both
target layouts, unbatched input; gradients compared with torch's through a log_softmax (torch's
gradient is the logits'); torch's errors; second derivatives against jax; traced lengths."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from funcdl import tape as T

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(6, 4, 5)).astype(np.float32)  # (T, N, C)
TARGETS = np.array([[1, 1, 2], [3, 4, 0], [2, 0, 0], [2, 2, 2]])
INPUT_LENGTHS = np.array([6, 5, 3, 3])  # the last: 2 2 2 needs 5 frames, has 3
TARGET_LENGTHS = np.array([3, 2, 0, 3])
WEIGHTS = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
REDUCTIONS = ("none", "sum", "mean")


def ours(logits, reduction, zero_infinity, targets=TARGETS, lengths=(INPUT_LENGTHS,
                                                                     TARGET_LENGTHS)):
    out = T.ctc_loss(T.log_softmax(logits, 2), targets, *lengths, reduction=reduction,
                     zero_infinity=zero_infinity)
    return T.sum(T.mul(out, WEIGHTS)) if reduction == "none" else out


def theirs(reduction, zero_infinity, targets=TARGETS):
    x = torch.tensor(LOGITS, requires_grad=True)
    out = torch.nn.functional.ctc_loss(x.log_softmax(2), torch.tensor(targets),
                                       torch.tensor(INPUT_LENGTHS), torch.tensor(TARGET_LENGTHS),
                                       reduction=reduction, zero_infinity=zero_infinity)
    total = (out * torch.tensor(WEIGHTS)).sum() if reduction == "none" else out
    total.backward()
    return total.detach().numpy(), x.grad.numpy()


def same(a, b, tol=1e-5):
    np.testing.assert_allclose(np.asarray(a), b, rtol=tol, atol=tol)  # NaN and inf where b has


@pytest.mark.parametrize("zero_infinity", [False, True])
def test_values_and_gradients_equal_torch(zero_infinity):
    """Every reduction in one compiled program, the lengths traced (jit arguments); jax.grad of
    the forward (the alpha recursion itself) agrees too where the losses are finite."""
    def three(v, lengths, r):
        loss = functools.partial(ours, reduction=r, zero_infinity=zero_infinity, lengths=lengths)
        return loss(v), T.grad(loss)(v), jax.grad(loss)(v)

    run = jax.jit(lambda v, lengths: [three(v, lengths, r) for r in REDUCTIONS])
    got = run(jnp.asarray(LOGITS), (INPUT_LENGTHS, TARGET_LENGTHS))
    for r, (value, tape_grad, jax_grad) in zip(REDUCTIONS, got):
        want, want_grad = theirs(r, zero_infinity)
        same(value, want)
        same(tape_grad, want_grad)
        if zero_infinity:
            same(jax_grad, want_grad)


def test_concatenated_targets_and_unbatched_input():
    flat = np.concatenate([row[:n] for row, n in zip(TARGETS, TARGET_LENGTHS)])
    x = jnp.asarray(LOGITS)
    lp = jax.nn.log_softmax(x[:, 1], -1)
    got = jax.jit(lambda v, u: (ours(v, "none", True, targets=flat),
                                T.ctc_loss(u, TARGETS[1, :2], 5, 2, reduction="none")))(x, lp)
    same(got[0], theirs("none", True)[0])
    want = torch.nn.functional.ctc_loss(torch.tensor(np.asarray(lp)),
                                        torch.tensor(TARGETS[1, :2]), torch.tensor(5),
                                        torch.tensor(2), reduction="none")
    assert got[1].shape == () and np.isclose(float(got[1]), float(want), atol=1e-5)


def test_log_probs_gradient_differs_from_torch_by_exp_log_probs():
    """funcdl gives d loss / d log_probs (what jax.grad gives); torch gives the logits' gradient,
    exp(log_probs) - posterior, on every frame within the input length."""
    lp = jax.nn.log_softmax(jnp.asarray(LOGITS), 2)
    args = (TARGETS, INPUT_LENGTHS, TARGET_LENGTHS)
    def loss(v):
        return T.ctc_loss(v, *args, reduction="sum", zero_infinity=True)

    g, ref = jax.jit(lambda v: (T.grad(loss)(v), jax.grad(loss)(v)))(lp)
    same(g, ref)
    x = torch.tensor(np.asarray(lp), requires_grad=True)
    torch.nn.functional.ctc_loss(x, *(torch.tensor(a) for a in args), reduction="sum",
                                 zero_infinity=True).backward()
    valid = (np.arange(6)[:, None] < INPUT_LENGTHS[None]) & (np.array([1, 1, 1, 0]) > 0)[None]
    same(np.asarray(g) + np.exp(np.asarray(lp)) * valid[..., None], x.grad.numpy())


def test_second_derivatives_match_jax():
    """A Hessian-vector product by reverse over reverse: the recorded backward (scans itself)
    differentiated again. (The tangent rule is checked by the registry's jvp tests.)"""
    x = jnp.asarray(LOGITS[:4, :2, :3])
    t = jnp.asarray(RNG.normal(size=x.shape), jnp.float32)
    args = (np.array([[1, 1], [2, 1]]), np.array([4, 3]), np.array([2, 1]))

    def loss(v):
        return T.ctc_loss(T.log_softmax(v, 2), *args, reduction="mean")

    hvp = jax.jit(lambda v: jax.jvp(jax.grad(loss), (v,), (t,))[1])(x)
    same(jax.jit(T.grad(lambda v: T.sum(T.mul(T.grad(loss)(v), t))))(x), hvp, 1e-4)


BAD = [
    ("input length above T", dict(input_lengths=[7, 5, 3, 3])),
    ("negative input length", dict(input_lengths=[-1, 5, 3, 3])),
    ("negative target length", dict(target_lengths=[-1, 2, 0, 3])),
    ("target length above S", dict(target_lengths=[4, 2, 0, 3])),
    ("blank out of range", dict(blank=5)),
    ("lengths of another batch", dict(input_lengths=[6, 5])),
    ("3-D targets", dict(targets=TARGETS[None])),
    ("short concatenated targets", dict(targets=np.array([1, 1, 2, 3]))),
    ("bad reduction", dict(reduction="avg")),
]


@pytest.mark.parametrize("kwargs", [k for _, k in BAD], ids=[n for n, _ in BAD])
def test_errors_are_torchs(kwargs):
    args = dict(targets=TARGETS, input_lengths=INPUT_LENGTHS, target_lengths=TARGET_LENGTHS)
    args.update(kwargs)
    lp = jax.nn.log_softmax(jnp.asarray(LOGITS), 2)
    with pytest.raises(Exception) as theirs_err:
        torch.nn.functional.ctc_loss(
            torch.tensor(np.asarray(lp)),
            *(torch.tensor(np.asarray(args.pop(k))) for k in ("targets", "input_lengths",
                                                               "target_lengths")), **args)
    args = dict(targets=TARGETS, input_lengths=INPUT_LENGTHS, target_lengths=TARGET_LENGTHS)
    args.update(kwargs)
    with pytest.raises(type(theirs_err.value)) as ours_err:
        T.ctc_loss(lp, **args)
    assert str(ours_err.value) == str(theirs_err.value)
