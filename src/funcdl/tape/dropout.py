"""Dropout: the random mask is drawn from an explicit key, so a step is a pure function."""

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
    if key is None:
        raise ValueError("dropout with training=True and p > 0 needs an explicit PRNG key: pass "
                         "key=jax.random.key(...) (or training=False for evaluation)")
    shape = shape_of(x)
    if p == 1.0:
        scale = jnp.zeros(shape, jnp.float32)
    else:
        keep = jax.random.bernoulli(key, 1.0 - p, shape)
        scale = jnp.where(keep, 1.0 / (1.0 - p), 0.0)
    return apply("NativeDropoutBackward0", lambda x: x * scale.astype(x.dtype), (x,),
                 (lambda g, z, x: mul(g, scale),),
                 tangents="linear")
