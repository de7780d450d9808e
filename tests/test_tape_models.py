"""Whole models differentiated by the tape and by jax.grad from one definition, the slides'
manual training loop against PyTorch, NNX modules, per-example gradients, and PyTorch parity of
the composite functions (losses, gelu, softplus, layer_norm)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

from funcdl import tape as T
from funcdl.check import compare_with_jax, leafwise_relative

# --- the slides' 784-100-50-20-1 ReLU MLP ------------------------------------------------------


def init_mlp(sizes, seed=0):
    keys = jax.random.split(jax.random.key(seed), len(sizes) - 1)
    return [{"W": jax.random.normal(k, (n_out, n_in)) * np.sqrt(2.0 / n_in),
             "b": jnp.full((n_out,), 0.01)}
            for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:])]


def mlp_loss(params, x, y):
    h = x
    for layer in params[:-1]:
        h = T.relu(T.linear(h, layer["W"], layer["b"]))
    logits = T.linear(h, params[-1]["W"], params[-1]["b"])
    return T.binary_cross_entropy_with_logits(T.squeeze(logits, -1), y)


@pytest.fixture(scope="module")
def mlp_batch():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(32, 784)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 2, size=32), jnp.float32)
    return init_mlp((784, 100, 50, 20, 1)), x, y


def test_slides_mlp_tape_equals_jax_grad(mlp_batch):
    params, x, y = mlp_batch
    assert compare_with_jax(mlp_loss, params, x, y, jit=False).leafwise < 1e-5  # op by op
    assert compare_with_jax(mlp_loss, params, x, y).leafwise < 1e-5


def test_per_example_grads_under_vmap(mlp_batch):
    params, x, y = mlp_batch
    params = init_mlp((784, 8, 1))
    xs, ys = x[:4, None], y[:4, None]
    ours = jax.vmap(T.grad(mlp_loss), in_axes=(None, 0, 0))(params, xs, ys)  # eager vmap
    ref = jax.jit(jax.vmap(jax.grad(mlp_loss), in_axes=(None, 0, 0)))(params, xs, ys)
    assert ours[0]["W"].shape == (4, 8, 784)
    assert leafwise_relative(ours, ref) < 1e-5


# --- the slides' manual training loop -----------------------------------------------------------


def slides_data():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(8, 2)).astype(np.float32)
    y = (X[:, 0] * X[:, 1] > 0).astype(np.float32)
    sizes = [(10, 2), (10, 1), (10, 10), (10, 1), (1, 10), (1, 1)]
    init = [rng.normal(size=s).astype(np.float32) for s in sizes]
    return X, y, init


def slides_epoch_loss(params, X, y, lib):
    """One epoch of the slides' per-sample forward pass; ``lib`` is funcdl.tape or torch."""
    W1, b1, W2, b2, W3, b3 = params
    for i in range(len(X)):
        a1 = lib.matmul(W1, X[(i,), :].T) + b1
        h1 = lib.sigmoid(a1)
        a2 = lib.matmul(W2, h1) + b2
        h2 = lib.sigmoid(a2)
        a3 = lib.matmul(W3, h2) + b3
        y_hat = lib.sigmoid(a3)
        L = (1 / 1000) * lib.pow((y_hat - y[i]), 2)
        yield L


def train(lib, epochs, eta=200.0):
    X, y, init = slides_data()
    if lib is T:
        params = [T.tensor(p, requires_grad=True) for p in init]
        X, y = jnp.asarray(X), jnp.asarray(y)
    else:
        params = [torch.tensor(p, requires_grad=True) for p in init]
        X, y = torch.tensor(X), torch.tensor(y)
    losses, first_grads = [], None
    for _ in range(epochs):
        acc_loss = 0.0
        for L in slides_epoch_loss(params, X, y, lib):
            acc_loss += L.detach().item()
            L.backward(torch.ones_like(L) if lib is torch else jnp.ones_like(L.data))
        losses.append(acc_loss)
        if first_grads is None:
            first_grads = [np.asarray(p.grad) for p in params]
        with lib.no_grad():
            for p in params:
                p -= eta * p.grad
        for p in params:
            p.grad.zero_()
    return losses, [np.asarray(p.detach()) for p in params], first_grads


def test_slides_training_loop_matches_torch_and_jax_grad():
    losses, params, grads = train(T, epochs=4)
    t_losses, t_params, _ = train(torch, epochs=4)
    assert losses[-1] < losses[0]  # it trains
    np.testing.assert_allclose(losses, t_losses, rtol=1e-5)
    for p, tp in zip(params, t_params):
        np.testing.assert_allclose(p, tp, rtol=1e-4, atol=1e-6)
    # the accumulated per-sample grads of epoch 1 are jax.grad of the summed loss
    X, y, init = slides_data()

    def epoch_loss(ps):
        return sum(T.sum(L) for L in slides_epoch_loss(ps, jnp.asarray(X), jnp.asarray(y), T))

    ref = jax.grad(epoch_loss)([jnp.asarray(p) for p in init])
    for g, r in zip(grads, ref):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-9)


# --- Flax NNX -----------------------------------------------------------------------------------


class TwoLayer(nnx.Module):
    """Two linear maps and a tanh, parameters as nnx.Param, written with funcdl.tape functions."""

    def __init__(self, n_in, n_hidden, n_out, *, rngs: nnx.Rngs):
        self.w1 = nnx.Param(jax.random.normal(rngs.params(), (n_hidden, n_in)) * 0.5)
        self.b1 = nnx.Param(jnp.zeros(n_hidden))
        self.w2 = nnx.Param(jax.random.normal(rngs.params(), (n_out, n_hidden)) * 0.5)
        self.b2 = nnx.Param(jnp.full((n_out,), 0.1))

    def __call__(self, x):
        h = T.tanh(T.linear(x, self.w1.get_value(), self.b1[...]))  # both accessors work
        return T.linear(h, self.w2, self.b2)  # so does passing the Variable itself


def test_nnx_module_tape_grad_equals_jax_grad():
    model = TwoLayer(3, 8, 2, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    x = jnp.linspace(-1, 1, 15).reshape(5, 3)
    target = jnp.array([0, 1, 1, 0, 1])

    def loss(params, x, target):
        m = nnx.merge(graphdef, params)
        return T.cross_entropy(m(x), target)

    ref = jax.jit(jax.grad(loss))(params, x, target)
    ours = T.grad(loss)(params, x, target)
    assert isinstance(ours, nnx.State)
    assert jax.tree.structure(ours) == jax.tree.structure(ref)
    assert leafwise_relative(ours, ref) < 1e-6
    assert leafwise_relative(jax.jit(T.grad(loss))(params, x, target), ref) < 1e-6


def test_transformer_encoder_layer_tape_equals_jax_grad():
    layers = pytest.importorskip("funcdl.layers")
    layer = layers.TransformerEncoderLayer(16, 4, 32, dropout=0.0, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(layer, nnx.Param)
    x = jax.random.normal(jax.random.key(1), (2, 5, 16))
    pad = jnp.array([[False] * 5, [False, False, False, True, True]])
    w = jax.random.normal(jax.random.key(2), (2, 5, 16))

    def loss(params, x):
        out = nnx.merge(graphdef, params)(x, key_padding_mask=pad)
        return T.sum(T.mul(out, w))

    @jax.jit  # one compile for both engines
    def both(params, x):
        return T.grad(loss, argnums=(0, 1))(params, x), jax.grad(loss, argnums=(0, 1))(params, x)

    ours, ref = both(params, x)
    assert leafwise_relative(ours, ref) < 1e-5


# --- PyTorch parity of values and gradients -----------------------------------------------------


def compare_with_torch(ours, theirs, *arrays, rtol=1e-5, atol=1e-6):
    ts = [T.tensor(a, requires_grad=True) for a in arrays]
    out = ours(*ts)
    T.sum(out).backward()
    rs = [torch.tensor(np.asarray(a), requires_grad=True) for a in arrays]
    ref = theirs(*rs)
    ref.sum().backward()
    np.testing.assert_allclose(np.asarray(out.data), ref.detach().numpy(), rtol=rtol, atol=atol)
    for t, r in zip(ts, rs):
        np.testing.assert_allclose(np.asarray(t.grad), r.grad.numpy(), rtol=rtol, atol=atol)


LOGITS = np.random.default_rng(2).normal(size=(6, 4, 3)).astype(np.float32) * 2
TARGET = np.array([[0, 1, 3], [2, 2, -100], [3, 0, 1], [-100, -100, -100], [1, 1, 0],
                   [0, 3, 3]])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.15])
def test_cross_entropy_matches_torch(reduction, smoothing):
    kw = dict(reduction=reduction, label_smoothing=smoothing)
    compare_with_torch(lambda x: T.cross_entropy(x, TARGET, **kw),
                       lambda x: F.cross_entropy(x, torch.tensor(TARGET), **kw), LOGITS)
    compare_with_torch(lambda x: T.cross_entropy(x, TARGET[:, 0] % 4, ignore_index=2, **kw),
                       lambda x: F.cross_entropy(x, torch.tensor(TARGET[:, 0] % 4),
                                                 ignore_index=2, **kw), LOGITS[:, :, 0])


def test_cross_entropy_with_probabilities_matches_torch():
    probs = np.random.default_rng(3).dirichlet(np.ones(4), size=6).astype(np.float32)
    compare_with_torch(lambda x: T.cross_entropy(x, probs, label_smoothing=0.1),
                       lambda x: F.cross_entropy(x, torch.tensor(probs), label_smoothing=0.1),
                       LOGITS[:, :, 1])


X = np.linspace(-30, 30, 41, dtype=np.float32).reshape(-1, 1) * np.array([[0.1, 1.0]], np.float32)


@pytest.mark.parametrize("ours,theirs", [
    (T.gelu, F.gelu),
    (lambda x: T.gelu(x, "tanh"), lambda x: F.gelu(x, approximate="tanh")),
    (T.softplus, F.softplus),
    (lambda x: T.softplus(x, 2.0, 5.0), lambda x: F.softplus(x, 2.0, 5.0)),
    (T.silu, F.silu), (T.sigmoid, torch.sigmoid), (T.tanh, torch.tanh),
    (lambda x: T.log_softmax(x, 0), lambda x: F.log_softmax(x, 0)),
    (lambda x: T.softmax(x, 1), lambda x: F.softmax(x, 1)),
    (lambda x: T.logsumexp(x, 0), lambda x: torch.logsumexp(x, 0)),
    (lambda x: T.var(x, 0), lambda x: torch.var(x, 0)),
    (lambda x: T.clip(x, -1.0, 2.0), lambda x: torch.clamp(x, -1.0, 2.0)),
])
def test_activations_match_torch(ours, theirs):
    compare_with_torch(ours, theirs, X, atol=1e-5)


def test_layer_norm_and_losses_match_torch():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 4, 5)).astype(np.float32) * 3 + 1
    w, b = rng.normal(size=(4, 5)).astype(np.float32), rng.normal(size=(4, 5)).astype(np.float32)
    compare_with_torch(lambda x, w, b: T.layer_norm(x, (4, 5), w, b, eps=1e-3),
                       lambda x, w, b: F.layer_norm(x, (4, 5), w, b, eps=1e-3), x, w, b,
                       rtol=1e-4, atol=1e-5)
    t = (rng.random(size=(3, 4, 5)) > 0.5).astype(np.float32)
    pw = rng.random(size=(5,)).astype(np.float32) + 0.5
    compare_with_torch(
        lambda x: T.binary_cross_entropy_with_logits(x, t, pos_weight=pw),
        lambda x: F.binary_cross_entropy_with_logits(x, torch.tensor(t),
                                                     pos_weight=torch.tensor(pw)), x)
    compare_with_torch(lambda x, y: T.mse_loss(x, y, reduction="sum"),
                       lambda x, y: F.mse_loss(x, y, reduction="sum"), x, t)


def test_dropout_is_inverted_and_keyed():
    x = jnp.ones((200, 50))
    key = jax.random.key(0)
    y = T.dropout(x, 0.25, key=key)
    kept = np.asarray(y) != 0
    assert abs(kept.mean() - 0.75) < 0.02
    np.testing.assert_allclose(np.asarray(y)[kept], 1 / 0.75, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(T.dropout(x, 0.25, key=key)), np.asarray(y))
    assert T.dropout(x, 0.25, training=False) is x
    with pytest.raises(ValueError, match="explicit PRNG key"):
        T.dropout(x, 0.25)
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1"):
        T.dropout(x, 1.5, key=key)
