"""JAX's function transforms computed by the tape: `jvp` (forward mode), `jacfwd` (one forward
pass per input element), `jacrev` (one backward pass per output element) and `hessian`
(forward over reverse, for scalar functions). Same signatures and output layouts as ``jax.jvp``,
``jax.jacfwd``, ``jax.jacrev`` and ``jax.hessian``; eager, under ``jax.jit`` and ``jax.vmap``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from funcdl.tape import forward_ad
from funcdl.tape.autograd import grad
from funcdl.tape.elementwise import add, mul
from funcdl.tape.reductions import sum
from funcdl.tape.tensor import Tensor

Argnums = int | Sequence[int]


def _is_tensor(x: Any) -> bool:
    return isinstance(x, Tensor)


def _check_pair(primals: tuple, tangents: tuple) -> None:
    """jax.jvp's errors for tangents that do not match the primals."""
    ps, ts = jax.tree.structure(primals), jax.tree.structure(tangents)
    if ps != ts:
        raise TypeError("primal and tangent arguments to jax.jvp must have the same tree "
                        f"structure; primals have tree structure {ps} whereas tangents have "
                        f"tree structure {ts}.")
    for p, t in zip(jax.tree.leaves(primals), jax.tree.leaves(tangents)):
        if jnp.shape(p) != jnp.shape(t):
            raise ValueError("jvp called with different primal and tangent shapes;Got primal "
                             f"shape {jnp.shape(p)} and tangent shape as {jnp.shape(t)}")


def jvp(f: Callable, primals: Sequence[Any], tangents: Sequence[Any]) -> tuple[Any, Any]:
    """``(f(*primals), J_f(primals) @ tangents)`` in one forward pass (``jax.jvp``)."""
    primals, tangents = tuple(primals), tuple(tangents)
    _check_pair(primals, tangents)
    with forward_ad.dual_level():
        duals = jax.tree.map(forward_ad.make_dual, primals, tangents)
        out = f(*duals)
        unpacked = jax.tree.map(forward_ad.unpack_dual, out, is_leaf=_is_tensor)
    is_pair = lambda x: isinstance(x, forward_ad.UnpackedDualTensor)  # noqa: E731
    values = jax.tree.map(lambda u: u.primal, unpacked, is_leaf=is_pair)
    slopes = jax.tree.map(lambda u: jnp.zeros_like(u.primal) if u.tangent is None else u.tangent,
                          unpacked, is_leaf=is_pair)
    return values, slopes


def _nums(argnums: Argnums) -> tuple[int, ...]:
    return (argnums,) if isinstance(argnums, int) else tuple(argnums)


def _with(args: tuple, nums: tuple[int, ...], xs: Sequence[Any]) -> list:
    full = list(args)
    for i, x in zip(nums, xs):
        full[i] = x
    return full


def _per_input(block: Any, inputs: Any, argnums: Argnums, lead: tuple[int, ...]) -> Any:
    """Split the last axis of ``block`` (one column per input element) into the inputs' shapes:
    ``lead + input.shape`` each, in the inputs' structure (a single input for an int argnums)."""
    leaves, treedef = jax.tree.flatten(inputs)
    pieces, start = [], 0
    for leaf in leaves:
        n = int(jnp.size(leaf))
        pieces.append(block[..., start:start + n].reshape(lead + jnp.shape(leaf)))
        start += n
    tree = jax.tree.unflatten(treedef, pieces)
    return tree[0] if isinstance(argnums, int) else tree


def jacfwd(f: Callable, argnums: Argnums = 0) -> Callable:
    """The Jacobian by forward mode: one `jvp` per input element, vmapped (``jax.jacfwd``)."""
    nums = _nums(argnums)

    def jacobian(*args: Any) -> Any:
        inputs = tuple(args[i] for i in nums)
        flat, unravel = ravel_pytree(inputs)

        def column(t: Any) -> Any:
            return jvp(lambda *xs: f(*_with(args, nums, xs)), inputs, unravel(t))[1]

        columns = jax.vmap(column, out_axes=-1)(jnp.eye(flat.size, dtype=flat.dtype))
        return jax.tree.map(lambda c: _per_input(c, inputs, argnums, c.shape[:-1]), columns)

    return jacobian


def jacrev(f: Callable, argnums: Argnums = 0) -> Callable:
    """The Jacobian by reverse mode: one tape gradient per output element, vmapped
    (``jax.jacrev``)."""

    def jacobian(*args: Any) -> Any:
        out_leaves, out_tree = jax.tree.flatten(jax.eval_shape(f, *args))
        offsets = list(itertools.accumulate((math.prod(o.shape) for o in out_leaves), initial=0))

        def row(cotangent: Any) -> Any:  # the gradient of <f, cotangent>: one Jacobian row
            def pulled(*a: Any) -> Any:
                total = 0.0
                for y, o, lo, hi in zip(jax.tree.leaves(f(*a), is_leaf=_is_tensor), out_leaves,
                                        offsets, offsets[1:]):
                    total = add(total, sum(mul(y, cotangent[lo:hi].reshape(o.shape))))
                return total

            return grad(pulled, argnums)(*args)

        dtype = jnp.result_type(*out_leaves)
        rows = jax.vmap(row)(jnp.eye(offsets[-1], dtype=dtype))  # (outputs, ...) per input leaf
        block = jnp.concatenate([r.reshape(offsets[-1], -1) for r in jax.tree.leaves(rows)], 1)
        inputs = tuple(args[i] for i in _nums(argnums))
        return jax.tree.unflatten(out_tree, [
            _per_input(block[lo:hi].reshape(o.shape + (-1,)), inputs, argnums, o.shape)
            for o, lo, hi in zip(out_leaves, offsets, offsets[1:])])

    return jacobian


def hessian(f: Callable, argnums: Argnums = 0) -> Callable:
    """Second derivatives of a scalar function by forward over reverse: `jacfwd` of the tape's
    `grad` (``jax.hessian``'s layout); each column is one Hessian-vector product."""
    return jacfwd(grad(f, argnums), argnums)
