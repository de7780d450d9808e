"""funcdl.layers against torch.nn itself: same weights (load_torch_state_dict), same outputs within
1e-5 in float32, eval mode."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from funcdl import layers as L

B, T, S, D, H, FF = 2, 5, 6, 16, 4, 32
ATOL = 1e-5


@functools.partial(jax.jit, static_argnums=0, static_argnames=("is_causal",))
def _apply(graphdef, state, x, kv=None, **masks):
    return nnx.merge(graphdef, state)(x, **({} if kv is None else {"kv": kv}), **masks)


def run(module, x, kv=None, **masks):
    """``module(x, ...)`` compiled as one program (eager op-by-op dispatch compiles far more)."""
    return _apply(*nnx.split(module), x, kv, **masks)


def np32(t):
    return t.detach().numpy().astype(np.float32)


def close(a, b, atol=ATOL):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=1e-5)


@pytest.fixture(scope="module")
def x():
    return torch.randn(B, T, D, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def kpm():
    m = torch.zeros(B, T, dtype=torch.bool)
    m[0, 3:] = True  # sequence 0 has 3 tokens, sequence 1 is full
    return m


def test_linear_matches_nn_linear_and_stores_w_in_by_out():
    tl = torch.nn.Linear(7, 3)
    m = L.Linear(7, 3, rngs=nnx.Rngs(0))
    L.load_torch_state_dict(m, tl.state_dict())
    assert m.w.get_value().shape == (7, 3)  # the slides' [in, out]; torch stores [out, in]
    x = torch.randn(4, 2, 7)
    close(run(m, jnp.asarray(x.numpy())), np32(tl(x)))


def test_embedding_matches_nn_embedding():
    te = torch.nn.Embedding(11, 6)
    m = L.Embedding(11, 6, rngs=nnx.Rngs(0))
    L.load_torch_state_dict(m, te.state_dict())
    ids = torch.tensor([[0, 3, 10], [2, 2, 7]])
    close(m(jnp.asarray(ids.numpy())), np32(te(ids)))


def test_learned_positional_embedding_is_nn_embedding_of_arange(x):
    te = torch.nn.Embedding(8, D)  # seed 003: pos_embedding_layer(torch.arange(context_length))
    m = L.PositionalEmbedding(8, D, rngs=nnx.Rngs(0))
    L.load_torch_state_dict(m, te.state_dict())
    close(m(jnp.asarray(x.numpy())), np32(x + te(torch.arange(T))))


def test_layer_norm_matches_nn_layer_norm():
    tn = torch.nn.LayerNorm(D, eps=1e-6)
    with torch.no_grad():
        tn.weight.normal_()
        tn.bias.normal_()
    m = L.LayerNorm(D, eps=1e-6)
    L.load_torch_state_dict(m, tn.state_dict())
    x = 3 * torch.randn(3, 4, D) + 1
    close(m(jnp.asarray(x.numpy())), np32(tn(x)))


def test_mlp_matches_nn_sequential():
    sizes = (12, 8, 5, 1)
    seq = torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.ReLU(), torch.nn.Linear(8, 5),
                              torch.nn.ReLU(), torch.nn.Linear(5, 1))
    m = L.MLP(sizes, rngs=nnx.Rngs(0))
    L.load_torch_state_dict(m, seq.state_dict())
    x = torch.randn(6, 12)
    close(run(m, jnp.asarray(x.numpy())), np32(seq(x)))


@pytest.fixture(scope="module")
def mha_pair():
    torch.manual_seed(1)
    tm = torch.nn.MultiheadAttention(D, H, batch_first=True).eval()
    with torch.no_grad():  # torch zero-initialises the biases: make them count
        tm.in_proj_bias.normal_()
        tm.out_proj.bias.normal_()
    m = L.MultiHeadAttention(D, H, rngs=nnx.Rngs(0))
    L.load_torch_state_dict(m, tm.state_dict())
    return tm, m


def _mha_torch(tm, q, kv, **kw):
    with torch.no_grad():
        return np32(tm(q, kv, kv, need_weights=False, **kw)[0])


def test_mha_plain_self_attention(mha_pair, x):
    tm, m = mha_pair
    close(run(m, jnp.asarray(x.numpy())), _mha_torch(tm, x, x))


def test_mha_key_padding_mask(mha_pair, x, kpm):
    tm, m = mha_pair
    got = run(m, jnp.asarray(x.numpy()), key_padding_mask=jnp.asarray(kpm.numpy()))
    close(got, _mha_torch(tm, x, x, key_padding_mask=kpm))


@pytest.mark.parametrize("kind", ["bool2d", "float2d", "bool3d"])
def test_mha_attn_mask_with_key_padding(mha_pair, x, kpm, kind):
    tm, m = mha_pair
    g = torch.Generator().manual_seed(2)
    blocked = torch.rand(T, T, generator=g) < 0.3
    blocked.fill_diagonal_(False)  # keep every row alive: torch would give NaN otherwise
    if kind == "bool2d":
        am = blocked
    elif kind == "float2d":
        am = torch.zeros(T, T).masked_fill(blocked, float("-inf")) + 0.1 * torch.randn(T, T)
    else:
        am = blocked[None].repeat(B * H, 1, 1)
        am[1] = False  # per (batch, head) masks differ
    kpm_t = kpm if am.dtype == torch.bool else torch.zeros(B, T).masked_fill(kpm, float("-inf"))
    want = _mha_torch(tm, x, x, attn_mask=am, key_padding_mask=kpm_t)
    got = run(m, jnp.asarray(x.numpy()), attn_mask=jnp.asarray(am.numpy()),
            key_padding_mask=jnp.asarray(kpm_t.numpy()))
    close(got, want)


def test_mha_causal_matches_torch_tril_mask(mha_pair, x):
    tm, m = mha_pair
    causal = ~torch.tril(torch.ones(T, T, dtype=torch.bool))
    close(run(m, jnp.asarray(x.numpy()), is_causal=True), _mha_torch(tm, x, x, attn_mask=causal))


def test_mha_cross_attention(mha_pair, x):
    tm, m = mha_pair
    kv = torch.randn(B, S, D)
    kpm = torch.zeros(B, S, dtype=torch.bool)
    kpm[1, 4:] = True
    got = run(m, jnp.asarray(x.numpy()), jnp.asarray(kv.numpy()),
              key_padding_mask=jnp.asarray(kpm.numpy()))
    close(got, _mha_torch(tm, x, kv, key_padding_mask=kpm))


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_encoder_layer_matches_torch(x, kpm, norm_first, activation):
    torch.manual_seed(3)
    tl = torch.nn.TransformerEncoderLayer(D, H, FF, activation=activation, batch_first=True,
                                          norm_first=norm_first).eval()
    with torch.no_grad():
        for p in (tl.self_attn.in_proj_bias, tl.self_attn.out_proj.bias, tl.norm1.weight,
                  tl.norm2.bias):
            p.normal_()
    m = L.TransformerEncoderLayer(D, H, FF, activation=activation, norm_first=norm_first,
                                  rngs=nnx.Rngs(0))
    m.eval()
    L.load_torch_state_dict(m, tl.state_dict())
    xj, kj = jnp.asarray(x.numpy()), jnp.asarray(kpm.numpy())
    with torch.no_grad():  # eval + no_grad: torch takes its fused fast path here
        close(run(m, xj), np32(tl(x)))
        want = np32(tl(x, src_key_padding_mask=kpm))
    got = np.asarray(run(m, xj, key_padding_mask=kj))
    close(got[~kpm.numpy()], want[~kpm.numpy()])
    if activation == "relu":
        return  # backward parity below: once per norm placement is enough
    # Backward parity too: grads of the same loss, torch autograd vs jax.grad.
    xt = x.clone().requires_grad_(True)
    (tl(xt, src_key_padding_mask=kpm) ** 2).sum().backward()
    gx = jax.jit(jax.grad(lambda v: jnp.sum(m(v, key_padding_mask=kj) ** 2)))(xj)
    close(gx, np32(xt.grad), atol=1e-4)


def test_encoder_of_three_layers_matches_torch(x, kpm):
    torch.manual_seed(4)
    layer = torch.nn.TransformerEncoderLayer(D, H, FF, batch_first=True, norm_first=True)
    # enable_nested_tensor=False: with it, torch's eval fast path packs the batch into a nested
    # tensor and returns exact zeros at padding positions (and skips them in later layers).
    te = torch.nn.TransformerEncoder(layer, 3, norm=torch.nn.LayerNorm(D),
                                     enable_nested_tensor=False).eval()
    for i, lyr in enumerate(te.layers):  # copies of one layer: make them differ
        with torch.no_grad():
            for p in lyr.parameters():
                p.add_(0.05 * (i + 1) * torch.randn_like(p))
    m = L.TransformerEncoder(3, D, H, FF, activation="relu", norm_first=True, final_norm=True,
                             rngs=nnx.Rngs(0))
    m.eval()
    L.load_torch_state_dict(m, te.state_dict())
    with torch.no_grad():
        want = np32(te(x, src_key_padding_mask=kpm))
        want_causal = np32(te(x, mask=torch.nn.Transformer.generate_square_subsequent_mask(T),
                               is_causal=True))
    got = np.asarray(run(m, jnp.asarray(x.numpy()), key_padding_mask=jnp.asarray(kpm.numpy())))
    close(got[~kpm.numpy()], want[~kpm.numpy()])
    close(run(m, jnp.asarray(x.numpy()), is_causal=True), want_causal)


def test_to_torch_state_dict_round_trips_through_torch(x):
    m = L.TransformerEncoder(2, D, H, FF, activation="gelu", norm_first=False, rngs=nnx.Rngs(5))
    m.eval()
    te = torch.nn.TransformerEncoder(
        torch.nn.TransformerEncoderLayer(D, H, FF, activation="gelu", batch_first=True), 2,
        enable_nested_tensor=False).eval()
    te.load_state_dict({k: torch.from_numpy(v) for k, v in L.to_torch_state_dict(m).items()})
    with torch.no_grad():
        close(run(m, jnp.asarray(x.numpy())), np32(te(x)))


def test_strict_loading_names_missing_unexpected_and_mismatched_keys():
    tl = torch.nn.TransformerEncoderLayer(D, H, FF, batch_first=True)
    sd = dict(tl.state_dict())
    del sd["linear2.bias"]
    sd["linear3.weight"] = torch.zeros(2, 2)
    sd["norm1.weight"] = torch.ones(D + 1)
    m = L.TransformerEncoderLayer(D, H, FF, rngs=nnx.Rngs(0))
    with pytest.raises(RuntimeError) as e:
        L.load_torch_state_dict(m, sd)
    msg = str(e.value)
    assert 'Missing key(s) in state_dict: "linear2.bias"' in msg
    assert 'Unexpected key(s) in state_dict: "linear3.weight"' in msg
    assert "size mismatch for norm1.weight: copying a param with shape (17,)" in msg
    assert "the shape in current model is (16,)" in msg
    # torch itself agrees on which keys are wrong
    with pytest.raises(RuntimeError, match='Missing key.*"linear2.bias"'):
        tl.load_state_dict(sd)
    sd["norm1.weight"] = torch.ones(D)
    before = np.asarray(m.feed_forward.linear2.b.get_value())
    res = L.load_torch_state_dict(m, sd, strict=False)
    assert res.missing_keys == ["linear2.bias"] and res.unexpected_keys == ["linear3.weight"]
    np.testing.assert_array_equal(m.feed_forward.linear2.b.get_value(), before)
    np.testing.assert_array_equal(m.norm1.weight.get_value(), np.ones(D))


def test_loader_accepts_numpy_arrays():
    tl = torch.nn.Linear(3, 2)
    m = L.Linear(3, 2, rngs=nnx.Rngs(0))
    L.load_torch_state_dict(m, {k: v.numpy() for k, v in tl.state_dict().items()})
    np.testing.assert_array_equal(m.w.get_value(), tl.weight.detach().numpy().T)
