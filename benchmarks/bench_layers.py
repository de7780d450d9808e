"""One Transformer encoder layer's training step (forward, backward, AdamW) against PyTorch.

Both sides: pre-LN, GELU, no dropout, batch-first, mean-squared-error loss against a fixed target,
AdamW(lr=1e-3, weight_decay=0.01), the same thread count (``torch.set_num_threads(cpu_count)``;
XLA's CPU client uses every core). funcdl's step runs once with ``jax.grad`` and once with
``funcdl.tape``'s gradients of the same definition. Reports ms/step, matmul GFLOP/s (forward
``2BT(4D^2 + 2D FF) + 4BT^2 D``, a training step ~3x that), a measured matmul peak of this CPU for
jnp and torch, and funcdl's compile time of the first step for 1 and 6 layers (the encoder scans
its stacked layers: compile time is flat from 2 layers up; 1 layer compiles faster because XLA
removes a one-trip loop).
"""

from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks.harness import Row, time_fn
from funcdl import layers as L
from funcdl import tape as F
from funcdl.optim import adamw

BENCH = "layers"


def _flops(b: int, t: int, d: int, ff: int) -> float:
    forward = 2 * b * t * (4 * d * d + 2 * d * ff) + 4 * b * t * t * d
    return 3.0 * forward


def _funcdl_step(module: nnx.Module, value_and_grad=jax.value_and_grad):
    """A jitted step (params, opt_state, x, y) -> (params, opt_state, loss), and initial state;
    ``value_and_grad`` is ``jax.value_and_grad`` or ``funcdl.tape.value_and_grad``."""
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    tx = adamw(lr=1e-3, weight_decay=0.01)
    # Distinct buffers: the init may share one zeros array between moments, which donation forbids.
    opt_state = jax.tree.map(jnp.copy, tx.init(params))

    def loss_fn(p, x, y):
        out = nnx.merge(graphdef, p, rest)(x)
        return F.mean(F.pow(F.sub(out, y), 2))

    @functools.partial(jax.jit, donate_argnums=(0, 1))  # update params/state in place
    def step(p, s, x, y):
        loss, g = value_and_grad(loss_fn)(p, x, y)
        updates, s = tx.update(g, s, p)
        return jax.tree.map(jnp.add, p, updates), s, loss

    return step, params, opt_state


def _time_funcdl(b, t, d, h, ff, repeat, value_and_grad=jax.value_and_grad) -> float:
    layer = L.TransformerEncoderLayer(d, h, ff, dropout=0.0, activation="gelu", norm_first=True,
                                      rngs=nnx.Rngs(0))
    step, params, opt_state = _funcdl_step(layer, value_and_grad)
    kx, ky = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (b, t, d))
    y = jax.random.normal(ky, (b, t, d))
    state = [params, opt_state]

    def run():
        state[0], state[1], loss = step(state[0], state[1], x, y)
        return loss

    return time_fn(run, warmup=2, repeat=repeat, min_seconds=0.2)


def _time_torch(b, t, d, h, ff, repeat) -> float:
    import torch

    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(d, h, ff, dropout=0.0, activation="gelu",
                                             batch_first=True, norm_first=True)
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-3, weight_decay=0.01)
    x = torch.randn(b, t, d)
    y = torch.randn(b, t, d)

    def run():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(layer(x), y)
        loss.backward()
        opt.step()
        return loss

    return time_fn(run, warmup=2, repeat=repeat, min_seconds=0.2)


def _compile_seconds(num_layers, b, t, d, h, ff) -> float:
    """Wall time of lowering and compiling the first training step of a ``num_layers`` encoder."""
    enc = L.TransformerEncoder(num_layers, d, h, ff, dropout=0.0, activation="gelu",
                               norm_first=True, rngs=nnx.Rngs(0))
    step, params, opt_state = _funcdl_step(enc)
    x = jnp.zeros((b, t, d))
    t0 = time.perf_counter()
    step.lower(params, opt_state, x, x).compile()
    return time.perf_counter() - t0


def _matmul_peaks(n: int, repeat: int) -> tuple[float, float]:
    import torch

    a = jax.random.normal(jax.random.key(0), (n, n))
    mm = jax.jit(jnp.matmul)
    t_jnp = time_fn(lambda: mm(a, a), repeat=repeat, min_seconds=0.2)
    at = torch.from_numpy(np.array(a))
    t_torch = time_fn(lambda: torch.matmul(at, at), repeat=repeat, min_seconds=0.2)
    return t_jnp, t_torch


def run(quick: bool = False) -> list[Row]:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    b, t, d, h, ff = (4, 32, 64, 4, 256) if quick else (16, 128, 256, 8, 1024)
    repeat = 3 if quick else 7
    case = f"train step, 1 layer, B={b} T={t} D={d} heads={h} FF={ff}, pre-LN GELU"
    flops = _flops(b, t, d, ff)
    rows = []
    for impl, fn in (("funcdl (jit: nnx + funcdl.optim.adamw)", _time_funcdl),
                     ("same step, gradients by funcdl.tape (jit)",
                      lambda *a: _time_funcdl(*a, value_and_grad=F.value_and_grad)),
                     ("torch (nn.TransformerEncoderLayer + optim.AdamW)", _time_torch)):
        sec = fn(b, t, d, h, ff, repeat)
        rows.append(Row(f"{BENCH}.train_step", case, impl, sec, flops / sec / 1e9, "GFLOP/s",
                        note=f"{flops / 1e9:.2f} GFLOP per step (matmuls)"))

    # Same step with torch on one thread: on a shared, oversubscribed machine torch's OpenMP pool
    # can lose far more than XLA's; this row shows how much of a gap is contention.
    torch.set_num_threads(1)
    sec = _time_torch(b, t, d, h, ff, repeat)
    torch.set_num_threads(os.cpu_count() or 1)
    rows.append(Row(f"{BENCH}.train_step", case, "torch, 1 thread (contention check)", sec,
                    flops / sec / 1e9, "GFLOP/s"))

    n = 512 if quick else 1024
    t_jnp, t_torch = _matmul_peaks(n, repeat)
    mm_flops = 2.0 * n**3
    rows.append(Row(f"{BENCH}.matmul_peak", f"{n}x{n} @ {n}x{n} f32", "funcdl (jnp.matmul, jit)",
                    t_jnp, mm_flops / t_jnp / 1e9, "GFLOP/s"))
    rows.append(Row(f"{BENCH}.matmul_peak", f"{n}x{n} @ {n}x{n} f32", "torch.matmul",
                    t_torch, mm_flops / t_torch / 1e9, "GFLOP/s"))

    for layers in (1, 6) if quick else (1, 6, 12):
        sec = _compile_seconds(layers, b, t, d, h, ff)
        rows.append(Row(f"{BENCH}.compile", f"first train step, {layers} encoder layer(s)",
                        "funcdl (lower + compile)", sec,
                        note="1 layer: XLA drops the 1-trip loop; >1: one scanned body"))
    return rows
