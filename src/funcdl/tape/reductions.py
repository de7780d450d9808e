"""Reductions over dims: forward by `funcdl.ops` (the strided walk at memory bandwidth), gradient
by broadcasting ``g`` back over the reduced dims."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from funcdl import ops
from funcdl.ops.shapes import canonical_dims
from funcdl.tape.cases import reduction
from funcdl.tape.elementwise import div, exp, mul, sub
from funcdl.tape.registry import op
from funcdl.tape.shape import broadcast_to, reshape
from funcdl.tape.tensor import apply, constant, shape_of, unwrap

Dims = int | Sequence[int] | None


def _unreduce(g: Any, shape: tuple[int, ...], dims: tuple[int, ...], keepdim: bool) -> Any:
    """Broadcast a reduced gradient back over the reduced dims."""
    if not keepdim:
        g = reshape(g, tuple(1 if i in dims else n for i, n in enumerate(shape)))
    return broadcast_to(g, shape)


def _count(shape: tuple[int, ...], dims: tuple[int, ...]) -> int:
    return int(np.prod([shape[d] for d in dims])) if dims else 1


@op(reduction(), torch="torch.sum", method=True)
def sum(x: Any, dim: Dims = None, keepdim: bool = False) -> Any:
    """Sum over ``dim`` (all dims when None)."""
    x = unwrap(x)
    shape = shape_of(x)
    dims = canonical_dims(dim, len(shape))
    return apply("SumBackward0" if dim is None else "SumBackward1",
                 lambda x: ops.sum(x, dim=dim, keepdim=keepdim), (x,),
                 (lambda g, z, x: _unreduce(g, shape, dims, keepdim),),
                 tangents="linear")


@op(reduction(), torch="torch.mean", method=True)
def mean(x: Any, dim: Dims = None, keepdim: bool = False) -> Any:
    """Arithmetic mean over ``dim``."""
    x = unwrap(x)
    shape = shape_of(x)
    dims = canonical_dims(dim, len(shape))
    n = _count(shape, dims)
    return apply("MeanBackward0" if dim is None else "MeanBackward1",
                 lambda x: ops.mean(x, dim=dim, keepdim=keepdim), (x,),
                 (lambda g, z, x: div(_unreduce(g, shape, dims, keepdim), n),),
                 tangents="linear")


def _sloped(name: str, forward: Any, x: Any, shape: tuple[int, ...], dims: tuple[int, ...],
            keepdim: bool, slope: Any) -> Any:
    """A reduction whose output moves by the sum over ``dims`` of ``slope(z, x) * dx``: the
    backward pass spreads ``g`` times the slope, forward mode sums the tangent times it."""
    return apply(name, forward, (x,),
                 (lambda g, z, x: mul(_unreduce(g, shape, dims, keepdim), slope(z, x)),),
                 tangents=(lambda t, z, x: sum(mul(t, slope(z, x)), dims, keepdim),))


@op(reduction(), torch="torch.amax", method=True)
def amax(x: Any, dim: Dims = None, keepdim: bool = False) -> Any:
    """Maximum over ``dim``; tied maxima share the gradient evenly (PyTorch's amax rule)."""
    x = unwrap(x)
    shape = shape_of(x)
    dims = canonical_dims(dim, len(shape))

    def share(z: Any, x: Any) -> Any:  # 1/k at each of the k maxima, 0 elsewhere
        hit = constant(x) == _unreduce(constant(z), shape, dims, keepdim)
        return hit / jnp.sum(hit, axis=dims, keepdims=True)

    return _sloped("AmaxBackward0", lambda x: ops.amax(x, dim=dim, keepdim=keepdim), x, shape,
                   dims, keepdim, share)


@op(reduction(min_side=2, correction=[0, 1]), torch="torch.var", method=True)
def var(x: Any, dim: Dims = None, keepdim: bool = False, *, correction: int = 1) -> Any:
    """Variance over ``dim`` with Bessel's ``correction`` (``torch.var``)."""
    x = unwrap(x)
    shape = shape_of(x)
    dims = canonical_dims(dim, len(shape))
    n = _count(shape, dims)
    # n == correction divides by zero: inf, so the gradient is inf/nan as in torch
    scale = 2.0 / (n - correction) if n != correction else math.inf

    def slope(z: Any, x: Any) -> Any:  # 2 (x - mean) / (n - correction)
        return mul(sub(x, mean(x, dims, keepdim=True)), scale)

    return _sloped("VarBackward0",
                   lambda x: ops.var(x, dim=dim, keepdim=keepdim, correction=correction), x,
                   shape, dims, keepdim, slope)


def _torch_logsumexp(x: Any, dim: Dims = None, keepdim: bool = False) -> Any:
    import torch

    # torch has no dim=None, and its dim=() fails on a 1-element 1-D tensor ("output with shape []
    # doesn't match the broadcast shape [1]"): name every dim instead
    return torch.logsumexp(x, tuple(range(x.ndim)) if dim is None else dim, keepdim)


@op(reduction(), torch=_torch_logsumexp, method=True)
def logsumexp(x: Any, dim: Dims = None, keepdim: bool = False) -> Any:
    """log(sum(exp(x))) over ``dim``, computed stably; dx = g softmax(x)."""
    x = unwrap(x)
    shape = shape_of(x)
    dims = canonical_dims(dim, len(shape))
    return _sloped("LogsumexpBackward0", lambda x: ops.logsumexp(x, dim=dim, keepdim=keepdim),
                   x, shape, dims, keepdim,
                   lambda z, x: exp(sub(x, _unreduce(z, shape, dims, keepdim))))  # softmax
