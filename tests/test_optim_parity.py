"""funcdl.optim against torch.optim: 100-step trajectories of every optimizer and option.

Both sides are fed the SAME gradient at every step: a float64 numpy gradient of a small 2-layer
tanh MLP, evaluated at each side's own current float32 parameters and rounded to float32. Any gap
between the trajectories therefore comes from the update rules, not from two autodiff engines.
`test_end_to_end_with_each_framework_autodiff` also runs jax.grad against torch autograd.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from funcdl import optim

STEPS = 100
RTOL = 1e-5
NAMES = ("w1", "b1", "w2", "b2")

_rng = np.random.default_rng(0)
X = _rng.standard_normal((32, 5))
Y = _rng.standard_normal((32, 3))
P0 = {
    "w1": (0.5 * _rng.standard_normal((5, 8))).astype(np.float32),
    "b1": (0.1 * _rng.standard_normal(8)).astype(np.float32),
    "w2": (0.5 * _rng.standard_normal((8, 3))).astype(np.float32),
    "b2": np.zeros(3, np.float32),
}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny tensors: torch's thread pool only adds contention (the machine is shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def loss_jax(p, x=X, y=Y):
    h = jnp.tanh(x @ p["w1"] + p["b1"])
    return 0.5 * jnp.mean(jnp.sum((h @ p["w2"] + p["b2"] - y) ** 2, axis=1))


def numpy_grad(p: dict[str, np.ndarray], sign: float = 1.0) -> dict[str, np.ndarray]:
    """Hand-written float64 backprop of `loss_jax` (times ``sign``), in the dtype of ``p``."""
    w1, b1, w2, b2 = (p[k].astype(np.float64) for k in NAMES)
    h = np.tanh(X @ w1 + b1)
    d_out = sign * (h @ w2 + b2 - Y) / len(X)
    d_pre = (d_out @ w2.T) * (1 - h**2)
    grads = {"w1": X.T @ d_pre, "b1": d_pre.sum(0), "w2": h.T @ d_out, "b2": d_out.sum(0)}
    return {k: v.astype(p[k].dtype) for k, v in grads.items()}


def test_numpy_gradient_matches_jax_grad():
    want = jax.grad(loss_jax)(jax.tree.map(jnp.asarray, P0), X.astype(np.float32),
                              Y.astype(np.float32))
    got = numpy_grad(P0)
    for k in NAMES:
        np.testing.assert_allclose(got[k], np.asarray(want[k]), rtol=1e-5, atol=1e-6)


def run_funcdl(opt: optax.GradientTransformation, sign: float = 1.0,
               dtype=np.float32) -> dict[str, np.ndarray]:
    @jax.jit
    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    params = {k: jnp.asarray(v, dtype) for k, v in P0.items()}
    state = opt.init(params)
    for _ in range(STEPS):
        grads = numpy_grad(jax.tree.map(np.asarray, params), sign)
        params, state = step(params, state, grads)
    return jax.tree.map(np.asarray, params)


def run_torch(make_opt, sign: float = 1.0, make_sched=None,
              dtype=np.float32) -> dict[str, np.ndarray]:
    params = {k: torch.tensor(v.astype(dtype), requires_grad=True) for k, v in P0.items()}
    opt = make_opt(list(params.values()))
    sched = make_sched(opt) if make_sched else None
    for _ in range(STEPS):
        grads = numpy_grad({k: v.detach().numpy() for k, v in params.items()}, sign)
        for k, p in params.items():
            p.grad = torch.from_numpy(grads[k])
        opt.step()
        if sched is not None:
            sched.step()
    return {k: v.detach().numpy() for k, v in params.items()}


def max_rel_error(got: dict, want: dict) -> float:
    """Largest |got - want| over each parameter tensor, relative to that tensor's largest |want|.

    Relative to the tensor's scale rather than entry by entry: an entry that happens to pass near
    zero would otherwise turn float32 rounding noise into a large "relative" error.
    """
    return max(float(np.max(np.abs(got[k] - want[k])) / np.max(np.abs(want[k]))) for k in NAMES)


def assert_trajectories_match(got: dict, want: dict, rtol: float = RTOL) -> None:
    moved = max(float(np.max(np.abs(want[k] - P0[k]))) for k in NAMES)
    assert moved > 1e-3, "the reference run barely moved: the comparison would prove nothing"
    err = max_rel_error(got, want)
    assert err < rtol, f"max relative error {err:.3g} after {STEPS} steps"


# (funcdl factory, torch class, options): every option of every optimizer, most of them alone and
# then together (kept to 17 cases: each costs two XLA compilations).
CASES = [
    (optim.sgd, torch.optim.SGD, dict(lr=0.1)),
    (optim.sgd, torch.optim.SGD, dict(lr=0.05, momentum=0.9)),
    (optim.sgd, torch.optim.SGD, dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.05,
                                      maximize=True)),
    (optim.sgd, torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    (optim.adagrad, torch.optim.Adagrad, dict(lr=0.1)),
    (optim.adagrad, torch.optim.Adagrad, dict(lr=0.1, lr_decay=0.05, initial_accumulator_value=0.5,
                                              weight_decay=0.05, eps=1e-3, maximize=True)),
    (optim.rmsprop, torch.optim.RMSprop, dict(lr=0.01)),
    (optim.rmsprop, torch.optim.RMSprop, dict(lr=0.01, centered=True)),
    (optim.rmsprop, torch.optim.RMSprop, dict(lr=0.001, momentum=0.9)),
    (optim.rmsprop, torch.optim.RMSprop, dict(lr=5e-4, alpha=0.9, eps=1e-3, centered=True,
                                              momentum=0.5, weight_decay=0.05, maximize=True)),
    (optim.adam, torch.optim.Adam, dict(lr=0.01)),
    (optim.adam, torch.optim.Adam, dict(lr=0.01, amsgrad=True, weight_decay=0.05)),
    (optim.adam, torch.optim.Adam, dict(lr=0.01, betas=(0.0, 0.9), eps=1e-6, amsgrad=True,
                                        maximize=True)),
    (optim.adam, torch.optim.Adam, dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
    (optim.adamw, torch.optim.AdamW, dict(lr=0.01)),
    (optim.adamw, torch.optim.AdamW, dict(lr=0.01, weight_decay=0.5, amsgrad=True)),
    (optim.adamw, torch.optim.AdamW, dict(lr=0.01, betas=(0.7, 0.95), eps=1e-6, maximize=True)),
]


def case_id(case) -> str:
    fn, _, opts = case
    return fn.__name__ + "(" + ",".join(f"{k}={v}" for k, v in opts.items()) + ")"


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_trajectory_matches_torch(case):
    fn, torch_cls, opts = case
    # With maximize, both sides climb -loss, so the run still converges.
    sign = -1.0 if opts.get("maximize") else 1.0
    got = run_funcdl(fn(**opts), sign)
    want = run_torch(lambda ps: torch_cls(ps, **opts), sign)
    assert_trajectories_match(got, want)
    # In float64 rounding noise vanishes, so any difference left would be a rule difference.
    with jax.enable_x64(True):
        got = run_funcdl(fn(**opts), sign, np.float64)
    want = run_torch(lambda ps: torch_cls(ps, **opts), sign, dtype=np.float64)
    assert_trajectories_match(got, want, rtol=1e-10)


def test_the_comparison_catches_optax_rmsprop_eps_inside_the_root():
    """optax.rmsprop divides by sqrt(nu + eps), torch by sqrt(nu) + eps (optax#532): 10% apart."""
    want = run_torch(lambda ps: torch.optim.RMSprop(ps, lr=0.01))
    assert max_rel_error(run_funcdl(optax.rmsprop(0.01, decay=0.99, eps=1e-8)), want) > 1e-2
    assert max_rel_error(run_funcdl(optim.rmsprop(0.01)), want) < RTOL


@pytest.mark.parametrize("fn, torch_cls", [
    (optim.sgd, torch.optim.SGD), (optim.adagrad, torch.optim.Adagrad),
    (optim.rmsprop, torch.optim.RMSprop), (optim.adam, torch.optim.Adam),
    (optim.adamw, torch.optim.AdamW)])
def test_names_and_defaults_are_torchs(fn, torch_cls):
    ours = inspect.signature(fn).parameters
    theirs = inspect.signature(torch_cls).parameters
    torch_only = {"params", "foreach", "fused", "capturable", "differentiable"}
    assert set(ours) == set(theirs) - torch_only
    for name, param in ours.items():
        assert param.default == theirs[name].default, name


def test_step_decay_schedule_matches_torch_steplr():
    got = run_funcdl(optim.sgd(optim.step_decay(0.2, step_size=30, gamma=0.5), momentum=0.9))
    want = run_torch(lambda ps: torch.optim.SGD(ps, lr=0.2, momentum=0.9),
                     make_sched=lambda o: torch.optim.lr_scheduler.StepLR(o, 30, gamma=0.5))
    assert_trajectories_match(got, want)


def test_warmup_cosine_schedule_matches_torch_sequential_lr():
    peak, warmup, total = 0.02, 10, 80

    def torch_sched(o):
        lin = torch.optim.lr_scheduler.LinearLR(o, start_factor=0.1, total_iters=warmup)
        cos = torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total - warmup, eta_min=1e-3)
        return torch.optim.lr_scheduler.SequentialLR(o, [lin, cos], milestones=[warmup])

    sched = optim.warmup_cosine(peak, warmup, total, final_lr=1e-3, init_lr=0.1 * peak)
    # torch's cosine climbs again after T_max; stop the comparison at total_steps.
    global STEPS
    saved, STEPS = STEPS, total
    try:
        got = run_funcdl(optim.adam(sched))
        want = run_torch(lambda ps: torch.optim.Adam(ps, lr=peak), make_sched=torch_sched)
    finally:
        STEPS = saved
    assert_trajectories_match(got, want)


def test_end_to_end_with_each_framework_autodiff():
    """jax.grad + funcdl.optim.adam vs torch autograd + torch.optim.Adam, no shared gradients."""
    opt = optim.adam(0.01, weight_decay=0.01)

    @jax.jit
    def step(params, state):
        grads = jax.grad(loss_jax)(params, jnp.asarray(X, jnp.float32), jnp.asarray(Y, jnp.float32))
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    params = jax.tree.map(jnp.asarray, P0)
    state = opt.init(params)
    for _ in range(STEPS):
        params, state = step(params, state)

    tp = {k: torch.tensor(v, requires_grad=True) for k, v in P0.items()}
    topt = torch.optim.Adam(list(tp.values()), lr=0.01, weight_decay=0.01)
    x, y = torch.tensor(X, dtype=torch.float32), torch.tensor(Y, dtype=torch.float32)
    for _ in range(STEPS):
        topt.zero_grad()
        h = torch.tanh(x @ tp["w1"] + tp["b1"])
        (0.5 * ((h @ tp["w2"] + tp["b2"] - y) ** 2).sum(1).mean()).backward()
        topt.step()
    got = jax.tree.map(np.asarray, params)
    assert_trajectories_match(got, {k: v.detach().numpy() for k, v in tp.items()})
