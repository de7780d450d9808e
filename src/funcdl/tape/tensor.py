"""The tape's data structures: `Tensor`, graph nodes, recording (`apply`), and the grad mode.

A differentiable function computes its forward on plain arrays and, when a `Tensor` that requires
grad is among its inputs, calls `apply` to wrap the result and record a `Node`: the function's
name (``MulBackward0``), its inputs, and one backward rule per input (micrograd's ``_backward``
closure, split per operand so unused gradients are never computed). The node is appended to every
active `Tape` (a contextvar, so a tape belongs to one `grad` call or one `with` block and to one
thread); `Tensor.backward` needs no tape at all: it follows ``grad_fn`` links.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import traceback
import types
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:
    from funcdl.tape.autograd import Tape

# (tape, tape, ...) innermost last; () when no grad call or `with Tape()` block is active.
_TAPES: contextvars.ContextVar[tuple[Tape, ...]] = contextvars.ContextVar("funcdl_tapes",
                                                                            default=())
_GRAD_ENABLED: contextvars.ContextVar[bool] = contextvars.ContextVar("funcdl_grad", default=True)
_ANOMALY: contextvars.ContextVar[bool] = contextvars.ContextVar("funcdl_anomaly", default=False)
# The forward-mode level open now (`forward_ad.dual_level`), None outside: tangents made in a level
# are visible only inside it, as in torch.autograd.forward_ad.
_DUAL_LEVEL: contextvars.ContextVar[int | None] = contextvars.ContextVar("funcdl_dual_level",
                                                                         default=None)
# The `tape.scan` bodies being traced, innermost last (`funcdl.tape.recurrence.Scope`): the
# innermost sees every recorded op's inputs and output, so it can find the Tensors a body closes
# over, stand per-step Tensors in for them, and replay saved forward values.
_SCOPES: contextvars.ContextVar[tuple] = contextvars.ContextVar("funcdl_scopes", default=())

_PLAIN = (jax.Array, np.ndarray, np.generic, int, float, bool, complex, type(None))


class Node:
    """One recorded operation: ``grad_fn`` of its output Tensor.

    ``rules[i](g, z, *xs)`` returns dL/dxs[i] from dL/dz = g, the output z and the inputs xs, all
    plain arrays (or all Tensors when the backward is itself recorded, ``create_graph=True``).
    ``joint(g, z, needs, *xs)``, when given, returns all input gradients at once (``needs[i]``:
    whether input i wants one); `Function` uses it, and `linear` for one eager dispatch.
    """

    __slots__ = ("_name", "rules", "joint", "inputs", "versions", "out_version", "depth", "_out",
                 "stack", "_next", "__weakref__")

    def __init__(self, name: str, inputs: tuple, rules: Sequence | None,
                 joint: Callable | None, out: Tensor) -> None:
        self._name = name
        self.inputs = inputs
        self.rules = rules
        self.joint = joint
        self.versions = tuple(x._version if isinstance(x, Tensor) else 0 for x in inputs)
        self.out_version = 0  # the output's version when made (an in-place op's output: > 0)
        self.depth = 1 + max((x.grad_fn.depth for x in inputs
                              if isinstance(x, Tensor) and x.grad_fn is not None), default=0)
        self._out = weakref.ref(out)
        self._next: tuple | None = None
        self.stack = traceback.extract_stack()[:-3] if _ANOMALY.get() else None

    def name(self) -> str:
        """PyTorch's class name for this backward, e.g. ``"SigmoidBackward0"``."""
        return self._name

    @property
    def next_functions(self) -> tuple[tuple[Node | AccumulateGrad | None, int], ...]:
        """For each input: its grad_fn, its AccumulateGrad when it is a leaf, else None."""
        if self.inputs is None:
            return self._next or ()
        return tuple((_grad_node(x), 0) for x in self.inputs)

    def needs(self, i: int) -> bool:
        x = self.inputs[i]
        return isinstance(x, Tensor) and x.requires_grad

    def release(self, keep_shape: bool = True) -> None:
        """Free the saved inputs and closures (``keep_shape``: next_functions stays visible)."""
        if keep_shape and self.inputs is not None:
            self._next = self.next_functions
        self.rules = self.joint = None
        self.inputs = None

    def __repr__(self) -> str:
        return f"<{self._name} object at {id(self):#x}>"


class AccumulateGrad:
    """The node that receives a leaf's gradient (``next_functions`` shows it, as PyTorch does)."""

    def __init__(self, variable: Tensor) -> None:
        self.variable = variable
        self.next_functions = ()

    def name(self) -> str:
        return "torch::autograd::AccumulateGrad"

    def __repr__(self) -> str:
        return f"<AccumulateGrad object at {id(self):#x}>"


def _grad_node(x: Any) -> Node | AccumulateGrad | None:
    if not isinstance(x, Tensor) or not x.requires_grad:
        return None
    if x.grad_fn is not None:
        return x.grad_fn
    if x._accumulator is None:
        x._accumulator = AccumulateGrad(x)
    return x._accumulator


def _check_grad_dtype(dtype: Any) -> None:
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.complexfloating)):
        raise RuntimeError("Only Tensors of floating point and complex dtype can require "
                           f"gradients (got dtype {dtype}); convert first, e.g. "
                           "tensor(x, dtype=jnp.float32, requires_grad=True).")


class Tensor:
    """A JAX array with PyTorch's autograd attributes.

    ``data`` is a `jax.Array` (or a tracer inside jit/vmap); ``grad`` is a Tensor after
    `backward`; ``grad_fn`` is the `Node` that made it (None for leaves). A Tensor is not a pytree
    node: `jax.tree_util` and Flax NNX treat it as a leaf.

    Operators (``+``, ``@``, ...), the op methods (``t.sum()``, ``t.T``) and ``backward`` are
    installed in one place, `funcdl.tape.operators`, from the op registry.
    """

    __slots__ = ("data", "requires_grad", "grad", "grad_fn", "_tape", "_version", "_accumulator",
                 "_retains_grad", "_tangent", "_hooks", "_consumers", "__weakref__")
    __array_priority__ = 1000  # numpy defers binary operators to Tensor
    __array_ufunc__ = None

    def __init__(self, data: Any, requires_grad: bool = False, *, _grad_fn: Node | None = None,
                 _tape: Tape | None = None) -> None:
        if isinstance(data, Tensor):
            data = data.data
        elif not isinstance(data, jax.Array):
            data = jnp.asarray(data)
        if requires_grad:
            _check_grad_dtype(data.dtype)
        self.data = data
        self.requires_grad = requires_grad
        self.grad: Tensor | None = None
        self.grad_fn = _grad_fn
        self._tape = _tape
        self._version = 0
        self._accumulator: AccumulateGrad | None = None
        self._retains_grad = False
        self._tangent: tuple[int, Any] | None = None  # (dual level, forward-mode tangent)
        self._hooks: dict[str, list] | None = None  # {"grad": [...], "post": [...]}
        self._consumers: list | None = None  # weakrefs to the nodes using this non-leaf

    # --- attributes --------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def dtype(self) -> Any:
        return self.data.dtype

    @property
    def is_leaf(self) -> bool:
        return self.grad_fn is None

    def size(self, dim: int | None = None) -> Any:
        return self.shape if dim is None else self.shape[dim]

    def dim(self) -> int:
        return self.ndim

    def numel(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    # --- conversions -------------------------------------------------------------------------
    def item(self) -> Any:
        if self.data.size != 1:
            raise RuntimeError(f"a Tensor with {self.data.size} elements cannot be converted "
                               "to Scalar")
        return self.data.item()

    def numpy(self) -> np.ndarray:
        if self.requires_grad:
            raise RuntimeError("Can't call numpy() on Tensor that requires grad. "
                               "Use tensor.detach().numpy() instead.")
        return np.asarray(self.data)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.numpy()
        return out if dtype is None else out.astype(dtype)

    def __float__(self) -> float:
        return float(self.item())

    def __int__(self) -> int:
        return int(self.item())

    def __bool__(self) -> bool:
        if self.data.size != 1:
            raise RuntimeError(f"Boolean value of Tensor with {self.data.size} elements is "
                               "ambiguous")
        return bool(self.data)

    def __hash__(self) -> int:
        return id(self)

    def detach(self) -> Tensor:
        """The same data, cut from the graph (a new leaf without grad)."""
        return Tensor(self.data)

    def requires_grad_(self, requires_grad: bool = True) -> Tensor:
        if not self.is_leaf:
            raise RuntimeError("you can only change requires_grad flags of leaf variables.")
        if requires_grad:
            _check_grad_dtype(self.dtype)
        self.requires_grad = requires_grad
        return self

    def retain_grad(self) -> None:
        """Keep ``.grad`` on this non-leaf after `backward` (as PyTorch's retain_grad); it holds
        the gradient after this Tensor's hooks ran."""
        if not self.requires_grad:
            raise RuntimeError("can't retain_grad on Tensor that has requires_grad=False")
        self._retains_grad = True

    # --- hooks ---------------------------------------------------------------------------
    def register_hook(self, hook: Callable[[Tensor], Any]) -> RemovableHandle:
        """Call ``hook(grad)`` whenever the gradient w.r.t. this Tensor is computed; a returned
        Tensor replaces the gradient (for a leaf: before it is accumulated into ``.grad``)."""
        if not self.requires_grad:
            raise RuntimeError("cannot register a hook on a tensor that doesn't require gradient")
        return self._add_hook("grad", hook)

    def register_post_accumulate_grad_hook(self, hook: Callable[[Tensor], Any]
                                           ) -> RemovableHandle:
        """Call ``hook(tensor)`` after a gradient was accumulated into this leaf's ``.grad``."""
        if not self.is_leaf:
            raise RuntimeError("post accumulate grad hooks cannot be registered on non-leaf "
                               "tensors")
        if not self.requires_grad:
            raise RuntimeError("cannot register a hook on a tensor that doesn't require gradient")
        return self._add_hook("post", hook)

    def _add_hook(self, kind: str, hook: Callable) -> RemovableHandle:
        if self._hooks is None:
            self._hooks = {"grad": [], "post": []}
        hooks = self._hooks[kind]

        def detach(hook_id: int) -> None:
            hooks[:] = [(i, h) for i, h in hooks if i != hook_id]

        handle = RemovableHandle(detach)
        hooks.append((handle.id, hook))
        return handle

    def __repr__(self) -> str:
        body = np.array2string(np.asarray(self.data), precision=4, separator=", ",
                               prefix="tensor(") if _concrete(self.data) else repr(self.data)
        extra = ""
        if self.grad_fn is not None:
            extra = f", grad_fn=<{self.grad_fn.name()}>"
        elif self.requires_grad:
            extra = ", requires_grad=True"
        return f"tensor({body}{extra})"


class RemovableHandle:
    """What ``register_*hook`` returns: ``remove()`` takes the hook off (also on leaving a
    ``with`` block), as torch's ``RemovableHandle``."""

    _ids = itertools.count()

    def __init__(self, detach: Callable[[int], None]) -> None:
        self.id = next(RemovableHandle._ids)
        self._detach = detach  # takes the hook registered under this id off

    def remove(self) -> None:
        self._detach(self.id)

    def __enter__(self) -> RemovableHandle:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()


def _concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def constant(x: Any) -> Any:
    """The data of a Tensor (other values as they are): for values used only as constants in a
    rule (a mask, a sign) or outside the graph."""
    return x.data if isinstance(x, Tensor) else x


def shape_of(x: Any) -> tuple[int, ...]:
    """The shape of an array, Tensor or Python number (``()``)."""
    return tuple(getattr(x, "shape", ()))


def tensor(data: Any, requires_grad: bool = False, dtype: Any = None) -> Tensor:
    """A new leaf Tensor (``torch.tensor``); Python floats become float32 as in PyTorch."""
    data = constant(data)
    if dtype is None and isinstance(data, float | list | tuple):
        arr = np.asarray(data)
        dtype = jnp.float32 if arr.dtype == np.float64 else None
    return Tensor(jnp.asarray(data, dtype=dtype), requires_grad=requires_grad)


def unwrap(x: Any) -> Any:
    """Turn an NNX Variable (or anything with ``__jax_array__``) into its value."""
    if isinstance(x, Tensor) or isinstance(x, _PLAIN):
        return x
    getter = getattr(x, "get_value", None)  # flax.nnx.Variable, without importing flax here
    if getter is not None:
        return getter()
    return x


def _escaped(t: Tensor) -> RuntimeError:
    return RuntimeError(
        f"This Tensor was recorded on a tape owned by {t._tape.owner}, which has finished; "
        "its data may be a tracer of a finished jax.jit/vmap trace. Use the arrays that call "
        "returned (or `.detach()` a value inside the call) instead of keeping Tensors from it.")


# Eager kernels: a forward written as a closure (``lambda x: jnp.reshape(x, new)``) is a new
# function on every call, so eagerly each of its jnp ops is a separate dispatch (~20 us each). The
# second time the same code runs with the same static closure (ints, strings, dtypes, tuples of
# them), it gets a jitted copy, dispatched in ~5 us and shared by every later call; forwards that
# close over arrays or floats (a new value each call would compile each time) stay as they are.
_KERNELS: dict[tuple, Any] = {}
_KERNELS_MAX = 4096
_SEEN, _UNJITTABLE = object(), object()
_STATIC = (int, np.integer, np.bool_, str, type(None), np.dtype, type)


def _static(v: Any) -> bool:
    if isinstance(v, tuple):
        return all(_static(e) for e in v)
    return isinstance(v, _STATIC)


def _eager(forward: Callable[..., Any], args: Sequence[Any]) -> Any:
    """``forward(*args)``, through a shared jitted kernel when it is an eager call (no tracer
    among ``args``) of a closure seen before with the same static closure values."""
    if type(forward) is not types.FunctionType or any(
            isinstance(a, jax.core.Tracer) for a in args):
        return forward(*args)
    cells = forward.__closure__ or ()
    try:
        values = tuple(c.cell_contents for c in cells)
    except ValueError:  # an empty cell
        return forward(*args)
    if not (_static(values) and _static(forward.__defaults__)):
        return forward(*args)
    key = (forward.__code__, values, forward.__defaults__)
    kernel = _KERNELS.get(key)
    if kernel is None:  # first sighting: run as it is, jit from the second call on
        if len(_KERNELS) < _KERNELS_MAX:
            _KERNELS[key] = _SEEN
        return forward(*args)
    if kernel is _UNJITTABLE:
        return forward(*args)
    if kernel is _SEEN:
        kernel = _KERNELS[key] = jax.jit(forward)
    try:
        return kernel(*args)
    except jax.errors.JAXTypeError:  # Python control flow on values: stays eager
        _KERNELS[key] = _UNJITTABLE
        return forward(*args)


def apply(name: str, forward: Callable[..., Any], inputs: tuple, rules: Sequence | None = None,
          joint: Callable | None = None, tangents: Sequence | str | None = None) -> Any:
    """Run ``forward`` on the inputs' data; wrap and record when a Tensor is among the inputs.

    Plain inputs give the plain forward result, so jax.grad/jit/vmap see ordinary jnp code.
    ``rules[i](g, z, *xs)`` give input i's gradient (reverse mode); ``tangents`` give the output's
    tangent in forward mode: per-input rules ``(t, z, *xs) -> contribution``, or ``"linear"``
    (the op is linear in its inputs: the tangent is ``forward`` of the tangents), or ``"rules"``
    (the backward rules with ``t`` for ``g`` are the tangent rules: true when the Jacobian is
    diagonal, as for elementwise ops, or symmetric, as for softmax).
    """
    has_tensor = False
    for x in inputs:
        if isinstance(x, Tensor):
            has_tensor = True
            if x._tape is not None and x._tape.closed:
                raise _escaped(x)
    if not has_tensor:
        return _eager(forward, inputs)
    datas = [x.data if isinstance(x, Tensor) else x for x in inputs]
    try:
        out = _eager(forward, datas)
    except jax.errors.UnexpectedTracerError as e:
        raise RuntimeError(
            f"{_op_name(name)}: a Tensor among the inputs holds a tracer of a finished "
            "jax.jit/vmap trace (it was kept from inside a jitted function). Return values from "
            "the jitted function instead of keeping Tensors made inside it.") from e
    result = wrap(name, out, inputs, rules, joint)
    level = _DUAL_LEVEL.get()
    if level is not None:
        ts = [tangent_at(x, level) for x in inputs]
        if any(t is not None for t in ts):
            result._tangent = (level, _tangent_out(name, forward, datas, out, ts, rules,
                                                   tangents))
    return result


def _op_name(name: str) -> str:
    return name.removesuffix("Backward0").removesuffix("Backward1") or name


def tangent_at(x: Any, level: int) -> Any:
    """``x``'s forward-mode tangent in ``level`` (None for no tangent, or one of another level)."""
    if isinstance(x, Tensor) and x._tangent is not None and x._tangent[0] == level:
        return x._tangent[1]
    return None


def _tangent_out(name: str, forward: Callable, datas: list, out: Any, ts: list, rules: Any,
                 tangents: Any) -> Any:
    """The output tangent from the inputs' tangents ``ts`` (None where an input has none)."""
    if tangents is None:
        raise RuntimeError(f"Trying to use forward AD with {_op_name(name)} that does not "
                           "support it because it has not been implemented yet.")
    if tangents == "linear":
        t = forward(*[jnp.zeros_like(x) if t is None and x is not None else t
                      for x, t in zip(datas, ts)])
    else:
        per_input = rules if tangents == "rules" else tangents
        parts = [per_input[i](t, out, *datas) for i, t in enumerate(ts) if t is not None]
        t = parts[0]
        for part in parts[1:]:
            t = t + part
    return jnp.broadcast_to(constant(t), jnp.shape(out)).astype(jnp.result_type(out))


def wrap(name: str, out: Any, inputs: tuple, rules: Sequence | None = None,
         joint: Callable | None = None) -> Tensor:
    """Wrap a forward result as a Tensor, recording a node when grad mode needs one."""
    scopes = _SCOPES.get()
    if scopes and not scopes[-1].wrapping:  # inside a tape.scan body: the scope calls us back
        return scopes[-1].wrap(name, out, inputs, rules, joint)
    tapes = _TAPES.get()
    record = _GRAD_ENABLED.get() and any(isinstance(x, Tensor) and x.requires_grad
                                         for x in inputs)
    if not record:
        return Tensor(out, _tape=tapes[0] if tapes else None)
    result = Tensor.__new__(Tensor)
    result.data = out
    result.requires_grad = True
    result.grad = None
    result._tape = tapes[0] if tapes else None
    result._version = 0
    result._accumulator = None
    result._retains_grad = False
    result._tangent = None
    result._hooks = None
    result._consumers = None
    node = Node(name, inputs, rules, joint, result)
    result.grad_fn = node
    for x in inputs:  # an in-place op on x must point these nodes at x's old value
        if isinstance(x, Tensor) and x.grad_fn is not None:
            if x._consumers is None:
                x._consumers = []
            x._consumers.append(weakref.ref(node))
    for tape in tapes:
        tape.nodes.append(node)
    return result


@contextlib.contextmanager
def _grad_mode(enabled: bool) -> Iterator[None]:
    token = _GRAD_ENABLED.set(enabled)
    try:
        yield
    finally:
        _GRAD_ENABLED.reset(token)


def no_grad() -> contextlib.AbstractContextManager[None]:
    """Record nothing inside the block (``torch.no_grad``); Tensors still come out."""
    return _grad_mode(False)


def enable_grad() -> contextlib.AbstractContextManager[None]:
    """Record again inside a `no_grad` block."""
    return _grad_mode(True)


def is_grad_enabled() -> bool:
    return _GRAD_ENABLED.get()


@contextlib.contextmanager
def detect_anomaly() -> Iterator[None]:
    """Check every backward rule's output for NaN and name the op that produced it.

    Nodes recorded inside the block keep the Python stack of their forward call, which the
    error shows. Checks need concrete values: inside jax.jit they are skipped.
    """
    token = _ANOMALY.set(True)
    try:
        yield
    finally:
        _ANOMALY.reset(token)

