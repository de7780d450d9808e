"""Losses on pairs with ``torch.nn.functional``'s names, arguments and reductions:
``margin_ranking_loss`` and ``cosine_embedding_loss``, composed as torch composes them."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from funcdl.tape.cases import Case, array, call
from funcdl.tape.elementwise import add, div, mul, neg, sqrt, sub, where
from funcdl.tape.losses import REDUCTIONS, apply_reduction, check_reduction, in_float32
from funcdl.tape.reductions import sum
from funcdl.tape.registry import op
from funcdl.tape.tensor import constant, shape_of, unwrap

_EPSILON = 1e-12  # torch's guard on each squared norm


def _hinge(v: Any) -> Any:
    """max(v, 0) with torch's clamp_min slope: 1 where v >= 0, the tie included."""
    return where(constant(v) >= 0, v, 0.0)


def _signs(d: Any, n: int) -> np.ndarray:
    return np.random.default_rng(d.seed("signs")).choice([-1, 1], n)


def _ranking_case(d: Any) -> Any:
    n = d.choice([1, 3, 5], "batch")
    return call(array(d, (n,)), array(d, (n,)), _signs(d, n).astype(np.float32),
                margin=d.choice([0.0, 0.5], "margin"), reduction=d.choice(REDUCTIONS, "reduction"))


@op(Case("margin, reductions", _ranking_case), torch="torch.nn.functional.margin_ranking_loss")
def margin_ranking_loss(input1: Any, input2: Any, target: Any, margin: float = 0.0, *,
                        reduction: str = "mean") -> Any:
    """max(0, -target (input1 - input2) + margin): ``target`` 1 says input1 should rank higher,
    -1 lower (the three broadcast together, with equal numbers of dims)."""
    check_reduction(reduction)
    x1, x2, y = in_float32(unwrap(input1), unwrap(input2), unwrap(target))
    if not len(shape_of(x1)) == len(shape_of(x2)) == len(shape_of(y)):
        raise RuntimeError(
            f"margin_ranking_loss : All input tensors should have same dimension but got sizes: "
            f"input1: torch.Size({list(shape_of(x1))}), input2: torch.Size({list(shape_of(x2))}), "
            f"target: torch.Size({list(shape_of(y))}) ")
    return apply_reduction(_hinge(add(mul(neg(y), sub(x1, x2)), margin)), reduction)


def _cosine_case(d: Any) -> Any:
    if d.choice([False, True], "one pair"):
        return call(array(d, (4,)), array(d, (4,)), np.asarray(_signs(d, 1)[0]),
                    margin=d.choice([0.0, 0.3], "margin"))
    n = d.choice([1, 3], "batch")
    return call(array(d, (n, 4)), array(d, (n, 4)), _signs(d, n),
                margin=d.choice([0.0, 0.3], "margin"), reduction=d.choice(REDUCTIONS, "reduction"))


@op(Case("pairs or one pair, margin", _cosine_case),
    torch="torch.nn.functional.cosine_embedding_loss")
def cosine_embedding_loss(input1: Any, input2: Any, target: Any, margin: float = 0.0, *,
                          reduction: str = "mean") -> Any:
    """1 - cos(input1, input2) where ``target`` is 1, max(0, cos - margin) where it is -1 (0 for
    other targets); rows of (N, D) inputs with an (N,) target, or (D,) inputs with a 0-d one."""
    check_reduction(reduction)
    x1, x2 = in_float32(unwrap(input1), unwrap(input2))
    y = jnp.asarray(constant(unwrap(target)))
    dims = y.ndim
    if dims > 1:
        raise RuntimeError("0D or 1D target tensor expected, multi-target not supported")
    want = 2 if dims == 1 else 1
    if not len(shape_of(x1)) == len(shape_of(x2)) == want:
        raise RuntimeError(f"{dims}D target tensor expects {want}D input tensors, but found "
                           f"inputs with sizes {list(shape_of(x1))} and {list(shape_of(x2))}.")
    dot = sum(mul(x1, x2), dims)
    norms = mul(add(sum(mul(x1, x1), dims), _EPSILON), add(sum(mul(x2, x2), dims), _EPSILON))
    cos = div(dot, sqrt(norms))
    loss = add(where(y == 1, sub(1.0, cos), 0.0), where(y == -1, _hinge(sub(cos, margin)), 0.0))
    return apply_reduction(loss, reduction)
