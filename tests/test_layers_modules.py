"""Module behaviour: train/eval dropout, rng streams, the scanned encoder, the classifier and MLM
head, positional tables, and bad input."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from funcdl import layers as L

D, H, FF = 16, 4, 32

# Compiled calls (NNX propagates the advanced rng counts out of the jit); eager calls would
# compile op by op, and the encoder's scan body anew on every call.
call = nnx.jit(lambda m, x: m(x))
call_kpm = nnx.jit(lambda m, x, kpm: m(x, key_padding_mask=kpm))


def test_parameters_are_jax_randoms_draws_for_their_shape():
    """Layers draw their initial parameters flat and reshape them (one compile per size): the
    values are exactly what jax.random draws for the parameter's shape from the same key."""
    conv, emb = L.Conv2d(3, 4, 3, rngs=nnx.Rngs(5)), L.Embedding(7, 6, rngs=nnx.Rngs(6))
    keys = nnx.Rngs(5)
    w_key, b_key = keys.params(), keys.params()
    bound = 1 / math.sqrt(3 * 3 * 3)
    np.testing.assert_array_equal(conv.weight[...], jax.random.uniform(
        w_key, (4, 3, 3, 3), minval=-bound, maxval=bound))
    np.testing.assert_array_equal(conv.bias[...], jax.random.uniform(
        b_key, (4,), minval=-bound, maxval=bound))
    np.testing.assert_array_equal(emb.weight[...], jax.random.normal(nnx.Rngs(6).params(),
                                                                     (7, 6)))


def test_dropout_train_eval_and_fresh_masks_each_call():
    drop = L.Dropout(0.25, rngs=nnx.Rngs(0))
    x = jnp.ones((4000,))
    a, b = np.asarray(drop(x)), np.asarray(drop(x))
    # inverted dropout: survivors scaled by 1/(1-p)
    assert set(np.unique(a).tolist()) <= {0.0, float(np.float32(1.0 / 0.75))}
    assert abs((a == 0).mean() - 0.25) < 0.03
    assert not np.array_equal(a, b)  # the stream advances
    drop.eval()
    np.testing.assert_array_equal(drop(x), x)


@pytest.mark.parametrize("unroll", [False, True])
def test_model_train_eval_switch_every_dropout(unroll):
    enc = L.TransformerEncoder(2, D, H, FF, dropout=0.5, unroll=unroll, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 5, D))
    enc.eval()
    assert all(m.deterministic for _, m in nnx.iter_modules(enc) if isinstance(m, L.Dropout))
    np.testing.assert_array_equal(call(enc, x), call(enc, x))
    enc.train()
    count = jnp.sum(jax.tree.leaves(nnx.state(enc, nnx.RngCount))[0])
    y1, y2 = call(enc, x), call(enc, x)
    assert not np.allclose(y1, y2)  # the layers (scanned too) hand their advanced rng counts back
    assert jnp.sum(jax.tree.leaves(nnx.state(enc, nnx.RngCount))[0]) > count


def test_scanned_encoder_equals_its_layers_applied_in_turn():
    enc = L.TransformerEncoder(3, D, H, FF, norm_first=False, unroll=False, rngs=nnx.Rngs(2))
    enc.eval()
    x = jax.random.normal(jax.random.key(3), (2, 5, D))
    kpm = jnp.array([[False] * 5, [False, False, True, True, True]])
    graphdef, state = nnx.split(enc.layers)
    h = x
    for i in range(3):  # independent of the scan: slice the stacked state by hand
        layer = nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], state))
        h = layer(h, key_padding_mask=kpm)
    np.testing.assert_allclose(call_kpm(enc, x, kpm), h, atol=1e-5)
    assert nnx.state(enc, nnx.Param)["layers"]["norm1"]["weight"].shape == (3, D)


@pytest.fixture(scope="module")
def classifier():
    m = L.TransformerClassifier(vocab_size=8, num_classes=3, embed_dim=D, num_heads=H, ff_dim=FF,
                                num_layers=1, max_len=6, rngs=nnx.Rngs(0))
    m.eval()
    return m


def test_classifier_unroll_gives_the_scanned_classifiers_logits(classifier):
    """``unroll`` reaches the encoder and changes how it runs, not what it computes; by default
    a stack of up to 4 layers is unrolled, a deeper one scanned."""
    ids = jnp.array([[1, 2, 3, 0, 0, 0], [4, 5, 6, 7, 1, 2]])
    scanned = L.TransformerClassifier(vocab_size=8, num_classes=3, embed_dim=D, num_heads=H,
                                      ff_dim=FF, num_layers=1, max_len=6, unroll=False,
                                      rngs=nnx.Rngs(0))
    scanned.eval()
    assert classifier.encoder.unroll and not scanned.encoder.unroll
    np.testing.assert_allclose(call(scanned, ids), call(classifier, ids), atol=1e-6)
    assert [L.TransformerEncoder(n, D, H, FF, rngs=nnx.Rngs(0)).unroll for n in (4, 5)] == [
        True, False]


def test_classifier_mean_aggregation_ignores_padding(classifier):
    ids = jnp.array([[1, 2, 3, 0, 0, 0], [4, 5, 6, 7, 1, 2]])
    kpm = jnp.array([[False] * 3 + [True] * 3, [False] * 6])
    out = call_kpm(classifier, ids, kpm)
    assert out.shape == (2, 3)
    other = call_kpm(classifier, ids.at[0, 3:].set(7), kpm)  # change the padding tokens
    np.testing.assert_allclose(out, other, atol=1e-5)
    # Padded sequence == the same 3 tokens alone (mean over real tokens only).
    short = call(classifier, ids[:1, :3])
    np.testing.assert_allclose(out[0], short[0], atol=1e-5)


def test_classifier_flatten_first_and_softmax_output():
    m = L.TransformerClassifier(8, 4, D, H, FF, 2, 6, aggregation="flatten",
                                decoder_hidden_sizes=(10,), output_activation="softmax",
                                rngs=nnx.Rngs(1))
    m.eval()
    ids = jnp.array([[1, 2, 3, 4, 5, 6]])
    p = call(m, ids)
    assert p.shape == (1, 4) and abs(float(p.sum()) - 1.0) < 1e-6
    assert m.decoder.layers[0].w.get_value().shape == (6 * D, 10)
    with pytest.raises(ValueError, match="needs sequences of exactly max_len=6"):
        m(ids[:, :4])
    first = L.TransformerClassifier(8, 2, D, H, FF, 1, 6, aggregation="first", rngs=nnx.Rngs(2))
    first.eval()
    # only position 0's representation reaches the decoder, but it attends to all tokens
    a, b = call(first, ids), call(first, ids.at[0, 5].set(0))
    assert a.shape == (1, 2) and not np.allclose(a, b)


def test_mlm_head_tied_to_the_embedding():
    emb = L.Embedding(11, D, rngs=nnx.Rngs(0))
    head = L.MLMHead(D, 11, embedding=emb, rngs=nnx.Rngs(1))
    h = jax.random.normal(jax.random.key(2), (2, 3, D))
    t = np.asarray(head.norm(jax.nn.gelu(head.dense(h), approximate=False)))
    want = t @ np.asarray(emb.weight.get_value()).T + np.asarray(head.bias.get_value())
    np.testing.assert_allclose(head(h), want, atol=1e-5)

    class Model(nnx.Module):
        def __init__(self):
            self.embedding, self.head = emb, head

        def __call__(self, ids):
            return self.head(self.embedding(ids))

    model = Model()
    params = nnx.state(model, nnx.Param)
    assert "embedding" not in params["head"]  # shared once, not copied
    g = nnx.jit(nnx.grad(lambda m: jnp.sum(m(jnp.array([[1, 2]]))[..., 5])))(model)
    assert float(jnp.abs(g["embedding"]["weight"][5]).sum()) > 0  # decoder use reaches the table
    untied = L.MLMHead(D, 11, rngs=nnx.Rngs(3))
    assert untied(h).shape == (2, 3, 11)


def test_sinusoidal_table_values_by_hand():
    table = np.asarray(L.sinusoidal_table(3, 4))
    want = np.array([[0, 1, 0, 1],
                     [math.sin(1), math.cos(1), math.sin(1 / 100), math.cos(1 / 100)],
                     [math.sin(2), math.cos(2), math.sin(2 / 100), math.cos(2 / 100)]])
    np.testing.assert_allclose(table, want, atol=1e-6)
    pe = L.PositionalEmbedding(3, 4, kind="sinusoidal")
    np.testing.assert_allclose(pe(jnp.zeros((1, 3, 4))), want[None], atol=1e-6)
    assert nnx.state(pe, nnx.Param) == nnx.State({})


def test_bad_input_at_call_time():
    pe = L.PositionalEmbedding(4, D, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"sequence length 5 is longer than the positional table "
                                         r"\(max_len=4\)"):
        pe(jnp.zeros((1, 5, D)))
    emb = L.Embedding(5, 3, rngs=nnx.Rngs(0))
    with pytest.raises(IndexError, match="index out of range in self"):
        emb(jnp.array([1, 5]))
    with pytest.raises(TypeError, match="integer dtype"):
        emb(jnp.array([1.0]))
    lin = L.Linear(3, 2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="in_features=3"):
        lin(jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match="in_features must be a positive integer, got 0"):
        L.Linear(0, 2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="aggregation must be"):
        L.TransformerClassifier(8, 2, D, H, FF, 1, 6, aggregation="max", rngs=nnx.Rngs(0))
