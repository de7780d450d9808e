"""The Tensor and the engine: PyTorch's autograd semantics, proved against torch and jax.grad."""

from __future__ import annotations

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from funcdl import tape as T
from funcdl.tape.tensor import apply  # the engine's one entry for every op

# --- the slides' sigmoid example ---------------------------------------------------------------


def test_slides_sigmoid_example():
    x = T.tensor(1.0, requires_grad=True)
    y = T.sigmoid(x)
    z = 2 * y
    assert x.is_leaf and x.grad_fn is None and x.grad is None
    assert not y.is_leaf and y.grad_fn.name().startswith("SigmoidBackward")
    assert z.grad_fn.name().startswith("MulBackward")
    assert round(float(y.data), 2) == 0.73  # the slides' y.data
    z.backward()
    # slides: dz/dy = 2, dy/dx = 0.73 * 0.27 = 0.1971, x.grad = 0.39
    assert x.grad.item() == pytest.approx(0.3932, abs=5e-5)
    # the graph: z's node points at (constant 2 -> None) and SigmoidBackward; that at x's sink
    (const, _), (sig, _) = z.grad_fn.next_functions
    assert const is None and sig is y.grad_fn
    (acc, _), = y.grad_fn.next_functions
    assert isinstance(acc, T.AccumulateGrad) and acc.variable is x


def test_node_names_are_pytorchs():
    xt = torch.tensor([1.0, 2.0], requires_grad=True)
    x = T.tensor([1.0, 2.0], requires_grad=True)
    w = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    pairs = [
        (lambda a: a * 2, lambda a: a * 2), (lambda a: a + 1, lambda a: a + 1),
        (T.sigmoid, torch.sigmoid), (T.tanh, torch.tanh), (T.exp, torch.exp),
        (lambda a: a.sum(), lambda a: a.sum()), (lambda a: T.matmul(a, a), lambda a: a @ a),
        (lambda a: T.matmul(jnp.asarray(w), a), lambda a: torch.tensor(w) @ a),
        (lambda a: T.linear(T.reshape(a, (1, 2)), jnp.asarray(w), jnp.ones(2)),
         lambda a: torch.nn.functional.linear(a.reshape(1, 2), torch.tensor(w), torch.ones(2))),
        (T.relu, torch.relu), (lambda a: a[0], lambda a: a[0]),
        (lambda a: T.transpose(T.reshape(a, (1, 2)), 0, 1),
         lambda a: a.reshape(1, 2).transpose(0, 1)),
    ]
    for ours, theirs in pairs:
        assert ours(x).grad_fn.name() == type(theirs(xt).grad_fn).__name__


# --- backward semantics against torch -------------------------------------------------------------


def torch_grads(fn, *arrays):
    ts = [torch.tensor(np.asarray(a), requires_grad=True) for a in arrays]
    fn(*ts).backward()
    return [t.grad.numpy() for t in ts]


def tape_grads(fn, *arrays):
    ts = [T.tensor(a, requires_grad=True) for a in arrays]
    fn(*ts).backward()
    return [np.asarray(t.grad) for t in ts]


@pytest.mark.parametrize("fn", [
    lambda x, y: (x * x + x * y + y).sum(),  # fan-out: x used three times
    lambda x, y: ((x + y) ** 2 / (1 + y * y)).mean(),  # broadcast (3,1) with (4,)
    lambda x, y: (x @ y[None, :1] - 2 ** x).abs().sum() + (1 - x).sum() * 0.5,
    lambda x, y: (x[:, 0] * y[[0, 2, 2]]).sum() + x[-1].sum(),  # slicing, repeated indices
])
def test_backward_matches_torch(fn):
    x = np.arange(1, 4, dtype=np.float32).reshape(3, 1) / 3
    y = np.linspace(-1, 1, 4, dtype=np.float32)
    for ours, ref in zip(tape_grads(fn, x, y), torch_grads(fn, x, y)):
        np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)


def test_mixing_with_arrays_and_numbers():
    x = T.tensor([1.0, 2.0], requires_grad=True)
    for out in (np.ones(2, np.float32) * x, jnp.ones(2) + x, 2 ** x, x ** 2, 1 - x, x / 2,
                jnp.ones((2, 2)) @ x, -x):
        assert isinstance(out, T.Tensor) and out.grad_fn is not None
    cmp = x > 1.5
    assert isinstance(cmp, jax.Array) and cmp.dtype == jnp.bool_ and cmp.tolist() == [False, True]
    assert (x == x).tolist() == [True, True]


def test_astype_casts_the_gradient_back():
    def f(x):
        return T.sum(T.astype(T.astype(x, jnp.bfloat16) * 3, jnp.float32) ** 2)

    x = jnp.array([0.5, -1.25, 2.0])
    g = T.grad(f)(x)
    assert g.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(g), np.asarray(jax.grad(f)(x)))


def test_grad_accumulates_and_zeroes():
    x = T.tensor(3.0, requires_grad=True)
    (x * x).backward()
    (x * x).backward()
    assert x.grad.item() == 12.0  # 2 * (2 x), as torch accumulates
    x.grad.zero_()
    (x * 2).backward()
    assert x.grad.item() == 2.0


def test_second_backward_needs_retain_graph():
    x = T.tensor(2.0, requires_grad=True)
    y = T.exp(x) * x
    y.backward(retain_graph=True)
    y.backward()
    assert x.grad.item() == pytest.approx(2 * 3 * np.exp(2.0), rel=1e-6)
    with pytest.raises(RuntimeError, match="Trying to backward through the graph a second time"):
        y.backward()


def test_non_scalar_backward_needs_gradient():
    x = T.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = x * x
    with pytest.raises(RuntimeError, match="grad can be implicitly created only for scalar"):
        y.backward()
    y.backward(gradient=jnp.array([1.0, 0.5, 0.0]))
    np.testing.assert_allclose(np.asarray(x.grad), [2.0, 2.0, 0.0])
    with pytest.raises(RuntimeError, match="Mismatch in shape"):
        (x * 2).backward(gradient=jnp.ones(2))


def test_broadcast_error_in_torchs_words():
    with pytest.raises(RuntimeError) as ref:
        torch.ones(2, 3) + torch.ones(4)
    for a in (jnp.ones((2, 3)), T.tensor(jnp.ones((2, 3)), requires_grad=True)):
        with pytest.raises(RuntimeError) as ours:
            T.add(a, jnp.ones(4))
        assert str(ours.value) == str(ref.value)
    assert "non-singleton dimension 1" in str(ref.value)


def test_requires_grad_on_integers_is_refused():
    with pytest.raises(RuntimeError, match="Only Tensors of floating point and complex dtype"):
        T.tensor([1, 2], requires_grad=True)
    with pytest.raises(TypeError, match="grad requires real- or complex-valued inputs"):
        T.grad(lambda i: T.sum(i * 1.0))(jnp.arange(3))


def test_grad_needs_scalar_output():
    with pytest.raises(TypeError, match="Gradient only defined for scalar-output functions"):
        T.grad(lambda x: x * 2)(jnp.ones(3))


def test_escaped_tensor_is_refused_with_a_clear_message():
    kept = []

    def f(x):
        y = x * 2
        kept.append(y)
        return T.sum(y)

    T.grad(f)(jnp.ones(2))
    jax.jit(T.grad(f))(jnp.ones(2))
    for y in kept:
        with pytest.raises(RuntimeError, match="has finished"):
            T.exp(y)
        with pytest.raises(RuntimeError, match="has finished"):
            y.backward(gradient=jnp.ones(2))


def test_tensor_kept_from_a_jit_trace_is_refused_clearly():
    kept = []

    @jax.jit
    def f(x):
        t = T.tensor(x, requires_grad=True) * 2  # eager-style Tensor inside jit, no grad call
        kept.append(t)
        return t.data

    f(1.0)
    with pytest.raises(RuntimeError, match="tracer of a finished jax.jit/vmap trace"):
        T.exp(kept[0])


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch's own anomaly-mode chatter
def test_detect_anomaly_names_the_op():
    def f(x):
        return T.sum(T.sqrt(x) * 0.0)  # sqrt'(0) = inf, times 0: NaN

    g = T.grad(f)(jnp.zeros(2))
    assert np.isnan(np.asarray(g)).all()  # silent without the switch, as in torch
    with T.detect_anomaly():
        with pytest.raises(RuntimeError, match="Function 'SqrtBackward0' returned nan values "
                                               "in its 0th output") as err:
            T.grad(f)(jnp.zeros(2))
    assert "T.sqrt(x)" in str(err.value)  # the forward call's line is shown
    xt = torch.zeros(2, requires_grad=True)
    with torch.autograd.detect_anomaly(), pytest.raises(RuntimeError, match="SqrtBackward0"):
        (torch.sqrt(xt) * 0.0).sum().backward()


def test_no_grad_and_inplace_updates():
    w = T.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        w -= 1.0
    (w * w).sum().backward()
    with T.no_grad():
        y = w * 3
        w -= 0.1 * w.grad
    assert y.grad_fn is None and not y.requires_grad
    np.testing.assert_allclose(np.asarray(w.data), [0.8, 1.6], rtol=1e-6)
    assert T.is_grad_enabled()


def test_inplace_change_of_a_saved_input_is_detected():
    w = T.tensor([1.0, 2.0], requires_grad=True)
    x = T.tensor([3.0, 4.0])
    y = (w * x).sum()
    x += 1.0
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


def test_indexing_errors_in_torchs_words():
    with pytest.raises(IndexError, match="invalid index of a 0-dim tensor"):
        T.tensor(1.0)[0]
    with pytest.raises(IndexError, match="index 3 is out of bounds for dimension 0 with size 3"):
        T.tensor([1.0, 2.0, 3.0])[3]
    with pytest.raises(IndexError, match=r"Dimension out of range \(expected to be in range of "
                                         r"\[-2, 1\], but got 2\)"):
        T.softmax(jnp.ones((2, 2)), dim=2)


def test_tapes_are_per_thread():
    """Concurrent grad calls never see each other's tape."""
    results, errors = {}, []
    barrier = threading.Barrier(4)

    def work(k):
        try:
            barrier.wait()
            for _ in range(5):
                results[k] = T.grad(lambda x: T.sum(T.tanh(x * k)))(jnp.ones(3))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for k, g in results.items():
        np.testing.assert_allclose(np.asarray(g), k * (1 - np.tanh(k) ** 2) * np.ones(3),
                                   rtol=1e-3)


def test_with_tape_block_gradient():
    x = T.tensor([0.5, -1.0], requires_grad=True)
    with T.Tape() as t:
        y = T.tanh(x)
        loss = T.sum(y * y)
        gx, gy = t.gradient(loss, [x, y])
    np.testing.assert_allclose(np.asarray(gy), 2 * np.tanh([0.5, -1.0]), rtol=1e-6)
    ref = jax.grad(lambda a: jnp.sum(jnp.tanh(a) ** 2))(jnp.array([0.5, -1.0]))
    np.testing.assert_allclose(np.asarray(gx), np.asarray(ref), rtol=1e-6)
    with pytest.raises(RuntimeError, match="has finished"):
        T.exp(y)


# --- grad / value_and_grad ---------------------------------------------------------------------


def test_value_and_grad_shapes_like_jax():
    def f(params, x, scale):
        h = T.tanh(T.matmul(x, params["w"]) + params["b"][0])
        return T.mean(h * h) * scale, {"h": h}

    params = {"w": jnp.ones((3, 2)) * 0.1, "b": [jnp.zeros(2), jnp.ones(())]}
    x = jnp.arange(6.0).reshape(2, 3)
    for argnums in (0, (0, 2)):
        (v, aux), g = T.value_and_grad(f, argnums, has_aux=True)(params, x, 2.0)
        (rv, raux), rg = jax.value_and_grad(f, argnums, has_aux=True)(params, x, 2.0)
        assert jax.tree.structure(g) == jax.tree.structure(rg)
        assert isinstance(aux["h"], jax.Array)
        np.testing.assert_allclose(v, rv, rtol=1e-6)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g, rg)
    g, aux = T.grad(f, has_aux=True)(params, x, 2.0)
    assert jax.tree.structure(g) == jax.tree.structure(params)


# --- higher order ------------------------------------------------------------------------------


def test_create_graph_backward_gives_second_derivative():
    x = T.tensor(0.7, requires_grad=True)
    y = T.tanh(x) * x ** 3
    y.backward(create_graph=True)
    first = x.grad
    assert first.grad_fn is not None
    x.grad = None
    first.backward()
    f = lambda a: jnp.tanh(a) * a ** 3  # noqa: E731
    assert first.item() == pytest.approx(float(jax.grad(f)(0.7)), rel=1e-5)
    assert x.grad.item() == pytest.approx(float(jax.grad(jax.grad(f))(0.7)), rel=1e-5)


SECOND_ORDER = {
    "tanh_softmax": lambda x: T.sum(T.tanh(x) * T.softmax(x)) + T.logsumexp(x * x),
    "layer_norm_gelu": lambda x: T.sum(T.gelu(T.layer_norm(x, 4)) * jnp.arange(4.0)),
    "matmul_sigmoid": lambda x: T.sum(T.sigmoid(T.matmul(jnp.eye(4) + 0.1, x)) ** 2),
    "div_sqrt_var": lambda x: T.var(x) / T.sqrt(T.sum(x * x) + 1.0) + T.amax(T.exp(x) / 3),
    "cross_entropy": lambda x: T.cross_entropy(T.reshape(x, (2, 2)), jnp.array([1, 0]),
                                               label_smoothing=0.1),
}


@pytest.mark.parametrize("name", sorted(SECOND_ORDER))
def test_tape_hessian_equals_jax_hessian(name):
    f = SECOND_ORDER[name]
    x = jnp.array([0.3, -0.8, 1.1, 0.2])

    @jax.jit  # one compile for both, instead of an eager compile per op and shape
    def hessians(x):
        rows = [T.grad(lambda a, e=e: T.sum(T.grad(f)(a) * e))(x) for e in jnp.eye(4)]
        return jnp.stack(rows), jax.hessian(f)(x)

    ours, ref = hessians(x)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


def test_nested_grad_eager_and_jitted():
    f = lambda x: T.sum(T.sigmoid(x) ** 3 * x)  # noqa: E731
    x = jnp.array([0.5, -1.5])
    ref = jax.grad(lambda a: jnp.sum(jax.grad(f)(a)))(x)
    g2 = T.grad(lambda a: T.sum(T.grad(f)(a)))
    np.testing.assert_allclose(np.asarray(g2(x)), ref, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(jax.jit(g2)(x)), ref, rtol=1e-5)
    scalar = T.grad(T.grad(lambda s: T.tanh(s) ** 3))
    assert float(scalar(0.3)) == pytest.approx(
        float(jax.grad(jax.grad(lambda s: jnp.tanh(s) ** 3))(0.3)), rel=1e-5)


# --- Function, gradcheck, graph ---------------------------------------------------------------


class RealFFT(T.Function):
    """y_k = Re(FFT(x, nfft))_k: the slides' FFT Function with a correct backward."""

    @staticmethod
    def forward(ctx, x, nfft):
        ctx.n = x.shape[-1]
        return jnp.real(jnp.fft.fft(x, nfft))

    @staticmethod
    def backward(ctx, grad):
        # dL/dx_j = sum_k g_k cos(2 pi j k / nfft) = Re(nfft * ifft(g))_j for j < n
        return jnp.real(jnp.fft.ifft(grad) * grad.shape[-1])[..., :ctx.n], None


class SlidesFFT(T.Function):
    """The slides' code verbatim in spirit: backward = grad_output * result (not the gradient)."""

    @staticmethod
    def forward(ctx, i, nfft):
        result = jnp.real(jnp.fft.fft(i, nfft))
        ctx.save_for_backward(result)
        return result

    @staticmethod
    def backward(ctx, grad_output):
        (result,) = ctx.saved_tensors
        return grad_output * result, None


def test_function_fft_matches_jax_and_passes_gradcheck():
    x = jnp.array([0.5, -1.0, 2.0, 0.25])
    ref = jax.grad(lambda a: jnp.sum(jnp.real(jnp.fft.fft(a, 6)) ** 2))(x)
    xt = T.tensor(x, requires_grad=True)
    out = RealFFT.apply(xt, 6)
    assert out.grad_fn.name() == "RealFFTBackward"
    T.sum(out ** 2).backward()
    np.testing.assert_allclose(np.asarray(xt.grad), ref, rtol=1e-5, atol=1e-5)
    # on plain arrays it is a jax.custom_vjp: jax.grad runs the same backward
    np.testing.assert_allclose(jax.grad(lambda a: jnp.sum(RealFFT.apply(a, 6) ** 2))(x), ref,
                               rtol=1e-5, atol=1e-5)
    assert T.gradcheck(lambda a: RealFFT.apply(a, 6), x)


def test_gradcheck_catches_the_slides_fft_backward():
    x = jnp.array([0.5, -1.0, 2.0, 0.25])
    with pytest.raises(T.GradcheckError, match="Jacobian mismatch for output 0 with respect to "
                                               "input 0"):
        T.gradcheck(lambda a: SlidesFFT.apply(a, 4), x)
    assert not T.gradcheck(lambda a: SlidesFFT.apply(a, 4), x, raise_exception=False)


def test_gradcheck_passes_for_tape_functions_in_float64():
    x = np.random.default_rng(0).normal(size=(2, 3))
    assert T.gradcheck(lambda a, b: T.layer_norm(T.gelu(T.matmul(a, b)), 2), x, x.T)
    assert T.gradcheck(lambda a: T.cross_entropy(a, jnp.array([2, 0]), label_smoothing=0.2), x)


def test_graph_text_and_dot(tmp_path):
    x = T.tensor(1.0, requires_grad=True)
    z = 2 * T.sigmoid(x)
    assert T.graph_text(z).splitlines() == [
        "MulBackward0", "  SigmoidBackward0", "    AccumulateGrad () float32"]
    dot = T.graph_dot(z)
    assert dot.startswith("digraph") and dot.count("->") == 2 and "SigmoidBackward0" in dot
    path = T.render(z, tmp_path / "g.dot")
    assert path.read_text() == dot
    import shutil

    if shutil.which("dot") is None:
        with pytest.raises(RuntimeError, match="needs Graphviz"):
            T.render(z, tmp_path / "g.png")


def test_retained_non_leaf_grad_accumulates_across_backward_calls_like_torch():
    a = T.tensor(jnp.ones(2), requires_grad=True)
    b = T.mul(a, 3.0)
    b.retain_grad()
    c = T.sum(T.mul(b, b))
    c.backward(retain_graph=True)
    c.backward()
    ta = torch.ones(2, requires_grad=True)
    tb = ta * 3.0
    tb.retain_grad()
    tc = (tb * tb).sum()
    tc.backward(retain_graph=True)
    tc.backward()
    np.testing.assert_allclose(b.grad.data, tb.grad.numpy())  # [12, 12]
    np.testing.assert_allclose(a.grad.data, ta.grad.numpy())


@pytest.mark.parametrize("op", ["sum", "mean", "amax", "var", "logsumexp"])
def test_empty_dim_tuple_reduces_every_dim_in_backward_too(op):
    # torch (and funcdl.ops) read dim=() as "all dims"; the backward rule must agree. The
    # reference reduces over (0, 1) explicitly: torch's own var(dim=()) backward fails on a shape
    # check and its logsumexp refuses dim=().
    x = np.arange(12.0, dtype=np.float32).reshape(3, 4) / 10
    g = T.grad(lambda x: getattr(T, op)(x, dim=()))(jnp.asarray(x))
    t = torch.tensor(x, requires_grad=True)
    getattr(torch, op)(t, dim=(0, 1)).backward()
    np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch warns: degrees of freedom <= 0
def test_var_gradient_with_nothing_left_after_correction_is_nan_like_torch():
    x = jnp.arange(4.0).reshape(1, 4)
    g = T.grad(lambda x: T.sum(T.var(x, dim=0)))(x)  # one row, correction 1: 0/0
    t = torch.tensor(np.asarray(x), requires_grad=True)
    torch.var(t, dim=0).sum().backward()
    np.testing.assert_array_equal(np.isnan(g), np.isnan(t.grad.numpy()))
    assert np.isnan(g).all()


def test_tape_gradient_follows_ops_recorded_before_it_or_on_an_outer_tape():
    """An inner tape's gradient reaches a leaf through ops it did not record (they are on the
    outer tape): the true value, as torch.autograd.grad gives, not a silent 0."""
    x = T.tensor(2.0, requires_grad=True)
    with T.Tape() as outer:
        y = x * 3
        with T.Tape() as inner:
            z = y * x
        inner_dx, inner_dy = inner.gradient(z, [x, y])
        assert float(outer.gradient(z, x)) == 12.0
    with pytest.raises(RuntimeError, match="This Tape is closed"):
        outer.gradient(z, x)
    xt = torch.tensor(2.0, requires_grad=True)
    yt = xt * 3
    zt = yt * xt
    ref_dx, ref_dy = torch.autograd.grad(zt, [xt, yt])
    assert float(inner_dx) == float(ref_dx) == 12.0 and float(inner_dy) == float(ref_dy)


# --- eager kernels: an op's forward closure is jitted once it is seen again ---------------------

TRACES = [0]


def _rolled(shift: int):
    def forward(v):
        TRACES[0] += 1  # runs once per eager call, or once per trace of a jitted copy
        return jnp.roll(v, shift)

    return forward


def test_an_eager_forward_seen_again_runs_as_a_shared_jitted_kernel():
    x = T.tensor(np.arange(6.0, dtype=np.float32), requires_grad=True)
    TRACES[0] = 0
    outs = [apply("Roll", _rolled(2), (x,)) for _ in range(4)]
    for out in outs:
        np.testing.assert_array_equal(out.data, np.roll(np.arange(6.0), 2))
    assert TRACES[0] == 2  # the first call as it is, then one trace shared by calls 2-4
    outs = [apply("Roll", _rolled(3), (x,)) for _ in range(2)]  # another static value: its own
    np.testing.assert_array_equal(outs[1].data, np.roll(np.arange(6.0), 3))


def test_an_eager_forward_with_python_control_flow_on_values_stays_eager():
    x = T.tensor(np.array([1.0, -3.0], np.float32), requires_grad=True)

    def make(scale: int):
        return lambda v: v * scale if float(v.sum()) > 0 else -v  # needs a concrete value

    for _ in range(3):
        np.testing.assert_array_equal(apply("Flip", make(2), (x,)).data, [-1.0, 3.0])
