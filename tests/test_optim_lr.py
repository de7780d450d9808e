"""Learning rates: get_lr/set_lr, schedules vs torch's schedulers, ReduceLROnPlateau vs torch's,
and argument checking in torch's words."""

from __future__ import annotations

import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from funcdl import optim

PARAMS = {"w": jnp.ones((3,)), "b": jnp.zeros(())}
GRADS = {"w": jnp.array([1.0, -2.0, 3.0]), "b": jnp.array(0.5)}


def torch_lrs(make_sched, steps: int, lr: float) -> list[float]:
    """The lr torch's scheduler gives the optimizer step n, for n = 0 .. steps-1."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = make_sched(opt)
    lrs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SequentialLR's internal step(0) deprecation warning
        for _ in range(steps):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
    return lrs


# --- get_lr / set_lr ------------------------------------------------------------------------------


def test_set_lr_changes_the_next_update_and_is_pure():
    opt = optim.sgd(0.1)
    state = opt.init(PARAMS)
    new = optim.set_lr(state, 0.5)
    assert optim.get_lr(state) == 0.1 and optim.get_lr(new) == 0.5
    updates, _ = opt.update(GRADS, new, PARAMS)
    np.testing.assert_array_equal(updates["w"], [-0.5, 1.0, -1.5])  # -lr * grad, by hand


def test_set_lr_does_not_recompile_a_jitted_step():
    opt = optim.adamw(1e-3)

    @jax.jit
    def step(params, state):
        updates, state = opt.update(GRADS, state, params)
        return optax.apply_updates(params, updates), state

    params, state = step(PARAMS, opt.init(PARAMS))
    params, state = step(params, optim.set_lr(state, 1e-4))
    assert step._cache_size() == 1
    assert optim.get_lr(state) == 1e-4


def test_get_lr_finds_the_lr_through_chains_and_wrappers():
    opt = optim.accumulate(optax.chain(optim.clip_grad_norm(1.0), optim.rmsprop(0.02)), 2)
    state = opt.init(PARAMS)
    assert optim.get_lr(state) == 0.02
    assert optim.get_lr(optim.set_lr(state, 0.003)) == 0.003


def test_get_lr_and_set_lr_on_an_nnx_optimizer():
    from flax import nnx

    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optim.sgd(0.1), wrt=nnx.Param)
    assert optim.get_lr(optimizer.opt_state) == 0.1
    optimizer.opt_state = optim.set_lr(optimizer.opt_state, 0.5)
    before = np.asarray(model.kernel[...])
    grads = jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param))
    optimizer.update(model, grads)
    np.testing.assert_allclose(before - np.asarray(model.kernel[...]), 0.5)


def test_get_lr_of_a_schedule_is_the_value_the_last_update_used():
    schedule = optim.step_decay(1.0, step_size=2, gamma=0.5)
    opt = optim.sgd(schedule)
    state = opt.init(PARAMS)
    seen = [optim.get_lr(state)]
    for _ in range(5):
        _, state = opt.update(GRADS, state, PARAMS)
        seen.append(optim.get_lr(state))
    assert seen == [1.0, 1.0, 1.0, 0.5, 0.5, 0.25]  # schedule(0), schedule(0..4)


def test_set_lr_refuses_bad_values_and_foreign_states():
    state = optim.sgd(0.1).init(PARAMS)
    with pytest.raises(ValueError, match=r"Invalid learning rate: -1.0"):
        optim.set_lr(state, -1.0)
    with pytest.raises(ValueError, match="schedule"):
        optim.set_lr(optim.sgd(optim.step_decay(0.1, 10)).init(PARAMS), 0.01)
    with pytest.raises(ValueError, match="no learning rate"):
        optim.get_lr(optax.adam(1e-3).init(PARAMS))
    two = optax.chain(optim.sgd(0.1), optim.sgd(0.2)).init(PARAMS)
    with pytest.raises(ValueError, match="2 learning rates"):
        optim.get_lr(two)


# --- schedules ------------------------------------------------------------------------------------


def lrs_of(schedule, steps: int) -> np.ndarray:
    return np.asarray(jax.vmap(schedule)(jnp.arange(steps)))


def test_step_decay_matches_torch_steplr():
    want = torch_lrs(lambda o: torch.optim.lr_scheduler.StepLR(o, 7, gamma=0.3), 40, lr=0.5)
    np.testing.assert_allclose(lrs_of(optim.step_decay(0.5, 7, gamma=0.3), 40), want, rtol=1e-6)


@pytest.mark.parametrize("warmup, final_lr", [(10, 0.0), (5, 1e-3), (1, 2e-3)])
def test_warmup_cosine_matches_torch_linear_then_cosine(warmup, final_lr):
    peak, total, start = 0.01, 60, 0.2

    def sched(o):
        lin = torch.optim.lr_scheduler.LinearLR(o, start_factor=start, total_iters=warmup)
        cos = torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total - warmup, eta_min=final_lr)
        return torch.optim.lr_scheduler.SequentialLR(o, [lin, cos], milestones=[warmup])

    want = torch_lrs(sched, total + 1, lr=peak)
    schedule = optim.warmup_cosine(peak, warmup, total, final_lr, init_lr=start * peak)
    got = lrs_of(schedule, total + 1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * peak)


def test_warmup_cosine_by_hand():
    got = lrs_of(optim.warmup_cosine(1.0, 4, 8, final_lr=0.1), 12)
    cosine = [0.1 + 0.9 * (1 + np.cos(np.pi * k / 4)) / 2 for k in range(5)]
    want = [0.0, 0.25, 0.5, 0.75, *cosine, 0.1, 0.1, 0.1]  # held at final_lr after total_steps
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("call, message", [
    (lambda: optim.warmup_cosine(0.1, 10, 10), "total_steps .10. must exceed warmup_steps .10."),
    (lambda: optim.warmup_cosine(0.1, -1, 10), "warmup_steps must be a non-negative integer"),
    (lambda: optim.warmup_cosine(0.1, 2, 10, final_lr=0.2), "final_lr <= peak_lr"),
    (lambda: optim.step_decay(0.1, 0), "step_size must be a positive integer"),
    (lambda: optim.step_decay(0.1, 2.5), "step_size must be a positive integer"),
    (lambda: optim.step_decay(-0.1, 2), "Invalid learning rate: -0.1"),
])
def test_schedule_arguments_are_checked(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --- ReduceLROnPlateau ----------------------------------------------------------------------------

_rng = np.random.default_rng(1)
# Improves, plateaus with noise, improves a little (below / above threshold), plateaus again.
METRICS = [*np.linspace(2.0, 1.0, 8), *(1.0 + 0.01 * _rng.random(12)), 0.99995, 0.9, 0.9, 0.9,
           *(0.9 + 0.001 * _rng.random(25)), float("nan"), 0.5, 0.5]

PLATEAU_OPTIONS = [
    dict(),
    dict(patience=2, factor=0.5),
    dict(patience=1, factor=0.5, cooldown=3, min_lr=0.02),
    dict(patience=2, threshold=0.05, threshold_mode="abs", factor=0.3),
    dict(mode="max", patience=3, threshold=1e-3),
    # eps=0.005 stops the reductions once 10% of the lr is under 0.005 (lr about 0.048).
    dict(mode="max", patience=0, threshold=0.01, threshold_mode="abs", factor=0.9, eps=0.005),
]


def run_torch_plateau(options: dict, metrics, lr: float = 0.1):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **options)
    history = []
    for m in metrics:
        sched.step(m)
        history.append((opt.param_groups[0]["lr"], sched.num_bad_epochs, sched.cooldown_counter))
    return history


def run_plateau(plateau, state, metrics):
    history = []
    for m in metrics:
        state = plateau.step(jnp.float32(m) if np.isnan(m) else m, state)
        history.append((optim.get_lr(state), plateau.num_bad_epochs, plateau.cooldown_counter))
    return history, state


def assert_same_history(got, want):
    assert [g[1:] for g in got] == [w[1:] for w in want]
    np.testing.assert_allclose([g[0] for g in got], [w[0] for w in want], rtol=1e-6)


@pytest.mark.parametrize("options", PLATEAU_OPTIONS, ids=str)
def test_plateau_matches_torch(options):
    metrics = [-m for m in METRICS] if options.get("mode") == "max" else METRICS
    want = run_torch_plateau(options, metrics)
    got, _ = run_plateau(optim.ReduceLROnPlateau(**options), optim.adam(0.1).init(PARAMS), metrics)
    assert_same_history(got, want)
    assert want[-1][0] < 0.1, "the sequence never triggered a reduction"


def test_plateau_resumes_from_state_dict():
    options = dict(patience=1, factor=0.5, cooldown=2)
    want = run_torch_plateau(options, METRICS)
    half = len(METRICS) // 2
    first = optim.ReduceLROnPlateau(**options)
    got, state = run_plateau(first, optim.sgd(0.1).init(PARAMS), METRICS[:half])
    saved = json.loads(json.dumps(first.state_dict()))  # must survive a JSON round trip
    second = optim.ReduceLROnPlateau()
    second.load_state_dict(saved)
    rest, _ = run_plateau(second, state, METRICS[half:])
    assert_same_history(got + rest, want)


def test_plateau_refuses_a_scheduled_lr():
    state = optim.sgd(optim.step_decay(0.1, 5)).init(PARAMS)
    with pytest.raises(ValueError, match="constant lr"):
        optim.ReduceLROnPlateau().step(1.0, state)


@pytest.mark.parametrize("options, message", [
    (dict(factor=1.0), r"Factor should be < 1.0."),
    (dict(mode="low"), "mode low is unknown"),
    (dict(threshold_mode="relative"), "threshold mode relative is unknown"),
])
def test_plateau_arguments_are_checked_like_torch(options, message):
    with pytest.raises(ValueError, match=message):
        torch.optim.lr_scheduler.ReduceLROnPlateau(
            torch.optim.SGD([torch.zeros(1, requires_grad=True)]), **options)
    with pytest.raises(ValueError, match=message):
        optim.ReduceLROnPlateau(**options)


# --- optimizer argument checking ------------------------------------------------------------------

BAD_OPTIONS = [
    ("sgd", "SGD", dict(lr=-1.0)),
    ("sgd", "SGD", dict(lr=0.1, momentum=-0.5)),
    ("sgd", "SGD", dict(lr=0.1, weight_decay=-1)),
    ("sgd", "SGD", dict(lr=0.1, nesterov=True)),
    ("sgd", "SGD", dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True)),
    ("adagrad", "Adagrad", dict(lr_decay=-1)),
    ("adagrad", "Adagrad", dict(initial_accumulator_value=-0.1)),
    ("adagrad", "Adagrad", dict(eps=-1e-10)),
    ("rmsprop", "RMSprop", dict(alpha=-0.5)),
    ("rmsprop", "RMSprop", dict(momentum=-0.9)),
    ("rmsprop", "RMSprop", dict(eps=-1.0)),
    ("adam", "Adam", dict(betas=(1.0, 0.999))),
    ("adam", "Adam", dict(betas=(0.9, -0.1))),
    ("adam", "Adam", dict(eps=-1.0)),
    ("adamw", "AdamW", dict(weight_decay=-0.01)),
    ("adamw", "AdamW", dict(lr=-0.001)),
]


@pytest.mark.parametrize("name, torch_name, options", BAD_OPTIONS,
                         ids=[f"{n}{o}" for n, _, o in BAD_OPTIONS])
def test_bad_options_raise_torchs_error(name, torch_name, options):
    with pytest.raises(ValueError) as theirs:
        getattr(torch.optim, torch_name)([torch.zeros(1, requires_grad=True)], **options)
    with pytest.raises(ValueError) as ours:
        getattr(optim, name)(**options)
    assert str(ours.value) == str(theirs.value)


def test_unknown_option_lists_the_valid_names():
    # The course notes write Adam(..., beta=(0.9, 0.999)); torch rejects it without a hint.
    with pytest.raises(TypeError, match=r"adam\(\) got an unexpected keyword argument 'beta'. "
                                        r"Did you mean 'betas'\? Valid options: lr, betas, eps"):
        optim.adam(beta=(0.9, 0.999))
    with pytest.raises(TypeError, match="selects a PyTorch kernel.*Valid options: lr, momentum"):
        optim.sgd(0.1, foreach=True)


def test_lr_must_be_a_number_or_a_schedule():
    with pytest.raises(TypeError, match="lr must be a number or a schedule"):
        optim.adam("0.001")
