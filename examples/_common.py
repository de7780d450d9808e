"""Small helpers shared by the examples (not an example itself: names starting with _ are hidden
from ``funcdl examples``)."""

from __future__ import annotations

import argparse
import contextlib
import pathlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from flax import nnx


def parser(doc: str, name: str, *, seed: bool = True) -> argparse.ArgumentParser:
    """An argument parser with the options every example shares: --smoke, --out and (unless
    ``seed`` is False, for an example that draws nothing at random) --seed."""
    p = argparse.ArgumentParser(description=doc, allow_abbrev=False,  # --smok is an error
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true",
                   help="a short run on small sizes (the one the tests run)")
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs") / name,
                   help=f"directory for the outputs (default: runs/{name})")
    if seed:
        p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    return p


def _positive(kind: type, noun: str) -> Callable[[str], Any]:
    """An argparse type: ``kind(text)``, refused unless it is > 0."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {value}")
        return value
    return parse


positive_int = _positive(int, "an integer")
positive_float = _positive(float, "a number")


@contextlib.contextmanager
def stopwatch() -> Iterator[Callable[[], float]]:
    """``with stopwatch() as elapsed: ...; elapsed()`` gives the seconds since entering."""
    t0 = time.perf_counter()
    yield lambda: time.perf_counter() - t0


def predict_batches(forward: Callable, model: nnx.Module, arrays: tuple[np.ndarray, ...],
                    batch_size: int = 256) -> np.ndarray:
    """``forward(model, *batch)`` (an ``nnx.jit`` function) over batches of one fixed size (the
    last one padded, then cut), concatenated as numpy. Dropout is off while predicting."""
    n = len(arrays[0])
    size = min(batch_size, n)
    outs = []
    model.eval()
    try:
        for start in range(0, n, size):
            batch = [a[start:start + size] for a in arrays]
            real = len(batch[0])
            if real < size:  # keep one compiled shape
                batch = [np.concatenate([b, np.repeat(b[-1:], size - real, axis=0)]) for b in batch]
            outs.append(np.asarray(forward(model, *batch))[:real])
    finally:
        model.train()
    return np.concatenate(outs)

