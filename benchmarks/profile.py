"""Where a jitted training step's time goes on the CPU, operation by operation.

``python -m benchmarks.profile STEP [--engine jax|tape] [--quick] [--top N] [--runs N]``

STEP is ``encoder`` (``bench_layers``' encoder-layer training step), ``lstm`` or ``gru``
(``bench_recurrent``'s 2-layer bidirectional training steps). XLA:CPU records every operation of
a compiled program (a fusion, a dot, a ``while`` loop, a copy) in the JAX profiler's trace under
its HLO name; this sums the trace by name and prints the operations that took longest, per
step, with how often each ran (an operation inside a loop over T frames runs T times a step).
XLA:CPU runs independent operations at the same time, so the times can add up to more than the
step. ``jax.jit(f).lower(...).compile().as_text()`` shows what a name computes.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import pathlib
import re
import tempfile
import time
from collections.abc import Callable

import jax
import numpy as np

from funcdl import tape as T

# an HLO instruction's name (fusion.3, ynn_fusion, while.13, bitcast_dynamic-update-slice_fusion);
# the runtime's own events are CamelCase (ParseArguments) or have "::", "(", spaces, "$" (Python)
_HLO_NAME = re.compile(r"[a-z_][a-z0-9_.\-]*")


def profile(run: Callable[[], object], runs: int = 3) -> list[tuple[str, float, float]]:
    """(HLO name, seconds per call of ``run``, executions per call), longest first, of the XLA
    operations ``run`` executes (after one warm-up call)."""
    jax.block_until_ready(run())
    with tempfile.TemporaryDirectory() as logdir:
        jax.profiler.start_trace(logdir, create_perfetto_trace=True)
        try:
            for _ in range(runs):
                jax.block_until_ready(run())
        finally:
            jax.profiler.stop_trace()
        trace = next(pathlib.Path(logdir).rglob("*.trace.json.gz"))
        events = json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
    seconds, count = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("ph") == "X" and _HLO_NAME.fullmatch(e.get("name", "")):
            seconds[e["name"]] += e["dur"] * 1e-6
            count[e["name"]] += 1
    if not seconds:
        raise RuntimeError("the profiler's trace has no XLA:CPU operations in it: does `run` "
                           "execute a jitted program on the CPU backend?")
    return [(name, s / runs, count[name] / runs) for name, s in seconds.most_common()]


def format_profile(rows: list[tuple[str, float, float]], step: float, top: int) -> str:
    """The ``top`` rows as a table: ms per step, share of the step, executions per step."""
    lines = [f"{'ms/step':>9} {'of step':>8} {'runs':>6}  operation"]
    for name, seconds, n in rows[:top]:
        lines.append(f"{seconds * 1e3:9.2f} {seconds / step:8.1%} {n:6.0f}  {name}")
    return "\n".join(lines)


def _step(name: str, engine: str, quick: bool) -> Callable[[], object]:
    """bench_layers' / bench_recurrent's training step, at its sizes, as a no-argument function."""
    vg = T.value_and_grad if engine == "tape" else jax.value_and_grad
    # each benchmark module imported when asked for: bench_recurrent imports torch
    if name == "encoder":
        from benchmarks import bench_layers as bench

        return bench._funcdl_runner(*(bench.QUICK_DIMS if quick else bench.DIMS), vg)
    from benchmarks import bench_recurrent as bench

    b, t, hidden = bench.QUICK_DIMS if quick else bench.DIMS
    x = np.random.default_rng(0).standard_normal((b, t, 13)).astype(np.float32)
    return bench._funcdl_runner(name.upper(), x, hidden, vg)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=["encoder", "lstm", "gru"])
    parser.add_argument("--engine", choices=["jax", "tape"], default="jax",
                        help="gradients by jax.grad (fit's default) or funcdl.tape")
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--top", type=int, default=25, help="operations to show")
    parser.add_argument("--runs", type=int, default=3, help="steps traced")
    args = parser.parse_args(argv)
    if args.top < 1 or args.runs < 1:
        parser.error(f"--top and --runs take a positive count, got {args.top} and {args.runs}")
    run = _step(args.step, args.engine, args.quick)
    jax.block_until_ready(run())
    step = float("inf")
    for _ in range(args.runs):
        start = time.perf_counter()
        jax.block_until_ready(run())
        step = min(step, time.perf_counter() - start)
    print(f"{args.step} training step, gradients by {args.engine}: {step * 1e3:.1f} ms "
          f"(best of {args.runs})")
    print(format_profile(profile(run, args.runs), step, args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
