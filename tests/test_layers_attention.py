"""scaled_dot_product_attention and the attention modules against numpy and torch: masks,
fully masked rows (zeros and zero gradients where torch gives NaN), the slides' heads, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st

from funcdl import layers as L

sdpa = jax.jit(L.scaled_dot_product_attention, static_argnames=("is_causal",))


def np_attention(q, k, v, blocked):
    """Reference: numpy softmax over the visible keys; an empty row gives zeros."""
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    s = np.where(blocked, -np.inf, s)
    m = np.max(s, axis=-1, keepdims=True)
    e = np.where(blocked, 0.0, np.exp(s - np.where(np.isfinite(m), m, 0.0)))
    den = e.sum(-1, keepdims=True)
    w = np.divide(e, den, out=np.zeros_like(e), where=den > 0)
    return w @ v


@pytest.fixture(scope="module")
def qkv():
    rng = np.random.default_rng(0)
    return tuple(rng.standard_normal((2, 3, 4, 8)).astype(np.float32) for _ in range(3))


def test_matches_numpy_with_padding_and_causal(qkv):
    q, k, v = qkv
    kpm = np.array([[False, False, True, True], [False, False, False, False]])
    causal = np.triu(np.ones((4, 4), bool), 1)
    blocked = kpm[:, None, None, :] | causal
    got = sdpa(q, k, v, key_padding_mask=kpm, is_causal=True)
    np.testing.assert_allclose(got, np_attention(q, k, v, blocked), atol=1e-5)


def test_bool_mask_equals_additive_minus_inf_mask(qkv):
    q, k, v = qkv
    blocked = np.random.default_rng(1).random((4, 4)) < 0.4
    additive = np.where(blocked, -np.inf, 0.0).astype(np.float32)
    np.testing.assert_allclose(sdpa(q, k, v, attn_mask=blocked),
                               sdpa(q, k, v, attn_mask=additive), atol=1e-6)


def test_fully_masked_rows_give_zeros_and_zero_gradients_where_torch_gives_nan(qkv):
    q, k, v = qkv
    kpm = np.array([[True, True, True, True], [False, True, False, True]])  # batch 0: all pad

    def loss(q, k, v):
        return jnp.sum(L.scaled_dot_product_attention(q, k, v, key_padding_mask=kpm) ** 2)

    out = sdpa(q, k, v, key_padding_mask=kpm)
    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
    assert np.all(np.asarray(out)[0] == 0.0)
    for g in grads:
        assert np.all(np.isfinite(g))
        assert np.all(np.asarray(g)[0] == 0.0)  # nothing flows through an empty row
    np.testing.assert_allclose(out[1], np_attention(q, k, v, kpm[:, None, None, :])[1],
                               atol=1e-5)
    # PyTorch: nn.MultiheadAttention's default path (need_weights=True) gives NaN rows and NaN
    # gradients (pytorch/pytorch#41508); its fused F.scaled_dot_product_attention path (torch
    # 2.13) gives zeros, like funcdl: compare against that one.
    mha = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    x = torch.randn(2, 4, 8, requires_grad=True)
    y = mha(x, x, x, key_padding_mask=torch.from_numpy(kpm))[0]
    y.sum().backward()
    assert torch.isnan(y[0]).all() and torch.isnan(x.grad[0]).all()
    tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))
    want = torch.nn.functional.scaled_dot_product_attention(
        tq, tk, tv, attn_mask=torch.from_numpy(~kpm)[:, None, None, :])
    np.testing.assert_allclose(out, want.numpy(), atol=1e-5)


def test_float_mask_rows_of_minus_inf_are_also_safe(qkv):
    q, k, v = qkv
    am = np.zeros((4, 4), np.float32)
    am[2] = -np.inf  # query 2 sees nothing
    g = jax.jit(jax.grad(lambda q: jnp.sum(L.scaled_dot_product_attention(q, k, v,
                                                                          attn_mask=am))))(q)
    assert np.all(np.isfinite(g)) and np.all(np.asarray(g)[:, :, 2] == 0.0)
    assert np.all(np.asarray(sdpa(q, k, v, attn_mask=am))[:, :, 2] == 0.0)


@pytest.fixture(scope="module")
def mha():
    m = L.MultiHeadAttention(8, 2, rngs=nnx.Rngs(0))
    m.eval()
    graphdef, state = nnx.split(m)
    fn = jax.jit(lambda s, x, kpm: nnx.merge(graphdef, s)(x, key_padding_mask=kpm))
    return m, lambda x, kpm: fn(state, x, kpm)


@given(lengths=st.lists(st.integers(1, 6), min_size=2, max_size=2),
       seed=st.integers(0, 2**16), junk=st.floats(-100, 100))
def test_padding_never_changes_non_padding_outputs(mha, lengths, seed, junk):
    _, run = mha
    x = np.random.default_rng(seed).standard_normal((2, 6, 8)).astype(np.float32)
    kpm = np.arange(6)[None, :] >= np.array(lengths)[:, None]
    y1 = np.asarray(run(x, kpm))
    x2 = np.where(kpm[:, :, None], np.float32(junk), x)  # rewrite every padding position
    y2 = np.asarray(run(x2, kpm))
    np.testing.assert_allclose(y1[~kpm], y2[~kpm], atol=1e-5)


def test_multi_head_equals_slides_module_list_of_heads_concatenated():
    """The slides: heads = ModuleList(AttentionHead(D, D // H)); cat(heads(x)) -> output_linear.
    Fused in_proj columns [q | k | v], head h owning columns h*hd:(h+1)*hd of each block."""
    d, h = 8, 2
    hd = d // h
    heads = [L.AttentionHead(d, hd, rngs=nnx.Rngs(i)) for i in range(h)]
    output_linear = L.Linear(d, d, rngs=nnx.Rngs(9))
    x = np.random.default_rng(3).standard_normal((2, 5, d)).astype(np.float32)
    slides = output_linear(jnp.concatenate([head(x) for head in heads], axis=-1))

    m = L.MultiHeadAttention(d, h, rngs=nnx.Rngs(0))
    w = np.concatenate([np.concatenate([np.asarray(getattr(hh, p).w.get_value())
                                        for hh in heads], 1) for p in "qkv"], 1)
    b = np.concatenate([np.concatenate([np.asarray(getattr(hh, p).b.get_value())
                                        for hh in heads]) for p in "qkv"])
    m.in_proj.w.set_value(jnp.asarray(w))
    m.in_proj.b.set_value(jnp.asarray(b))
    m.out_proj.w.set_value(output_linear.w.get_value())
    m.out_proj.b.set_value(output_linear.b.get_value())
    np.testing.assert_allclose(m(x), slides, atol=1e-5)


def test_bad_masks_are_named(mha, qkv):
    m, _ = mha
    q, k, v = qkv
    x = jnp.zeros((2, 4, 8))
    with pytest.raises(ValueError, match=r"dimension S \(keys\) has size 5, expected 4"):
        L.scaled_dot_product_attention(q, k, v, attn_mask=np.zeros((4, 5), bool))
    with pytest.raises(ValueError, match=r"dimension heads has size 2, expected 3"):
        L.scaled_dot_product_attention(q, k, v, attn_mask=np.zeros((2, 2, 4, 4), bool))
    with pytest.raises(ValueError, match=r"expecting key_padding_mask shape of \(2, 4\)"):
        m(x, key_padding_mask=np.zeros((2, 5), bool))
    with pytest.raises(ValueError, match=r"3D attn_mask is \(2, 4, 4\), but should be \(4, 4, 4\)"):
        m(x, attn_mask=np.zeros((2, 4, 4), bool))
    with pytest.raises(TypeError, match="only bool and floating types of key_padding_mask"):
        m(x, key_padding_mask=np.zeros((2, 4), np.int32))
    with pytest.raises(ValueError, match="float mask holding only 0 and 1"):
        m(x, attn_mask=np.triu(np.ones((4, 4), np.float32), 1))
    with pytest.raises(ValueError, match="dropout_rate > 0 needs rng"):
        L.scaled_dot_product_attention(q, k, v, dropout_rate=0.1)


def test_bad_construction():
    with pytest.raises(ValueError, match="embed_dim must be divisible by num_heads"):
        L.MultiHeadAttention(10, 3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="must be greater than 0, got embed_dim=0"):
        L.MultiHeadAttention(0, 2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="ff_dim must be a positive integer, got 0"):
        L.TransformerEncoderLayer(8, 2, 0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="num_layers must be a positive integer, got -1"):
        L.TransformerEncoder(-1, 8, 2, 16, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1"):
        L.TransformerEncoderLayer(8, 2, 16, dropout=1.5, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="activation should be one of"):
        L.FeedForward(8, 16, activation="swish2", rngs=nnx.Rngs(0))


@pytest.mark.parametrize("average", [True, False])
def test_need_weights_returns_torchs_attention_weights(average):
    torch.manual_seed(0)
    ref = torch.nn.MultiheadAttention(8, 2, batch_first=True).eval()
    ours = L.from_torch(ref)
    x = np.random.default_rng(0).normal(size=(2, 5, 8)).astype(np.float32)
    pad = np.array([[False] * 5, [False, False, False, True, True]])
    out, weights = ours(x, key_padding_mask=pad, need_weights=True, average_attn_weights=average)
    ref_out, ref_weights = ref(*[torch.from_numpy(x)] * 3, key_padding_mask=torch.from_numpy(pad),
                               need_weights=True, average_attn_weights=average)
    assert weights.shape == tuple(ref_weights.shape)
    np.testing.assert_allclose(np.asarray(weights), ref_weights.detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(np.asarray(out), ref_out.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(np.asarray(ours(x, key_padding_mask=pad)), np.asarray(out))
