"""`Function`: a differentiable operation given by its own forward and backward (PyTorch's
``torch.autograd.Function``).

    class Exp(Function):
        @staticmethod
        def forward(ctx, x):
            z = jnp.exp(x)
            ctx.save_for_backward(z)
            return z

        @staticmethod
        def backward(ctx, grad):
            (z,) = ctx.saved_tensors
            return grad * z

    Exp.apply(x)

``forward`` sees plain arrays (the inputs' data) and returns one array. ``backward`` returns one
gradient per forward input (None for inputs without one); the optional ``jvp(ctx, *tangents)``
gives the output's tangent for forward mode (as torch's ``Function.jvp``). With Tensors among
the inputs ``apply`` records a node named ``ExpBackward``; with plain arrays it is a
`jax.custom_vjp`, so `jax.grad` uses the same backward. Saved values are constants for
higher-order derivatives.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcdl.tape.tensor import _DUAL_LEVEL, Tensor, constant, no_grad, tangent_at, unwrap, wrap


class FunctionCtx:
    """What ``forward`` leaves for ``backward``: saved arrays and any attributes set on it."""

    def __init__(self, needs_input_grad: tuple[bool, ...]) -> None:
        self.needs_input_grad = needs_input_grad
        self.saved_tensors: tuple = ()

    def save_for_backward(self, *values: Any) -> None:
        self.saved_tensors = tuple(constant(v) for v in values)


def _differentiable(x: Any) -> bool:
    if isinstance(x, Tensor):
        return True
    if isinstance(x, jax.Array | np.ndarray | float):
        return bool(jnp.issubdtype(jnp.result_type(x), jnp.inexact))
    return False


def _as_tuple(grads: Any, n: int, name: str) -> tuple:
    grads = grads if isinstance(grads, tuple | list) else (grads,)
    if len(grads) != n:
        raise RuntimeError(f"function {name}Backward returned an incorrect number of gradients "
                           f"(expected {n}, got {len(grads)})")
    return tuple(grads)


class Function:
    """Subclass with static ``forward(ctx, *args)`` and ``backward(ctx, grad)``; call ``apply``."""

    @staticmethod
    def forward(ctx: FunctionCtx, *args: Any) -> Any:
        raise NotImplementedError("You must implement the forward function for custom "
                                  "autograd.Function.")

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Any) -> Any:
        raise NotImplementedError("You must implement the backward function for custom "
                                  "autograd.Function.")

    @staticmethod
    def jvp(ctx: FunctionCtx, *tangents: Any) -> Any:
        """Forward mode (optional): the output's tangent from one tangent per input."""
        raise NotImplementedError

    @classmethod
    def apply(cls, *args: Any) -> Any:
        args = tuple(unwrap(a) for a in args)
        if any(isinstance(a, Tensor) for a in args):
            return cls._apply_tape(args)
        return cls._apply_plain(args)

    @classmethod
    def _apply_tape(cls, args: tuple) -> Tensor:
        needs = tuple(isinstance(a, Tensor) and a.requires_grad for a in args)
        ctx = FunctionCtx(needs)
        with no_grad():
            out = constant(cls.forward(ctx, *[constant(a) for a in args]))
        name = cls.__name__

        def joint(g: Any, z: Any, needs: tuple[bool, ...], *xs: Any) -> tuple:
            return _as_tuple(cls.backward(ctx, g), len(args), name)

        result = wrap(f"{name}Backward", out, args, joint=joint)
        level = _DUAL_LEVEL.get()
        tangents = [None if level is None else tangent_at(a, level) for a in args]
        if any(t is not None for t in tangents):
            if cls.jvp is Function.jvp:
                raise RuntimeError(f"Trying to use forward AD with {name} that does not support "
                                   "it: implement its jvp(ctx, *tangents) staticmethod.")
            zero = [jnp.zeros_like(constant(a)) if t is None else t for a, t in zip(args, tangents)]
            result._tangent = (level, constant(cls.jvp(ctx, *zero)))
        return result

    @classmethod
    def _apply_plain(cls, args: tuple) -> Any:
        slots = [i for i, a in enumerate(args) if _differentiable(a)]
        ctx_box: list[FunctionCtx] = []

        def fill(arrays: tuple) -> list:
            full = list(args)
            for i, a in zip(slots, arrays):
                full[i] = a
            return full

        def run(*arrays: Any) -> Any:
            return cls.forward(FunctionCtx(tuple(True for _ in args)), *fill(arrays))

        def fwd(*arrays: Any) -> tuple:
            ctx = FunctionCtx(tuple(i in slots for i in range(len(args))))
            out = cls.forward(ctx, *fill(arrays))
            ctx_box.append(ctx)
            return out, ctx.saved_tensors

        def bwd(saved: tuple, g: Any) -> tuple:
            ctx = ctx_box[-1]
            ctx.saved_tensors = saved
            grads = _as_tuple(cls.backward(ctx, g), len(args), cls.__name__)
            return tuple(jnp.zeros_like(args[i]) if grads[i] is None else grads[i]
                         for i in slots)

        f = jax.custom_vjp(run)
        f.defvjp(fwd, bwd)
        return f(*[args[i] for i in slots])
