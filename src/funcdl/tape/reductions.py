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
                 (lambda g, z, x: _unreduce(g, shape, dims, keepdim),))


@op(reduction(), torch="torch.mean", method=True)
def mean(x: Any, dim: Dims = None, keepdim: bool = False) -> Any:
    """Arithmetic mean over ``dim``."""
    x = unwrap(x)
    shape = shape_of(x)
    dims = canonical_dims(dim, len(shape))
    n = _count(shape, dims)
    return apply("MeanBackward0" if dim is None else "MeanBackward1",
                 lambda x: ops.mean(x, dim=dim, keepdim=keepdim), (x,),
                 (lambda g, z, x: div(_unreduce(g, shape, dims, keepdim), n),))


@op(reduction(), torch="torch.amax", method=True)
def amax(x: Any, dim: Dims = None, keepdim: bool = False) -> Any:
    """Maximum over ``dim``; tied maxima share the gradient evenly (PyTorch's amax rule)."""
    x = unwrap(x)
    shape = shape_of(x)
    dims = canonical_dims(dim, len(shape))

    def rule(g: Any, z: Any, x: Any) -> Any:
        hit = constant(x) == _unreduce(constant(z), shape, dims, keepdim)
        share = hit / jnp.sum(hit, axis=dims, keepdims=True)
        return mul(_unreduce(g, shape, dims, keepdim), share)

    return apply("AmaxBackward0", lambda x: ops.amax(x, dim=dim, keepdim=keepdim), (x,),
                 (rule,))


@op(reduction(min_side=2, correction=[0, 1]), torch="torch.var", method=True)
def var(x: Any, dim: Dims = None, keepdim: bool = False, *, correction: int = 1) -> Any:
    """Variance over ``dim`` with Bessel's ``correction`` (``torch.var``)."""
    x = unwrap(x)
    shape = shape_of(x)
    dims = canonical_dims(dim, len(shape))
    n = _count(shape, dims)

    def rule(g: Any, z: Any, x: Any) -> Any:
        centred = sub(x, mean(x, dims, keepdim=True))
        # n == correction divides by zero: inf, so the gradient is inf/nan as in torch
        scale = 2.0 / (n - correction) if n != correction else math.inf
        return mul(_unreduce(g, shape, dims, keepdim), mul(centred, scale))

    return apply("VarBackward0",
                 lambda x: ops.var(x, dim=dim, keepdim=keepdim, correction=correction),
                 (x,), (rule,))


def _torch_logsumexp(x: Any, dim: Dims = None, keepdim: bool = False) -> Any:
    import torch

    return torch.logsumexp(x, () if dim is None else dim, keepdim)  # torch has no dim=None


@op(reduction(), torch=_torch_logsumexp, method=True)
def logsumexp(x: Any, dim: Dims = None, keepdim: bool = False) -> Any:
    """log(sum(exp(x))) over ``dim``, computed stably; dx = g softmax(x)."""
    x = unwrap(x)
    shape = shape_of(x)
    dims = canonical_dims(dim, len(shape))
    return apply("LogsumexpBackward0",
                 lambda x: ops.logsumexp(x, dim=dim, keepdim=keepdim), (x,),
                 (lambda g, z, x: mul(_unreduce(g, shape, dims, keepdim),
                                      exp(sub(x, _unreduce(z, shape, dims, keepdim)))),))
