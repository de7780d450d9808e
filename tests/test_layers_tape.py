"""One definition, two engines: gradients of encoder losses w.r.t. every parameter by jax.grad and
by funcdl.tape.grad through the same NNX modules (nnx.merge inside the differentiated function)."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from funcdl import layers as L
from funcdl import tape
from funcdl.check import compare_with_jax, leafwise_relative

B, T, D, H, FF = 2, 5, 16, 4, 32


def loss_of(module, x, kpm):
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)

    def loss(p):
        y = nnx.merge(graphdef, p, rest)(x, key_padding_mask=kpm)
        return tape.mean(tape.mul(y, tape.tanh(y)))  # written once, with tape functions

    return loss, params


@pytest.fixture(scope="module")
def data():
    x = jax.random.normal(jax.random.key(0), (B, T, D))
    kpm = jnp.zeros((B, T), bool).at[0, 3:].set(True)
    return x, kpm


@pytest.mark.parametrize("norm_first", [True, False])
def test_encoder_layer_grads_tape_equal_jax(data, norm_first):
    layer = L.TransformerEncoderLayer(D, H, FF, norm_first=norm_first, rngs=nnx.Rngs(1))
    layer.eval()
    result = compare_with_jax(*loss_of(layer, *data))
    assert jax.tree.structure(result.jax_grads) == jax.tree.structure(result.tape_grads)
    assert result.leaves == 12  # in/out proj, linear1/2 (w, b), norm1/2
    assert result.leafwise < 1e-5


def test_stacked_encoder_grads_tape_equal_jax(data):
    """Through the encoder's scan: one tape.scan node for the tape, lax.scan for jax.grad."""
    enc = L.TransformerEncoder(2, D, H, FF, final_norm=True, unroll=False, rngs=nnx.Rngs(2))
    enc.eval()
    assert compare_with_jax(*loss_of(enc, *data)).leafwise < 1e-5


def test_unrolled_encoder_equals_the_scanned_one(data):
    """``unroll=True`` runs the same stacked layers in a Python loop: in training mode (dropout)
    it draws the same masks, gives the same output and the same gradients (by either engine) as
    the scanned encoder, whose gradient by jax.grad is the reference."""
    x, kpm = data

    def run(unroll, value_and_grad):
        enc = L.TransformerEncoder(2, D, H, FF, dropout=0.3, unroll=unroll, rngs=nnx.Rngs(2))
        graphdef, params, rest = nnx.split(enc, nnx.Param, ...)

        def loss(p):
            y = nnx.merge(graphdef, p, rest, copy=True)(x, key_padding_mask=kpm)
            return tape.mean(tape.mul(y, y))

        return jax.jit(value_and_grad(loss))(params)

    ref_loss, ref_grads = run(False, jax.value_and_grad)
    for value_and_grad in (jax.value_and_grad, tape.value_and_grad):
        got_loss, got_grads = run(True, value_and_grad)
        assert abs(float(got_loss) - float(ref_loss)) < 1e-6 * abs(float(ref_loss))
        assert leafwise_relative(got_grads, ref_grads) < 1e-5


def test_training_mode_tape_and_jax_draw_the_same_dropout_masks(data):
    """Training mode: both engines draw the same dropout masks from the same rng state."""
    x, kpm = data
    layer = L.TransformerEncoderLayer(D, H, FF, dropout=0.3, rngs=nnx.Rngs(3))
    layer.train()
    graphdef, params, rest = nnx.split(layer, nnx.Param, ...)

    def loss(p, rest):
        # copy=True: fresh Variables at this trace level, so dropout may advance their RngCount
        # (NNX forbids mutating Variables created outside a jax transform from inside it).
        y = nnx.merge(graphdef, p, rest, copy=True)(x, key_padding_mask=kpm)
        return tape.sum(tape.mul(y, y))

    g_jax = jax.jit(jax.grad(loss))(params, rest)
    loss_train, g_tape = jax.jit(tape.value_and_grad(loss))(params, rest)
    assert leafwise_relative(g_tape, g_jax) < 1e-5
    layer.eval()  # `deterministic` lives in the graphdef: split again
    graphdef, params, rest = nnx.split(layer, nnx.Param, ...)
    assert abs(float(jax.jit(loss)(params, rest)) - float(loss_train)) > 1e-2  # dropout was on
