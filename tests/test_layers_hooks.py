"""Module hooks (forward pre, forward, full backward) against torch.nn.Module's on the same
two-layer network, with both engines (the tape, and jax.grad under jit), through nnx.split/merge."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from funcdl import tape as T
from funcdl.layers.module import Module

RNG = np.random.default_rng(0)
W1, B1 = RNG.normal(size=(4, 3)).astype(np.float32), RNG.normal(size=4).astype(np.float32)
W2 = RNG.normal(size=(2, 4)).astype(np.float32)
X = RNG.normal(size=(5, 3)).astype(np.float32)


class Dense(Module):
    def __init__(self, w, b=None):
        self.w = nnx.Param(jnp.asarray(w))
        self.b = None if b is None else nnx.Param(jnp.asarray(b))

    def __call__(self, x):
        return T.linear(x, self.w, self.b)


class Net(Module):
    def __init__(self):
        self.first, self.second = Dense(W1, B1), Dense(W2)

    def __call__(self, x):
        return self.second(T.tanh(self.first(x)))


def torch_net():
    first, second = torch.nn.Linear(3, 4), torch.nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        first.weight.copy_(torch.from_numpy(W1))
        first.bias.copy_(torch.from_numpy(B1))
        second.weight.copy_(torch.from_numpy(W2))
    return first, second


def record(net_first, net_second, emit):
    """The same hooks on either library's layers; ``emit(name, *values)`` logs what they see."""
    net_first.register_forward_pre_hook(lambda m, args: emit("pre", args[0] * 1))
    net_first.register_forward_hook(lambda m, args, out: out * 2)  # replaces the output
    net_first.register_forward_hook(lambda m, args, out: emit("fwd-first", out * 1),
                                    prepend=True)  # runs before the replacing hook
    net_second.register_full_backward_hook(
        lambda m, gin, gout: emit("bwd-second", gin[0] * 1, gout[0] * 1))
    net_first.register_full_backward_hook(
        lambda m, gin, gout: emit("bwd-first", gin[0], gout[0] * 1))


def values(entry):
    out = []
    for v in entry[1:]:
        v = v.data if isinstance(v, T.Tensor) else v
        out.append(None if v is None else np.asarray(v.detach() if hasattr(v, "detach") else v))
    return out


def torch_log():
    first, second = torch_net()
    log = []
    record(first, second, lambda name, *v: log.append((name, *v)))
    x = torch.from_numpy(X)
    second(torch.tanh(first(x))).pow(2).sum().backward()
    return log


def assert_logs_equal(ours, theirs):
    assert [e[0] for e in ours] == [e[0] for e in theirs]
    for a, b in zip(ours, theirs):
        for u, v in zip(values(a), values(b)):
            assert (u is None) == (v is None), a[0]
            if u is not None:
                np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-5, err_msg=a[0])


def loss_of(graphdef):
    def loss(params):  # the hooks travel in the graphdef: nnx.merge brings them back
        return T.sum(T.pow(nnx.merge(graphdef, params)(X), 2))

    return loss


def test_module_hooks_fire_as_torchs_on_the_tape():
    net, log = Net(), []
    record(net.first, net.second, lambda name, *v: log.append((name, *v)))
    graphdef, params = nnx.split(net)
    T.grad(loss_of(graphdef))(params)  # eagerly: the hooks see concrete values
    assert_logs_equal(log, torch_log())


def test_module_hooks_fire_as_torchs_with_jax_grad_under_jit():
    net, log = Net(), []

    def emit(name, *values):  # traced values reach Python through a debug callback
        jax.debug.callback(lambda *v: log.append((name, *v)), *values, ordered=True)

    record(net.first, net.second, emit)
    graphdef, params = nnx.split(net)
    jax.block_until_ready(jax.jit(jax.grad(loss_of(graphdef)))(params))
    jax.effects_barrier()
    assert_logs_equal(log, torch_log())


def test_pre_hook_replaces_args_and_handles_remove():
    layer = Dense(W1, B1)
    handle = layer.register_forward_pre_hook(lambda m, args: (args[0] * 0,))
    np.testing.assert_allclose(np.asarray(layer(X)), np.broadcast_to(B1, (5, 4)), rtol=1e-6)
    kw = layer.register_forward_pre_hook(lambda m, args, kwargs: ((X,), kwargs),
                                         with_kwargs=True)
    np.testing.assert_allclose(np.asarray(layer(np.zeros_like(X))), X @ W1.T + B1, rtol=1e-5)
    handle.remove()
    kw.remove()
    assert layer._forward_pre_hooks == ()
    with layer.register_forward_pre_hook(lambda m, args, kwargs: 3, with_kwargs=True):
        with pytest.raises(RuntimeError, match="must return None or a tuple of"):
            layer(X)
    assert layer._forward_pre_hooks == ()  # the with block removed it


def test_backward_hook_replaces_grad_input_in_both_engines():
    def double(m, gin, gout):
        return (gin[0] * 2,)

    layer = Dense(W1, B1)
    layer.register_full_backward_hook(double)
    x = T.tensor(X, requires_grad=True)
    T.sum(layer(x)).backward()
    np.testing.assert_allclose(np.asarray(x.grad), 2 * np.ones((5, 4)) @ W1, rtol=1e-5)
    g = jax.grad(lambda x: jnp.sum(layer(x)))(jnp.asarray(X))
    np.testing.assert_allclose(np.asarray(g), 2 * np.ones((5, 4)) @ W1, rtol=1e-5)


def test_every_public_layer_has_torchs_module_hooks():
    from funcdl import layers

    classes = [getattr(layers, n) for n in layers.__all__]
    modules = [c for c in classes if isinstance(c, type) and issubclass(c, nnx.Module)]
    assert len(modules) > 40 and all(issubclass(c, Module) for c in modules), \
        [c.__name__ for c in modules if not issubclass(c, Module)]


def test_a_subclass_calling_super_fires_its_hooks_once():
    class Scaled(Dense):
        def __call__(self, x):
            return super().__call__(x) * 2

    layer, calls = Scaled(W1, B1), []
    layer.register_forward_hook(lambda m, args, out: calls.append(1))
    np.testing.assert_allclose(np.asarray(layer(X)), 2 * (X @ W1.T + B1), rtol=1e-5)
    assert calls == [1]


@pytest.mark.parametrize("engine", ["tape", "jax"])
def test_attention_maps_and_gradient_norms_of_a_scanned_encoder_in_one_step(engine):
    """The README's recipe, with both engines: every layer's attention map by forward hooks and
    every layer's output-gradient norm by backward hooks, through the encoder's scan and jit."""
    from funcdl import layers

    model = layers.TransformerClassifier(20, 3, 16, 2, 32, 2, 8, dropout=0.0, unroll=False,
                                         rngs=nnx.Rngs(0))
    stack, maps, norms = model.encoder.layers, [], []

    def data(x):
        return x.data if isinstance(x, T.Tensor) else x

    stack.attention.register_forward_pre_hook(
        lambda m, args, kwargs: (args, {**kwargs, "need_weights": True}), with_kwargs=True)

    def keep_map(m, args, out):
        jax.debug.callback(maps.append, data(out[1]))
        return out[0]

    stack.attention.register_forward_hook(keep_map)
    stack.register_full_backward_hook(lambda m, gin, gout: jax.debug.callback(
        lambda g: norms.append(float(np.linalg.norm(g))), data(gout[0])))
    ids, labels = np.random.default_rng(0).integers(0, 20, (4, 8)), np.array([0, 1, 2, 1])
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p):
        return T.cross_entropy(nnx.merge(graphdef, p, rest)(ids), labels)

    grad = T.value_and_grad if engine == "tape" else jax.value_and_grad
    jax.block_until_ready(jax.jit(grad(loss))(params))
    jax.effects_barrier()
    if engine == "tape":  # tape.scan's backward runs the body again, last step first (see
        # layers.module)
        assert len(maps) == 4
        np.testing.assert_allclose(np.stack(maps[:1:-1]), np.stack(maps[:2]), rtol=1e-6)  # reversed
        maps = maps[:2]
    assert len(maps) == 2 and maps[0].shape == (4, 8, 8)
    np.testing.assert_allclose(np.stack(maps).sum(-1), 1.0, rtol=1e-5)  # rows of softmax
    assert len(norms) == 2 and all(n > 0 for n in norms)
