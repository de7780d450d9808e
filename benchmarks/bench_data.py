"""funcdl.data.DataLoader against torch.utils.data.DataLoader, and prefetch overlap.

(1) Samples per second on the same map-style dataset with the same per-sample numpy cost
    (~50 us, holds the GIL), workers 0 and 2; plus ArrayDataset vs TensorDataset with no cost.
(2) Overlap: a jitted step of Y ms fed by batches costing X <= Y ms: the share of the loop's time
    spent waiting for data, with prefetch (a background thread; worker processes) against the
    same loop without prefetch.

The datasets live at module level so worker processes can unpickle them; jax and torch are
imported inside functions so those workers start light.
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks.harness import Row, interleaved, time_fn
from funcdl.data import ArrayDataset, DataLoader


class CostlyDataset:
    """Map-style samples whose ``__getitem__`` runs ``k`` small numpy ops (GIL-bound work)."""

    def __init__(self, n: int, k: int, dim: int = 256):
        self.n, self.k = n, k
        self.data = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        x = self.data[i]
        for _ in range(self.k):
            x = np.tanh(x * np.float32(1.01) + np.float32(0.1))
        return x, np.int64(i % 10)


def _per_sample_us(ds: CostlyDataset) -> float:
    return time_fn(lambda: [ds[i] for i in range(50)], warmup=1, repeat=3) / 50 * 1e6


def _epoch(loader) -> int:
    count = 0
    for x, _ in loader:
        count += len(x)
    return count


def _epochs_interleaved(loaders: dict) -> dict[str, float]:
    """Seconds per epoch of each loader, the loaders taking turns (best of 3 rounds)."""
    return interleaved({name: lambda loader=loader: _epoch(loader)
                        for name, loader in loaders.items()}, 3, warmup=1, repeat=3,
                       min_seconds=0)


def _throughput_rows(quick: bool) -> list[Row]:
    import torch

    n, bs = (1024, 32) if quick else (4096, 32)
    ds = CostlyDataset(n, k=8)
    cost = _per_sample_us(ds)
    rows = []
    cases = [
        ("workers=0", dict(), dict()),
        ("workers=2 (pool per epoch)", dict(num_workers=2), dict(num_workers=2)),
        ("workers=2 persistent", dict(num_workers=2, persistent_workers=True),
         dict(num_workers=2, persistent_workers=True)),
    ]
    for label, ours_kw, torch_kw in cases:
        case = f"{n} samples x {cost:.0f} us, batch {bs}, {label}"
        ours = DataLoader(ds, bs, shuffle=True, **ours_kw)
        theirs = torch.utils.data.DataLoader(ds, bs, shuffle=True, **torch_kw)
        best = _epochs_interleaved({"funcdl": ours, "torch": theirs})
        rows += [Row("data.loader", case, impl, sec, n / sec, "samples/s",
                     note="one shuffled epoch, default collate") for impl, sec in best.items()]
        ours.close()
    # no per-sample cost: funcdl's ArrayDataset fetches a batch with one fancy index
    m = 20_000 if quick else 100_000
    x = np.random.default_rng(1).standard_normal((m, 64)).astype(np.float32)
    y = np.arange(m) % 10
    ours = DataLoader(ArrayDataset(x, y), 64, shuffle=True)
    theirs = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), 64,
        shuffle=True)
    case = f"ArrayDataset / TensorDataset {m}x64, batch 64, workers=0"
    best = _epochs_interleaved({"funcdl": ours, "torch": theirs})
    rows += [Row("data.loader", case, impl, sec, m / sec, "samples/s")
             for impl, sec in best.items()]
    return rows


def _overlap_rows(quick: bool) -> list[Row]:
    import jax
    import jax.numpy as jnp

    bs, steps = 32, (15 if quick else 40)
    w = jax.random.normal(jax.random.key(0), (256, 256)) / 16

    def make_step(reps: int):
        @jax.jit
        def step(x):
            def body(_, h):
                return jnp.tanh(h @ w)
            return jax.lax.fori_loop(0, reps, body, x).sum()
        return step

    probe = jnp.ones((bs, 256))
    step1 = make_step(50)
    per_rep = time_fn(lambda: step1(probe), warmup=2, repeat=5) / 50
    target_y = 0.020
    step = make_step(max(1, int(target_y / per_rep)))
    y_ms = time_fn(lambda: step(probe), warmup=2, repeat=5) * 1e3
    ds = CostlyDataset(bs * (steps + 2), k=1)
    one = _per_sample_us(ds)
    ds.k = max(1, int(0.5 * y_ms * 1e3 / bs / max(one, 1e-3)))  # X ~ Y / 2
    x_ms = _per_sample_us(ds) * bs / 1e3
    case = f"step Y={y_ms:.1f} ms, batch X={x_ms:.1f} ms, {steps} steps"

    def loop(loader) -> tuple[float, float]:
        waited = total = 0.0
        it = iter(loader)
        jax.block_until_ready(step(jnp.asarray(next(it)[0])))  # warm the pipeline and the step
        t_start = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            try:
                xb, _ = next(it)
            except StopIteration:
                break
            waited += time.perf_counter() - t0
            jax.block_until_ready(step(jnp.asarray(xb)))
        total = time.perf_counter() - t_start
        return waited, total

    rows = []
    for impl, kw in (("funcdl prefetch=2 (thread)", dict(prefetch=2)),
                     ("funcdl-free: same loader, prefetch=0", dict(prefetch=0)),
                     ("num_workers=2 processes", dict(num_workers=2)),
                     ("torch num_workers=0", None)):
        if kw is None:
            import torch

            loader = torch.utils.data.DataLoader(ds, bs)
            impl_name = impl
        else:
            loader = DataLoader(ds, bs, **kw)
            impl_name = impl.replace("funcdl-free: ", "")
        waited, total = loop(loader)
        n = steps + 1
        rows.append(Row("data.overlap", case, impl_name, total / n, 100 * waited / total,
                        "% waiting", note=f"wait {waited / n * 1e3:.2f} ms/step"))
    return rows


def run(quick: bool = False) -> list[Row]:
    return _throughput_rows(quick) + _overlap_rows(quick)
