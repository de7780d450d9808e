"""The slides' strided tensors: sums walked offset by offset, and views as stride changes.

A tensor is a flat storage plus a layout (shape, strides, offset). This walks the slides' 3x3
``sum`` over dim 0 and dim 1 and their 2x2x3x2 ``sum`` over dim 2 with ``funcdl.ops.explain``,
then shows that transpose, select, slice, expand and unfold (a convolution's overlapping windows)
only change the layout: the storage is the very same array, never copied. Every reduction is
checked against numpy. The walk is printed and written to ``walk.txt`` under ``--out``.

    python examples/strides_walkthrough.py
"""

from __future__ import annotations

import contextlib
import io
import sys

import numpy as np
from _common import parser

from funcdl import ops


def layout(name: str, s: ops.StridedArray) -> str:
    return (f"{name}: shape {s.shape}, strides {s.strides}, offset {s.offset}, "
            f"contiguous {ops.is_contiguous(s)}")


def slides_3x3() -> ops.StridedArray:
    """``torch.Tensor([[0.1,0.2,0.3],[0.4,0.5,0.6],[0.7,0.8,0.9]])``."""
    return ops.from_array(np.arange(1, 10, dtype=np.float32).reshape(3, 3) / 10)


def slides_2x2x3x2() -> ops.StridedArray:
    """A 2x2x3x2 tensor holding the values the slides read at offsets 0-6, 8 and 10."""
    storage = np.array([0, 2, 1, 1, 0, 2, 1, 0, 1, 2, 1, 0,
                        2, 1, 0, 0, 1, 2, 2, 2, 1, 0, 0, 1], dtype=np.float32)
    return ops.as_strided(storage, (2, 2, 3, 2), ops.contiguous_strides((2, 2, 3, 2)))


def values(a) -> list:
    """Array values as short decimals (float32 0.1 prints as 0.1, not 0.10000000149011612)."""
    return np.asarray(a, dtype=np.float64).round(4).tolist()


def check(s: ops.StridedArray, dim, reference: np.ndarray) -> None:
    """Assert that funcdl's sum over ``dim`` equals numpy's on the materialised view."""
    ours = np.asarray(ops.sum(s, dim=dim))
    expected = reference.sum(axis=dim)
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-6)
    print(f"  funcdl.ops.sum(dim={dim}) = {values(ours)}  (numpy: same)")


def main(argv: list[str] | None = None) -> int:
    # --smoke changes nothing: the whole walk takes well under a second
    args = parser(__doc__.split("\n\n")[0], "strides_walkthrough", seed=False).parse_args(argv)
    walk = io.StringIO()
    try:
        with contextlib.redirect_stdout(walk):
            walk_through()
    finally:  # also when a check fails: the walk up to it
        print(walk.getvalue(), end="")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "walk.txt").write_text(walk.getvalue())
    print(f"\n(this walk is also in {args.out / 'walk.txt'})")
    return 0


def walk_through() -> None:
    """Print the four sections: the 3x3 sums, the 2x2x3x2 sum, the views, the windows."""
    print("== 1. The slides' 3x3: x[i, j] lives at offset i*3 + j*1")
    x = slides_3x3()
    print(layout("x", x))
    print("storage:", values(x.storage))
    for dim in (0, 1):
        print(f"\ntorch.sum(x, dim={dim}), offset by offset:")
        print(ops.explain(x, "sum", dim))
        check(x, dim, np.asarray(ops.to_array(x)))

    print("\n== 2. The slides' 2x2x3x2: row-major strides (12, 6, 2, 1)")
    y = slides_2x2x3x2()
    print(layout("y", y))
    print("\ntorch.sum(y, dim=2): vary d2 (stride 2) in the inner loop")
    print(ops.explain(y, "sum", 2))
    check(y, 2, np.asarray(ops.to_array(y)))

    print("\n== 3. Views change the layout, never the storage")
    t = ops.transpose(x, 0, 1)
    print(layout("x.T = transpose(x, 0, 1)", t))
    print(f"  same storage array as x: {t.storage is x.storage}")
    print("  sum over dim 0 of the transpose walks x's rows: offsets step by 1, not 3")
    print(ops.explain(t, "sum", 0))
    check(t, 0, np.asarray(ops.to_array(x)).T)

    row = ops.select(x, 0, 1)
    print(layout("\nx[1] = select(x, 0, 1)", row))
    print(f"  starts at offset 3, reads {values(ops.to_array(row))}; "
          f"same storage: {row.storage is x.storage}")

    cols = ops.slice(x, 1, 0, 3, 2)
    print(layout("\nx[:, ::2] = slice(x, 1, 0, 3, 2)", cols))
    print(f"  a step of 2 doubles the stride; same storage: {cols.storage is x.storage}")
    check(cols, 1, np.asarray(ops.to_array(x))[:, ::2])

    col = ops.slice(x, 1, 0, 1)
    wide = ops.expand(col, (3, 4))
    print(layout("\nx[:, :1].expand(3, 4)", wide))
    print("  stride 0 reads the same element four times: a broadcast with no copy")
    print(np.asarray(ops.to_array(wide)))
    check(wide, 1, np.broadcast_to(np.asarray(ops.to_array(col)), (3, 4)))

    print("\n== 4. unfold: a convolution's windows overlap in storage, still without a copy")
    image = ops.from_array(np.arange(1, 17, dtype=np.float32).reshape(1, 1, 4, 4) / 10)
    windows = ops.unfold(ops.unfold(image, 2, 2, 1), 3, 2, 1)
    print(layout("x.unfold(2, 2, 1).unfold(3, 2, 1)", windows))
    print(f"  same storage array as x: {windows.storage is image.storage}; the window dims "
          "reuse the row and column strides, so neighbouring windows share elements")
    print(ops.explain(image, "conv2d", kernel=(2, 2)))
    reference = np.lib.stride_tricks.sliding_window_view(np.asarray(ops.to_array(image)), (2, 2),
                                                         axis=(2, 3))
    check(windows, (-2, -1), reference)


if __name__ == "__main__":
    sys.exit(main())
