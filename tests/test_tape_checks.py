"""Bad indices and targets never give a plausible number: torch's errors eagerly, an error naming
the step inside fit's jitted steps (both engines), NaN under a bare jax.jit; torch's warning for a
loss target that broadcasts; a nested Tape.gradient through an outer tape's op."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from funcdl import layers as L
from funcdl import tape as F
from funcdl.ops import checks
from funcdl.optim import adamw
from funcdl.train import fit

OPT = adamw(1e-2)  # one object: fit reuses the steps it compiled for it
W = jnp.arange(20.0).reshape(10, 2)
LOGITS = jnp.zeros((4, 3))


@pytest.mark.parametrize("call, message", [
    (lambda: F.embedding(jnp.array([1, 12]), W), "index out of range in self: id 12"),
    (lambda: F.embedding(jnp.array([-1, 2]), W), "index out of range in self: id -1"),
    (lambda: F.take(W, jnp.array([3, -11])), "index out of range in self: id -11"),
    (lambda: F.getitem(W, jnp.array([0, 10])),
     "index 10 is out of bounds for dimension 0 with size 10"),
    (lambda: F.getitem(W, (Ellipsis, jnp.array([2]))),
     "index 2 is out of bounds for dimension 1 with size 2"),
    (lambda: F.cross_entropy(LOGITS, jnp.array([0, 1, 2, 5])), "Target 5 is out of bounds."),
    (lambda: F.cross_entropy(LOGITS, jnp.array([0, -1, 2, 1])), "Target -1 is out of bounds."),
])
def test_out_of_range_raises_eagerly_in_torchs_words(call, message):
    with pytest.raises(IndexError, match=message.replace(".", r"\.")):
        call()


def test_torch_refuses_the_same_inputs():
    w = torch.arange(20.0).reshape(10, 2)
    for bad in (lambda: torch.nn.functional.embedding(torch.tensor([1, 12]), w),
                lambda: torch.nn.functional.embedding(torch.tensor([-1]), w),
                lambda: w[torch.tensor([0, 10])],
                lambda: torch.nn.functional.cross_entropy(torch.zeros(4, 3),
                                                          torch.tensor([0, 1, 2, 5]))):
        with pytest.raises(IndexError):
            bad()


def test_in_range_ids_ignore_index_and_negative_getitem_are_accepted():
    assert F.getitem(W, jnp.array([-10])).tolist() == [[0.0, 1.0]]
    loss = F.cross_entropy(LOGITS, jnp.array([0, -100, 2, 1]))
    np.testing.assert_allclose(loss, np.log(3.0), rtol=1e-6)


def test_under_a_bare_jit_the_result_is_nan_not_a_clamped_value():
    rows = jax.jit(lambda i: F.embedding(i, W))(jnp.array([1, 12]))
    assert np.isfinite(rows[0]).all() and np.isnan(rows[1]).all()
    picked = jax.jit(lambda i: F.getitem(W, (i, 1)))(jnp.array([1, 12]))
    assert picked[0] == 3.0 and np.isnan(picked[1])
    assert np.isnan(jax.jit(lambda i: F.take(W, i))(jnp.array([10]))).all()
    loss = jax.jit(F.cross_entropy)(LOGITS, jnp.array([0, 1, 2, 5]))
    assert np.isnan(loss)  # was a finite mean, the bad row counted as 0.0


def test_a_collector_records_the_check_with_its_value_and_codes_stay_stable():
    registry: list[checks.Check] = []

    @jax.jit
    def forward(ids, target):
        with checks.collect(registry) as found:
            out = F.cross_entropy(F.embedding(ids, W)[:, :1].reshape(1, -1), target)
        return out, found.fault()

    _, ok = forward(jnp.array([1, 2]), jnp.array([0]))
    assert ok.tolist() == [0, 0]
    _, bad_id = forward(jnp.array([1, 49]), jnp.array([0]))
    _, bad_target = forward(jnp.array([1, 2]), jnp.array([7]))
    assert bad_id.tolist() == [1, 49] and bad_target.tolist() == [2, 7]
    with pytest.raises(IndexError, match="id 49 is outside"):
        checks.raise_fault(bad_id, registry)


class _Classifier(nnx.Module):
    """The path of TransformerClassifier's ids (an Embedding) and labels, small to compile."""

    def __init__(self):
        self.embedding = L.Embedding(20, 4, rngs=nnx.Rngs(0))
        self.head = L.Linear(4, 3, rngs=nnx.Rngs(1))

    def __call__(self, ids):
        return self.head(F.mean(self.embedding(ids), dim=1))


def _classifier() -> _Classifier:
    return _Classifier()


def _ce(model, batch):
    ids, y = batch
    return F.cross_entropy(model(ids), y)


def _data(high_id: int, label: int = 0) -> list:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 20, (3, 4, 4)).astype(np.int32)
    ids[1, 2, 3] = high_id  # the second batch holds the bad id
    y = np.full((3, 4), label, np.int32)
    return [(ids[i], y[i]) for i in range(3)]


def _params(model) -> list[np.ndarray]:
    return [np.asarray(v) for v in jax.tree.leaves(nnx.state(model, nnx.Param))]


@pytest.mark.parametrize("grad", ["jax", "tape"])
def test_fit_refuses_ids_beyond_the_vocabulary_naming_the_id_and_step(grad):
    one = _classifier()
    fit(one, OPT, _data(5)[:1], _ce, epochs=1, progress=False, grad=grad)  # batch 1 only
    model = _classifier()
    with pytest.raises(IndexError, match=r"id 49 is outside \[0, 20\) at step 1 \(epoch 1, "
                                         r"batch 2\).*parameters from before that step"):
        fit(model, OPT, _data(49), _ce, epochs=1, progress=False, grad=grad)
    for a, b in zip(_params(model), _params(one)):  # the bad batch changed nothing
        np.testing.assert_array_equal(a, b)


def test_fit_refuses_class_labels_out_of_range_in_training_and_in_evaluation():
    with pytest.raises(IndexError, match=r"Target 3 is out of bounds at step 0"):
        fit(_classifier(), OPT, _data(5, label=3), _ce, epochs=1, progress=False)
    with pytest.raises(IndexError, match=r"Target 7 is out of bounds in the evaluation after "
                                         r"epoch 1"):
        fit(_classifier(), OPT, _data(5), _ce, epochs=1, progress=False,
            eval_loader=_data(5, label=7))


def test_mse_loss_warns_like_torch_when_the_target_broadcasts():
    x, y = np.zeros((16, 1), np.float32), np.zeros(16, np.float32)
    with pytest.warns(UserWarning) as ours:
        F.mse_loss(x, y)
    with pytest.warns(UserWarning) as theirs:
        torch.nn.functional.mse_loss(torch.from_numpy(x), torch.from_numpy(y))
    assert str(ours[0].message) == str(theirs[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        F.mse_loss(x, x)  # same shapes: no warning


def test_losses_of_16_bit_inputs_are_computed_in_float32():
    big = jnp.full((4,), 300.0, jnp.float16)  # squared: 90000 > float16's 65504
    loss = F.mse_loss(big, jnp.zeros(4, jnp.float16))
    assert loss.dtype == jnp.float32 and loss == 90000.0
    ce = F.cross_entropy(jnp.zeros((2, 3), jnp.bfloat16), jnp.array([0, 2]))
    assert ce.dtype == jnp.float32
    g = F.grad(lambda x: F.mse_loss(x, jnp.zeros(4, jnp.float16)))(big)
    assert g.dtype == jnp.float16  # the gradient keeps its input's dtype
