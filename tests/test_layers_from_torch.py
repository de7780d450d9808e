"""layers.from_torch / layers.to_torch against torch itself: a live torch module's configuration
and weights become the matching funcdl module (same outputs within 1e-5), and back.

Torch runs with gradients enabled: its inference fast path (no_grad, eval) computes
``nn.TransformerEncoderLayer`` with ``activation=nn.GELU(approximate="tanh")`` as exact GELU
(1.4e-4 off its own regular path here), and zeroes padded outputs of a nested-tensor encoder.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from funcdl import layers as L
from funcdl import tape
from funcdl.check import compare_with_jax
from funcdl.layers.counterpart import Example, declaration, sample, torch_layer

# The sizes of the declarations' examples (test_layers_declarations.py): their initialisers are
# compiled already in a full run.
B, T, D, H, FF = 2, 5, 8, 2, 16
nn = torch.nn


def _x(*shape):
    return torch.from_numpy(sample(*shape) * 2)


def _kpm():
    m = torch.zeros(B, T, dtype=torch.bool)
    m[0, 3:] = True
    return m


def _moved(t):
    """``t`` in eval mode with every parameter moved off its initial value (LayerNorm's ones,
    zero biases), so a weight mapped to the wrong place changes the output."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in t.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return t.eval()


def _encoder_layer(**kw):
    return nn.TransformerEncoderLayer(D, H, FF, **kw)


# (torch module, input, torch keyword arguments -> funcdl's); seq-first modules take (T, B, D)
CASES = {
    "Linear": (lambda: nn.Linear(D, FF), (B, T, D), {}),
    "Linear(bias=False)": (lambda: nn.Linear(FF, D, bias=False), (B, FF), {}),
    "LayerNorm(eps=1e-3)": (lambda: nn.LayerNorm(D, eps=1e-3), (B, T, D), {}),
    "Dropout": (lambda: nn.Dropout(0.3), (B, D), {}),
    "MultiheadAttention(batch_first)": (
        lambda: nn.MultiheadAttention(D, H, batch_first=True), (B, T, D), {"kpm": True}),
    "MultiheadAttention(seq-first, bias=False)": (
        lambda: nn.MultiheadAttention(D, H, bias=False), (T, B, D), {"kpm": True}),
    "TransformerEncoderLayer(torch defaults: post-LN, relu, seq-first)": (
        lambda: _encoder_layer(), (T, B, D), {"kpm": True}),
    "TransformerEncoderLayer(pre-LN, GELU tanh module, eps 1e-6)": (
        lambda: _encoder_layer(norm_first=True, batch_first=True, layer_norm_eps=1e-6,
                               activation=nn.GELU(approximate="tanh")), (B, T, D), {"kpm": True}),
    "TransformerEncoderLayer(F.silu)": (
        lambda: _encoder_layer(batch_first=True, activation=torch.nn.functional.silu),
        (B, T, D), {"causal": True}),
    "TransformerEncoder(3 layers, final norm with its own eps)": (
        lambda: nn.TransformerEncoder(
            _encoder_layer(batch_first=True, activation="gelu", layer_norm_eps=1e-6), 3,
            norm=nn.LayerNorm(D), enable_nested_tensor=False), (B, T, D), {"kpm": True}),
    "Sequential(Linear, GELU, Dropout, LayerNorm, LeakyReLU, Linear, Tanh, Sigmoid, SiLU)": (
        lambda: nn.Sequential(nn.Linear(D, FF), nn.GELU(), nn.Dropout(0.1), nn.LayerNorm(FF),
                              nn.LeakyReLU(0.2), nn.Linear(FF, D), nn.Tanh(), nn.Sigmoid(),
                              nn.SiLU(), nn.Identity(), nn.ReLU()), (B, D), {}),
}


def _run_torch(t, x, kw):
    kpm = _kpm() if kw.get("kpm") else None
    if isinstance(t, nn.MultiheadAttention):
        return t(x, x, x, key_padding_mask=kpm, need_weights=False)[0]
    if isinstance(t, nn.TransformerEncoderLayer | nn.TransformerEncoder):
        mask = nn.Transformer.generate_square_subsequent_mask(T) if kw.get("causal") else None
        return t(x, mask, src_key_padding_mask=kpm, is_causal=bool(kw.get("causal")))
    return t(x)


def _run_funcdl(m, x, kw):
    masks = {}
    if kw.get("kpm"):
        masks["key_padding_mask"] = jnp.asarray(_kpm().numpy())
    if kw.get("causal"):
        masks["is_causal"] = True
    return np.asarray(m(jnp.asarray(x.numpy()), **masks))


@pytest.fixture(scope="module")
def converted():
    out = {}
    for name, (make, shape, kw) in CASES.items():
        torch.manual_seed(0)
        t = _moved(make())
        out[name] = (t, L.from_torch(t), _x(*shape), kw)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_from_torch_computes_what_torch_computes(converted, name):
    t, m, x, kw = converted[name]
    want = _run_torch(t, x, kw).detach().numpy()  # gradients on: torch's regular path
    np.testing.assert_allclose(_run_funcdl(m, x, kw), want, atol=1e-5, rtol=1e-5)


def _config(t) -> list[str]:
    return [line for line in repr(t).splitlines() if "(activation): SiLU()" not in line]


@pytest.mark.parametrize("name", list(CASES))
def test_to_torch_gives_back_the_module(converted, name):
    t, m, x, kw = converted[name]
    back = L.to_torch(m)
    assert type(back) is type(t)
    # the same configuration (an activation function such as F.silu comes back as its module)
    assert _config(back) == _config(t)
    if any(hasattr(mod, "deterministic") for _, mod in nnx.iter_modules(m)):
        assert not back.training  # m's dropouts are off, as t's (no modal part: torch's default)
    want = t.state_dict()
    assert list(back.state_dict()) == list(want)
    for k, v in back.state_dict().items():
        torch.testing.assert_close(v, want[k], rtol=0, atol=0, msg=k)
    torch.testing.assert_close(_run_torch(back, x, kw), _run_torch(t, x, kw), rtol=0, atol=0)


def test_torch_defaults_loaded_into_funcdl_defaults_differ_but_from_torch_does_not():
    """Issue 15, item 5: the state dict loads either way; only from_torch reads the config."""
    torch.manual_seed(1)
    t = _moved(_encoder_layer(batch_first=True))  # torch's defaults: post-LN, relu
    x = _x(B, T, D)
    want = t(x).detach().numpy()
    by_hand = L.TransformerEncoderLayer(D, H, FF, rngs=nnx.Rngs(0))  # funcdl's: pre-LN, gelu
    L.load_torch_state_dict(by_hand, t.state_dict())
    by_hand.eval()
    assert np.abs(np.asarray(by_hand(jnp.asarray(x.numpy()))) - want).max() > 0.1
    m = L.from_torch(t)
    assert (m.norm_first, m.feed_forward.activation) == (False, "relu")
    np.testing.assert_allclose(np.asarray(m(jnp.asarray(x.numpy()))), want, atol=1e-5)
    assert "from_torch" in L.load_torch_state_dict.__doc__


def test_train_mode_and_seed_carry_over():
    t = nn.Sequential(nn.Linear(D, D), nn.Dropout(0.5))
    m = L.from_torch(t, rngs=nnx.Rngs(7))
    assert not m[1].deterministic and m[1].rate == 0.5  # torch modules start in train mode
    assert L.to_torch(m).training
    m.eval()
    assert not L.to_torch(m).training


def test_seq_first_wrapper_transposes_and_its_gradients_match_jax(converted):
    t, m, x, kw = converted["MultiheadAttention(seq-first, bias=False)"]
    assert isinstance(m, L.SequenceFirst) and isinstance(m.module, L.MultiHeadAttention)
    x, kpm = jnp.asarray(x.numpy()), jnp.asarray(_kpm().numpy())
    graphdef, params, rest = nnx.split(m, nnx.Param, ...)

    def loss(p):
        y = nnx.merge(graphdef, p, rest)(x, key_padding_mask=kpm)
        return tape.mean(tape.mul(y, tape.tanh(y)))

    result = compare_with_jax(loss, params)
    assert result.leaves == 2 and result.leafwise < 1e-5


def test_embedding_padding_idx_gets_no_gradient_as_in_torch():
    torch.manual_seed(4)
    t = nn.Embedding(5, 3, padding_idx=2)
    with torch.no_grad():
        t.weight[2] = 1.5  # a padding row that is not zero still reads its value
    ids = torch.tensor([[2, 0, 2, 4], [1, 2, 3, 0]])
    w = torch.from_numpy(sample(2, 4, 3))
    (t(ids) * w).sum().backward()
    m = L.from_torch(t)
    assert m.padding_idx == 2
    graphdef, params = nnx.split(m, nnx.Param)

    def loss(p):
        return tape.sum(tape.mul(nnx.merge(graphdef, p)(jnp.asarray(ids.numpy())), w.numpy()))

    np.testing.assert_allclose(np.asarray(nnx.merge(graphdef, params)(ids.numpy())),
                               t(ids).detach().numpy())
    result = compare_with_jax(loss, params)
    np.testing.assert_allclose(np.asarray(result.jax_grads["weight"].get_value()),
                               t.weight.grad.numpy(), atol=1e-6)
    assert result.abs_diff == 0.0
    assert np.all(np.asarray(L.Embedding(5, 3, padding_idx=-1, rngs=nnx.Rngs(0))
                             .weight.get_value())[4] == 0)  # initialised as torch does


class _Mine(nn.Linear):
    pass


class _Custom(nn.Module):
    """No funcdl layer will ever declare it (unlike a torch class funcdl does not cover yet)."""

    def forward(self, x):
        return x


@pytest.mark.parametrize("make, words", [
    (lambda: _Custom(), f"{__name__}._Custom is not supported (supported: "),
    (lambda: nn.Sequential(nn.Linear(2, 2), _Custom()), "_Custom is not supported"),
    (lambda: _Mine(2, 2), "_Mine subclasses torch.nn.modules.linear.Linear"),
    (lambda: nn.MultiheadAttention(D, H, kdim=4), "kdim=4, vdim=8 != embed_dim=8"),
    (lambda: nn.MultiheadAttention(D, H, add_bias_kv=True), "add_bias_kv=True"),
    (lambda: _encoder_layer(bias=False), "bias=False"),
    (lambda: _encoder_layer(activation=lambda x: 2 * x), "the activation <lambda> is not "),
    (lambda: nn.LayerNorm((2, D)), "normalized_shape=(2, 8)"),
    (lambda: nn.Embedding(4, 2, max_norm=1.0), "max_norm=1.0"),
    (lambda: nn.Linear(2, 2).double(), "weight is torch.float64"),
])
def test_unsupported_torch_modules_are_named(make, words):
    with pytest.raises(L.UnsupportedModuleError, match=words.replace("(", r"\(")
                       .replace(")", r"\)").replace(".", r"\.")):
        L.from_torch(make())


def test_unsupported_funcdl_modules_are_named():
    with pytest.raises(L.UnsupportedModuleError, match="AttentionHead has no torch counterpart"):
        L.to_torch(L.AttentionHead(8, 4, rngs=nnx.Rngs(0)))
    with pytest.raises(L.UnsupportedModuleError, match="sinusoidal PositionalEmbedding"):
        L.to_torch(L.PositionalEmbedding(4, 2, kind="sinusoidal"))
    with pytest.raises(TypeError, match="expects a torch.nn.Module, got dict"):
        L.from_torch({})


class Doubler(nn.Module):
    """A torch module funcdl does not ship: a later layer plugs in by declaring itself."""

    def __init__(self, scale):
        super().__init__()
        self.scale = nn.Parameter(torch.full((3,), float(scale)))

    def forward(self, x):
        return 2 * x * self.scale


@torch_layer(f"{__name__}.Doubler", keys=lambda m: {"scale": m.scale},
             example=lambda torch: Example(_Doubler(1.0), Doubler(1.0), sample(2, 3)),
             from_torch=lambda t, b: _Doubler(0.0), to_torch=lambda m, b: Doubler(0.0))
class _Doubler(nnx.Module):
    def __init__(self, scale):
        self.scale = nnx.Param(jnp.full((3,), scale))

    def __call__(self, x):
        return tape.mul(tape.mul(x, 2.0), self.scale.get_value())


def test_a_new_layer_plugs_in_by_its_declaration_alone():
    t = nn.Sequential(Doubler(1.5), nn.ReLU())
    m = L.from_torch(t)
    assert isinstance(m[0], _Doubler)
    x = _x(2, 3)
    np.testing.assert_allclose(np.asarray(m(jnp.asarray(x.numpy()))), t(x).detach().numpy())
    assert torch.equal(L.to_torch(m)[0].scale, t[0].scale)
    assert declaration(_Doubler).torch.endswith(".Doubler")
    with pytest.raises(TypeError, match="both declare a from_torch builder"):
        torch_layer(f"{__name__}.Doubler", from_torch=lambda t, b: None)(type("Other", (), {}))


def test_every_declared_torch_counterpart_converts_both_ways():
    """Each layer whose declaration has a from_torch builder round-trips its own example."""
    from funcdl.layers.counterpart import declared_layers

    done = []
    for cls in declared_layers():
        decl = declaration(cls, inherit=False)
        if decl.from_torch is None or decl.example is None:
            continue
        ex = decl.example(torch)
        ex.torch_module.eval()
        m = L.from_torch(ex.torch_module)
        assert type(m) is cls, cls.__name__
        back = L.to_torch(m)
        assert repr(back) == repr(ex.torch_module), cls.__name__
        done.append(cls.__name__)
    assert {"Linear", "MultiHeadAttention", "TransformerEncoder", "Sequential", "GELU"} <= set(done)


def test_embedding_under_jit_with_ids_closed_over():
    """Concrete ids captured by a jitted function: the eager range check reads them with numpy
    (``int(ids.min())`` would be staged into the trace and fail)."""
    t = nn.Embedding(5, 3)
    m = L.from_torch(t)
    ids = jnp.asarray([[0, 4], [3, 1]])
    graphdef, params = nnx.split(m)
    got = jax.jit(lambda p: nnx.merge(graphdef, p)(ids))(params)
    np.testing.assert_array_equal(np.asarray(got), t(torch.tensor([[0, 4], [3, 1]])).detach())
