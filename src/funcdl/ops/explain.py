"""``explain``: the reduction walk the course slides draw, printed offset by offset; and the
windows a ``conv2d`` reads, as a view of the input's storage (``unfold`` twice)."""

from __future__ import annotations

import itertools
import sys
from typing import Any

import jax
import numpy as np

from funcdl.ops.shapes import canonical_dim
from funcdl.ops.strided import StridedArray, from_array, unfold

_FOLDS = {
    "sum": np.sum, "mean": np.mean, "prod": np.prod, "amax": np.max, "amin": np.min,
    "logsumexp": lambda v: np.logaddexp.reduce(v),
}


def _fmt(v: Any) -> str:
    return f"{float(v):.6g}" if np.issubdtype(np.asarray(v).dtype, np.floating) else str(v)


def explain(s: Any, op: str = "sum", dim: int = 0, *, limit: int = 8,
            kernel: tuple[int, int] = (2, 2), stride: int | tuple[int, int] = 1) -> str:
    """The walk of ``op(s, dim)``: for each output element, each index tuple, its offset sum
    (``1*3 + 0*1 = 3``), the value read there, and the result.

    ``op="conv2d"`` walks ``conv2d(s, ones(1, C, *kernel), stride=stride)`` instead (``dim`` is
    not used): the windows as a zero-copy view of ``s``'s storage, each storage offset one
    output element's window reads, and the window sums.

    ``limit`` caps how many output elements are walked (the rest are counted). Needs concrete
    values, so call it outside ``jit``.
    """
    if op not in _FOLDS and op != "conv2d":
        raise ValueError(f"explain() walks one of {sorted(_FOLDS) + ['conv2d']}, got {op!r}")
    if not isinstance(s, StridedArray):
        s = from_array(s)
    if isinstance(s.storage, jax.core.Tracer):
        raise TypeError("explain() needs concrete values; call it outside jit/vmap/grad")
    if op == "conv2d":
        return _explain_conv2d(s, tuple(kernel), stride, limit)
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


def _offset_terms(index: tuple, s: StridedArray) -> tuple[str, int]:
    terms = " + ".join(f"{i}*{st}" for i, st in zip(index, s.strides))
    lead = f"{s.offset} + " if s.offset else ""
    return lead + terms, s.offset + sum(i * st for i, st in zip(index, s.strides))


def _explain_conv2d(s: StridedArray, kernel: tuple[int, int], stride: Any, limit: int) -> str:
    """The conv2d walk (see `explain`): one output element in full, then every element's
    window offsets, then the sums."""
    if s.ndim != 4:
        raise ValueError(f"explain(op='conv2d') walks an (N, C, H, W) input, got shape {s.shape}")
    sh, sw = (stride, stride) if isinstance(stride, int) else tuple(stride)
    kernel = kernel * 2 if len(kernel) == 1 else kernel
    if len(kernel) != 2:
        raise ValueError(f"a conv2d kernel is (height, width), got {kernel}")
    kh, kw = kernel
    windows = unfold(unfold(s, 2, kh, sh), 3, kw, sw)  # (N, C, OH, OW, kh, kw): still a view
    n, c, oh, ow = windows.shape[:4]
    storage = np.asarray(s.storage)
    names = ("n", "c", "oh", "ow", "i", "j")
    lines = [
        f"conv2d(x, ones(1, {c}, {kh}, {kw}), stride=({sh}, {sw})) over x of shape {s.shape}, "
        f"strides {s.strides}, offset {s.offset}",
        f"windows = x.unfold(2, {kh}, {sh}).unfold(3, {kw}, {sw}): shape {windows.shape}, "
        f"strides {windows.strides} (a view of x's storage: nothing is copied)",
        "offset = " + " + ".join(([str(s.offset)] if s.offset else [])
                                 + [f"{a}*{st}" for a, st in zip(names, windows.strides)]),
        "out[n, 0, oh, ow] = sum over c, i, j of windows[n, c, oh, ow, i, j] * w[0, c, i, j]",
        "(a sum over the window dims of an overlapping view: ops lowers it to one "
        "lax.reduce_window)",
        "out[0, 0, 0, 0]:",
    ]
    total = 0.0
    for ci, i, j in itertools.product(range(c), range(kh), range(kw)):
        terms, off = _offset_terms((0, ci, 0, 0, i, j), windows)
        total += float(storage[off])
        lines.append(f"  {(0, ci, 0, 0, i, j)}: {terms} = {off}, x[{off}]={_fmt(storage[off])}")
    lines.append(f"  sum = {_fmt(np.float32(total))}")
    lines.append("the storage offsets each output element's window reads:")
    sums = []
    for count, (b, y, x) in enumerate(itertools.product(range(n), range(oh), range(ow))):
        offs = [_offset_terms((b, ci, y, x, i, j), windows)[1]
                for ci, i, j in itertools.product(range(c), range(kh), range(kw))]
        sums.append(storage[offs].sum())
        if count < limit:
            lines.append(f"  out[{b}, 0, {y}, {x}]: {', '.join(map(str, offs))}")
    if len(sums) > limit:
        lines.append(f"... {len(sums) - limit} more output elements not shown")
    lines.append(_result(sums, (n, 1, oh, ow)))
    return "\n".join(lines)
