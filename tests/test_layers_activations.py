"""The activation modules beyond their declarations' examples: PReLU learns its slopes (gradients
by the tape, jax.grad and torch), and nn.Softmax() without a dim takes torch's legacy dim with its
warning."""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from funcdl import layers as L
from funcdl.check import compare_with_jax, weighted_sum, weights_for

X = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)


def test_prelu_learns_one_slope_per_channel_as_torch():
    t = torch.nn.PReLU(3, init=0.1)
    with torch.no_grad():
        t.weight.copy_(torch.tensor([0.1, -0.2, 0.3]))
    m = L.from_torch(t)
    graphdef, params, rest = nnx.split(m, nnx.Param, ...)

    def loss(p):
        return weighted_sum(nnx.merge(graphdef, p, rest)(jnp.asarray(X)))

    result = compare_with_jax(loss, params)
    assert result.leafwise < 1e-6
    out = t(torch.from_numpy(X))
    (out * torch.from_numpy(weights_for([out])[0])).sum().backward()
    np.testing.assert_allclose(np.asarray(m(X)), out.detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(result.tape_grads["weight"].get_value()),
                               t.weight.grad.numpy(), rtol=1e-5)


def test_prelu_refuses_a_channel_count_it_was_not_built_for():
    with pytest.raises(RuntimeError, match="parameter numbers = 3 and channel size = 4"):
        L.PReLU(3)(np.zeros((2, 4), np.float32))


@pytest.mark.parametrize("shape", [(4,), (3, 4), (2, 3, 4)])
@pytest.mark.parametrize("name", ["Softmax", "LogSoftmax"])
def test_softmax_without_dim_takes_torchs_legacy_dim_and_warns(name, shape):
    x = X.reshape(-1)[:int(np.prod(shape))].reshape(shape)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        want = getattr(torch.nn, name)()(torch.from_numpy(x)).numpy()
        got = np.asarray(getattr(L, name)()(x))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2 and messages[0] == messages[1]
