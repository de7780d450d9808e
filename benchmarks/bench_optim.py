"""One AdamW update on a ~1M-parameter pytree: funcdl.optim.adamw vs optax.adamw vs torch.

JAX rows: a jitted ``(params, state, grads) -> (params, state)`` step (update + apply_updates),
params and state donated, same hyperparameters (lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight
decay 1e-2). torch rows: ``AdamW.step()`` with the gradients already in ``.grad``, foreach=True
(one multi-tensor kernel per op) at torch's default threads and at 1 thread (on a busy 2-core
machine OpenMP's barriers can dominate a step this small), and the default single-tensor loop.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

from benchmarks.harness import Row, time_fn
from funcdl import optim

BENCH = "optim.adamw"


def _shapes(quick: bool) -> dict[str, tuple[int, ...]]:
    if quick:
        return {"w1": (256, 192), "b1": (192,), "w2": (192, 80), "b2": (80,)}
    return {"w1": (1024, 768), "b1": (768,), "w2": (768, 320), "b2": (320,)}  # 1,033,280


def _time_jax(tx: optax.GradientTransformation, params, grads, repeat: int) -> float:
    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(p, s, g):
        updates, s = tx.update(g, s, p)
        return optax.apply_updates(p, updates), s

    carry = [jax.tree.map(jnp.copy, params), tx.init(params)]

    def call():
        carry[0], carry[1] = step(carry[0], carry[1], grads)
        return carry[0]

    return time_fn(call, repeat=repeat)


def _time_torch(params, grads, repeat: int, foreach: bool, threads: int | None = None) -> float:
    saved = torch.get_num_threads()
    torch.set_num_threads(threads or saved)
    try:
        return _time_torch_step(params, grads, repeat, foreach)
    finally:
        torch.set_num_threads(saved)


def _time_torch_step(params, grads, repeat: int, foreach: bool) -> float:
    tensors = [torch.tensor(np.asarray(p), requires_grad=True) for p in jax.tree.leaves(params)]
    for t, g in zip(tensors, jax.tree.leaves(grads)):
        t.grad = torch.tensor(np.asarray(g))
    opt = torch.optim.AdamW(tensors, lr=1e-3, weight_decay=1e-2, foreach=foreach)
    return time_fn(opt.step, repeat=repeat)


def run(quick: bool) -> list[Row]:
    shapes = _shapes(quick)
    keys = jax.random.split(jax.random.key(0), 2 * len(shapes))
    params = {k: jax.random.normal(keys[i], s) for i, (k, s) in enumerate(shapes.items())}
    grads = {k: jax.random.normal(keys[len(shapes) + i], s)
             for i, (k, s) in enumerate(shapes.items())}
    n = sum(int(np.prod(s)) for s in shapes.values())
    case = f"{n:,} params, {len(shapes)} leaves, float32"
    repeat = 3 if quick else 7
    impls = {
        "funcdl.optim.adamw": _time_jax(optim.adamw(1e-3), params, grads, repeat),
        "optax.adamw": _time_jax(optax.adamw(1e-3, weight_decay=1e-2), params, grads, repeat),
        "torch AdamW(foreach=True)": _time_torch(params, grads, repeat, foreach=True),
        "torch AdamW(foreach=True), 1 thread": _time_torch(params, grads, repeat, foreach=True,
                                                           threads=1),
        "torch AdamW (single-tensor)": _time_torch(params, grads, repeat, foreach=False),
    }
    return [Row(BENCH, case, impl, s, metric=n / s / 1e6, unit="Mparam/s")
            for impl, s in impls.items()]
