"""Pooling with ``torch.nn.functional``'s names and arguments: ``max_pool1d/2d``,
``avg_pool1d/2d``, ``adaptive_avg_pool2d``, ``adaptive_max_pool2d``.

A pooling layer reduces the windows of ``funcdl.ops.unfold``. An average is ``ops.sum`` over the
window dims of that zero-copy view, which `funcdl.ops` lowers to one ``lax.reduce_window``; its
gradient shares ``g`` out over each window (`fold_dim`, the windows' adjoint). A maximum takes the
windows (`unfold_dim`) and picks each one's first maximum in row-major order, as PyTorch does, so
its gradient goes there too, for ``jax.grad`` as for the tape, ties included (``jax.grad`` of a
``reduce_window`` max refuses dilated windows and scatters about 2x slower on XLA:CPU). Every
gradient is written with the tape's own functions, so it differentiates again.
"""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
import numpy as np

from funcdl import ops
from funcdl.ops.shapes import ShapeError, pool_output_size
from funcdl.tape.cases import Case, array, boolean, call
from funcdl.tape.elementwise import div, mul
from funcdl.tape.indexing import take
from funcdl.tape.linalg import matmul
from funcdl.tape.reductions import sum
from funcdl.tape.registry import op
from funcdl.tape.shape import broadcast_to, permute, reshape, squeeze, unsqueeze
from funcdl.tape.tensor import apply, constant, shape_of, unwrap
from funcdl.tape.windows import constant_pad, fold_dim, tuple_arg, unfold_dim, window_view


def _window_view(x: Any, kernel: tuple, stride: tuple, dilation: tuple) -> ops.StridedArray:
    """The zero-copy windows of the last ``len(kernel)`` dims: ``(..., *out, *kernel)``."""
    v = ops.from_array(x)
    lead = v.ndim - len(kernel)
    for i, (k, s, d) in enumerate(zip(kernel, stride, dilation)):
        v = window_view(v, lead + i, k, s, d)
    return v


def _windows(x: Any, kernel: tuple, stride: tuple, dilation: tuple) -> Any:
    """The same windows, differentiable and materialised (one spatial dim at a time)."""
    lead = len(shape_of(x)) - len(kernel)
    for i, (k, s, d) in enumerate(zip(kernel, stride, dilation)):
        x = unfold_dim(x, lead + i, k, s, d)
    return x


def _unwindows(g: Any, kernel: tuple, stride: tuple, dilation: tuple, size: tuple) -> Any:
    """The adjoint of `_windows`: every window of ``g`` summed back into a ``size`` image."""
    nd = len(kernel)
    lead = len(shape_of(g)) - 2 * nd
    for i in reversed(range(nd)):
        g = fold_dim(g, lead + i, kernel[i], stride[i], dilation[i], size[i])
    return g


def _window_dims(nd: int) -> tuple[int, ...]:
    return tuple(range(-nd, 0))


# --------------------------------------------------------------------------- the two primitives


def window_sum(x: Any, kernel: tuple, stride: tuple, dilation: tuple) -> Any:
    """The sum of each window of the last ``len(kernel)`` dims (``lax.reduce_window`` through
    `funcdl.ops`); its gradient spreads ``g`` over each window."""
    x = unwrap(x)
    nd, size = len(kernel), shape_of(x)[-len(kernel):]

    def rule(g: Any, z: Any, x: Any) -> Any:
        spread = broadcast_to(reshape(g, shape_of(g) + (1,) * nd), shape_of(g) + kernel)
        return _unwindows(spread, kernel, stride, dilation, size)

    return apply("AvgPool2DBackward0",
                 lambda x: ops.sum(_window_view(x, kernel, stride, dilation), _window_dims(nd)),
                 (x,), (rule,), tangents="linear")


def _first_max(x: Any) -> Any:
    """One-hot over the last dim at its first maximum (NaN counts as the maximum, as in torch)."""
    return jnp.argmax(x, axis=-1)[..., None] == jnp.arange(x.shape[-1])


def max_last(x: Any) -> Any:
    """The maximum over the last dim, its gradient to the first maximum (torch's ``max(dim)``
    rule, where ``amax`` shares ties)."""
    x = unwrap(x)

    def hits(x: Any) -> Any:  # a constant: where the gradient goes
        return _first_max(constant(x)).astype(constant(x).dtype)

    return apply("MaxBackward0",
                 lambda x: jnp.sum(jnp.where(_first_max(x), x, 0), axis=-1), (x,),
                 (lambda g, z, x: mul(unsqueeze(g, -1), hits(x)),),
                 tangents=(lambda t, z, x: sum(mul(t, hits(x)), -1),))


# --------------------------------------------------------------------------- checks


def _check_rank(name: str, nd: int, shape: tuple, avg: bool) -> None:
    if len(shape) in (nd + 1, nd + 2) and (not avg or nd == 1 or 0 not in shape[1:]):
        return
    if avg and nd == 1:
        raise ShapeError(f"Expected 2 to 3 dimensions, but got {len(shape)}-dimensional tensor for "
                         f"argument #1 'self' (while checking arguments for {name})")
    if avg:
        raise ShapeError(f"Expected 3D or 4D (batch mode) tensor with optional 0 dim batch size "
                         f"for input, but got:{list(shape)}")
    if nd == 1:
        raise ShapeError(f"{name}: Expected 2D or 3D (batch mode) tensor with optional 0 dim "
                         f"batch size for input, but got:{list(shape)}")
    raise ShapeError("non-empty 3D or 4D (batch mode) tensor expected for input")


def _pool_args(name: str, nd: int, kernel_size: Any, stride: Any, padding: Any,
               dilation: Any) -> tuple:
    k = tuple_arg(kernel_size, nd, "kernel_size", name)
    s = k if stride is None or (not isinstance(stride, int) and len(stride) == 0) else \
        tuple_arg(stride, nd, "stride", name)
    p = tuple_arg(padding, nd, "padding", name)
    d = tuple_arg(dilation, nd, "dilation", name)
    if 0 in s:
        raise ShapeError("stride should not be zero")
    if min(k) <= 0:
        raise ShapeError(f"kernel size should be greater than zero, but got {_hw('k', k)}")
    if min(s) < 0:
        raise ShapeError(f"stride should be greater than zero, but got {_hw('d', s)}")
    if min(d) <= 0:
        raise ShapeError(f"dilation should be greater than zero, but got {_hw('dilation', d)}")
    if min(p) < 0:
        raise ShapeError(f"pad must be non-negative, but got pad: {min(p)}")
    for kk, pp, dd in zip(k, p, d):
        if pp > ((kk - 1) * dd + 1) // 2:
            raise ShapeError(f"pad should be at most half of effective kernel size, but got "
                             f"pad={pp}, kernel_size={kk} and dilation={dd}")
    return k, s, p, d


def _hw(name: str, v: tuple) -> str:
    return f"{name}H: {v[0]} {name}W: {v[-1]}"


def _out_sizes(shape: tuple, k: tuple, s: tuple, p: tuple, d: tuple, ceil_mode: bool) -> tuple:
    nd = len(k)
    size = shape[-nd:]
    out = tuple(pool_output_size(n, *a, ceil_mode) for n, *a in zip(size, k, s, p, d))
    if min(out) < 1:
        given = "x".join(map(str, shape[-nd - 1:]))
        calc = "x".join(map(str, shape[-nd - 1:-nd] + out))
        raise ShapeError(f"Given input size: ({given}). Calculated output size: ({calc}). Output "
                         "size is too small")
    return out


def _padded(x: Any, size: tuple, out: tuple, k: tuple, s: tuple, p: tuple, d: tuple,
            value: float) -> Any:
    """``x`` padded by ``p`` and, at the end, by what ceil_mode's last windows overhang."""
    widths = []
    for n, o, kk, ss, pp, dd in reversed(list(zip(size, out, k, s, p, d))):
        over = (o - 1) * ss + (kk - 1) * dd + 1 - (n + 2 * pp)
        widths += [pp, pp + max(over, 0)]
    return constant_pad(x, tuple(widths), value) if max(widths) else x


# --------------------------------------------------------------------------- max and average


def _max_pool(name: str, nd: int, input: Any, kernel_size: Any, stride: Any, padding: Any,
              dilation: Any, ceil_mode: bool, return_indices: bool) -> Any:
    x = unwrap(input)
    shape = shape_of(x)
    _check_rank(name, nd, shape, avg=False)
    k, s, p, d = _pool_args(name, nd, kernel_size, stride, padding, dilation)
    out = _out_sizes(shape, k, s, p, d, ceil_mode)
    xp = _padded(x, shape[-nd:], out, k, s, p, d, -math.inf)
    windows = _windows(xp, k, s, d)
    ws = shape_of(windows)
    z = max_last(reshape(windows, ws[:len(ws) - nd] + (math.prod(k),)))
    return (z, _indices(constant(windows), shape[-nd:], k, s, p, d)) if return_indices else z


def _indices(windows: Any, size: tuple, k: tuple, s: tuple, p: tuple, d: tuple) -> Any:
    """torch's ``return_indices``: each maximum's flat index into the (unpadded) input plane."""
    nd = len(k)
    lead = windows.shape[:windows.ndim - nd]
    at = jnp.argmax(windows.reshape(lead + (-1,)), axis=-1)
    index = jnp.zeros(lead, jnp.int32)
    for i in range(nd):  # the input coordinate along spatial dim i, flattened row-major
        offset = (at // math.prod(k[i + 1:])) % k[i]
        pos = (jnp.arange(lead[len(lead) - nd + i]) * s[i]).reshape((-1,) + (1,) * (nd - 1 - i))
        index = index * size[i] + pos + offset * d[i] - p[i]
    return index


def _pool_case(nd: int, avg: bool) -> Case:
    """Random kernels, strides, paddings (at most half the kernel), dilations, ceil_mode."""

    def make(d: Any) -> Any:
        batch = d.choice([(), (2,)], "batch")
        x = array(d, batch + (2,) + (7, 6)[:nd])
        k = tuple(d.choice([2, 3], "kernel") for _ in range(nd))
        stride = d.choice([None, 1, 2], "stride")
        padding = d.choice([0, 1], "padding")
        ceil = boolean(d, "ceil_mode")
        if avg:
            return call(x, k, stride, padding, ceil, count_include_pad=boolean(d, "count pad"))
        return call(x, k, stride, padding, d.choice([1, 2], "dilation"), ceil)

    return Case("kernel, stride, padding, " + ("count_include_pad" if avg else "dilation")
                + ", ceil_mode", make)


@op(_pool_case(1, avg=False), torch="torch.nn.functional.max_pool1d")
def max_pool1d(input: Any, kernel_size: Any, stride: Any = None, padding: Any = 0,
               dilation: Any = 1, ceil_mode: bool = False, return_indices: bool = False) -> Any:
    """``torch.nn.functional.max_pool1d`` over ``(N, C, L)`` or ``(C, L)``."""
    return _max_pool("max_pool1d", 1, input, kernel_size, stride, padding, dilation, ceil_mode,
                     return_indices)


@op(_pool_case(2, avg=False), torch="torch.nn.functional.max_pool2d")
def max_pool2d(input: Any, kernel_size: Any, stride: Any = None, padding: Any = 0,
               dilation: Any = 1, ceil_mode: bool = False, return_indices: bool = False) -> Any:
    """``torch.nn.functional.max_pool2d`` over ``(N, C, H, W)`` or ``(C, H, W)``: ``stride``
    defaults to the kernel; padding counts as -inf; ``return_indices`` adds each maximum's flat
    index into its input plane."""
    return _max_pool("max_pool2d", 2, input, kernel_size, stride, padding, dilation, ceil_mode,
                     return_indices)


def _divisor(size: tuple, out: tuple, k: tuple, s: tuple, p: tuple, count_pad: bool
             ) -> np.ndarray:
    """torch's divisor of each window: its elements inside the padded input (all of them with
    ``count_include_pad``), else inside the input itself; never the ceil_mode overhang."""
    per_dim = []
    for n, o, kk, ss, pp in zip(size, out, k, s, p):
        start = np.arange(o) * ss - pp
        end = np.minimum(start + kk, n + pp)
        if not count_pad:
            start, end = np.maximum(start, 0), np.minimum(end, n)
        per_dim.append(end - start)
    total = per_dim[0]
    for extent in per_dim[1:]:
        total = np.multiply.outer(total, extent)
    return total.astype(np.float32)


def _avg_pool(name: str, nd: int, input: Any, kernel_size: Any, stride: Any, padding: Any,
              ceil_mode: bool, count_include_pad: bool, divisor_override: Any) -> Any:
    x = unwrap(input)
    shape = shape_of(x)
    _check_rank(name, nd, shape, avg=True)
    k, s, p, d = _pool_args(name, nd, kernel_size, stride, padding, 1)
    if divisor_override is not None and divisor_override == 0:
        raise ShapeError("divisor must be not zero")
    out = _out_sizes(shape, k, s, p, d, ceil_mode)
    total = window_sum(_padded(x, shape[-nd:], out, k, s, p, d, 0.0), k, s, d)
    if divisor_override is not None:
        return div(total, float(divisor_override))
    divisor = _divisor(shape[-nd:], out, k, s, p, count_include_pad)
    if np.all(divisor == divisor.flat[0]):
        return div(total, float(divisor.flat[0]))
    return div(total, divisor.astype(jnp.result_type(x)))


@op(_pool_case(1, avg=True), torch="torch.nn.functional.avg_pool1d")
def avg_pool1d(input: Any, kernel_size: Any, stride: Any = None, padding: Any = 0,
               ceil_mode: bool = False, count_include_pad: bool = True) -> Any:
    """``torch.nn.functional.avg_pool1d`` over ``(N, C, L)`` or ``(C, L)``."""
    return _avg_pool("avg_pool1d", 1, input, kernel_size, stride, padding, ceil_mode,
                     count_include_pad, None)


@op(_pool_case(2, avg=True), torch="torch.nn.functional.avg_pool2d")
def avg_pool2d(input: Any, kernel_size: Any, stride: Any = None, padding: Any = 0,
               ceil_mode: bool = False, count_include_pad: bool = True,
               divisor_override: int | None = None) -> Any:
    """``torch.nn.functional.avg_pool2d`` over ``(N, C, H, W)`` or ``(C, H, W)``: each window's
    sum divided as torch divides it (padding counted or not; never the ceil_mode overhang)."""
    return _avg_pool("avg_pool2d", 2, input, kernel_size, stride, padding, ceil_mode,
                     count_include_pad, divisor_override)


# --------------------------------------------------------------------------- adaptive


def _bounds(n: int, o: int) -> list[tuple[int, int]]:
    """torch's adaptive windows: ``[floor(i n / o), ceil((i + 1) n / o))``."""
    return [((i * n) // o, -(-((i + 1) * n) // o)) for i in range(o)]


def _adaptive_args(name: str, input: Any, output_size: Any, sep: str) -> tuple:
    x = unwrap(input)
    shape = shape_of(x)
    if len(shape) not in (3, 4):
        raise ShapeError(f"{name}(): Expected 3D or 4D tensor, but got{sep}{list(shape)}")
    sizes = (output_size,) * 2 if isinstance(output_size, int | None) else tuple(output_size)
    if len(sizes) != 2:
        raise ShapeError(f"{name}: output_size must be 2")
    out = tuple(n if o is None else int(o) for o, n in zip(sizes, shape[-2:]))
    if min(out) < 0:
        raise ShapeError(f"{name}: elements of output_size must be greater than or equal to 0 "
                         f"but received {{{out[0]}, {out[1]}}}")
    return x, shape, out


def _averaging(n: int, o: int, dtype: Any) -> np.ndarray:
    """The ``(o, n)`` matrix averaging each adaptive window."""
    a = np.zeros((o, n), np.float64)
    for i, (lo, hi) in enumerate(_bounds(n, o)):
        a[i, lo:hi] = 1.0 / (hi - lo)
    return a.astype(dtype)


@op(Case("output sizes", lambda d: call(array(d, d.choice([(2, 7, 6), (2, 2, 5, 4)], "shape")),
                                        d.choice([(3, 4), 2, (None, 3), 1], "output size"))),
    torch="torch.nn.functional.adaptive_avg_pool2d")
def adaptive_avg_pool2d(input: Any, output_size: Any) -> Any:
    """``torch.nn.functional.adaptive_avg_pool2d``: ``output_size`` windows per spatial dim,
    ``[floor(i H / OH), ceil((i + 1) H / OH))``, each averaged (two small matrix products);
    ``None`` keeps a size."""
    x, shape, (oh, ow) = _adaptive_args("adaptive_avg_pool2d", input, output_size, " ")
    dtype = jnp.result_type(x)
    rows = matmul(x, _averaging(shape[-1], ow, dtype).T)  # (..., H, OW)
    return matmul(_averaging(shape[-2], oh, dtype), rows)  # (..., OH, OW)


def _gather_windows(x: Any, shape: tuple, out: tuple) -> Any:
    """Each adaptive window of ``x``, padded to the longest by repeating its last element (a
    repeat is never the first maximum): ``(..., OH, OW, kh * kw)``."""
    x = unsqueeze(x, 0) if len(shape) == 3 else x
    tables = []
    for n, o in zip(shape[-2:], out):
        bounds = _bounds(n, o)
        width = max(hi - lo for lo, hi in bounds)
        tables.append(np.array([[min(lo + j, hi - 1) for j in range(width)] for lo, hi in bounds]))
    w = take(take(x, tables[0], 2), tables[1], 4)  # (N, C, OH, kh, OW, kw)
    w = permute(w, (0, 1, 2, 4, 3, 5))
    ws = shape_of(w)
    w = reshape(w, ws[:4] + (ws[4] * ws[5],))
    return squeeze(w, 0) if len(shape) == 3 else w


@op(Case("output sizes", lambda d: call(array(d, d.choice([(2, 7, 6), (2, 2, 6, 4)], "shape")),
                                        d.choice([(3, 4), 2, (None, 3), 5], "output size"))),
    torch="torch.nn.functional.adaptive_max_pool2d")
def adaptive_max_pool2d(input: Any, output_size: Any, return_indices: bool = False) -> Any:
    """``torch.nn.functional.adaptive_max_pool2d``: the maximum of each adaptive window (see
    `adaptive_avg_pool2d`), its gradient to the window's first maximum as in torch."""
    x, shape, out = _adaptive_args("adaptive_max_pool2d", input, output_size, ": ")
    if 0 in out:
        raise NotImplementedError("adaptive_max_pool2d with an empty output_size")
    if all(n % o == 0 for n, o in zip(shape[-2:], out)):  # equal windows: a max_pool2d
        k = tuple(n // o for n, o in zip(shape[-2:], out))
        return _max_pool("adaptive_max_pool2d", 2, x, k, k, 0, 1, False, return_indices)
    if return_indices:
        raise NotImplementedError("adaptive_max_pool2d(return_indices=True) needs the input size "
                                  "to be a multiple of output_size")
    return max_last(_gather_windows(x, shape, out))
