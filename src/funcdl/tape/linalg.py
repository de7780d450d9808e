"""Matrix products and triangles: ``matmul`` (every torch.matmul case), ``linear``, ``tril``,
``triu``. A product's gradients are products with the other operand transposed."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcdl.ops.shapes import broadcast_shapes
from funcdl.tape.cases import Case, array, boolean, call, fixed, shape
from funcdl.tape.elementwise import mul
from funcdl.tape.reductions import sum
from funcdl.tape.registry import op
from funcdl.tape.shape import reshape, transpose, unsqueeze
from funcdl.tape.tensor import Tensor, apply, shape_of, unwrap

MATMUL_SHAPES = [((3,), (3,)), ((2, 3), (3,)), ((3,), (3, 4)), ((2, 3), (3, 4)),
                 ((2, 2, 3), (3, 4)), ((3,), (2, 3, 4)), ((2, 1, 2, 3), (3, 3, 2)),
                 ((2, 2, 3), (2, 3, 1))]


def _matmul_case(d: Any) -> Any:
    sa, sb = d.choice(MATMUL_SHAPES, "shapes")
    return call(array(d, sa), array(d, sb))


def _sum_leading(x: Any, keep: int) -> Any:
    """Sum all but the last ``keep`` dims."""
    lead = len(shape_of(x)) - keep
    return sum(x, tuple(range(lead))) if lead > 0 else x


@op(Case("1-D to batched", _matmul_case),
    fixed("batched, broadcast batches", (2, 1, 3, 4), (5, 4, 2)),
    torch="torch.matmul", method=True, operators=("__matmul__", "__rmatmul__"))
def matmul(a: Any, b: Any) -> Any:
    """``torch.matmul``: dot (1-D, 1-D), mm, mv, and batched products with broadcast batches."""
    a, b = unwrap(a), unwrap(b)
    sa, sb = shape_of(a), shape_of(b)
    if len(sa) == 0 or len(sb) == 0:
        raise RuntimeError(f"both arguments to matmul need to be at least 1D, but they are "
                           f"{len(sa)}D and {len(sb)}D")
    ka = sa[-1]
    kb = sb[0] if len(sb) == 1 else sb[-2]
    if ka != kb:
        rows = 1 if len(sa) == 1 else int(np.prod(sa[:-1]))
        cols = sb[-1] if len(sb) > 1 else 1
        raise RuntimeError(f"mat1 and mat2 shapes cannot be multiplied ({rows}x{ka} and "
                           f"{kb}x{cols})")
    if len(sa) > 2 or len(sb) > 2:
        broadcast_shapes(sa[:-2], sb[:-2])
    name = {(1, 1): "DotBackward0", (2, 1): "MvBackward0", (2, 2): "MmBackward0",
            (1, 2): "MmBackward0"}.get((len(sa), len(sb)), "BmmBackward0")

    def rule_a(g: Any, z: Any, a: Any, b: Any) -> Any:
        if len(sa) == 1 and len(sb) == 1:
            return mul(g, b)
        g2 = unsqueeze(g, -1) if len(sb) == 1 else g  # (..., n, 1) for matrix @ vector
        b2 = unsqueeze(b, -1) if len(sb) == 1 else b
        if len(sa) == 1:
            g2 = unsqueeze(g2, -2)  # (..., 1, m)
        da = matmul(g2, transpose(b2, -1, -2))
        if len(sa) == 1:
            return reshape(_sum_leading(da, 2), sa)
        return da

    def rule_b(g: Any, z: Any, a: Any, b: Any) -> Any:
        if len(sa) == 1 and len(sb) == 1:
            return mul(g, a)
        if len(sb) == 2 and len(sa) > 2:  # (..., m, k) @ (k, n): one product over all rows
            return matmul(transpose(reshape(a, (-1, sa[-1])), 0, 1), reshape(g, (-1, sb[-1])))
        a2 = unsqueeze(a, -2) if len(sa) == 1 else a  # (..., 1, k)
        g2 = unsqueeze(g, -2) if len(sa) == 1 else g
        if len(sb) == 1:
            g2 = unsqueeze(g2, -1)  # (..., n, 1)
        db = matmul(transpose(a2, -1, -2), g2)
        if len(sb) == 1:
            return reshape(_sum_leading(db, 2), sb)
        return db

    return apply(name, jnp.matmul, (a, b), (rule_a, rule_b),
                 tangents=(lambda t, z, a, b: matmul(t, b), lambda t, z, a, b: matmul(a, t)))


# Eager JAX pays a dispatch (tens of microseconds) per op, so linear's forward and its three
# gradients run as one jitted kernel each; inside an outer jit they inline into the program.
@jax.jit
def _linear_forward(x: Any, w: Any, b: Any) -> Any:
    y = jnp.matmul(x, w.T)
    return y if b is None else y + b


@functools.partial(jax.jit, static_argnames="needs")
def _linear_grads(g: Any, x: Any, w: Any, needs: tuple[bool, ...]) -> tuple:
    g2 = g.reshape(-1, g.shape[-1])
    return (jnp.matmul(g, w) if needs[0] else None,
            jnp.matmul(g2.T, x.reshape(-1, x.shape[-1])) if needs[1] else None,
            g2.sum(0) if needs[2] else None)


def _linear_case(d: Any) -> Any:
    lead = shape(d, 0, 2)
    n_in, n_out = d.integer(1, 4, "in"), d.integer(1, 4, "out")
    args = [array(d, lead + (n_in,)), array(d, (n_out, n_in))]
    return call(*args, array(d, (n_out,))) if boolean(d, "bias") else call(*args)


@op(Case("with or without bias", _linear_case), torch="torch.nn.functional.linear")
def linear(x: Any, weight: Any, bias: Any = None) -> Any:
    """``torch.nn.functional.linear``: x @ weight.T + bias, weight [out, in]."""
    x, weight, bias = unwrap(x), unwrap(weight), unwrap(bias)
    sx, sw = shape_of(x), shape_of(weight)
    if len(sw) != 2 or sx[-1:] != sw[1:]:
        rows = int(np.prod(sx[:-1])) if sx else 1
        raise RuntimeError(f"mat1 and mat2 shapes cannot be multiplied ({rows}x"
                           f"{sx[-1] if sx else 0} and {sw[-1] if sw else 0}x"
                           f"{sw[0] if sw else 0})")
    if bias is not None and shape_of(bias) not in ((sw[0],), (), (1,)):
        broadcast_shapes(sx[:-1] + (sw[0],), shape_of(bias))

    def rule_w(g: Any, z: Any, x: Any, w: Any, b: Any) -> Any:
        g2 = reshape(g, (-1, sw[0]))
        x2 = reshape(x, (-1, sw[1]))
        return matmul(transpose(g2, 0, 1), x2)

    def rule_b(g: Any, z: Any, x: Any, w: Any, b: Any) -> Any:
        return g  # the engine sums over the broadcast dims

    rules = (lambda g, z, x, w, b: matmul(g, w), rule_w, rule_b)
    fused = bias is None or shape_of(bias) == (sw[0],)

    def joint(g: Any, z: Any, needs: tuple[bool, ...], x: Any, w: Any, b: Any) -> tuple:
        if fused and not isinstance(g, Tensor):  # eager: one dispatch for all three
            return _linear_grads(g, x, w, needs)
        return tuple(rule(g, z, x, w, b) if need else None for rule, need in zip(rules, needs))

    return apply("AddmmBackward0" if bias is not None else "MmBackward0", _linear_forward,
                 (x, weight, bias), rules, joint,
                 tangents=(lambda t, z, x, w, b: linear(t, w), lambda t, z, x, w, b: linear(x, t),
                           lambda t, z, x, w, b: t))


def _triangle_case(d: Any) -> Any:
    return call(array(d, shape(d, 2)), d.integer(-2, 2, "diagonal"))


@op(Case("diagonal", _triangle_case), torch="torch.tril", method=True)
def tril(x: Any, diagonal: int = 0) -> Any:
    """Keep the lower triangle (of the last two dims)."""
    x = unwrap(x)
    return apply("TrilBackward0", lambda x: jnp.tril(x, diagonal), (x,),
                 (lambda g, z, x: tril(g, diagonal),),
                 tangents="linear")


@op(Case("diagonal", _triangle_case), torch="torch.triu", method=True)
def triu(x: Any, diagonal: int = 0) -> Any:
    """Keep the upper triangle (of the last two dims)."""
    x = unwrap(x)
    return apply("TriuBackward0", lambda x: jnp.triu(x, diagonal), (x,),
                 (lambda g, z, x: triu(g, diagonal),),
                 tangents="linear")
