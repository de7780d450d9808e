"""Recurrent layers, tape.scan and ctc_loss against their peers, in one process.

* ``recurrent.lstm_step`` / ``recurrent.gru_step``: one training step (forward, backward, SGD with
  momentum) of a 2-layer bidirectional LSTM / GRU, B=32, T=100, 13 -> 256 hidden, loss = mean
  squared output: funcdl by jax.grad (the base row), the same step by funcdl.tape's gradients,
  by jax.grad with the batch split over JAX's CPU devices where there are several (as
  ``fit(mesh="auto")`` splits it), and ``torch.nn.LSTM`` / ``GRU`` (batch_first) with
  ``torch.optim.SGD``.
* ``recurrent.scan_grad``: the gradient of one LSTM layer written as a ``tape.scan`` whose body
  closes over the weights, by the tape (base) and by ``jax.grad`` of the same function.
* ``recurrent.compile``: compile time of the LSTM training step at T=50 (base) and T=500: the
  compiled program holds one loop body, so the ratio stays near 1.
* ``recurrent.ctc``: ``ctc_loss`` forward and backward (T=200, N=32, C=40, S=50, mean): the
  tape's backward (alpha/beta posteriors), jax.grad of the same forward, and torch.

Each time is the best of a few medians taken in interleaved rounds (the machine is shared); torch
uses every core, as XLA's CPU client does, and also runs on one thread (a contention check).
"""

from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from flax import nnx

from benchmarks.harness import (
    Row,
    cpu_devices,
    data_parallel,
    interleaved,
    torch_device,
    torch_one_thread,
)
from funcdl import layers as L
from funcdl import optim
from funcdl import tape as T

BENCH = "recurrent"
DIMS, QUICK_DIMS = (32, 100, 256), (8, 20, 32)  # B, T, hidden


def _best(fns: dict, rounds: int) -> dict[str, float]:
    """``interleaved`` timings; a torch fn also runs on one thread (on an oversubscribed machine
    torch's thread pool can lose more than XLA's: that row shows how much is contention)."""
    fns = dict(fns)
    for name, fn in list(fns.items()):
        if name.startswith("torch"):
            fns[name.split(" (")[0] + ", 1 thread (contention check)"] = torch_one_thread(fn)
    return interleaved(fns, rounds, warmup=1, repeat=3, min_seconds=0.1)


def _funcdl_step(module: nnx.Module, value_and_grad):
    """A jitted SGD step (params, opt_state, x) -> (params, opt_state, loss) and its state."""
    graphdef, params = nnx.split(module)
    tx = optim.sgd(0.01, momentum=0.9)
    opt_state = jax.tree.map(jnp.copy, tx.init(params))

    def loss_fn(p, x):
        out, _ = nnx.merge(graphdef, p)(x)
        return T.mean(T.mul(out, out))

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(p, s, x):
        loss, g = value_and_grad(loss_fn)(p, x)
        updates, s = tx.update(g, s, p)
        return optax.apply_updates(p, updates), s, loss

    return step, params, opt_state


def _stepper(step, params, opt_state, x, split: bool = False):
    if split:
        (params, opt_state), x = data_parallel((params, opt_state), x)
    state = [params, opt_state]

    def run():
        state[0], state[1], loss = step(state[0], state[1], x)
        return loss

    return run


def _torch_stepper(module, x):
    opt = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9)

    def run():
        opt.zero_grad(set_to_none=True)
        out, _ = module(x)
        loss = out.pow(2).mean()
        loss.backward()
        opt.step()
        return loss

    return run


def _funcdl_runner(name: str, x: np.ndarray, hidden: int, value_and_grad,
                   split: bool = False):
    """A no-argument function running one training step of a 2-layer bidirectional ``name``
    ("LSTM", "GRU") on ``x`` (B, T, 13)."""
    module = getattr(L, name)(13, hidden, 2, bidirectional=True, rngs=nnx.Rngs(0))
    return _stepper(*_funcdl_step(module, value_and_grad), jnp.asarray(x), split=split)


def _train_step(name: str, b: int, t: int, hidden: int, rounds: int) -> list[Row]:
    x = np.random.default_rng(0).standard_normal((b, t, 13)).astype(np.float32)
    fns = {}
    n = cpu_devices()
    impls = [("funcdl (jit, jax.grad)", jax.value_and_grad, False),
             ("same step, gradients by funcdl.tape (jit)", T.value_and_grad, False)]
    if n > 1 and b % n == 0:
        impls.append((f"same step, batch split over {n} CPU devices", jax.value_and_grad, True))
    for impl, vg, split in impls:
        fns[impl] = _funcdl_runner(name, x, hidden, vg, split)
    torch.manual_seed(0)
    fns[f"torch (nn.{name} + optim.SGD)"] = _torch_stepper(
        getattr(torch.nn, name)(13, hidden, 2, batch_first=True, bidirectional=True).to(
            torch_device()), torch.from_numpy(x).to(torch_device()))
    case = f"train step, 2 layers bidirectional, B={b} T={t} 13->{hidden}"
    return [Row(f"{BENCH}.{name.lower()}_step", case, impl, sec, b / sec, "samples/s")
            for impl, sec in _best(fns, rounds).items()]


def _lstm_layer_loss(w_ih, w_hh, b, xs):
    """One LSTM layer as a tape.scan whose body closes over the weights; mean squared output."""
    gx = T.add(T.matmul(xs, w_ih), b)
    hidden = w_hh.shape[0]

    def body(carry, g):
        h, c = carry
        i, f, z, o = T.split(T.add(g, T.matmul(h, w_hh)), hidden, -1)
        c = T.add(T.mul(T.sigmoid(f), c), T.mul(T.sigmoid(i), T.tanh(z)))
        h = T.mul(T.sigmoid(o), T.tanh(c))
        return (h, c), h

    zeros = jnp.zeros((xs.shape[1], hidden), jnp.float32)
    _, hs = T.scan(body, (zeros, zeros), gx)
    return T.mean(T.mul(hs, hs))


def _scan_args(b: int, t: int, hidden: int) -> tuple:
    rng = np.random.default_rng(1)
    scale = 1 / np.sqrt(hidden)
    return (jnp.asarray(rng.uniform(-scale, scale, (13, 4 * hidden)), jnp.float32),
            jnp.asarray(rng.uniform(-scale, scale, (hidden, 4 * hidden)), jnp.float32),
            jnp.zeros((4 * hidden,), jnp.float32),
            jnp.asarray(rng.standard_normal((t, b, 13)), jnp.float32))


def _scan_grad(b: int, t: int, hidden: int, rounds: int) -> list[Row]:
    args = _scan_args(b, t, hidden)
    grads = {"funcdl.tape (scan, jit)": jax.jit(T.grad(_lstm_layer_loss, (0, 1, 2))),
             "jax.grad of the same function (jit)": jax.jit(jax.grad(_lstm_layer_loss,
                                                                     (0, 1, 2)))}
    case = f"gradient of one LSTM layer, B={b} T={t} 13->{hidden}, weights closed over"
    return [Row(f"{BENCH}.scan_grad", case, impl, sec)
            for impl, sec in _best({k: functools.partial(f, *args) for k, f in grads.items()},
                                   rounds).items()]


def _compile_rows(b: int, hidden: int, lengths: tuple[int, int]) -> list[Row]:
    """Lowering + compiling the LSTM step, best of two, at each length (ratio: long / short)."""
    rows = []
    for engine, vg in (("jax.grad", jax.value_and_grad), ("funcdl.tape", T.value_and_grad)):
        for t in lengths:
            best = float("inf")
            for _ in range(2):
                module = L.LSTM(13, hidden, 2, bidirectional=True, rngs=nnx.Rngs(0))
                step, params, opt_state = _funcdl_step(module, vg)
                x = jnp.zeros((b, t, 13), jnp.float32)
                t0 = time.perf_counter()
                step.lower(params, opt_state, x).compile()
                best = min(best, time.perf_counter() - t0)
            impl = f"funcdl T={t}" if t == lengths[0] else f"T={t} (ratio: this / T={lengths[0]})"
            rows.append(Row(f"{BENCH}.compile", f"LSTM train step by {engine}, lower + compile",
                            impl, best))
    return rows


def _ctc_fns(t: int, n: int, c: int, s: int) -> dict:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((t, n, c)).astype(np.float32)
    lp = x - np.log(np.exp(x).sum(-1, keepdims=True))
    targets = rng.integers(1, c, (n, s))
    il = rng.integers(t * 3 // 4, t + 1, n)
    tl = rng.integers(s // 2, s + 1, n)

    def loss(v):
        return T.ctc_loss(v, targets, il, tl, reduction="mean")

    ours = jax.jit(T.value_and_grad(loss))
    ref = jax.jit(jax.value_and_grad(loss))
    lp_j = jnp.asarray(lp)
    lp_t = torch.from_numpy(lp).requires_grad_()
    args = [torch.from_numpy(a) for a in (targets, il, tl)]

    def theirs():
        lp_t.grad = None
        out = torch.nn.functional.ctc_loss(lp_t, *args, reduction="mean")
        out.backward()
        return out

    return {"funcdl.tape (jit)": lambda: ours(lp_j), "jax.grad of the same forward (jit)":
            lambda: ref(lp_j), "torch (F.ctc_loss, autograd)": theirs}


def run(quick: bool = False) -> list[Row]:
    torch.set_num_threads(os.cpu_count() or 1)
    rounds = 2 if quick else 3
    b, t, hidden = QUICK_DIMS if quick else DIMS
    rows = _train_step("LSTM", b, t, hidden, rounds) + _train_step("GRU", b, t, hidden, rounds)
    rows += _scan_grad(b, t, hidden, rounds)
    rows += _compile_rows(b, hidden, (10, 100) if quick else (50, 500))
    ctc = (50, 8, 20, 10) if quick else (200, 32, 40, 50)
    case = "ctc_loss forward + backward, T={} N={} C={} S={}, mean".format(*ctc)
    rows += [Row(f"{BENCH}.ctc", case, impl, sec)
             for impl, sec in _best(_ctc_fns(*ctc), rounds).items()]
    return rows
