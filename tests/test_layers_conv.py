"""Conv, pooling and batch-norm layers against torch.nn beyond what the declarations derive
(tests/test_layers_declarations.py: keys, shapes, one forward): torch's initialisation, batch
norm over three training steps then eval (also through fit, by both engines), a small CNN's
gradients by the tape, jax.grad and torch, and torch's errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

from funcdl import layers as L
from funcdl import tape
from funcdl.check import compare_with_jax
from funcdl.train import fit

RNG = np.random.default_rng(0)


def test_conv_weights_have_torchs_layout_and_init_bound():
    for m, shape, fan_in in (
            (L.Conv2d(8, 64, (3, 2), groups=4, rngs=nnx.Rngs(0)), (64, 2, 3, 2), 2 * 6),
            (L.ConvTranspose2d(8, 64, 3, groups=2, bias=False, rngs=nnx.Rngs(0)), (8, 32, 3, 3),
             32 * 9)):
        w = np.asarray(m.weight.get_value())
        bound = 1 / np.sqrt(fan_in)  # torch: kaiming_uniform_(a=sqrt(5)) and the bias alike
        assert w.shape == shape and np.abs(w).max() <= bound
        assert abs(w.std() - bound / np.sqrt(3)) < 0.1 * bound  # uniform, not normal
        if m.bias is not None:
            assert np.abs(np.asarray(m.bias.get_value())).max() <= bound
        else:
            assert isinstance(m, L.ConvTranspose2d)


@pytest.mark.parametrize("make, torch_make", [
    (lambda: L.Conv2d(3, 4, 3, groups=2, rngs=nnx.Rngs(0)),
     lambda: torch.nn.Conv2d(3, 4, 3, groups=2)),
    (lambda: L.Conv2d(4, 3, 3, groups=2, rngs=nnx.Rngs(0)),
     lambda: torch.nn.Conv2d(4, 3, 3, groups=2)),
    (lambda: L.Conv2d(4, 4, 3, padding="full", rngs=nnx.Rngs(0)),
     lambda: torch.nn.Conv2d(4, 4, 3, padding="full")),
    (lambda: L.Conv1d(4, 4, 3, stride=2, padding="same", rngs=nnx.Rngs(0)),
     lambda: torch.nn.Conv1d(4, 4, 3, stride=2, padding="same")),
    (lambda: L.Conv2d(4, 4, 3, padding_mode="wrap", rngs=nnx.Rngs(0)),
     lambda: torch.nn.Conv2d(4, 4, 3, padding_mode="wrap")),
    (lambda: L.BatchNorm2d(3)(jnp.ones((3, 4, 4))), lambda: torch.nn.BatchNorm2d(3)(
        torch.ones(3, 4, 4))),
    (lambda: L.BatchNorm1d(3)(jnp.ones((2, 3, 4, 4))), lambda: torch.nn.BatchNorm1d(3)(
        torch.ones(2, 3, 4, 4))),
    (lambda: L.Flatten(2, 1)(jnp.ones((2, 3, 4))), lambda: torch.nn.Flatten(2, 1)(
        torch.ones(2, 3, 4))),
])
def test_bad_arguments_raise_torchs_error(make, torch_make):
    with pytest.raises(Exception) as theirs:
        torch_make()
    with pytest.raises(type(theirs.value)) as ours:
        make()
    assert _words(ours.value) == _words(theirs.value)


def _words(error) -> str:
    """The message with the items of a printed set sorted (torch prints a set of strings, whose
    order changes from one process to the next)."""
    text = str(error)
    if "{" in text:
        head, rest = text.split("{", 1)
        items, tail = rest.split("}", 1)
        text = head + "{" + ", ".join(sorted(items.split(", "))) + "}" + tail
    return text


@pytest.mark.parametrize("kwargs", [{}, {"momentum": None}, {"affine": False, "eps": 1e-3},
                                    {"track_running_stats": False}])
def test_batch_norm_three_training_steps_then_eval_equal_torch(kwargs):
    xs = [RNG.standard_normal((4, 3, 5, 2)).astype(np.float32) * (i + 1) + i for i in range(4)]
    ours, theirs = L.BatchNorm2d(3, **kwargs), torch.nn.BatchNorm2d(3, **kwargs)
    step = nnx.jit(lambda m, x: m(x))  # the statistics update inside a compiled function
    for x in xs[:3]:
        np.testing.assert_allclose(step(ours, x), theirs(torch.from_numpy(x)).detach().numpy(),
                                   rtol=1e-5, atol=1e-5)
        if theirs.track_running_stats:
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                np.testing.assert_allclose(getattr(ours, name).get_value(),
                                           getattr(theirs, name).numpy(), rtol=1e-6, err_msg=name)
    ours.eval()
    theirs.eval()
    np.testing.assert_allclose(step(ours, xs[3]), theirs(torch.from_numpy(xs[3])).detach().numpy(),
                               rtol=1e-5, atol=1e-5)
    ours.train()
    assert ours.use_running_average is False


def _cnn(rngs):
    """Every layer of this family in one small model."""
    return L.Sequential(
        L.Conv2d(2, 4, 3, padding=1, rngs=rngs), L.BatchNorm2d(4), L.ReLU(), L.MaxPool2d(2),
        L.Conv2d(4, 6, 2, groups=2, rngs=rngs), L.ConvTranspose2d(6, 4, 2, stride=2, rngs=rngs),
        L.AvgPool2d(3, 2, 1), L.AdaptiveAvgPool2d((2, 1)), L.Flatten(), L.Linear(8, 3, rngs=rngs))


def test_a_cnn_differentiates_alike_by_tape_jax_grad_and_torch():
    model = _cnn(nnx.Rngs(0))
    x = RNG.standard_normal((3, 2, 8, 7)).astype(np.float32)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p):  # fresh copies of the batch statistics: batch norm updates them in the trace
        return tape.sum(tape.tanh(nnx.merge(graphdef, p, jax.tree.map(lambda a: a, rest))(x)))

    result = compare_with_jax(loss, params)
    # (the first conv's bias gradient is ~0: batch norm removes each channel's mean)
    assert result.relative < 1e-6
    twin = L.to_torch(model)  # the same weights, in training mode as the funcdl model
    torch.tanh(twin(torch.from_numpy(x))).sum().backward()
    theirs = dict(twin.named_parameters())
    ours = L.to_torch_state_dict(nnx.merge(graphdef, result.tape_grads, rest))
    for key, p in theirs.items():
        np.testing.assert_allclose(ours[key], p.grad.numpy(), rtol=1e-4, atol=1e-5, err_msg=key)


@pytest.mark.parametrize("grad", ["jax", "tape"])
def test_fit_carries_the_running_statistics(grad):
    """Through fit's jitted train step (the statistics ride in its non-parameter state), with a
    zero learning rate so torch's module sees the same weights at every batch."""
    net = L.Sequential(L.Conv2d(1, 2, 3, rngs=nnx.Rngs(0)), L.BatchNorm2d(2))
    twin = L.to_torch(net)
    twin.train()
    xs = [RNG.standard_normal((4, 1, 5, 5)).astype(np.float32) for _ in range(3)]
    batches = [(x, np.zeros(4, np.int32)) for x in xs]
    fit(net, optax.sgd(0.0), batches, lambda m, b: tape.mean(m(b[0])), epochs=1, grad=grad,
        progress=False)
    for x in xs:
        twin(torch.from_numpy(x))
    bn, tbn = net.layers[1], twin[1]
    np.testing.assert_allclose(bn.running_mean.get_value(), tbn.running_mean.numpy(), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(bn.running_var.get_value(), tbn.running_var.numpy(), rtol=1e-5)
    assert int(bn.num_batches_tracked.get_value()) == 3
