"""The losses and activations of issue 14 where the registry's random draws cannot go: at their
kinks and floors (the tape, jax.grad of the plain path and torch take the same slope), every
reduction (kl_div's "batchmean" and "mean"), weight= with ignore_index and label smoothing, and
bad inputs (torch called with the same input in the test: same error type and words)."""

from __future__ import annotations

import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as TF

from funcdl import check
from funcdl import tape as T


def engines(ours, theirs, *xs):
    """Values and gradients of a weighted sum of the outputs, by the tape, by jax.grad of the
    plain path and by torch: ``(values, tape grads, jax grads, torch values, torch grads)``."""
    xs = [np.asarray(x, np.float32) for x in xs]
    nums = tuple(range(len(xs)))

    def loss(*a):
        return check.weighted_sum(ours(*a))

    args = [jnp.asarray(x) for x in xs]
    ts = [torch.tensor(x, requires_grad=True) for x in xs]
    out = theirs(*ts)
    w = torch.from_numpy(check.weights_for([out])[0])
    (out * w).sum().backward()
    return (np.asarray(ours(*args)), T.grad(loss, nums)(*args), jax.grad(loss, nums)(*args),
            out.detach().numpy(), [t.grad.numpy() for t in ts])


def assert_three_way(ours, theirs, *xs, rtol=1e-6, atol=1e-7):
    value, tape_g, jax_g, torch_value, torch_g = engines(ours, theirs, *xs)
    np.testing.assert_allclose(value, torch_value, rtol=rtol, atol=atol, err_msg="value")
    for a, b, c in zip(tape_g, jax_g, torch_g, strict=True):
        np.testing.assert_allclose(a, c, rtol=rtol, atol=atol, err_msg="tape vs torch")
        np.testing.assert_allclose(b, c, rtol=rtol, atol=atol, err_msg="jax.grad vs torch")


W3 = np.array([0.25, 0.5, 2.0], np.float32)
KINKS = {
    "elu": (lambda x: T.elu(x, 0.5), lambda x: TF.elu(x, 0.5), [0.0, -1.0]),
    "selu": (T.selu, TF.selu, [0.0]),
    "celu": (lambda x: T.celu(x, 2.0), lambda x: TF.celu(x, 2.0), [0.0]),
    "hardtanh": (lambda x: T.hardtanh(x, -0.5, 2.0), lambda x: TF.hardtanh(x, -0.5, 2.0),
                 [-0.5, 2.0]),
    "relu6": (T.relu6, TF.relu6, [0.0, 6.0]),
    "hardsigmoid": (T.hardsigmoid, TF.hardsigmoid, [-3.0, 3.0]),
    "hardswish": (T.hardswish, TF.hardswish, [-3.0, 3.0]),
    "leaky_relu": (T.leaky_relu, TF.leaky_relu, [0.0]),
    "softsign": (T.softsign, TF.softsign, [0.0]),
    "logsigmoid": (T.logsigmoid, TF.logsigmoid, [-100.0, 100.0, 0.0]),
    "mish": (T.mish, TF.mish, [-100.0, 100.0, 0.0]),
    "tanhshrink": (T.tanhshrink, TF.tanhshrink, [0.0, 30.0]),
    "prelu": (lambda x: T.prelu(x.reshape(2, 3), W3), lambda x: TF.prelu(x.reshape(2, 3),
                                                                         torch.from_numpy(W3)),
              [0.0, 0.0]),
}


@pytest.mark.parametrize("name", KINKS)
def test_activations_take_torchs_slope_at_their_kinks(name):
    ours, theirs, kinks = KINKS[name]
    x = np.array(kinks + [k + s for k in kinks[:2] for s in (-1e-3, 1e-3)], np.float32)[:6]
    x = np.pad(x, (0, 6 - len(x)), constant_values=0.7)
    assert_three_way(ours, theirs, x, rtol=1e-5, atol=1e-6)


def test_activation_nodes_have_torchs_grad_fn_names():
    x = np.array([[-1.0, 0.5, 2.0, -0.25]], np.float32)
    for name in ("elu", "selu", "celu", "relu6", "hardtanh", "hardsigmoid", "hardswish", "mish",
                 "softsign", "tanhshrink", "logsigmoid"):
        ours = getattr(T, name)(T.tensor(x, requires_grad=True)).grad_fn.name()
        theirs = getattr(TF, name)(torch.tensor(x, requires_grad=True)).grad_fn.name()
        assert ours == theirs, name


def _pair(d):
    return np.asarray(d, np.float32), np.zeros(len(d), np.float32)


@pytest.mark.parametrize("ours, theirs, x, t", [
    (T.l1_loss, TF.l1_loss, *_pair([0.0, 0.0, 1.0])),
    (lambda x, t: T.smooth_l1_loss(x, t, beta=0.5), lambda x, t: TF.smooth_l1_loss(x, t, beta=0.5),
     *_pair([0.0, 0.5, -0.5, 0.25, -1.0])),
    (lambda x, t: T.smooth_l1_loss(x, t, beta=0.0), lambda x, t: TF.smooth_l1_loss(x, t, beta=0.0),
     *_pair([0.0, 0.5, -0.5])),
    (lambda x, t: T.huber_loss(x, t, delta=0.5), lambda x, t: TF.huber_loss(x, t, delta=0.5),
     *_pair([0.0, 0.5, -0.5, 0.25, -1.0])),
    (lambda x, t: T.margin_ranking_loss(x, t, jnp.ones(3), 0.5),
     lambda x, t: TF.margin_ranking_loss(x, t, torch.ones(3), 0.5),
     np.array([1.0, 2.0, 0.0], np.float32), np.array([0.5, 0.0, 0.0], np.float32)),
], ids=["l1 at 0", "smooth_l1 at 0 and +-beta", "smooth_l1 beta=0", "huber at 0 and +-delta",
        "margin_ranking at the hinge"])
def test_losses_take_torchs_slope_at_their_kinks(ours, theirs, x, t):
    assert_three_way(ours, theirs, x, t)


def test_binary_cross_entropy_floors_and_slopes_are_torchs_in_both_engines():
    x = np.array([0.0, 1.0, 1e-30, 0.5, 1.0 - 2**-24], np.float32)
    t = np.array([1.0, 0.0, 0.3, 1.0, 0.0], np.float32)
    value, tape_g, jax_g, torch_value, torch_g = engines(
        lambda x, t: T.binary_cross_entropy(x, t, reduction="none"),
        lambda x, t: TF.binary_cross_entropy(x, t, reduction="none"), x, t)
    np.testing.assert_allclose(value, torch_value, rtol=1e-6)
    assert value[0] == value[1] == 100.0  # log floored at -100: finite at exactly 0 and 1
    for ours in (tape_g, jax_g):
        np.testing.assert_allclose(ours[0], torch_g[0], rtol=1e-6)  # -1e12, 1e12, -3e11, ...
        np.testing.assert_allclose(ours[1], torch_g[1], rtol=1e-5)  # +-inf at 0 and 1


def test_target_gradients_stay_finite_where_torchs_are_nan():
    """poisson_nll_loss(full=True) and kl_div at a target of 0: torch's target gradient is NaN
    (a masked or 0 * log 0 term); funcdl's is the limit, and both engines agree on it."""
    x = np.array([0.3, -0.2, 0.1], np.float32)
    t = np.array([0.0, 2.0, 0.0], np.float32)
    for ours, theirs in ((lambda x, t: T.poisson_nll_loss(x, t, full=True),
                          lambda x, t: TF.poisson_nll_loss(x, t, full=True)),
                         (lambda x, t: T.kl_div(x, t, reduction="sum"),
                          lambda x, t: TF.kl_div(x, t, reduction="sum"))):
        value, tape_g, jax_g, torch_value, torch_g = engines(ours, theirs, x, t)
        np.testing.assert_allclose(value, torch_value, rtol=1e-6)
        assert np.isnan(torch_g[1][0]) and np.isfinite(tape_g[1]).all()
        np.testing.assert_allclose(tape_g[1], jax_g[1], rtol=1e-6)
        np.testing.assert_allclose(tape_g[1][1], torch_g[1][1], rtol=1e-6)  # away from 0
        np.testing.assert_allclose(tape_g[0], torch_g[0], rtol=1e-6)


@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "batchmean", "sum", "none"])
def test_kl_div_every_reduction(reduction, log_target):
    rng = np.random.default_rng(0)
    x = np.log(rng.dirichlet(np.ones(4), 3)).astype(np.float32)
    q = rng.dirichlet(np.ones(4), 3).astype(np.float32)
    t = np.log(q) if log_target else q
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_three_way(lambda x, t: T.kl_div(x, t, reduction=reduction, log_target=log_target),
                         lambda x, t: TF.kl_div(x, t, reduction=reduction, log_target=log_target),
                         x, t, rtol=1e-5, atol=1e-6)
    ours = warned(lambda: T.kl_div(x, t, reduction=reduction))
    assert ours == warned(lambda: TF.kl_div(torch.from_numpy(x), torch.from_numpy(t),
                                            reduction=reduction))
    assert len(ours) == (reduction == "mean")


def warned(call):
    """(category, message) of each warning ``call()`` gives."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return [(w.category, str(w.message)) for w in caught]


def test_kl_div_batchmean_divides_by_the_batch_only():
    x, t = np.log(np.full((2, 5), 0.2, np.float32)), np.full((2, 5), 0.1, np.float32)
    per_row = 5 * 0.1 * (np.log(0.1) - np.log(0.2))
    np.testing.assert_allclose(T.kl_div(x, t, reduction="batchmean"), per_row, rtol=1e-6)
    np.testing.assert_allclose(T.kl_div(x[0], t[0], reduction="batchmean"), per_row / 5,
                               rtol=1e-6)  # a 1-D input's "batch" is its length, as torch's


CLASSES = np.random.default_rng(1).normal(size=(4, 3, 2)).astype(np.float32)
WEIGHT = np.array([0.5, 2.0, 1.5], np.float32)


@pytest.mark.parametrize("target, kwargs", [
    ([[0, 1], [2, -100], [1, 1], [-100, 0]], dict(weight=WEIGHT)),
    ([[0, 1], [2, -100], [1, 1], [-100, 0]], dict(weight=WEIGHT, label_smoothing=0.2)),
    ([[0, 1], [2, 2], [1, 1], [0, 0]], dict(weight=WEIGHT, ignore_index=1)),
    ([[0, 1], [2, 2], [1, 1], [0, 0]], dict(weight=WEIGHT, ignore_index=1, label_smoothing=0.3)),
    ([[-100, -100]] * 4, dict(weight=WEIGHT)),  # nothing kept: the mean is NaN, as torch's
])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("loss", ["cross_entropy", "nll_loss"])
def test_weight_ignore_index_and_smoothing_together(loss, target, kwargs, reduction):
    if loss == "nll_loss" and "label_smoothing" in kwargs:
        return
    tgt = np.asarray(target)
    kw = {k: v for k, v in kwargs.items() if k != "weight"}
    ours = getattr(T, loss)(CLASSES, tgt, weight=WEIGHT, reduction=reduction, **kw)
    theirs = getattr(TF, loss)(torch.from_numpy(CLASSES), torch.from_numpy(tgt),
                               weight=torch.from_numpy(WEIGHT), reduction=reduction, **kw)
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-5, atol=1e-6)


def test_nll_loss_shapes_torch_accepts():
    x = np.random.default_rng(2).normal(size=(2, 3, 2, 2)).astype(np.float32)
    t = np.array([[[0, 1], [2, 0]], [[1, 1], [-100, 2]]])
    for inp, tgt in ((x, t), (x[0, :, 0, 0], np.array(2)), (x[0, :, 0, 0], np.array([2]))):
        for reduction in ("mean", "none"):
            ours = T.nll_loss(inp, tgt, reduction=reduction)
            theirs = TF.nll_loss(torch.from_numpy(inp), torch.from_numpy(tgt),
                                 reduction=reduction)
            np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-6)


def test_probability_targets_with_weight_and_smoothing():
    p = np.random.default_rng(3).dirichlet(np.ones(3), (4, 2)).transpose(0, 2, 1)
    p = p.astype(np.float32)
    for reduction in ("mean", "sum", "none"):
        ours = T.cross_entropy(CLASSES, p, WEIGHT, reduction=reduction, label_smoothing=0.1)
        theirs = TF.cross_entropy(torch.from_numpy(CLASSES), torch.from_numpy(p),
                                  torch.from_numpy(WEIGHT), reduction=reduction,
                                  label_smoothing=0.1)
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-5)


def test_weights_are_differentiated_where_torch_refuses():
    with pytest.raises(RuntimeError, match="not differentiable with respect to argument 'weight'"):
        TF.nll_loss(torch.zeros(2, 3), torch.tensor([0, 2]), torch.ones(3, requires_grad=True))

    def loss(w):
        return T.cross_entropy(CLASSES, np.array([[0, 1], [2, 0], [1, 1], [0, 2]]), w)

    np.testing.assert_allclose(T.grad(loss)(WEIGHT), jax.grad(loss)(WEIGHT), rtol=1e-5)


def test_binary_cross_entropy_out_of_range_is_nan_under_a_bare_jit():
    x = jnp.array([0.2, 1.5])
    t = jnp.array([1.0, 0.0])
    assert np.isnan(jax.jit(T.binary_cross_entropy)(x, t))
    assert np.isfinite(jax.jit(T.binary_cross_entropy)(x.at[1].set(0.5), t))


def _t(*shape, low=0.0):
    return np.random.default_rng(4).uniform(low, 1.0, shape).astype(np.float32)


# (ours, theirs): funcdl.tape and torch.nn.functional on the same bad input
BAD = {
    "nll batch": ("nll_loss", (_t(3, 4), np.array([0, 1])), {}),
    "nll float target": ("nll_loss", (_t(3, 4), _t(3)), {}),
    "nll bool target": ("nll_loss", (_t(3, 4), np.array([True, False, True])), {}),
    "nll out of range": ("nll_loss", (_t(3, 4), np.array([0, 1, 7])), {}),
    "nll weight shape": ("nll_loss", (_t(3, 4), np.array([0, 1, 2]), _t(2)), {}),
    "nll 0-d input": ("nll_loss", (np.float32(1.0), np.array(0)), {}),
    "nll 1-d target of 2": ("nll_loss", (_t(4), np.array([2, 1])), {}),
    "nll multi-target": ("nll_loss", (_t(3, 4), np.zeros((3, 2), int)), {}),
    "nll nd target": ("nll_loss", (_t(2, 4, 2, 2, 1), np.zeros((2, 2, 2, 2), int)), {}),
    "nll reduction": ("nll_loss", (_t(3, 4), np.array([0, 1, 2])), {"reduction": "avg"}),
    "ce weight shape": ("cross_entropy", (_t(3, 4), np.array([0, 1, 2]), _t(2)), {}),
    "ce smoothing": ("cross_entropy", (_t(3, 4), np.array([0, 1, 2])),
                     {"label_smoothing": 1.5}),
    "kl reduction": ("kl_div", (_t(3, 4), _t(3, 4)), {"reduction": "batch"}),
    "kl shapes": ("kl_div", (_t(3, 4), _t(2, 4)), {"reduction": "sum"}),
    "bce input range": ("binary_cross_entropy", (np.array([1.5, 0.2], np.float32),
                                                 np.array([1.0, 0.0], np.float32)), {}),
    "bce target range": ("binary_cross_entropy", (_t(3), np.array([1.5, 0, 1], np.float32)), {}),
    "bce target size": ("binary_cross_entropy", (_t(3, 1), _t(3)), {}),
    "bce weight": ("binary_cross_entropy", (_t(3, 2), _t(3, 2), _t(4)), {}),
    "bce weight grows": ("binary_cross_entropy", (_t(3, 2), _t(3, 2), _t(5, 3, 2)), {}),
    "bce logits weight": ("binary_cross_entropy_with_logits", (_t(3, 2), _t(3, 2), _t(4)), {}),
    "bce logits weight grows": ("binary_cross_entropy_with_logits", (_t(3, 2), _t(3, 2),
                                                                     _t(5, 3, 2)), {}),
    "l1 weight shape": ("l1_loss", (_t(3), _t(3)), {"weight": _t(2)}),
    "l1 shapes": ("l1_loss", (_t(3), _t(2)), {}),
    "smooth_l1 beta": ("smooth_l1_loss", (_t(3), _t(3)), {"beta": -1.0}),
    "huber delta": ("huber_loss", (_t(3), _t(3)), {"delta": 0.0}),
    "huber weighted reduction": ("huber_loss", (_t(3), _t(3)),
                                 {"weight": _t(3), "reduction": "avg"}),
    "poisson reduction": ("poisson_nll_loss", (_t(3), _t(3)), {"reduction": "avg"}),
    "cosine widths": ("cosine_embedding_loss", (_t(3, 4), _t(3, 5), np.ones(3, int)), {}),
    "cosine target size": ("cosine_embedding_loss", (_t(3, 4), _t(3, 4), np.ones(2, int)), {}),
    "cosine 1-d target": ("cosine_embedding_loss", (_t(4), _t(4), np.ones(1, int)), {}),
    "cosine multi-target": ("cosine_embedding_loss", (_t(3, 4), _t(3, 4), np.ones((3, 1), int)),
                            {}),
    "ranking dims": ("margin_ranking_loss", (_t(3), _t(3, 1), _t(3)), {}),
    "ranking shapes": ("margin_ranking_loss", (_t(3), _t(2), _t(3)), {}),
    "glu odd": ("glu", (_t(3, 5),), {}),
    "glu scalar": ("glu", (np.float32(1.0),), {}),
    "glu dim": ("glu", (_t(3, 4),), {"dim": 2}),
    "prelu channels": ("prelu", (_t(2, 4), _t(3)), {}),
    "prelu 1-d": ("prelu", (_t(4), _t(4)), {}),
    "prelu 2-d weight": ("prelu", (_t(2, 3), _t(3, 1)), {}),
    "celu alpha 0": ("celu", (_t(3),), {"alpha": 0.0}),
    "hardtanh bounds": ("hardtanh", (_t(3), 1.0, -1.0), {}),
    "rms_norm shape": ("rms_norm", (_t(3, 4), (3,)), {}),
    "rms_norm empty": ("rms_norm", (_t(3, 4), ()), {}),
    "rms_norm dims": ("rms_norm", (_t(4), (2, 4)), {}),
    "rms_norm weight": ("rms_norm", (_t(3, 4), (4,), _t(3)), {}),
}


def _torch_arg(x):
    if isinstance(x, np.ndarray | np.generic):
        a = np.asarray(x)
        return torch.from_numpy(a.astype(np.int64) if a.dtype.kind in "iu" else a)
    return x


def _words(message):
    return set(re.findall(r"[A-Za-z_]+|\d+", message))


@pytest.mark.parametrize("case", BAD)
def test_bad_inputs_raise_torchs_error(case):
    name, args, kwargs = BAD[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the target-size warning before l1's error
        with pytest.raises(Exception) as theirs:
            getattr(TF, name)(*map(_torch_arg, args), **{k: _torch_arg(v)
                                                         for k, v in kwargs.items()})
        with pytest.raises(Exception) as ours:
            getattr(T, name)(*args, **kwargs)
    assert isinstance(ours.value, type(theirs.value)), (ours.value, theirs.value)
    # the same words (a broadcast error may name the two sides in the other order)
    assert _words(str(theirs.value)) <= _words(str(ours.value)), (ours.value, theirs.value)
