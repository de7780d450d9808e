"""Convolution, pooling, windows, batch_norm and dropout2d beyond what the op registry derives
(tests/test_tape_functions.py checks every declared case against jax.grad, jax.jvp and torch):
PyTorch's error messages word for word, float64, second derivatives against jax.hessian and
nested grads, torch's tie rule for maxima, return_indices, channel dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as TF

from funcdl import tape as T

RNG = np.random.default_rng(0)
X4 = RNG.standard_normal((2, 4, 5, 5)).astype(np.float32)


def _torch(a):
    return torch.from_numpy(np.asarray(a)) if isinstance(a, np.ndarray) else a


# (function, args, kwargs): funcdl and torch must raise the same type with the same words
BAD = [
    ("conv2d", (RNG.standard_normal((4, 5)), np.ones((6, 2, 3, 3))), {}),
    ("conv2d", (X4, np.ones((6, 4, 3, 3))), {"groups": 3}),
    ("conv2d", (X4, np.ones((5, 2, 3, 3))), {"groups": 2}),
    ("conv2d", (X4, np.ones((6, 3, 3, 3))), {}),
    ("conv2d", (X4, np.ones((6, 4, 7, 7))), {}),
    ("conv2d", (X4, np.ones((6, 4, 3, 3))), {"padding": "same", "stride": 2}),
    ("conv2d", (X4, np.ones((6, 4, 3, 3))), {"padding": "full"}),
    ("conv2d", (X4, np.ones((6, 4, 3, 3))), {"padding": -1}),
    ("conv2d", (X4, np.ones((6, 4, 3, 3))), {"stride": 0}),
    ("conv2d", (X4, np.ones((6, 4, 3, 3))), {"dilation": -1}),
    ("conv2d", (X4, np.ones((6, 4, 3, 3))), {"groups": 0}),
    ("conv2d", (X4, np.ones((6, 4, 3, 3)), np.ones(5)), {}),
    ("conv2d", (X4, np.ones((6, 4, 3, 3))), {"stride": (1, 1, 1)}),
    ("conv2d", (X4, np.ones((6, 4, 3)))),
    ("conv1d", (np.ones((2, 3, 4, 5)), np.ones((2, 3, 3))), {}),
    ("conv1d", (np.ones((1, 3, 2)), np.ones((2, 3, 3))), {}),
    ("conv_transpose2d", (X4, np.ones((4, 3, 3, 3))), {"stride": 2, "output_padding": 2}),
    ("conv_transpose1d", (X4[0], np.ones((4, 3, 3))), {"stride": 2, "output_padding": 2}),
    ("conv_transpose2d", (X4, np.ones((4, 3, 3, 3))), {"groups": 3}),
    ("conv_transpose2d", (X4, np.ones((3, 3, 3, 3))), {}),
    ("conv_transpose2d", (X4, np.ones((4, 3, 3, 3))), {"padding": "same"}),
    ("max_pool2d", (X4, 2), {"padding": 2}),
    ("max_pool2d", (np.ones((5, 5)), 2), {}),
    ("max_pool2d", (X4, 6), {}),
    ("max_pool2d", (X4, 2), {"stride": 0}),
    ("max_pool2d", (X4, 2), {"dilation": 0}),
    ("max_pool2d", (X4, 2), {"padding": -1}),
    ("max_pool2d", (X4, (2, 2, 2)), {}),
    ("max_pool1d", (np.ones(7), 3), {}),
    ("avg_pool2d", (X4, 6), {}),
    ("avg_pool2d", (np.ones((2, 0, 5, 5)), 2), {}),
    ("avg_pool1d", (np.ones(5), 2), {}),
    ("avg_pool2d", (X4, 2), {"divisor_override": 0}),
    ("adaptive_avg_pool2d", (X4, -1), {}),
    ("adaptive_avg_pool2d", (np.ones((5, 5)), 2), {}),
    ("adaptive_max_pool2d", (np.ones((5, 5)), 2), {}),
    ("unfold", (X4, 6), {}),
    ("unfold", (X4, 2), {"stride": 0}),
    ("unfold", (X4, 2), {"padding": -1}),
    ("fold", (np.ones((2, 13, 16)), (5, 5), 2), {}),
    ("fold", (np.ones((2, 12, 15)), (5, 5), 2), {}),
    ("fold", (np.ones((1, 2, 12, 16)), (5, 5), 2), {}),
    ("pad", (X4, (1, 2, 3)), {}),
    ("pad", (X4, (1,) * 10), {}),
    ("batch_norm", (np.ones((1, 3)), np.zeros(3), np.ones(3)), {"training": True}),
    ("batch_norm", (np.ones((4, 3, 5)), np.zeros(4), np.ones(3)), {"training": True}),
    ("batch_norm", (np.ones((4, 3, 5)), np.zeros(3), np.ones(3), np.ones(4)), {}),
    ("batch_norm", (np.ones((4, 3, 5)), None, None), {}),
]
BAD = [(*b, {}) if len(b) == 2 else b for b in BAD]


@pytest.mark.parametrize("name, args, kwargs", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_input_raises_torchs_error(name, args, kwargs):
    args = [a.astype(np.float32) if isinstance(a, np.ndarray) else a for a in args]
    with pytest.raises(Exception) as theirs:
        getattr(TF, name)(*[_torch(a) for a in args], **kwargs)
    with pytest.raises(type(theirs.value)) as ours:
        getattr(T, name)(*args, **kwargs)
    if name == "conv2d" and len(args[1].shape) == 3:  # torch names the stride for a 3-D weight
        assert "weight should have at least three dimensions" in str(ours.value) or \
            "stride" in str(ours.value)
    else:
        assert str(ours.value) == str(theirs.value)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # torch's copy note
def test_even_kernels_pad_same_as_torch_and_batch_1():
    x = RNG.standard_normal((1, 2, 6, 5)).astype(np.float32)
    for kernel, dilation in (((2, 4), 1), ((4, 2), (2, 1)), ((3, 2), 2)):
        w = RNG.standard_normal((3, 2) + kernel).astype(np.float32)
        want = TF.conv2d(_torch(x), _torch(w), padding="same", dilation=dilation)
        got = T.conv2d(x, w, padding="same", dilation=dilation)
        assert got.shape == (1, 3, 6, 5)
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)


def _pair(name, *args, **kwargs):
    """funcdl's and torch's gradient of a weighted sum of ``name``'s output w.r.t. the arrays."""
    weights = None

    def ours(*xs):
        nonlocal weights
        y = getattr(T, name)(*xs, *args, **kwargs)
        weights = np.random.default_rng(3).uniform(0.5, 1.5, tuple(y.shape))
        return T.sum(T.mul(y, weights.astype(xs[0].dtype)))

    def theirs(*xs):
        ts = [torch.tensor(x, requires_grad=True) for x in xs]
        y = getattr(TF, name)(*ts, *args, **kwargs)
        (y * torch.from_numpy(weights)).sum().backward()
        return y.detach().numpy(), [t.grad.numpy() for t in ts]

    return ours, theirs


@pytest.mark.parametrize("name, shapes, args, kwargs", [
    ("conv2d", [(1, 4, 5, 5), (6, 2, 3, 2)], (), {"stride": 2, "padding": 1, "groups": 2}),
    ("conv_transpose2d", [(2, 4, 3, 3), (4, 3, 2, 3)], (), {"stride": (2, 1), "padding": 1}),
    ("max_pool2d", [(2, 3, 5, 5)], (3,), {"stride": 2, "padding": 1, "ceil_mode": True}),
    ("avg_pool2d", [(2, 3, 5, 5)], (3,), {"stride": 2, "padding": 1, "ceil_mode": True,
                                         "count_include_pad": False}),
    ("adaptive_avg_pool2d", [(2, 3, 5, 7)], ((3, 4),), {}),
])
def test_float64_values_and_gradients_equal_torch(name, shapes, args, kwargs):
    xs = [RNG.standard_normal(s) for s in shapes]  # float64
    ours, theirs = _pair(name, *args, **kwargs)
    with jax.enable_x64(True):
        value, grads = T.value_and_grad(ours, tuple(range(len(xs))))(*xs)
        y = getattr(T, name)(*xs, *args, **kwargs)
    want_y, want_grads = theirs(*xs)
    assert y.dtype == jnp.float64 and grads[0].dtype == jnp.float64
    np.testing.assert_allclose(y, want_y, rtol=1e-12, atol=1e-12)
    for g, w in zip(grads, want_grads):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)


SECOND = {  # small functions whose Hessians the tape must give as jax.hessian does
    "conv2d": (lambda x, w: T.sum(T.tanh(T.conv2d(x, w, padding=1, stride=2, groups=2))),
               [(1, 2, 4, 3), (2, 1, 2, 2)]),
    "conv_transpose1d": (lambda x, w: T.sum(T.tanh(T.conv_transpose1d(x, w, stride=2,
                                                                     output_padding=1))),
                         [(1, 2, 4), (2, 1, 3)]),
    "avg_pool2d": (lambda x: T.sum(T.avg_pool2d(x, 2, 1, 1, count_include_pad=False) ** 3),
                   [(1, 1, 3, 3)]),
    "max_pool2d": (lambda x: T.sum(T.max_pool2d(x, 2, 1, dilation=(1, 2)) ** 3),
                   [(1, 1, 3, 4)]),
    "batch_norm": (lambda x, w: T.sum(T.tanh(T.batch_norm(x, None, None, w, None,
                                                          training=True))),
                   [(3, 2, 2), (2,)]),
}


@pytest.mark.parametrize("name", sorted(SECOND))
def test_second_derivatives_equal_jax_hessian(name):
    fn, shapes = SECOND[name]
    xs = [jnp.asarray(RNG.standard_normal(s).astype(np.float32)) for s in shapes]
    nums = tuple(range(len(xs)))

    @jax.jit  # one program: forward over reverse, reverse over reverse, and jax's own
    def both(*a):
        def norm(f):  # reverse over reverse: the backward rules are recorded, then differentiated
            return lambda *b: T.sum(T.mul(f(fn, nums)(*b)[0], f(fn, nums)(*b)[0]))

        return ((T.hessian(fn, nums)(*a), T.grad(norm(T.grad), nums)(*a)),
                (jax.hessian(fn, nums)(*a), jax.grad(norm(jax.grad), nums)(*a)))

    ours, ref = both(*xs)
    for h, r in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(h, r, rtol=1e-4, atol=1e-5)


def test_max_gradients_follow_torchs_first_maximum_on_ties():
    x = np.maximum(RNG.standard_normal((2, 2, 6, 6)), 0).astype(np.float32)  # relu zeros
    x[0, 0, :2, :2] = 1.5  # a window of equal maxima
    for name, args in (("max_pool2d", (2,)), ("max_pool2d", (3, 1, 1)),
                       ("adaptive_max_pool2d", ((4, 4),)), ("adaptive_max_pool2d", ((3, 2),))):
        ours, theirs = _pair(name, *args)
        grads = jax.jit(lambda x, f=ours: (T.grad(f)(x), jax.grad(f)(x)))(jnp.asarray(x))
        want_y, (want,) = theirs(x)
        np.testing.assert_array_equal(getattr(T, name)(x, *args), want_y)
        # the gradient goes where torch sends it (overlapping windows sum in another order)
        for g in grads:
            np.testing.assert_array_equal(np.asarray(g) == 0, want == 0, err_msg=f"{name}{args}")
            np.testing.assert_allclose(g, want, rtol=1e-6, err_msg=f"{name}{args}")


INDICES = [((3,), {"stride": 2, "padding": 1}), ((2,), {"dilation": 2, "ceil_mode": True}),
           (((2, 3),), {"stride": 1})]


def test_return_indices_equal_torchs():
    x = RNG.standard_normal((2, 3, 6, 7)).astype(np.float32)
    got = jax.jit(lambda x: [T.max_pool2d(x, *a, return_indices=True, **k)
                             for a, k in INDICES])(x)
    for (values, indices), (args, kwargs) in zip(got, INDICES):
        want_v, want_i = TF.max_pool2d(_torch(x), *args, return_indices=True, **kwargs)
        np.testing.assert_array_equal(values, want_v.numpy())
        np.testing.assert_array_equal(indices, want_i.numpy())


def test_tensor_unfold_is_torchs_with_its_gradient():
    x = RNG.standard_normal((3, 7)).astype(np.float32)
    t = T.tensor(x, requires_grad=True)
    y = t.unfold(1, 3, 2)
    w = torch.tensor(x, requires_grad=True)
    z = w.unfold(1, 3, 2)
    np.testing.assert_array_equal(y.data, z.detach().numpy())
    weights = np.arange(np.prod(z.shape), dtype=np.float32).reshape(tuple(z.shape))
    T.sum(T.mul(y, weights)).backward()
    (z * torch.from_numpy(weights)).sum().backward()
    np.testing.assert_array_equal(t.grad.data, w.grad.numpy())  # overlaps sum
    with pytest.raises(RuntimeError, match="maximum size for tensor at dimension 1 is 7"):
        t.unfold(1, 8, 1)


def test_dropout2d_zeroes_whole_channels_from_its_key():
    x = jnp.ones((8, 16, 3, 3))
    key = jax.random.key(0)
    y = np.asarray(T.dropout2d(x, 0.5, key=key))
    per_channel = y.reshape(8, 16, 9)
    assert np.all(per_channel.std(-1) == 0)  # each channel is all kept or all dropped
    assert set(np.unique(per_channel)) <= {0.0, 2.0} and 0.3 < np.mean(y == 0) < 0.7
    np.testing.assert_array_equal(T.dropout2d(x, 0.5, key=key), y)  # the key decides
    assert not np.array_equal(T.dropout2d(x, 0.5, key=jax.random.key(1)), y)
    np.testing.assert_array_equal(T.dropout2d(x, 0.5, training=False), x)
    assert np.all(np.asarray(T.dropout2d(x, 1.0, key=key)) == 0)
    t = T.tensor(np.asarray(x), requires_grad=True)
    T.sum(T.dropout2d(t, 0.5, key=key)).backward()
    np.testing.assert_array_equal(t.grad.data, y)  # the gradient is the mask
    with pytest.raises(ValueError, match="needs an explicit PRNG key"):
        T.dropout2d(x, 0.5)
