"""LLaMA-style blocks against torch: RMSNorm against torch.nn.RMSNorm; seed 004's SwiGLU ``MLP``
class, written here as the torch reference, loaded into FeedForward(activation="swiglu"); an
encoder layer with SwiGLU and RMSNorm against the same layer written in torch; gradients by the
tape, jax.grad and torch."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from funcdl import layers as L
from funcdl import tape
from funcdl.check import compare_with_jax, weighted_sum, weights_for

B, T, D, H, FF = 2, 5, 8, 2, 16
X = np.random.default_rng(0).normal(size=(B, T, D)).astype(np.float32) * 2
KPM = np.zeros((B, T), bool)
KPM[1, 3:] = True


class Config:
    hidden_size = D
    intermediate_size = FF


class MLP(torch.nn.Module):
    """Seed 004's SwiGLU MLP, as written there (but for ``F.silu(..., dim=-1)``: torch's silu has
    no ``dim`` argument, so the seed's call raises TypeError)."""

    def __init__(self, config):
        super().__init__()
        self.up_proj = torch.nn.Linear(config.hidden_size, config.intermediate_size)
        self.gate_proj = torch.nn.Linear(config.hidden_size, config.intermediate_size)
        self.down_proj = torch.nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x):
        hidden_states = self.down_proj(torch.nn.functional.silu(self.gate_proj(x))
                                       * self.up_proj(x))
        return hidden_states


class LlamaStyleLayer(torch.nn.Module):
    """TransformerEncoderLayer's residual structure with the seed's MLP and RMSNorm."""

    def __init__(self, norm_first=True):
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = torch.nn.MultiheadAttention(D, H, batch_first=True)
        self.mlp = MLP(Config())
        self.norm1 = torch.nn.RMSNorm(D, eps=1e-5)
        self.norm2 = torch.nn.RMSNorm(D, eps=1e-5)

    def _sa(self, x, kpm):
        return self.self_attn(x, x, x, key_padding_mask=kpm, need_weights=False)[0]

    def forward(self, x, kpm):
        if self.norm_first:
            x = x + self._sa(self.norm1(x), kpm)
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self._sa(x, kpm))
        return self.norm2(x + self.mlp(x))


def _moved(t):
    """``t`` with every parameter moved off its initial value (RMSNorm's ones, say)."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in t.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return t


def _three_engines(module, t_module, x, kwargs=None, t_extra=()):
    """The parameter gradients of a weighted sum of the output by the tape and jax.grad (jitted,
    compared by compare_with_jax) and by torch, compared under torch's state-dict keys; returns
    torch's output."""
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)

    def loss(p):
        return weighted_sum(nnx.merge(graphdef, p, rest)(x, **(kwargs or {})))

    result = compare_with_jax(loss, params)
    assert result.leafwise < 1e-5, result.leafwise
    # the gradients in a copy of the module, read back under torch's keys
    grads = L.to_torch_state_dict(nnx.merge(graphdef, result.tape_grads, rest))
    out = t_module(torch.from_numpy(np.array(x)), *t_extra)
    (out * torch.from_numpy(weights_for([out])[0])).sum().backward()
    for name, p in t_module.named_parameters():
        np.testing.assert_allclose(grads[name], p.grad.numpy(), rtol=1e-4, atol=1e-5,
                                   err_msg=name)
    return out.detach().numpy()


@pytest.mark.parametrize("shape, eps, affine", [
    (D, None, True), ((T, D), 1e-3, True), (D, 1e-6, False)])
def test_rms_norm_equals_torch_with_gradients(shape, eps, affine):
    t = _moved(torch.nn.RMSNorm(shape, eps=eps, elementwise_affine=affine))
    m = L.from_torch(t)
    assert (m.normalized_shape, m.eps) == (tuple(t.normalized_shape), eps)
    want = t(torch.from_numpy(X)).detach().numpy()
    np.testing.assert_allclose(np.asarray(m(X)), want, rtol=1e-5, atol=1e-6)
    if affine:
        _three_engines(m, t, jnp.asarray(X))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_rms_norm_of_16_bit_inputs_is_torchs(dtype):
    """torch normalises 16-bit inputs in float32 (weight included) with float32's epsilon, and
    casts back: the same bits here."""
    x = (X * 1e-3).astype(jnp.dtype(dtype))  # small values, where eps matters
    t = _moved(torch.nn.RMSNorm(D)).to(getattr(torch, dtype))
    m = L.RMSNorm(D, dtype=jnp.dtype(dtype))  # from_torch builds float32 layers
    m.weight.set_value(jnp.asarray(t.weight.detach().float().numpy(), jnp.dtype(dtype)))
    got = m(jnp.asarray(x))
    want = t(torch.from_numpy(np.asarray(x, np.float32)).to(getattr(torch, dtype)))
    assert got.dtype == jnp.dtype(dtype)
    np.testing.assert_array_equal(np.asarray(got, np.float32), want.detach().float().numpy())


def test_the_seeds_mlp_loads_into_the_swiglu_feed_forward():
    t = _moved(MLP(Config()))
    m = L.FeedForward(D, FF, activation="swiglu", dropout=0.0, rngs=nnx.Rngs(0))
    assert L.torch_state_dict_keys(m) == list(t.state_dict())  # names and order
    assert L.load_torch_state_dict(m, t.state_dict()) == ([], [])
    out = _three_engines(m, t, jnp.asarray(X))
    np.testing.assert_allclose(np.asarray(m(X)), out, rtol=1e-5, atol=1e-6)
    # and back: funcdl's weights give torch's module the same numbers
    fresh = MLP(Config())
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in L.to_torch_state_dict(m).items()})
    np.testing.assert_allclose(fresh(torch.from_numpy(X)).detach().numpy(), np.asarray(m(X)),
                               rtol=1e-5, atol=1e-6)


def test_swiglu_without_bias_is_llamas():
    m = L.FeedForward(D, FF, activation="swiglu", bias=False, rngs=nnx.Rngs(0))
    assert L.torch_state_dict_keys(m) == ["up_proj.weight", "gate_proj.weight",
                                          "down_proj.weight"]
    up, gate, down = (np.asarray(lin.w.get_value()) for lin in (m.up_proj, m.gate_proj,
                                                                m.down_proj))
    g = X @ gate
    want = (g / (1 + np.exp(-g)) * (X @ up)) @ down  # silu(x W_gate) * x W_up, then W_down
    m.eval()
    np.testing.assert_allclose(np.asarray(m(X)), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm_first", [True, False])
def test_llama_style_encoder_layer_equals_the_torch_layer(norm_first):
    t = _moved(LlamaStyleLayer(norm_first)).eval()
    m = L.TransformerEncoderLayer(D, H, FF, activation="swiglu", norm="rmsnorm",
                                  norm_first=norm_first, dropout=0.0, rngs=nnx.Rngs(0))
    assert L.torch_state_dict_keys(m) == list(t.state_dict())
    assert L.load_torch_state_dict(m, t.state_dict()) == ([], [])
    got = np.asarray(m(X, key_padding_mask=jnp.asarray(KPM)))
    want = _three_engines(m, t, jnp.asarray(X), {"key_padding_mask": jnp.asarray(KPM)},
                          (torch.from_numpy(KPM),))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)


def test_stacked_llama_style_encoder_both_engines_under_jit():
    enc = L.TransformerEncoder(2, D, H, FF, activation="swiglu", norm="rmsnorm",
                               final_norm=True, rngs=nnx.Rngs(1))
    enc.eval()
    assert isinstance(enc.norm, L.RMSNorm)
    graphdef, params, rest = nnx.split(enc, nnx.Param, ...)
    kpm = jnp.asarray(KPM)

    def loss(p):
        y = nnx.merge(graphdef, p, rest)(jnp.asarray(X), key_padding_mask=kpm)
        return tape.mean(tape.mul(y, tape.tanh(y)))

    result = compare_with_jax(loss, params)  # jitted, both engines
    assert result.leaves == 4 + 6 + 2 + 1  # attention, mlp, norm1/2 (stacked), the final norm
    assert result.leafwise < 1e-5


def test_llama_style_options_are_refused_where_torch_has_no_counterpart():
    layer = L.TransformerEncoderLayer(D, H, FF, activation="swiglu", rngs=nnx.Rngs(0))
    with pytest.raises(L.UnsupportedModuleError, match="no SwiGLU feed-forward or RMSNorm"):
        L.to_torch(layer)
    with pytest.raises(L.UnsupportedModuleError, match="no SwiGLU"):
        L.to_torch(L.TransformerEncoder(1, D, H, FF, norm="rmsnorm", rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="or 'swiglu'"):
        L.FeedForward(D, FF, activation="swish", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="'layernorm' or 'rmsnorm', got 'batchnorm'"):
        L.TransformerEncoderLayer(D, H, FF, norm="batchnorm", rngs=nnx.Rngs(0))

