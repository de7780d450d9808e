"""Reductions over ``dim=None | int | tuple`` with PyTorch's semantics and error messages.

A plain array goes straight to the matching ``jnp`` reduction (the compiled program is jnp's). A
:class:`StridedArray` is lowered (see :mod:`funcdl.ops.lower`) to the array of its real dims in
storage order, reduced there, and only the (smaller) result is transposed into place. Reduced dims
with stride 0 are never materialised: summing ``m`` copies of a value is ``m * value``, their max is
the value, and so on.
"""

from __future__ import annotations

import builtins
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from funcdl.ops.lower import LOWERINGS, lower, place, real_dims, reduce_box, to_array
from funcdl.ops.shapes import canonical_dim, canonical_dims
from funcdl.ops.strided import StridedArray, _make
from funcdl.ops.windows import reduce_windows

Dim = int | tuple[int, ...] | None


def _var_core(x: jnp.ndarray, axes: tuple[int, ...], copies: int, correction: float,
              keepdims: bool = False):
    """Variance of ``copies`` replicas of ``x`` over ``axes``, divided by max(N - correction, 0)."""
    n = math.prod(x.shape[a] for a in axes) * copies
    if copies == 1 and n - correction > 0:
        return jnp.var(x, axis=axes, ddof=correction, keepdims=keepdims)
    # jnp.var divides by n - correction even when that is negative; torch clamps it at 0.
    centered = x - jnp.mean(x, axis=axes, keepdims=True)
    ss = jnp.sum(lax.square(centered), axis=axes, keepdims=keepdims) * copies
    return ss / max(n - correction, 0)


_MATVEC_DTYPES = (jnp.float32, jnp.float64)  # where _sum's matvec is as exact as a reduction


def _chunks(m: int) -> int:
    """The divisor of ``m`` closest to ``sqrt(m)`` from below (1 when ``m`` is prime)."""
    return max(c for c in range(1, math.isqrt(m) + 1) if m % c == 0)


def _sum(x: jnp.ndarray, axes: tuple[int, ...]) -> jnp.ndarray:
    """``jnp.sum(x, axes)``; over leading axes of a large float array, as a matrix-vector product.

    Summing over leading axes is a column reduction of the row-major storage, which XLA:CPU runs
    at about 60% of a row reduction's speed (4096 x 4096 float32: ~5.5 ms against ~3.4 ms).
    Splitting the ``M`` reduced rows into ``c ~ sqrt(M)`` chunks, contracting the chunk axis with
    ones (a matvec: BLAS-speed, one pass over memory) and summing the ``M / c`` partial rows reads
    the data once, at row-reduction speed, with two short accumulation chains instead of one of
    length ``M``. ``HIGHEST`` precision keeps TPUs and GPUs from rounding the operands.
    """
    k = len(axes)
    m = math.prod(x.shape[:k])
    leading = axes == tuple(range(k)) and k < x.ndim and x.dtype in _MATVEC_DTYPES
    c = _chunks(m) if leading and m >= 512 else 1
    if c < 16:
        return jnp.sum(x, axis=axes)
    rows = lax.dot_general(jnp.ones((c,), x.dtype), x.reshape(c, -1), (((0,), (0,)), ((), ())),
                           precision=lax.Precision.HIGHEST)
    return jnp.sum(rows.reshape((m // c,) + x.shape[k:]), axis=0)


def _combine(op: str, x: jnp.ndarray, axes: tuple[int, ...], copies: int, correction: float):
    """``op`` over ``axes`` of ``x``, as if every element appeared ``copies`` times."""
    if op == "sum":
        r = _sum(x, axes)
        return r if copies == 1 else r * jnp.asarray(copies, r.dtype)
    if op == "mean":
        if x.dtype in _MATVEC_DTYPES:
            return _sum(x, axes) / math.prod(x.shape[a] for a in axes)
        return jnp.mean(x, axis=axes)
    if op == "prod":
        r = jnp.prod(x, axis=axes)
        return r if copies == 1 else lax.integer_pow(r, copies)
    if op == "amax":
        return jnp.max(x, axis=axes)
    if op == "amin":
        return jnp.min(x, axis=axes)
    if op == "logsumexp":
        r = jax.nn.logsumexp(x, axis=axes)
        return r if copies == 1 else r + math.log(copies)
    if op == "var":
        return _var_core(x, axes, copies, correction)
    raise AssertionError(op)


_PLAIN: dict[str, Callable[..., Any]] = {
    "sum": jnp.sum, "mean": jnp.mean, "prod": jnp.prod, "amax": jnp.max, "amin": jnp.min,
    "logsumexp": jax.nn.logsumexp,
}


def _check_dtype(op: str, dtype) -> None:
    floating = jnp.issubdtype(dtype, jnp.inexact)
    if op == "mean" and not floating:
        raise TypeError(f"mean(): could not infer output dtype. Input dtype must be either a "
                        f"floating point or complex dtype. Got: {dtype}; cast with "
                        f"x.astype(jnp.float32) first")
    if op == "var" and not floating:
        raise TypeError(f"std and var only support floating point and complex dtypes, got "
                        f"{dtype}; cast with x.astype(jnp.float32) first")


def _integer_sum_dtype(op: str, dtype: Any) -> Any:
    """torch sums and multiplies bools and integers in int64. With JAX's 64-bit mode on, so does
    funcdl; without it JAX has no int64, the result stays int32 (`_check_overflow` guards it)."""
    small_int = dtype == jnp.bool_ or (jnp.issubdtype(dtype, jnp.integer)
                                        and jnp.iinfo(dtype).bits < 64)
    if op in ("sum", "prod") and small_int and jax.config.jax_enable_x64:
        return jnp.int64
    return None


def _check_overflow(op: str, x: Any, dims: tuple[int, ...]) -> None:
    """An integer sum or product that does not fit its int32 result raises (torch's int64 would
    hold it) when the values are concrete; traced under jit it wraps, as JAX's does."""
    if isinstance(x, jax.core.Tracer):
        return
    exact = np.asarray(x, np.float64)  # exact below 2**53, far beyond what int32 can overflow to
    exact = exact.sum(axis=dims) if op == "sum" else np.prod(exact, axis=dims)
    info = jnp.iinfo(x.dtype)
    if exact.size and (exact.max() > info.max or exact.min() < info.min):
        raise OverflowError(
            f"{op}() of {x.dtype} values reaches {exact.flat[np.argmax(np.abs(exact))]:.0f}, "
            f"beyond {x.dtype} (torch computes it in int64): turn on 64-bit integers with "
            "jax.config.update('jax_enable_x64', True), or cast to a float dtype first")


def _check_nonempty(op: str, shape: tuple[int, ...], dims: tuple[int, ...], dim: Dim) -> None:
    """amax/amin/argmax/argmin have no identity: refuse empty reductions like torch does."""
    if dim is None and math.prod(shape) == 0:
        raise ValueError(f"{op}(): Expected reduction dim to be specified for input.numel() == 0. "
                         f"Specify the reduction dim with the 'dim' argument.")
    for d in dims:
        if shape[d] == 0:
            raise IndexError(f"{op}(): Expected reduction dim {d} to have non-zero size.")


def _check_lowering(lowering: str) -> None:
    if lowering not in LOWERINGS:
        raise ValueError(f"lowering must be one of {LOWERINGS}, got {lowering!r}")


def _reduce(op: str, x: Any, dim: Dim, keepdim: bool, lowering: str, correction: float = 1):
    _check_lowering(lowering)
    strided = isinstance(x, StridedArray)
    if not strided:
        x = jnp.asarray(x)
    shape = tuple(x.shape)
    dims = canonical_dims(dim, len(shape))
    _check_dtype(op, x.dtype)
    if op in ("amax", "amin"):
        _check_nonempty(op, shape, dims, dim)
    if op == "logsumexp" and not jnp.issubdtype(x.dtype, jnp.inexact):
        x = (_make(x.storage.astype(jnp.float32), x.shape, x.strides, x.offset) if strided
             else x.astype(jnp.float32))
    wide = _integer_sum_dtype(op, x.dtype)
    if wide is not None:
        x = (_make(x.storage.astype(wide), x.shape, x.strides, x.offset) if strided
             else x.astype(wide))
    if op in ("sum", "prod") and jnp.issubdtype(x.dtype, jnp.integer) \
            and not jax.config.jax_enable_x64:
        _check_overflow(op, to_array(x) if strided else x, dims)
    if not strided:
        if op == "var":
            return _var_core(x, dims, 1, correction, keepdim)
        return _PLAIN[op](x, axis=dims if dim is not None else None, keepdims=keepdim)
    if x.size == 0:
        return _reduce(op, to_array(x), dim, keepdim, lowering, correction)
    # Reduced dims that never move through storage (size 1, stride 0) are counted, not read.
    moving = set(real_dims(x)) if lowering != "gather" else set(range(x.ndim))
    copies = math.prod(shape[d] for d in dims if d not in moving)
    combine = lambda a, axes: _combine(op, a, axes, copies, correction)  # noqa: E731
    # overlapping windows (an unfold view) reduce as one lax.reduce_window over their storage
    windowed = reduce_windows(x, dims, op, combine) if lowering == "auto" else None
    r, kept = windowed or reduce_box(x, dims, combine, lowering)
    return place(r, _out_dims(kept, dims, keepdim), _out_shape(shape, dims, keepdim))


def _out_shape(shape: tuple[int, ...], dims: tuple[int, ...], keepdim: bool) -> tuple[int, ...]:
    if keepdim:
        return tuple(1 if d in dims else n for d, n in enumerate(shape))
    return tuple(n for d, n in enumerate(shape) if d not in dims)


def _out_dims(kept: tuple[int, ...], dims: tuple[int, ...], keepdim: bool) -> tuple[int, ...]:
    """Where each kept input dim lands in the output."""
    return kept if keepdim else tuple(d - builtins.sum(r < d for r in dims) for d in kept)


def sum(x: Any, dim: Dim = None, keepdim: bool = False, *, lowering: str = "auto") -> jax.Array:
    """Sum over ``dim`` (None: all dims), like ``torch.sum``."""
    return _reduce("sum", x, dim, keepdim, lowering)


def mean(x: Any, dim: Dim = None, keepdim: bool = False, *, lowering: str = "auto") -> jax.Array:
    """Mean over ``dim``; floating inputs only, like ``torch.mean``."""
    return _reduce("mean", x, dim, keepdim, lowering)


def prod(x: Any, dim: Dim = None, keepdim: bool = False, *, lowering: str = "auto") -> jax.Array:
    """Product over ``dim`` (a tuple is allowed, unlike ``torch.prod``)."""
    return _reduce("prod", x, dim, keepdim, lowering)


def amax(x: Any, dim: Dim = None, keepdim: bool = False, *, lowering: str = "auto") -> jax.Array:
    """Maximum over ``dim``; its gradient is shared evenly between ties, as in ``torch.amax``."""
    return _reduce("amax", x, dim, keepdim, lowering)


def amin(x: Any, dim: Dim = None, keepdim: bool = False, *, lowering: str = "auto") -> jax.Array:
    """Minimum over ``dim``, like ``torch.amin``."""
    return _reduce("amin", x, dim, keepdim, lowering)


def logsumexp(x: Any, dim: Dim = None, keepdim: bool = False, *,
              lowering: str = "auto") -> jax.Array:
    """``log(sum(exp(x)))`` over ``dim``, computed stably; integer inputs give float32."""
    return _reduce("logsumexp", x, dim, keepdim, lowering)


def var(x: Any, dim: Dim = None, keepdim: bool = False, *, correction: float = 1,
        lowering: str = "auto") -> jax.Array:
    """``torch.var``: squared deviations summed over ``dim``, divided by ``max(N - correction, 0)``.

    ``correction=1`` is Bessel's unbiased estimate; ``correction=0`` the biased variance that layer
    norm uses.
    """
    return _reduce("var", x, dim, keepdim, lowering, correction)


def _arg(op: str, x: Any, dim: int | None, keepdim: bool, lowering: str) -> jax.Array:
    _check_lowering(lowering)
    fn = jnp.argmax if op == "argmax" else jnp.argmin
    strided = isinstance(x, StridedArray)
    shape = tuple(x.shape) if strided else tuple(jnp.shape(x))
    if dim is not None and not isinstance(dim, int):
        raise TypeError(f"{op}(): argument 'dim' must be int, not {type(dim).__name__}")
    d = None if dim is None else canonical_dim(dim, len(shape))
    _check_nonempty(op, shape, () if d is None or not shape else (d,), dim)
    if d is None or not shape:  # index into the flattened view, in logical (row-major) order
        flat = to_array(x, lowering=lowering) if strided else jnp.asarray(x)
        r = fn(flat.reshape(-1))
        return r.reshape((1,) * len(shape)) if keepdim else r
    if not strided:
        return fn(x, axis=d, keepdims=keepdim)
    moving = real_dims(x) if lowering != "gather" else tuple(range(x.ndim))
    if d in moving:
        r, kept = reduce_box(x, (d,), lambda a, axes: fn(a, axis=axes[0]), lowering)
    else:  # every index along d reads the same value: the first one wins
        arr, adims = lower(x, lowering)
        kept = tuple(a for a in adims if a != d)
        r = jnp.zeros(tuple(n for n, a in zip(arr.shape, adims) if a != d), jnp.int32)
    return place(r, _out_dims(kept, (d,), keepdim), _out_shape(shape, (d,), keepdim))


def argmax(x: Any, dim: int | None = None, keepdim: bool = False, *,
           lowering: str = "auto") -> jax.Array:
    """Index of the maximum along ``dim`` (None: into the flattened array); first of ties."""
    return _arg("argmax", x, dim, keepdim, lowering)


def argmin(x: Any, dim: int | None = None, keepdim: bool = False, *,
           lowering: str = "auto") -> jax.Array:
    """Index of the minimum along ``dim`` (None: into the flattened array); first of ties."""
    return _arg("argmin", x, dim, keepdim, lowering)
