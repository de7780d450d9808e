"""Dropout of elements (``dropout``) and of whole channels (``dropout2d``): the random mask is
drawn from an explicit key, so a step is a pure function."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from funcdl.tape.cases import Case, array, call, shape
from funcdl.tape.elementwise import mul
from funcdl.tape.registry import op
from funcdl.tape.tensor import apply, shape_of, unwrap


def _dropout_case(d: Any) -> Any:
    key = jax.random.key(d.integer(0, 100, "key"))
    return call(array(d, shape(d)), d.choice([0.0, 0.3, 0.9], "p"), key=key, training=True)


@op(Case("p, key", _dropout_case),
    no_torch="torch draws its mask from its own generator, so values differ; the tests check "
             "the keep rate, the 1/(1-p) scale and the key's determinism instead")
def dropout(x: Any, p: float = 0.5, *, key: Any = None, training: bool = True) -> Any:
    """Inverted dropout: zero each element with probability p, scale the rest by 1/(1-p)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    x = unwrap(x)
    if not training or p == 0.0:
        return x
    return _masked(x, p, key, shape_of(x), "dropout")


def _masked(x: Any, p: float, key: Any, mask_shape: tuple[int, ...], name: str) -> Any:
    """``x`` times a mask of ``mask_shape`` (broadcast): 0 with probability ``p``, else
    1/(1-p)."""
    if key is None:
        raise ValueError(f"{name} with training=True and p > 0 needs an explicit PRNG key: pass "
                         "key=jax.random.key(...) (or training=False for evaluation)")
    if p == 1.0:
        scale = jnp.zeros(mask_shape, jnp.float32)
    else:
        keep = jax.random.bernoulli(key, 1.0 - p, mask_shape)
        scale = jnp.where(keep, 1.0 / (1.0 - p), 0.0)
    return apply("NativeDropoutBackward0", lambda x: x * scale.astype(x.dtype), (x,),
                 (lambda g, z, x: mul(g, scale),),
                 tangents="linear")


def _dropout2d_case(d: Any) -> Any:
    key = jax.random.key(d.integer(0, 100, "key"))
    x = array(d, d.choice([(2, 3, 2, 2), (3, 2, 2)], "shape"))
    return call(x, d.choice([0.0, 0.5], "p"), key=key)


@op(Case("p, key", _dropout2d_case),
    no_torch="torch draws its mask from its own generator; the tests check that whole channels "
             "are zeroed, the 1/(1-p) scale and the key's determinism instead")
def dropout2d(input: Any, p: float = 0.5, training: bool = True, inplace: bool = False, *,
              key: Any = None) -> Any:
    """Channel dropout (``torch.nn.functional.dropout2d``): each channel (dim 1) of each sample is
    zeroed with probability p, the rest scaled by 1/(1-p); the mask comes from ``key``. As in
    torch today, a 3-D input is ``(N, C, L)``. ``inplace`` is accepted and ignored (arrays are
    immutable)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    x = unwrap(input)
    shape = shape_of(x)
    if len(shape) < 2:
        raise RuntimeError("Feature dropout requires at least 2 dimensions in the input")
    if not training or p == 0.0:
        return x
    return _masked(x, p, key, shape[:2] + (1,) * (len(shape) - 2), "dropout2d")
