"""Shared timing and reporting for the benchmark modules.

Each ``benchmarks/bench_<name>.py`` defines ``run(quick: bool) -> list[Row]``. A row is one
implementation measured on one case; rows of the same (bench, case) are compared against the row
whose ``impl`` starts with ``funcdl``: ``ratio`` = peer time / funcdl time, so > 1 means funcdl is
faster. Wall-clock numbers are reported, never asserted (machines here are shared and noisy).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass
class Row:
    bench: str  # e.g. "ops.sum"
    case: str  # e.g. "4096x4096 transposed, dim 0"
    impl: str  # e.g. "funcdl", "jnp (materialised)", "numpy", "torch"
    seconds: float  # median seconds per call
    metric: float | None = None  # a throughput in `unit`, when one makes sense
    unit: str = ""  # e.g. "GB/s", "GFLOP/s", "samples/s"
    note: str = ""
    ratio: float | None = None  # filled by `add_ratios`: peer seconds / funcdl seconds


def block(x: Any) -> Any:
    """Wait for ``x`` to be computed: JAX arrays (any backend) by ``jax.block_until_ready``, and
    torch's queued CUDA kernels by ``torch.cuda.synchronize``, so one timing loop measures either
    library on a CPU or a GPU. Anything else passes through."""
    torch = sys.modules.get("torch")  # never import torch just to time JAX
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    try:
        import jax

        return jax.block_until_ready(x)
    except ImportError:  # pragma: no cover
        return x


def torch_device() -> str:
    """Where the torch side of a comparison runs: ``"cuda"`` when torch sees a GPU, else
    ``"cpu"`` (JAX picks its default backend the same way)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def time_fn(fn: Callable[[], Any], *, warmup: int = 2, repeat: int = 7,
            min_seconds: float = 0.05) -> float:
    """Median wall-clock seconds of ``fn()`` (results blocked on), after ``warmup`` calls.

    Each of the ``repeat`` samples runs ``fn`` enough times to last ``min_seconds``, so very fast
    calls are not dominated by timer resolution.
    """
    for _ in range(warmup):
        block(fn())
    t0 = time.perf_counter()
    block(fn())
    once = max(time.perf_counter() - t0, 1e-9)
    inner = max(1, int(min_seconds / once))
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(inner):
            out = fn()
        block(out)
        samples.append((time.perf_counter() - t0) / inner)
    return statistics.median(samples)


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int, **timing: Any) -> dict[str, float]:
    """Each fn's best median (``time_fn(fn, **timing)``) over ``rounds`` rounds in which the fns
    take turns, the order alternating: a burst of load on a shared machine then lands on every
    side of a comparison, not on one."""
    best = {name: float("inf") for name in fns}
    items = list(fns.items())
    for r in range(rounds):
        for name, fn in items if r % 2 == 0 else items[::-1]:
            best[name] = min(best[name], time_fn(fn, **timing))
    return best


def torch_one_thread(fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` run with torch on one thread: on a shared, oversubscribed machine torch's OpenMP
    pool can lose far more than XLA's, and a row timed this way shows how much is contention.
    (On a GPU the thread count only affects the host side.)"""
    def run() -> Any:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn()
        finally:
            torch.set_num_threads(threads)

    return run


def cpu_devices() -> int:
    """How many devices a data-parallel row splits its batch over: JAX's CPU devices when the
    default backend is the CPU and there are several (``funcdl.cpu_devices``, which
    ``python -m benchmarks`` calls first), else 1 (no such row)."""
    import jax

    return jax.device_count() if jax.default_backend() == "cpu" else 1


def data_parallel(state: Any, batch: Any) -> tuple[Any, Any]:
    """``(state, batch)`` placed as ``fit(..., mesh="auto")`` places them: the state replicated
    on every device, the batch split along its first axis (``funcdl.train.parallel``)."""
    from funcdl.train.parallel import Placement, make_mesh

    place = Placement(make_mesh("auto"))
    return place.replicate(state), place.batch(batch)


def add_ratios(rows: list[Row]) -> list[Row]:
    """Set each row's ratio against the funcdl row of the same (bench, case)."""
    ours = {(r.bench, r.case): r.seconds for r in rows if r.impl.startswith("funcdl")}
    for r in rows:
        base = ours.get((r.bench, r.case))
        r.ratio = None if base is None else r.seconds / base
    return rows


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """What the figures were measured on: the CPU, its cores and load when the run ended, the
    library versions, JAX's devices (and XLA_FLAGS), torch's threads and device."""
    info: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
    }
    if hasattr(os, "getloadavg"):
        info["load_avg_1_5_15"] = [round(v, 2) for v in os.getloadavg()]
    if os.environ.get("XLA_FLAGS"):
        info["xla_flags"] = os.environ["XLA_FLAGS"]
    try:
        import jax
        import jaxlib

        info["jax"] = jax.__version__
        info["jaxlib"] = jaxlib.__version__
        info["jax_backend"] = jax.default_backend()
        info["devices"] = [str(d) for d in jax.devices()]
        info["device_kind"] = jax.devices()[0].device_kind
    except ImportError:  # pragma: no cover
        pass
    for name in ("flax", "optax", "numpy"):
        module = sys.modules.get(name)
        if module is not None:
            info[name] = getattr(module, "__version__", "?")
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["torch_device"] = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
                                else "cpu")
    except ImportError:
        pass
    return info


def format_table(rows: list[Row]) -> str:
    """A plain-text table; ratio > 1 means the peer took longer than funcdl."""
    header = ("bench", "case", "impl", "ms", "throughput", "peer/funcdl")
    lines = [header]
    for r in rows:
        thr = "" if r.metric is None else f"{r.metric:.2f} {r.unit}"
        ratio = "" if r.ratio is None else f"{r.ratio:.2f}x"
        lines.append((r.bench, r.case, r.impl, f"{r.seconds * 1e3:.3f}", thr, ratio))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    out = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    # Notes hold findings that fit no column (a loop's overhead, a FLOP count): print them too.
    out += dict.fromkeys(f"note: {r.impl}: {r.note}" for r in rows if r.note)
    return "\n".join(out)
