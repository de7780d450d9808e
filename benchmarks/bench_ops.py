"""ops.sum / ops.amax over dim 0 and dim 1 of strided views of an N x N float32 array.

Views: contiguous, transposed, ``x[:, ::2]``, a row expanded to N x N (stride 0), and overlapping
sliding windows of 8 over N*N/8 elements. funcdl runs jitted on the storage (the layout is static),
also forced onto its gather path to show what the slice lowering saves; peers: jnp on the
materialised view (jitted; the copy is made before timing), numpy and torch CPU on the same views.
Throughput is the logical bytes of the view (numel * 4) per second, whatever was actually read.
Each time is the best of a few interleaved medians (the machines are shared).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import torch

from benchmarks.harness import Row, time_fn
from funcdl import ops


def _views(x: np.ndarray):
    """(name, funcdl view, numpy view, torch view); numpy and torch share x's memory."""
    s, t = ops.from_array(x), torch.from_numpy(x)
    n = x.shape[0]
    yield f"{n}x{n} contiguous", s, x, t
    yield f"{n}x{n} transposed", ops.transpose(s, 0, 1), x.T, t.T
    yield f"{n}x{n} x[:, ::2]", s[:, ::2], x[:, ::2], t[:, ::2]
    row = x[:1]  # 1 x N, expanded to N x N
    yield (f"{n}x{n} expanded row", ops.expand(ops.from_array(row), x.shape),
           np.broadcast_to(row, x.shape), t[:1].expand(n, n))
    # overlapping sliding windows (no box of storage: lowered as 8 stacked slices, not a gather)
    m, k = n * n // 8, 8
    flat = x.reshape(-1)[: m + k - 1]
    yield (f"{m}x{k} sliding windows", ops.as_strided(flat, (m, k), (1, 1)),
           np.lib.stride_tricks.sliding_window_view(flat, k),
           torch.as_strided(torch.from_numpy(flat), (m, k), (1, 1)))


def _rows(case: str, layout, storage, dense, xv, tv, gb: float, rounds: int) -> list[Row]:
    rows = []
    for op, jfn, nfn, tfn in (("sum", jnp.sum, np.sum, torch.sum),
                              ("amax", jnp.max, np.max, torch.amax)):
        for dim in (0, 1):
            f_ours = jax.jit(lambda st, op=op, dim=dim: getattr(ops, op)(
                ops.as_strided(st, *layout), dim))
            f_gather = jax.jit(lambda st, op=op, dim=dim: getattr(ops, op)(
                ops.as_strided(st, *layout), dim, lowering="gather"))
            f_jnp = jax.jit(lambda a, jfn=jfn, dim=dim: jfn(a, axis=dim))
            np.testing.assert_allclose(f_ours(storage), f_jnp(dense), rtol=2e-3, atol=2e-3)
            impls = [
                ("funcdl (jit, on storage)", lambda f=f_ours: f(storage)),
                ("ops with lowering=\"gather\"", lambda f=f_gather: f(storage)),
                ("jnp (jit, materialised)", lambda f=f_jnp: f(dense)),
                ("numpy (view)", lambda fn=nfn, dim=dim: fn(xv, axis=dim)),
                ("torch (view)", lambda fn=tfn, dim=dim: fn(tv, dim=dim)),
            ]
            # The machine is shared: interleave the implementations over a few rounds and keep
            # each one's best median, so a burst of load does not land on one peer only.
            best = {impl: float("inf") for impl, _ in impls}
            for r in range(rounds):  # alternate the order too: no peer always runs first
                for impl, fn in impls if r % 2 == 0 else impls[::-1]:
                    best[impl] = min(best[impl], time_fn(fn, repeat=3))
            for impl, sec in best.items():
                rows.append(Row(f"ops.{op}", f"{case}, dim {dim}", impl, sec, gb / sec, "GB/s"))
    return rows


def run(quick: bool = False) -> list[Row]:
    torch.set_num_threads(os.cpu_count() or 1)
    n = 1024 if quick else 4096
    rounds = 2 if quick else 5
    x = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    rows: list[Row] = []
    for case, s, xv, tv in _views(x):
        dense = jnp.asarray(np.ascontiguousarray(xv))  # the copy is made before timing
        rows += _rows(case, (s.shape, s.strides, s.offset), s.storage, dense, xv, tv,
                      xv.size * 4 / 1e9, rounds)
    return rows
