"""In-place operations with PyTorch's autograd semantics.

JAX arrays are immutable, so ``x.add_(y)`` computes ``add(x, y)`` and *rebinds* the Tensor to it:
the Python object ``x`` then holds the new value, its grad_fn is ``AddBackward0`` and its version
counter goes up. The value ``x`` held before moves to a new Tensor that keeps its place in the
graph (the nodes that made or used it now refer to that one), marked as overwritten: a backward
rule that needs it raises torch's "modified by an inplace operation" error, exactly where torch
raises for its overwritten buffer, and rules that do not need it (``add``'s) run as in torch.
Under ``no_grad`` (the manual SGD loop ``W -= lr * W.grad``) it is a plain update of ``data``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp

from funcdl.tape.activations import relu, sigmoid, tanh
from funcdl.tape.elementwise import add, astype, clip, div, masked_fill, mul, pow, sub
from funcdl.tape.tensor import _GRAD_ENABLED, Tensor, apply, constant, no_grad, unwrap


def _records(t: Tensor, args: tuple) -> bool:
    return _GRAD_ENABLED.get() and (t.requires_grad or any(
        isinstance(unwrap(a), Tensor) and unwrap(a).requires_grad for a in args))


def _split_history(t: Tensor) -> Tensor:
    """A new Tensor holding ``t``'s value and place in the graph; the nodes that made or used
    ``t`` now refer to it."""
    old = Tensor(t.data)
    old.requires_grad, old.grad_fn, old._tape = t.requires_grad, t.grad_fn, t._tape
    old._version, old._tangent, old._consumers = t._version, t._tangent, t._consumers
    for ref in t._consumers or ():
        node = ref()
        if node is not None and node.inputs is not None:
            node.inputs = tuple(old if x is t else x for x in node.inputs)
    if t.grad_fn is not None:
        t.grad_fn._out = weakref.ref(old)
    t._consumers = None
    return old


def _fit(t: Tensor, new: Any) -> Any:
    """``new`` in ``t``'s shape and dtype, or torch's error when it cannot be written there."""
    shape = tuple(jnp.shape(constant(new)))
    if shape != tuple(t.shape):
        raise RuntimeError(f"output with shape {list(t.shape)} doesn't match the broadcast shape "
                           f"{list(shape)}")
    dtype = jnp.result_type(constant(new))
    if dtype != t.dtype:
        if jnp.issubdtype(dtype, jnp.floating) and not jnp.issubdtype(t.dtype, jnp.inexact):
            raise RuntimeError(f"result type {dtype.name} can't be cast to the desired output "
                               f"type {t.dtype.name}")
        new = astype(new, t.dtype)
    return new


def inplace(t: Tensor, op: Callable[..., Any], *args: Any) -> Tensor:
    """``t <- op(t, *args)`` in place, as the module docstring describes; returns ``t``."""
    if not _records(t, args):
        with no_grad():
            new = _fit(t, op(t, *args))
        t.data = constant(new)
        t._tangent = new._tangent if isinstance(new, Tensor) else None
        t._version += 1
        return t
    if t.is_leaf and t.requires_grad:
        raise RuntimeError("a leaf Variable that requires grad is being used in an in-place "
                           "operation. Wrap the update in `with no_grad():`, or use the "
                           "out-of-place form (x = x + y).")
    old = _split_history(t)
    t._version += 1
    old._version = t._version  # overwritten for the nodes that used it; the op below reads it
    new = _fit(t, op(old, *args))  # at this version, as torch's in-place ops read their input
    t.data, t.requires_grad, t.grad_fn = new.data, new.requires_grad, new.grad_fn
    t._tape, t._tangent = new._tape, new._tangent
    if t.grad_fn is not None:
        t.grad_fn._out = weakref.ref(t)
        t.grad_fn.out_version = t._version
    return t


def _overwrite(name: str) -> Callable[..., Any]:
    """An op giving ``value`` (broadcast, in ``x``'s dtype) whatever ``x`` held: ``x`` gets no
    gradient, ``value`` all of it (``copy_``, ``fill_``, ``zero_``)."""
    def op(x: Any, value: Any) -> Any:
        return apply(name, lambda x, v: jnp.broadcast_to(jnp.asarray(v, x.dtype), x.shape),
                     (x, unwrap(value)),
                     (lambda g, z, x, v: None, lambda g, z, x, v: g),
                     tangents=(lambda t, z, x, v: jnp.zeros_like(z), lambda t, z, x, v: t))

    return op


METHODS: dict[str, Callable[..., Any]] = {
    "add_": lambda self, other, *, alpha=1: inplace(
        self, lambda x, o: add(x, o if alpha == 1 else mul(o, alpha)), other),
    "sub_": lambda self, other, *, alpha=1: inplace(
        self, lambda x, o: sub(x, o if alpha == 1 else mul(o, alpha)), other),
    "mul_": lambda self, other: inplace(self, mul, other),
    "div_": lambda self, other: inplace(self, div, other),
    "pow_": lambda self, exponent: inplace(self, pow, exponent),
    "clamp_": lambda self, min=None, max=None: inplace(self, clip, min, max),
    "masked_fill_": lambda self, mask, value: inplace(self, masked_fill, mask, value),
    "zero_": lambda self: inplace(self, _overwrite("ZeroBackward0"), 0),
    "fill_": lambda self, value: inplace(self, _overwrite("FillBackward0"), value),
    "copy_": lambda self, src: inplace(self, _overwrite("CopyBackwards"), src),
    "relu_": lambda self: inplace(self, relu),
    "sigmoid_": lambda self: inplace(self, sigmoid),
    "tanh_": lambda self: inplace(self, tanh),
    "__iadd__": lambda self, other: inplace(self, add, other),
    "__isub__": lambda self, other: inplace(self, sub, other),
    "__imul__": lambda self, other: inplace(self, mul, other),
    "__itruediv__": lambda self, other: inplace(self, div, other),
    "__ipow__": lambda self, other: inplace(self, pow, other),
}
