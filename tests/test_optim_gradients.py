"""clip_grad_norm against torch.nn.utils.clip_grad_norm_; accumulate against one big batch and
optax.MultiSteps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from funcdl import optim

SHAPES = {"a": (3, 4), "b": (4,), "c": (2, 2, 2)}


def random_grads(seed: int, scale: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (scale * rng.standard_normal(s)).astype(np.float32) for k, s in SHAPES.items()}


@pytest.fixture(scope="module")
def clip_step():
    cache = {}

    def get(max_norm, norm_type):
        key = (max_norm, norm_type)
        if key not in cache:
            tx = optim.clip_grad_norm(max_norm, norm_type)
            cache[key] = tx, jax.jit(tx.update)
        return cache[key]

    return get


@given(seed=st.integers(0, 2**16), scale=st.sampled_from([1e-3, 0.1, 1.0, 10.0]),
       max_norm=st.sampled_from([0.5, 1.0, 5.0]), norm_type=st.sampled_from([2.0, 1.0, np.inf]))
def test_clip_grad_norm_matches_torch(clip_step, seed, scale, max_norm, norm_type):
    grads = random_grads(seed, scale)
    tensors = {k: torch.tensor(v) for k, v in grads.items()}
    for t in tensors.values():
        t.grad = t.clone()
    total = torch.nn.utils.clip_grad_norm_(list(tensors.values()), max_norm, norm_type=norm_type)

    tx, update = clip_step(max_norm, norm_type)
    clipped, state = update(grads, tx.init(grads))
    for k in SHAPES:
        np.testing.assert_allclose(clipped[k], tensors[k].grad.numpy(), rtol=2e-6, atol=1e-12)
    np.testing.assert_allclose(state.grad_norm, total.item(), rtol=2e-6)


def test_clip_grad_norm_by_hand():
    tx = optim.clip_grad_norm(1.0)
    clipped, state = tx.update({"x": jnp.array([3.0, 4.0])}, tx.init(None))
    assert float(state.grad_norm) == 5.0
    np.testing.assert_allclose(clipped["x"], np.array([3.0, 4.0]) / (5 + 1e-6), rtol=1e-7)
    small, _ = tx.update({"x": jnp.array([0.3, 0.4])}, tx.init(None))
    np.testing.assert_array_equal(small["x"], np.float32([0.3, 0.4]))  # coefficient clamped to 1


@pytest.mark.parametrize("max_norm", [0.0, -1.0, float("inf")])
def test_clip_grad_norm_refuses_bad_max_norm(max_norm):
    with pytest.raises(ValueError, match="max_norm must be a positive finite number"):
        optim.clip_grad_norm(max_norm)


# --- accumulation ---------------------------------------------------------------------------------

K, MICRO = 4, 8
_rng = np.random.default_rng(0)
X = _rng.standard_normal((6, K * MICRO, 5)).astype(np.float32)  # 6 big batches of K * MICRO rows
Y = (X @ np.arange(1.0, 6.0) + 0.1 * _rng.standard_normal((6, K * MICRO))).astype(np.float32)
W0 = {"w": jnp.zeros(5), "b": jnp.zeros(())}


def mse(p, x, y):
    return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)


grad_fn = jax.jit(jax.grad(mse))


def train(opt, batches):
    step = jax.jit(opt.update)
    params, state = W0, opt.init(W0)
    zero_updates = 0
    for x, y in batches:
        updates, state = step(grad_fn(params, x, y), state, params)
        zero_updates += all(not np.any(u) for u in jax.tree.leaves(updates))
        params = optax.apply_updates(params, updates)
    return params, state, zero_updates


def micro_batches():
    return [(x[i * MICRO:(i + 1) * MICRO], y[i * MICRO:(i + 1) * MICRO])
            for x, y in zip(X, Y) for i in range(K)]


@pytest.mark.parametrize("make", [lambda: optim.sgd(0.05, momentum=0.9),
                                  lambda: optim.adam(0.1, amsgrad=True)], ids=["sgd", "adam"])
def test_accumulate_equals_one_big_batch(make):
    big, _, _ = train(make(), zip(X, Y))
    acc, state, zeros = train(optim.accumulate(make(), K), micro_batches())
    assert zeros == len(X) * (K - 1)  # zeros between the real updates
    assert int(state.mini_step) == 0
    for k in big:
        np.testing.assert_allclose(acc[k], big[k], rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(big["w"]).max()) > 0.5  # it trained


def test_accumulate_equals_optax_multisteps():
    ours, _, _ = train(optim.accumulate(optim.adamw(0.1), K), micro_batches())
    theirs, _, _ = train(optax.MultiSteps(optim.adamw(0.1), K).gradient_transformation(),
                         micro_batches())
    for k in ours:
        np.testing.assert_allclose(ours[k], theirs[k], rtol=1e-5, atol=1e-6)


def test_accumulate_advances_the_schedule_once_per_real_update():
    opt = optim.accumulate(optim.sgd(optim.step_decay(1.0, step_size=1, gamma=0.5)), 3)
    state = opt.init(W0)
    grads = {"w": jnp.ones(5), "b": jnp.ones(())}
    lrs = []
    for _ in range(7):
        _, state = opt.update(grads, state, W0)
        lrs.append(optim.get_lr(state))
    # The lr of the last real update: schedule(0) until the 6th call, then schedule(1).
    assert lrs == [1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5]


@pytest.mark.parametrize("every_k", [0, -2, 1.5, True])
def test_accumulate_refuses_bad_every_k(every_k):
    with pytest.raises(ValueError, match="every_k must be a positive integer"):
        optim.accumulate(optim.sgd(0.1), every_k)
