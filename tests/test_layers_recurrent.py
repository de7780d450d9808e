"""RNN, LSTM, GRU and their cells against torch.nn (weights loaded from the torch module,
batch_first=True): outputs, final states and gradients (input, initial state, every weight) within
1e-5, uni- and bidirectional, 1 and 2 layers, with and without lengths (pack_padded_sequence on
the torch side) and h0; the tape's gradients against jax.grad's; torch's errors; a compiled
program that does not grow with the sequence length."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from funcdl import check
from funcdl import layers as L
from funcdl import tape as T

RNG = np.random.default_rng(0)
X = RNG.normal(size=(3, 6, 4)).astype(np.float32)  # (B, T, F)
LENGTHS = np.array([6, 2, 4])
CONFIGS = [  # (class, constructor kwargs, use lengths and h0)
    ("RNN", dict(num_layers=1, nonlinearity="relu"), False),
    ("RNN", dict(num_layers=2, bidirectional=True), True),
    ("LSTM", dict(num_layers=2, bidirectional=True), True),
    ("LSTM", dict(num_layers=2, bidirectional=True, proj_size=2), True),
    ("GRU", dict(num_layers=1), False),
    ("GRU", dict(num_layers=2, bidirectional=True), True),
]


def pair(name, kwargs, seed=0):
    torch.manual_seed(seed)
    theirs = getattr(torch.nn, name)(4, 3, batch_first=True, **kwargs)
    ours = getattr(L, name)(4, 3, rngs=nnx.Rngs(seed), **kwargs)
    L.load_torch_state_dict(ours, theirs.state_dict())
    return ours, theirs


def initial_state(name, kwargs):
    n = kwargs["num_layers"] * (2 if kwargs.get("bidirectional") else 1)
    h = RNG.normal(size=(n, 3, kwargs.get("proj_size") or 3)).astype(np.float32)
    return (h, RNG.normal(size=(n, 3, 3)).astype(np.float32)) if name == "LSTM" else h


def weights_like(tree):
    return [np.random.default_rng(i).uniform(0.5, 1.5, np.shape(a)).astype(np.float32)
            for i, a in enumerate(jax.tree.leaves(tree, is_leaf=lambda v: isinstance(v, T.Tensor)))]


def torch_run(theirs, hx, lengths):
    x = torch.tensor(X, requires_grad=True)
    thx = None if hx is None else jax.tree.map(lambda a: torch.tensor(a, requires_grad=True), hx)
    if lengths is None:
        out, state = theirs(x, thx)
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(lengths),
                                                         batch_first=True, enforce_sorted=False)
        out, state = theirs(packed, thx)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=6)
    outs = [out] + (list(state) if isinstance(state, tuple) else [state])
    sum(o.mul(torch.tensor(w)).sum() for o, w in zip(outs, weights_like(outs))).backward()
    grads = {"x": x.grad.numpy(), **{k: p.grad.numpy() for k, p in theirs.named_parameters()}}
    if thx is not None:
        grads["hx"] = [t.grad.numpy() for t in jax.tree.leaves(thx)]
    return [o.detach().numpy() for o in outs], grads


@pytest.mark.parametrize("name, kwargs, padded", CONFIGS,
                         ids=[f"{n}-{k['num_layers']}{'bi' if k.get('bidirectional') else ''}"
                              f"{'-proj' if 'proj_size' in k else ''}" for n, k, _ in CONFIGS])
def test_outputs_states_and_gradients_equal_torch(name, kwargs, padded):
    ours, theirs = pair(name, kwargs)
    hx = initial_state(name, kwargs) if padded else None
    lengths = LENGTHS if padded else None
    want, want_grads = torch_run(theirs, hx, lengths)
    graphdef, params = nnx.split(ours)

    def loss(params, x, hx):
        out = nnx.merge(graphdef, params)(x, hx, lengths=lengths)
        return check.weighted_sum(out)

    @jax.jit
    def run(params, x, hx):
        out = nnx.merge(graphdef, params)(x, hx, lengths=lengths)
        return out, jax.grad(loss, (0, 1, 2))(params, x, hx), T.grad(loss, (0, 1, 2))(params, x,
                                                                                      hx)

    out, grads, tape_grads = run(params, jnp.asarray(X), hx)
    for got, ref in zip(jax.tree.leaves(out), want, strict=True):
        np.testing.assert_allclose(np.asarray(got), ref, atol=1e-5, rtol=1e-5)
    assert check.leafwise_relative(tape_grads, grads) < 1e-5  # the tape agrees with jax.grad
    nnx.update(ours, grads[0])  # the parameter gradients, in torch's layout and keys
    weight_grads = L.to_torch_state_dict(ours)
    for key, ref in want_grads.items():
        got = {"x": grads[1], "hx": jax.tree.leaves(grads[2])}.get(key, weight_grads.get(key))
        for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True):
            np.testing.assert_allclose(np.asarray(g), r, atol=1e-5, rtol=1e-5, err_msg=key)


@pytest.mark.parametrize("name, kwargs", [("RNNCell", dict(nonlinearity="relu")),
                                          ("LSTMCell", {}), ("GRUCell", {})])
def test_cells_equal_torch_batched_and_unbatched(name, kwargs):
    torch.manual_seed(1)
    theirs = getattr(torch.nn, name)(4, 3, **kwargs)
    ours = getattr(L, name)(4, 3, rngs=nnx.Rngs(0), **kwargs)
    L.load_torch_state_dict(ours, theirs.state_dict())
    h = RNG.normal(size=(3, 3)).astype(np.float32)
    hx = (h, h * 0.5) if name == "LSTMCell" else h
    x = torch.tensor(X[:, 0], requires_grad=True)
    out = theirs(x, jax.tree.map(torch.tensor, hx))
    leaves = list(out) if isinstance(out, tuple) else [out]
    sum(o.sum() * (i + 1) for i, o in enumerate(leaves)).backward()

    def loss(x):
        got = ours(x, hx)
        parts = list(got) if isinstance(got, tuple) else [got]
        return sum(T.sum(p) * (i + 1) for i, p in enumerate(parts))

    got = ours(jnp.asarray(X[:, 0]), hx)
    for g, r in zip(jax.tree.leaves(got), leaves, strict=True):
        np.testing.assert_allclose(np.asarray(g), r.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(np.asarray(T.grad(loss)(jnp.asarray(X[:, 0]))),
                               x.grad.numpy(), atol=1e-5)
    single = ours(jnp.asarray(X[0, 0]))
    expect = theirs(torch.tensor(X[0, 0]))
    for g, r in zip(jax.tree.leaves(single), jax.tree.leaves(expect, is_leaf=torch.is_tensor)):
        np.testing.assert_allclose(np.asarray(g), r.detach().numpy(), atol=1e-5)


def test_unbatched_and_sequence_first_inputs():
    ours, theirs = pair("GRU", dict(num_layers=2, bidirectional=True))
    out, h = ours(jnp.asarray(X[0]))
    want, want_h = theirs(torch.tensor(X[0]))
    np.testing.assert_allclose(np.asarray(out), want.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(np.asarray(h), want_h.detach().numpy(), atol=1e-5)
    seq_first = L.GRU(4, 3, 2, bidirectional=True, batch_first=False, rngs=nnx.Rngs(0))
    nnx.update(seq_first, nnx.state(ours))
    out_t, _ = seq_first(jnp.asarray(X.transpose(1, 0, 2)))
    np.testing.assert_allclose(np.asarray(out_t).transpose(1, 0, 2), np.asarray(ours(X)[0]),
                               atol=1e-6)


def test_dropout_between_layers_only_while_training():
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        L.LSTM(4, 3, 1, dropout=0.5, rngs=nnx.Rngs(0))
    ours = L.GRU(4, 3, 2, dropout=0.5, rngs=nnx.Rngs(0))
    a, b = ours(X[:, :2])[0], ours(X[:, :2])[0]
    assert not np.allclose(np.asarray(a), np.asarray(b))  # fresh masks each call
    ours.eval()
    theirs = torch.nn.GRU(4, 3, 2, dropout=0.5, batch_first=True).eval()
    theirs.load_state_dict({k: torch.tensor(v) for k, v in L.to_torch_state_dict(ours).items()})
    np.testing.assert_allclose(np.asarray(ours(X[:, :2])[0]),
                               theirs(torch.tensor(X[:, :2]))[0].detach().numpy(), atol=1e-5)


ERRORS = [  # (what, funcdl call, torch call), both raising the same message
    ("input size", lambda m: m(X[..., :3]), lambda t: t(torch.tensor(X[..., :3]))),
    ("4-D input", lambda m: m(X[None]), lambda t: t(torch.tensor(X[None]))),
    ("h0 of a wrong shape", lambda m: m(X, (np.zeros((1, 3, 3)), np.zeros((4, 3, 3)))),
     lambda t: t(torch.tensor(X), (torch.zeros(1, 3, 3), torch.zeros(4, 3, 3)))),
    ("c0 of a wrong shape", lambda m: m(X, (np.zeros((4, 3, 3)), np.zeros((4, 2, 3)))),
     lambda t: t(torch.tensor(X), (torch.zeros(4, 3, 3), torch.zeros(4, 2, 3)))),
    ("a 2-D h0 for batched input", lambda m: m(X, (np.zeros((4, 3)), np.zeros((4, 3)))),
     lambda t: t(torch.tensor(X), (torch.zeros(4, 3), torch.zeros(4, 3)))),
    ("a length <= 0", lambda m: m(X, lengths=[6, 0, 2]),
     lambda t: torch.nn.utils.rnn.pack_padded_sequence(torch.tensor(X), torch.tensor([6, 0, 2]),
                                                       batch_first=True, enforce_sorted=False)),
]


@pytest.mark.parametrize("ours_call, torch_call", [e[1:] for e in ERRORS],
                         ids=[e[0] for e in ERRORS])
def test_errors_are_torchs(ours_call, torch_call):
    ours, theirs = pair("LSTM", dict(num_layers=2, bidirectional=True))
    with pytest.raises(Exception) as want:
        torch_call(theirs)
    with pytest.raises(type(want.value)) as got:
        ours_call(ours)
    assert str(got.value) == str(want.value)


def test_other_errors():
    with pytest.raises(ValueError, match="lengths must be at most the sequence length 6"):
        L.GRU(4, 3, rngs=nnx.Rngs(0))(X, lengths=[7, 2, 2])
    for make, message in [(lambda: L.GRU(4, 3, proj_size=2, rngs=nnx.Rngs(0)),
                           "proj_size argument is only supported for LSTM, not RNN or GRU"),
                          (lambda: L.RNN(4, 3, nonlinearity="gelu", rngs=nnx.Rngs(0)),
                           "Unknown nonlinearity 'gelu'. Select from 'tanh' or 'relu'.")]:
        with pytest.raises(ValueError, match=message):
            make()
    cell = L.GRUCell(4, 3, rngs=nnx.Rngs(0))
    with pytest.raises(RuntimeError, match="hidden0 has inconsistent hidden_size: got 2, expec"):
        cell(X[:, 0], np.zeros((3, 2), np.float32))


def test_compiled_program_does_not_grow_with_length():
    ours, _ = pair("LSTM", dict(num_layers=2, bidirectional=True))
    graphdef, params = nnx.split(ours)

    def program(frames):
        loss = lambda p, x: T.sum(nnx.merge(graphdef, p)(x)[0])  # noqa: E731
        x = jnp.zeros((3, frames, 4), jnp.float32)
        return jax.jit(T.grad(loss)).lower(params, x).as_text()

    assert program(10).count("\n") == program(200).count("\n")
