"""grad="tape" on a real model against a reference written here with ``jax.value_and_grad`` and
torch's momentum rule by hand, step for step; and the slides' manual training loop
(tape gradients, ``W -= eta * W.grad``, ``zero_()``) and ``fit`` with ``funcdl.optim.sgd``, each
against the slides' backpropagation worked by hand in float64 numpy."""

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


LR, MOMENTUM = 0.1, 0.9


def reference_trajectory(batches):
    """Plain ``jax.value_and_grad`` and torch's SGD momentum rule (``buf = momentum * buf + g``,
    the first buffer the gradient; ``p -= lr * buf``), neither funcdl.train nor funcdl.optim; the
    dropout RNG counters carried from step to step as the train step carries them."""
    graphdef, params, rest = nnx.split(classifier(), nnx.Param, ...)

    @jax.jit
    def step(params, rest, buf, batch):
        def loss(p):
            model = nnx.merge(graphdef, p, jax.tree.map(lambda x: x, rest))
            return ce(model, batch), nnx.split(model, nnx.Param, ...)[2]

        (value, rest), g = jax.value_and_grad(loss, has_aux=True)(params)
        buf = jax.tree.map(lambda b, gi: MOMENTUM * b + gi, buf, g)
        return jax.tree.map(lambda p, b: p - LR * b, params, buf), rest, buf, value

    # a zero buffer makes the first one exactly the gradient, as torch's first step does
    trajectory, buf = [], jax.tree.map(jnp.zeros_like, params)
    for b in batches:
        params, rest, buf, value = step(params, rest, buf, b)
        trajectory.append((float(value), [np.asarray(x) for x in jax.tree.leaves(params)]))
    return trajectory


def test_tape_grads_follow_jax_grad_and_a_hand_written_sgd_step_for_step():
    rng = np.random.default_rng(0)
    batches = [(rng.integers(0, 20, (8, 8)).astype(np.int32),
                rng.integers(0, 3, 8).astype(np.int32)) for _ in range(STEPS)]
    # SGD with momentum: Adam's division by sqrt(v) turns float32 rounding in near-zero
    # gradients into lr-sized steps, which would hide what is compared here
    opt = optim.sgd(lr=LR, momentum=MOMENTUM)
    graphdef, state = init_state(classifier(), opt)
    step = make_train_step(graphdef, ce, opt, grad="tape")
    worst = 0.0
    for b, (expected_loss, expected) in zip(batches, reference_trajectory(batches)):
        state, loss, _, _ = step(state, b)
        np.testing.assert_allclose(float(loss), expected_loss, rtol=1e-5)
        got = [np.asarray(x) for x in jax.tree.leaves(state.params)]
        worst = max([worst] + [float(np.max(np.abs(a - e))) for a, e in zip(got, expected)])
    print(f"max |tape - reference| over {STEPS} sgd steps: {worst:.3g}")
    assert worst < 1e-5
    # the run moved: the comparison is not between two untouched models
    first = np.asarray(jax.tree.leaves(nnx.state(classifier(), nnx.Param))[0])
    assert float(np.max(np.abs(got[0] - first))) > 1e-3


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


def backprop_by_hand(X, y):
    """The slides' training loop with the chain rule worked by hand, in float64: per epoch the
    gradient of ``sum_i (1/N) (y_hat_i - y_i)^2`` (all samples as columns at once), then
    ``p -= eta * grad``."""
    p = {k: v.astype(np.float64) for k, v in initial().items()}

    def sigmoid(z):
        return 1 / (1 + np.exp(-z))

    xt = X.T.astype(np.float64)
    for _ in range(EPOCHS):
        h1 = sigmoid(p["W1"] @ xt + p["b1"])
        h2 = sigmoid(p["W2"] @ h1 + p["b2"])
        y_hat = sigmoid(p["W3"] @ h2 + p["b3"])
        d3 = 2 / N * (y_hat - y) * y_hat * (1 - y_hat)  # dL/d(pre-activation), layer 3
        d2 = (p["W3"].T @ d3) * h2 * (1 - h2)
        d1 = (p["W2"].T @ d2) * h1 * (1 - h1)
        grads = {"W3": d3 @ h2.T, "b3": d3.sum(1, keepdims=True),
                 "W2": d2 @ h1.T, "b2": d2.sum(1, keepdims=True),
                 "W1": d1 @ xt.T, "b1": d1.sum(1, keepdims=True)}
        p = {k: p[k] - ETA * grads[k] for k in SHAPES}
    return p


def test_slides_manual_loop_and_fit_with_sgd_match_backprop_by_hand():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(N, 2)).astype(np.float32)
    y = (X[:, 0] * X[:, 1] > 0).astype(np.float32)
    expected = backprop_by_hand(X, y)

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
        np.testing.assert_allclose(np.asarray(params[k].data), expected[k], rtol=1e-5,
                                   atol=1e-6, err_msg=f"manual loop {k}")
        np.testing.assert_allclose(np.asarray(getattr(model, k)[...]), expected[k], rtol=1e-5,
                                   atol=1e-6, err_msg=f"fit {k}")
    assert not np.allclose(expected["W1"], initial()["W1"])
