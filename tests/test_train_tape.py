"""grad="tape" against grad="jax" on a real model, and the slides' manual training loop (tape
gradients, ``W -= eta * W.grad``, ``zero_()``) against ``fit`` with ``funcdl.optim.sgd``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import funcdl.optim as optim
from funcdl import layers, tape
from funcdl.train import fit, init_state, make_train_step

STEPS = 6


def classifier():
    return layers.TransformerClassifier(
        vocab_size=20, num_classes=3, embed_dim=16, num_heads=2, ff_dim=32, num_layers=1,
        max_len=8, dropout=0.1, rngs=nnx.Rngs(0))


def ce(model, batch):
    ids, y = batch
    return tape.cross_entropy(model(ids), y)


def test_tape_grads_follow_jax_grads_step_for_step():
    rng = np.random.default_rng(0)
    batches = [(rng.integers(0, 20, (8, 8)).astype(np.int32),
                rng.integers(0, 3, 8).astype(np.int32)) for _ in range(STEPS)]
    # SGD with momentum: Adam's division by sqrt(v) turns float32 rounding in near-zero
    # gradients into lr-sized steps, which would hide what is compared here
    opt = optim.sgd(lr=0.1, momentum=0.9)
    runs = {}
    for grad in ("jax", "tape"):
        graphdef, state = init_state(classifier(), opt)
        step = make_train_step(graphdef, ce, opt, grad=grad)
        trajectory = []
        for b in batches:
            state, loss = step(state, b)
            leaves = [np.asarray(x) for x in jax.tree.leaves(state.params)]
            trajectory.append((float(loss), leaves))
        runs[grad] = trajectory
    worst = 0.0
    for (lj, pj), (lt, pt) in zip(runs["jax"], runs["tape"]):
        np.testing.assert_allclose(lt, lj, rtol=1e-5)
        worst = max([worst] + [float(np.max(np.abs(a - b))) for a, b in zip(pj, pt)])
    print(f"max |tape - jax| over {STEPS} sgd steps: {worst:.3g}")
    assert worst < 1e-5
    # the runs moved: the comparison is not between two untouched models
    assert float(np.max(np.abs(runs["jax"][-1][1][0] - runs["jax"][0][1][0]))) > 1e-3


# --- the slides' loop: y_hat = sigmoid(W3 sigmoid(W2 sigmoid(W1 x + b1) + b2) + b3) -----------

SHAPES = {"W1": (10, 2), "b1": (10, 1), "W2": (10, 10), "b2": (10, 1), "W3": (1, 10),
          "b3": (1, 1)}
ETA, EPOCHS, N = 0.5, 4, 24


def initial():
    rng = np.random.default_rng(1)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}


def forward(p, xt):
    """``xt`` holds samples as columns, as in the slides (``X[(i,), :].T``)."""
    h1 = tape.sigmoid(tape.matmul(p["W1"], xt) + p["b1"])
    h2 = tape.sigmoid(tape.matmul(p["W2"], h1) + p["b2"])
    return tape.sigmoid(tape.matmul(p["W3"], h2) + p["b3"])


class SlidesNet(nnx.Module):
    def __init__(self, init):
        for k, v in init.items():
            setattr(self, k, nnx.Param(jnp.asarray(v)))

    def __call__(self, x):
        return forward({k: getattr(self, k)[...] for k in SHAPES}, tape.transpose(x, 0, 1))


def test_slides_manual_loop_matches_fit_with_sgd():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(N, 2)).astype(np.float32)
    y = (X[:, 0] * X[:, 1] > 0).astype(np.float32)

    params = {k: tape.tensor(v, requires_grad=True) for k, v in initial().items()}
    for _ in range(EPOCHS):
        with tape.Tape():
            for i in range(N):  # one sample at a time; .grad accumulates over the epoch
                y_hat = forward(params, tape.transpose(tape.tensor(X[(i,), :]), 0, 1))
                L = (1 / N) * tape.pow(y_hat - y[i], 2)
                L.backward()
        with tape.no_grad():
            for p in params.values():
                p -= ETA * p.grad
        for p in params.values():
            p.grad.zero_()

    def mse(model, batch):
        xb, yb = batch
        return tape.mean(tape.pow(model(xb)[0] - yb, 2))

    model = SlidesNet(initial())
    fit(model, optim.sgd(lr=ETA), [(X, y)], mse, epochs=EPOCHS, grad="tape", progress=False)
    for k in SHAPES:
        np.testing.assert_allclose(np.asarray(getattr(model, k)[...]),
                                   np.asarray(params[k].data), rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.asarray(model.W1[...]), initial()["W1"])
