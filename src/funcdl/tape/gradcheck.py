"""`gradcheck`: the tape's gradients against central finite differences in float64."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcdl.tape.autograd import grad
from funcdl.tape.elementwise import mul
from funcdl.tape.reductions import sum
from funcdl.tape.tensor import constant


class GradcheckError(RuntimeError):
    """Raised by `gradcheck` when analytical and numerical Jacobians differ."""


def _jacobians(fn: Callable, xs: list[np.ndarray], eps: float) -> tuple[list, list]:
    out = np.asarray(constant(fn(*xs)))
    numerical, analytical = [], []
    for i, x in enumerate(xs):
        cols = []
        for j in range(x.size):
            step = np.zeros(x.size)
            step[j] = eps
            step = step.reshape(x.shape)
            hi = list(xs)
            lo = list(xs)
            hi[i], lo[i] = x + step, x - step
            diff = np.asarray(constant(fn(*hi))) - np.asarray(constant(fn(*lo)))
            cols.append(diff.reshape(-1) / (2 * eps))
        numerical.append(np.stack(cols, axis=1) if cols else np.zeros((out.size, 0)))
    rows: list[list[np.ndarray]] = [[] for _ in xs]
    for k in range(out.size):
        onehot = np.zeros(out.size)
        onehot[k] = 1.0
        onehot = onehot.reshape(out.shape)

        def picked(*args: Any, onehot: np.ndarray = onehot) -> Any:
            return sum(mul(fn(*args), onehot))

        grads = grad(picked, argnums=tuple(range(len(xs))))(*xs)
        for i, g in enumerate(grads):
            rows[i].append(np.asarray(g).reshape(-1))
    for i, x in enumerate(xs):
        analytical.append(np.stack(rows[i]) if rows[i] else np.zeros((0, x.size)))
    return numerical, analytical


def gradcheck(fn: Callable, *inputs: Any, eps: float = 1e-6, atol: float = 1e-5,
              rtol: float = 1e-3, raise_exception: bool = True) -> bool:
    """Compare the tape's Jacobian of ``fn(*inputs)`` with central differences, in float64.

    ``fn`` takes arrays (or Tensors) and must be built from `funcdl.tape` functions (or a
    `Function`). Inputs are cast to float64 inside ``jax.enable_x64``. Returns True, or raises
    `GradcheckError` naming the input whose Jacobian disagrees (returns False when
    ``raise_exception=False``).
    """
    with jax.enable_x64(True):
        xs = [np.asarray(constant(x), dtype=np.float64) for x in inputs]
        numerical, analytical = _jacobians(fn, [jnp.asarray(x) for x in xs], eps)
        for i, (num, ana) in enumerate(zip(numerical, analytical)):
            if not np.allclose(ana, num, rtol=rtol, atol=atol):
                if raise_exception:
                    raise GradcheckError(f"Jacobian mismatch for output 0 with respect to input "
                                         f"{i},\nnumerical:{num}\nanalytical:{ana}\n")
                return False
    return True
