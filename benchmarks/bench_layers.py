"""One Transformer encoder layer's training step (forward, backward, AdamW) against PyTorch.

Both sides: pre-LN, GELU, no dropout, batch-first, mean-squared-error loss against a fixed target,
AdamW(lr=1e-3, weight_decay=0.01), every core (``torch.set_num_threads(cpu_count)``; XLA's CPU
client uses every core). funcdl's step runs with ``jax.grad`` and with ``funcdl.tape``'s
gradients of the same definition, on one device and, where JAX has several CPU devices
(``funcdl.cpu_devices``), with the batch split over them as ``fit(mesh="auto")`` splits it;
torch also runs on one thread (a contention check). All take turns in each round; each figure is
the best of the rounds' medians. Reports ms/step, matmul GFLOP/s (forward
``2BT(4D^2 + 2D FF) + 4BT^2 D``, a training step ~3x that), a measured matmul peak of this machine
for jnp and torch, and funcdl's compile time of the first step for 1, 6 and 12 layers (the
encoder scans stacks deeper than 4 layers: compile time is flat from there up; 1 layer runs
unrolled and compiles faster).
"""

from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
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
from funcdl import tape as F
from funcdl.optim import adamw

BENCH = "layers"
DIMS, QUICK_DIMS = (16, 128, 256, 8, 1024), (4, 32, 64, 4, 256)  # B, T, D, heads, FF


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


def _funcdl_runner(b, t, d, h, ff, value_and_grad=jax.value_and_grad, split: bool = False):
    """A no-argument function running one training step (and returning its loss); with
    ``split`` the batch is split over every device and the state replicated."""
    layer = L.TransformerEncoderLayer(d, h, ff, dropout=0.0, activation="gelu", norm_first=True,
                                      rngs=nnx.Rngs(0))
    step, params, opt_state = _funcdl_step(layer, value_and_grad)
    kx, ky = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (b, t, d))
    y = jax.random.normal(ky, (b, t, d))
    if split:
        (params, opt_state), (x, y) = data_parallel((params, opt_state), (x, y))
    state = [params, opt_state]

    def run():
        state[0], state[1], loss = step(state[0], state[1], x, y)
        return loss

    return run


def _torch_runner(b, t, d, h, ff):
    import torch

    dev = torch_device()
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(d, h, ff, dropout=0.0, activation="gelu",
                                             batch_first=True, norm_first=True).to(dev)
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-3, weight_decay=0.01)
    x = torch.randn(b, t, d, device=dev)
    y = torch.randn(b, t, d, device=dev)

    def run():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(layer(x), y)
        loss.backward()
        opt.step()
        return loss

    return run


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
    at = torch.from_numpy(np.array(a)).to(torch_device())
    best = interleaved({"jnp": lambda: mm(a, a), "torch": lambda: torch.matmul(at, at)}, 2,
                       repeat=repeat, min_seconds=0.2)
    return best["jnp"], best["torch"]


def run(quick: bool = False) -> list[Row]:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    b, t, d, h, ff = QUICK_DIMS if quick else DIMS
    repeat, rounds = (3, 2) if quick else (5, 4)
    case = f"train step, 1 layer, B={b} T={t} D={d} heads={h} FF={ff}, pre-LN GELU"
    flops = _flops(b, t, d, ff)
    dims = (b, t, d, h, ff)
    n = cpu_devices()
    fns = {"funcdl (jit: nnx + funcdl.optim.adamw)": _funcdl_runner(*dims),
           "same step, gradients by funcdl.tape (jit)": _funcdl_runner(
               *dims, value_and_grad=F.value_and_grad)}
    if n > 1 and b % n == 0:
        fns[f"same step, batch split over {n} CPU devices"] = _funcdl_runner(*dims, split=True)
        fns[f"tape step, batch split over {n} CPU devices"] = _funcdl_runner(
            *dims, value_and_grad=F.value_and_grad, split=True)
    torch_step = _torch_runner(*dims)
    fns[f"torch (nn.TransformerEncoderLayer + optim.AdamW), {torch.get_num_threads()} threads"] = (
        torch_step)
    # on a shared, oversubscribed machine torch's OpenMP pool can lose far more than XLA's: this
    # row shows how much of a gap is contention
    fns["torch, 1 thread (contention check)"] = torch_one_thread(torch_step)
    best = interleaved(fns, rounds, warmup=2, repeat=repeat, min_seconds=0.2)
    rows = [Row(f"{BENCH}.train_step", case, impl, sec, flops / sec / 1e9, "GFLOP/s",
                note=f"{flops / 1e9:.2f} GFLOP per step (matmuls)" if i == 0 else "")
            for i, (impl, sec) in enumerate(best.items())]

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
