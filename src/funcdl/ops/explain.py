"""``explain``: the reduction walk the course slides draw, printed offset by offset."""

from __future__ import annotations

import itertools
import sys
from typing import Any

import jax
import numpy as np

from funcdl.ops.shapes import canonical_dim
from funcdl.ops.strided import StridedArray, from_array

_FOLDS = {
    "sum": np.sum, "mean": np.mean, "prod": np.prod, "amax": np.max, "amin": np.min,
    "logsumexp": lambda v: np.logaddexp.reduce(v),
}


def _fmt(v: Any) -> str:
    return f"{float(v):.6g}" if np.issubdtype(np.asarray(v).dtype, np.floating) else str(v)


def explain(s: Any, op: str = "sum", dim: int = 0, *, limit: int = 8) -> str:
    """The walk of ``op(s, dim)``: for each output element, each index tuple, its offset sum
    (``1*3 + 0*1 = 3``), the value read there, and the result.

    ``limit`` caps how many output elements are walked (the rest are counted). Needs concrete
    values, so call it outside ``jit``.
    """
    if op not in _FOLDS:
        raise ValueError(f"explain() walks one of {sorted(_FOLDS)}, got {op!r}")
    if not isinstance(s, StridedArray):
        s = from_array(s)
    if isinstance(s.storage, jax.core.Tracer):
        raise TypeError("explain() needs concrete values; call it outside jit/vmap/grad")
    if s.ndim == 0:
        raise IndexError("explain() walks a dim; a 0-dim tensor has none")
    d = canonical_dim(dim, s.ndim)
    storage = np.asarray(s.storage)
    names = [f"d{k}" for k in range(s.ndim)]
    lines = [
        f"{op}(x, dim={d}) over shape {s.shape}, strides {s.strides}, offset {s.offset}",
        "offset = " + " + ".join(([str(s.offset)] if s.offset else [])
                                 + [f"{n}*{st}" for n, st in zip(names, s.strides)]),
    ]
    lines += [f"Range:{n}={{{', '.join(map(str, range(size)))}}}"
              for n, size in zip(names, s.shape)]
    outer = [k for k in range(s.ndim) if k != d]
    outer_txt = ", ".join(f"dim:{k}" for k in outer) or "nothing"
    lines.append(f"since {op} is across dim:{d}, vary dim:{d} over its range (inner loop) for each "
                 f"index of {outer_txt} (outer loop)")
    results = []
    combos = list(itertools.product(*(range(s.shape[k]) for k in outer)))
    for count, rest in enumerate(combos):
        values = []
        show = count < limit
        if show:
            label = ", ".join(":" if k == d else str(rest[outer.index(k)]) for k in range(s.ndim))
            lines.append(f"out[{', '.join(map(str, rest))}] = {op}(x[{label}]):")
        for i in range(s.shape[d]):
            index = list(rest)
            index.insert(d, i)
            terms = [f"{ix}*{st}" for ix, st in zip(index, s.strides)]
            off = s.offset + sum(ix * st for ix, st in zip(index, s.strides))
            values.append(storage[off])
            if show:
                lead = f"{s.offset} + " if s.offset else ""
                lines.append(f"  {tuple(index)}: {lead}{' + '.join(terms)} = {off}, "
                             f"x[{off}]={_fmt(storage[off])}")
        result = _FOLDS[op](np.asarray(values, storage.dtype))
        results.append(result)
        if show:
            lines.append(f"  {op} = {_fmt(result)}")
    if len(combos) > limit:
        lines.append(f"... {len(combos) - limit} more output elements not shown")
    lines.append(_result(results, tuple(s.shape[k] for k in outer)))
    return "\n".join(lines)


def _result(results: list, shape: tuple[int, ...]) -> str:
    """``result: ...``: the walked values (row-major) laid out in the output's shape."""
    out = np.asarray(results).reshape(shape)
    return "result: " + np.array2string(out, separator=", ", formatter={"all": _fmt},
                                        prefix="result: ", threshold=sys.maxsize,
                                        max_line_width=sys.maxsize)
