"""`Module`: ``nnx.Module`` with torch's module hooks (the ``_forward_pre_hooks``,
``_forward_hooks`` and ``_backward_hooks`` the slides show inside ``nn.Module``).

Every funcdl layer is a `Module`; subclass it for your own modules to get the same hooks::

    handle = layer.register_forward_hook(lambda module, args, output: print(output.shape))
    handle.remove()

Hooks are Python state, not parameters. They are static attributes of the module (tuples), so
``nnx.split`` keeps them in the graphdef and ``nnx.merge`` gives them back: a module rebuilt
inside a jitted step (`fit`, `jax.jit`) fires the hooks it was split with, at trace time, with
traced values (use ``jax.debug.callback`` to see concrete numbers under jit). Registering or
removing a hook changes the graphdef, so the next jitted call compiles again. Checkpoints hold
arrays only: a restored run has the hooks of the module it was restored into.

One difference from torch: with the tape, a module inside a `funcdl.tape.scan` body (the layers
of a scanned `TransformerEncoder`) has its forward hooks fire again, with the same values, when
the scan is differentiated, because the backward pass runs the body once more, last step first
(replaying the values the forward saved). With ``jax.grad`` they fire once per step, as in torch.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from funcdl.tape.tensor import RemovableHandle, Tensor, apply


class Module(nnx.Module):
    """An ``nnx.Module`` whose ``__call__`` runs torch's module hooks around it."""

    _forward_pre_hooks: tuple = ()
    _forward_hooks: tuple = ()
    _backward_hooks: tuple = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        call = cls.__dict__.get("__call__")
        if call is not None:
            cls.__call__ = _with_hooks(call)

    def register_forward_pre_hook(self, hook: Callable, *, prepend: bool = False,
                                  with_kwargs: bool = False) -> RemovableHandle:
        """``hook(module, args)`` (``with_kwargs``: ``hook(module, args, kwargs)``) before the
        forward; it may return new args (``(args, kwargs)``)."""
        return self._add("_forward_pre_hooks", hook, prepend, with_kwargs)

    def register_forward_hook(self, hook: Callable, *, prepend: bool = False,
                              with_kwargs: bool = False) -> RemovableHandle:
        """``hook(module, args, output)`` (``with_kwargs``: ``hook(module, args, kwargs,
        output)``) after the forward; it may return a new output."""
        return self._add("_forward_hooks", hook, prepend, with_kwargs)

    def register_full_backward_hook(self, hook: Callable, prepend: bool = False
                                    ) -> RemovableHandle:
        """``hook(module, grad_input, grad_output)`` once the gradients w.r.t. the module's
        positional array inputs are known; it may return a new ``grad_input``. Works with the
        tape and with ``jax.grad``."""
        return self._add("_backward_hooks", hook, prepend, False)

    def _add(self, kind: str, hook: Callable, prepend: bool, with_kwargs: bool
             ) -> RemovableHandle:
        def detach(hook_id: int) -> None:
            setattr(self, kind, tuple(h for h in getattr(self, kind) if h[0] != hook_id))

        handle = RemovableHandle(detach)
        entry = (handle.id, hook, with_kwargs)
        hooks = getattr(self, kind)
        setattr(self, kind, (entry, *hooks) if prepend else (*hooks, entry))
        return handle


# modules whose hooks are running now: a subclass's __call__ that calls super().__call__ runs
# through two wrappers, and the hooks must fire once
_RUNNING: contextvars.ContextVar[frozenset] = contextvars.ContextVar("funcdl_hooked",
                                                                     default=frozenset())


def _with_hooks(call: Callable) -> Callable:
    @functools.wraps(call)
    def run(self: Module, *args: Any, **kwargs: Any) -> Any:
        if not (self._forward_pre_hooks or self._forward_hooks or self._backward_hooks) \
                or id(self) in _RUNNING.get():
            return call(self, *args, **kwargs)
        token = _RUNNING.set(_RUNNING.get() | {id(self)})
        try:
            return _run_hooked(call, self, args, kwargs)
        finally:
            _RUNNING.reset(token)

    return run


def _run_hooked(call: Callable, self: Module, args: tuple, kwargs: dict) -> Any:
    """torch's order: pre-hooks, the forward, forward hooks; backward hooks wrap both ends."""
    args, kwargs = _pre_hooks(self, args, kwargs)
    backward = _BackwardHooks(self) if self._backward_hooks else None
    if backward is not None:
        args = backward.inputs(args)
    out = call(self, *args, **kwargs)
    for _, hook, with_kwargs in self._forward_hooks:
        new = hook(self, args, kwargs, out) if with_kwargs else hook(self, args, out)
        out = out if new is None else new
    return out if backward is None else backward.outputs(out)


def _pre_hooks(module: Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    for _, hook, with_kwargs in module._forward_pre_hooks:
        if with_kwargs:
            new = hook(module, args, kwargs)
            if new is not None:
                if not (isinstance(new, tuple) and len(new) == 2):
                    raise RuntimeError("forward pre-hook must return None or a tuple of "
                                       f"(new_args, new_kwargs), but got {new}.")
                args, kwargs = new
        else:
            new = hook(module, args)
            if new is not None:
                args = new if isinstance(new, tuple) else (new,)
    return args, kwargs


def _differentiable(x: Any) -> bool:
    """A positional input whose gradient the hook reports: a Tensor that requires grad, or a JAX
    float array (which jax.grad may differentiate; numpy data never is)."""
    if isinstance(x, Tensor):
        return x.requires_grad
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jnp.floating)


class _BackwardHooks:
    """One forward call's full backward hooks: identities on the inputs and outputs whose
    gradients the hooks are called with (torch's BackwardHookFunction). With Tensors they are tape
    nodes; with arrays ``jax.custom_vjp`` identities (all inputs in one). The hooks fire when the
    inputs' gradients are known, or, when no input is differentiated, from the outputs' alone.
    Under jax.grad a JAX-array input that turns out not to be differentiated never reports."""

    def __init__(self, module: Module) -> None:
        self.module = module
        self.n_args = 0
        self.slots: list[int] = []  # positions of the differentiable positional inputs
        self.received: dict[int, Any] = {}
        self.grad_output: list = []
        self.pending_outputs = 0

    def inputs(self, args: tuple) -> tuple:
        self.n_args = len(args)
        self.slots = [i for i, a in enumerate(args) if _differentiable(a)]
        new = list(args)
        # every Tensor input gets the identity, needed or not, so a body that tape.scan runs
        # twice (to record, then to differentiate) records the same ops both times
        tensors = [i for i, a in enumerate(args) if isinstance(a, Tensor)]
        arrays = [i for i in self.slots if not isinstance(args[i], Tensor)]
        for i in tensors:
            new[i] = apply("BackwardHookFunctionBackward", lambda x: x, (args[i],),
                           (functools.partial(self._tape_input, i),), tangents="linear")
        if arrays:
            marked = _jax_identity(functools.partial(self._jax_inputs, arrays))(
                *[args[i] for i in arrays])
            for i, value in zip(arrays, marked):
                new[i] = value
        return tuple(new)

    def outputs(self, out: Any) -> Any:
        leaves, treedef = jax.tree.flatten(out, is_leaf=lambda x: isinstance(x, Tensor))
        self.grad_output = [None] * len(leaves)
        tensors = [k for k, x in enumerate(leaves) if isinstance(x, Tensor)]
        arrays = [k for k, x in enumerate(leaves)
                  if not isinstance(x, Tensor) and _differentiable(x)]
        self.pending_outputs = sum(leaves[k].requires_grad for k in tensors)
        for k in tensors:
            leaves[k] = apply("BackwardHookFunctionBackward", lambda x: x, (leaves[k],),
                              (functools.partial(self._tape_output, k),), tangents="linear")
        if arrays:
            marked = _jax_identity(functools.partial(self._jax_outputs, arrays))(
                *[leaves[k] for k in arrays])
            for k, value in zip(arrays, marked):
                leaves[k] = value
        return jax.tree.unflatten(treedef, leaves)

    def _tape_output(self, k: int, g: Any, z: Any, x: Any) -> Any:
        self.grad_output[k] = g
        self.pending_outputs -= 1
        if not self.slots and self.pending_outputs == 0:
            self._call({})  # no input wants a gradient: torch fires from grad_output alone
        return g

    def _tape_input(self, i: int, g: Any, z: Any, x: Any) -> Any:
        # The tape hands each input's gradient to its own node: the hook runs at the last one,
        # so only that input's gradient can still be replaced.
        self.received[i] = g
        if len(self.received) < len(self.slots):
            return g
        new = self._call(self.received)
        for j in self.slots:
            if j != i and new[j] is not self.received[j]:
                raise RuntimeError(
                    f"{type(self.module).__name__}: a full backward hook replaced grad_input[{j}]"
                    " after the tape had passed it on; with several array inputs the tape can "
                    f"replace only the last one's (grad_input[{i}]). Use jax.grad, or a hook "
                    "that only reads the gradients.")
        return new[i]

    def _jax_outputs(self, places: list[int], cotangents: tuple) -> tuple:
        for k, g in zip(places, cotangents):
            self.grad_output[k] = g
        if not self.slots:
            self._call({})
        return cotangents

    def _jax_inputs(self, places: list[int], cotangents: tuple) -> tuple:
        new = self._call(dict(zip(places, cotangents)))
        return tuple(new[i] for i in places)

    def _call(self, grads: dict[int, Any]) -> list:
        """Run the hooks on ``grad_input`` (one entry per positional argument, None where none)
        and return it, replaced where a hook returned replacements."""
        grad_input = tuple(grads.get(i) for i in range(self.n_args))
        for _, hook, _ in self.module._backward_hooks:
            new = hook(self.module, grad_input, tuple(self.grad_output))
            if new is not None:
                if len(new) != len(grad_input):
                    raise RuntimeError(f"hook returned {len(new)} gradients, expected "
                                       f"{len(grad_input)} (one per positional input)")
                grad_input = tuple(new)
        return list(grad_input)


def _jax_identity(on_cotangents: Callable[[tuple], tuple]) -> Callable:
    """``f(*xs) = xs`` whose backward passes the cotangents through ``on_cotangents``."""
    @jax.custom_vjp
    def identity(*xs: Any) -> tuple:
        return xs

    def forward(*xs: Any) -> tuple:
        return xs, None

    def backward(_: Any, cotangents: tuple) -> tuple:
        return tuple(on_cotangents(tuple(cotangents)))

    identity.defvjp(forward, backward)
    return identity
