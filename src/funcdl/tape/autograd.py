"""Backward passes: `Tensor.backward` (PyTorch), `grad` / `value_and_grad` (JAX-shaped).

One engine, `_propagate`: visit nodes consumers-first, call each node's rules with the gradient
that reached its output (the sum over every consumer: fan-out), un-broadcast each input gradient
to its input's shape, and hand it on. `grad` walks its own `Tape` in reverse; `Tensor.backward`
has no tape to walk, so it orders the graph behind ``grad_fn`` by node depth.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import traceback
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcdl.tape.elementwise import add, astype
from funcdl.tape.reductions import sum
from funcdl.tape.shape import reshape
from funcdl.tape.tensor import (
    _ANOMALY,
    _GRAD_ENABLED,
    _TAPES,
    Node,
    Tensor,
    _concrete,
    _escaped,
    constant,
    no_grad,
    unwrap,
)

FREED = ("Trying to backward through the graph a second time (or directly access saved tensors "
         "after they have already been freed). Saved intermediate values of the graph are freed "
         "when you call .backward() or autograd.grad(). Specify retain_graph=True if you need to "
         "backward through the graph a second time or if you need to access saved tensors after "
         "calling backward.")


class Tape:
    """An append-only list of the nodes recorded while it was active (Wengert's tape).

    `tape.grad` opens one per call; ``with Tape() as t:`` opens one for a block. Once closed, the
    Tensors recorded on it refuse further use: their data may hold tracers of a finished trace.
    """

    def __init__(self, owner: str = "a `with funcdl.tape.Tape()` block") -> None:
        self.nodes: list[Node] = []
        self.owner = owner
        self.closed = False
        self._token: contextvars.Token | None = None
        self._outermost = True

    def __enter__(self) -> Tape:
        if self.closed:
            raise RuntimeError("This Tape is closed; open a new one with `with Tape() as t:`.")
        self._outermost = not _TAPES.get()
        self._token = _TAPES.set(_TAPES.get() + (self,))
        return self

    def __exit__(self, *exc: Any) -> None:
        self.deactivate()
        self.close()

    def deactivate(self) -> None:
        """Stop recording (the tape stays usable for `gradient`)."""
        if self._token is not None:
            _TAPES.reset(self._token)
            self._token = None

    def close(self) -> None:
        """Free the recorded closures and refuse later use of its Tensors."""
        if self._outermost:  # inner tapes' nodes are also on an open outer tape
            for node in self.nodes:
                node.release(keep_shape=False)  # its Tensors are refused from now on anyway
        self.nodes = []
        self.closed = True

    def gradient(self, target: Tensor, sources: Sequence[Tensor] | Tensor, *,
                 create_graph: bool = False) -> Any:
        """d target / d sources through every op behind ``target``, including ops recorded
        before this tape opened or only on an outer tape (as ``torch.autograd.grad``; a walk of
        this tape alone would miss those paths and answer 0)."""
        if self.closed and self._outermost:  # an inner tape's graph lives on the outer one
            raise RuntimeError("This Tape is closed and its graph freed: call gradient() inside "
                               "its `with` block.")
        single = isinstance(sources, Tensor)
        grads = tape_gradient(None, target, [sources] if single else list(sources),
                              create_graph=create_graph)
        return grads[0] if single else grads



def _sum_to(g: Any, shape: tuple[int, ...]) -> Any:
    """Un-broadcast: sum ``g`` over the dims that broadcasting added or stretched."""
    gshape = g.shape
    if tuple(gshape) == tuple(shape):
        return g
    lead = len(gshape) - len(shape)
    dims = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(shape)
                                      if n == 1 and gshape[lead + i] != 1)
    if dims:
        g = sum(g, dim=dims)
    return reshape(g, shape) if tuple(g.shape) != tuple(shape) else g


def _check_nan(node: Node, i: int, g: Any) -> None:
    data = g.data if isinstance(g, Tensor) else g
    if _concrete(data) and bool(jnp.isnan(data).any()):
        where = ""
        if node.stack is not None:
            where = ("\nTraceback of forward call that caused the error:\n"
                     + "".join(traceback.format_list(node.stack)))
        raise RuntimeError(f"Function '{node.name()}' returned nan values in its {i}th output."
                           + where)


def _propagate(order: Iterable[Node], seeds: dict[Node, Any], *, create_graph: bool,
               retain_graph: bool, keep: set[int]) -> tuple[dict[int, Any], dict[int, Any]]:
    """Run the backward rules of ``order`` (consumers first) from ``seeds``.

    Returns (leaf gradients, gradients of the non-leaf outputs whose id is in ``keep``), both
    keyed by the Tensor's id.
    """
    grads: dict[Node, Any] = dict(seeds)
    leaves: dict[int, Any] = {}
    kept: dict[int, Any] = {}
    anomaly = _ANOMALY.get()
    alive: list[Any] = []  # released nodes' inputs: producers' rules still need their outputs
    mode = contextlib.nullcontext() if create_graph else no_grad()
    with mode:
        for node in order:
            g = grads.pop(node, None)
            if g is None:
                continue
            if node.inputs is None:
                raise RuntimeError(FREED)
            out = node._out()
            if out is not None and out._hooks:
                g = run_grad_hooks(out, g, create_graph)
            if out is not None and (id(out) in keep or out._retains_grad):
                kept[id(out)] = g
                if out._retains_grad:
                    _accumulate(out, g, create_graph)
            inputs = node.inputs
            z = out if create_graph else (None if out is None else out.data)
            if out is not None and out._version != node.out_version:
                z = Overwritten(out, node, node.out_version)
            xs = tuple(Overwritten(x, node, v) if isinstance(x, Tensor) and x._version != v
                       else (x if create_graph or not isinstance(x, Tensor) else x.data)
                       for x, v in zip(inputs, node.versions))
            try:
                if node.joint is not None:
                    outs = node.joint(g, z, tuple(node.needs(i) for i in range(len(inputs))),
                                      *xs)
                else:
                    outs = [rule(g, z, *xs) if node.needs(i) and rule is not None else None
                            for i, rule in enumerate(node.rules)]
            except Exception as err:  # a rule that read an overwritten value fails on it
                stale = [v for v in (z, *xs) if isinstance(v, Overwritten)]
                if stale:
                    raise RuntimeError(stale[0].message) from err
                raise
            for i, (x, gi) in enumerate(zip(inputs, outs)):
                if gi is None or not node.needs(i):
                    continue
                if not create_graph and isinstance(gi, Tensor):
                    gi = gi.data
                if tuple(gi.shape) != tuple(x.shape):
                    gi = _sum_to(gi, x.shape)
                if gi.dtype != x.dtype:  # a promoted gradient takes its input's dtype, as in
                    gi = astype(gi, x.dtype)  # jax.grad and torch (bfloat16 inputs: bfloat16)
                if anomaly:
                    _check_nan(node, i, gi)
                if x.grad_fn is not None:
                    prev = grads.get(x.grad_fn)
                    grads[x.grad_fn] = gi if prev is None else add(prev, gi)
                else:
                    prev = leaves.get(id(x))
                    leaves[id(x)] = gi if prev is None else add(prev, gi)
            if not retain_graph:
                alive.append(inputs)
                node.release()
    return leaves, kept


def run_grad_hooks(t: Tensor, g: Any, create_graph: bool) -> Any:
    """``t``'s gradient hooks in registration order, each seeing the last one's result (torch's
    ``register_hook``): a hook gets a Tensor and may return a replacement of the same shape."""
    for _, hook in list(t._hooks["grad"]) if t._hooks else ():
        new = hook(g if isinstance(g, Tensor) else Tensor(g))
        if new is None:
            continue
        new = unwrap(new)
        if tuple(jnp.shape(constant(new))) != tuple(t.shape):
            raise RuntimeError(f"hook '{getattr(hook, '__name__', hook)}' has changed the size "
                               f"of value: expected {list(t.shape)}, got "
                               f"{list(jnp.shape(constant(new)))}")
        g = new if create_graph else constant(new)
    return g


class Overwritten:
    """Stands in for a value an in-place op overwrote after ``node`` used it. It is no array, so a
    backward rule that reads it fails, and the engine raises torch's error for it; rules that do
    not need the value (``add``'s) run unharmed, as in torch."""

    def __init__(self, t: Tensor, node: Node, expected: int) -> None:
        self.shape, self.dtype, self.ndim = t.shape, t.dtype, t.ndim
        self.message = (
            "one of the variables needed for gradient computation has been modified by an "
            f"inplace operation: [Tensor {list(t.shape)}], used by {node.name()}, is at version "
            f"{t._version}; expected version {expected} instead. "
            "Hint: write the out-of-place form (y = y * 2) where the old value is still needed.")


def _graph_order(root: Node) -> list[Node]:
    """Every node behind ``root``, consumers before producers (deeper nodes first)."""
    seen = {id(root): root}
    stack = [root]
    while stack:
        node = stack.pop()
        if node.inputs is None:
            raise RuntimeError(FREED)
        for x in node.inputs:
            if isinstance(x, Tensor) and x.grad_fn is not None and id(x.grad_fn) not in seen:
                seen[id(x.grad_fn)] = x.grad_fn
                stack.append(x.grad_fn)
    return sorted(seen.values(), key=lambda n: -n.depth)


def _seed(t: Tensor, gradient: Any, create_graph: bool) -> Any:
    if gradient is None:
        if t.data.size != 1:
            raise RuntimeError("grad can be implicitly created only for scalar outputs "
                               f"(the output has shape {tuple(t.shape)}); pass `gradient=` of "
                               "the output's shape, or reduce it first, e.g. loss.sum().")
        g = jnp.ones_like(t.data)
    else:
        g = gradient.data if isinstance(gradient, Tensor) else jnp.asarray(gradient, t.dtype)
        if tuple(g.shape) != tuple(t.shape):
            raise RuntimeError(f"Mismatch in shape: grad_output[0] has a shape of "
                               f"{tuple(g.shape)} and output[0] has a shape of {tuple(t.shape)}.")
    return Tensor(g) if create_graph else g


def backward(t: Tensor, gradient: Any = None, *, retain_graph: bool | None = None,
             create_graph: bool = False, inputs: Sequence[Tensor] | None = None) -> None:
    """PyTorch's ``t.backward()``: accumulate into the ``.grad`` of the graph's leaves."""
    if t._tape is not None and t._tape.closed:
        raise _escaped(t)
    if not t.requires_grad:
        raise RuntimeError("element 0 of tensors does not require grad and does not have a "
                           "grad_fn")
    retain = create_graph if retain_graph is None else retain_graph
    seed = _seed(t, gradient, create_graph)
    only = None if inputs is None else {id(x) for x in inputs}
    if t.grad_fn is None:  # backward on a leaf: its gradient is the seed itself
        leaves, targets = {id(t): seed}, {id(t): t}
    else:
        order = _graph_order(t.grad_fn)
        targets = {id(x): x for node in order for x in node.inputs
                   if isinstance(x, Tensor) and x.grad_fn is None and x.requires_grad}
        leaves, _ = _propagate(order, {t.grad_fn: seed}, create_graph=create_graph,
                               retain_graph=retain, keep=set())
    for key, g in leaves.items():
        leaf = targets.get(key)
        if leaf is None or (only is not None and key not in only):
            continue
        _accumulate(leaf, run_grad_hooks(leaf, g, create_graph), create_graph)
        for _, hook in list(leaf._hooks["post"]) if leaf._hooks else ():
            hook(leaf)


def tensor_backward(self: Tensor, gradient: Any = None, retain_graph: bool | None = None,
                    create_graph: bool = False, inputs: Sequence[Tensor] | None = None) -> None:
    """``Tensor.backward``: accumulate d self / d leaf into every leaf's ``.grad`` (PyTorch)."""
    backward(self, gradient, retain_graph=retain_graph, create_graph=create_graph,
             inputs=inputs)


def _accumulate(t: Tensor, g: Any, create_graph: bool) -> None:
    """``t.grad += g`` as PyTorch does for leaves and retained non-leaves (``AccumulateGrad``);
    recorded on the tape under ``create_graph``."""
    g = g if isinstance(g, Tensor) else Tensor(g)
    if t.grad is None:
        t.grad = g
    elif create_graph:
            t.grad = add(t.grad, g)
    else:
        t.grad = Tensor(t.grad.data + g.data)


def tape_gradient(tape: Tape | None, target: Any, sources: Sequence[Tensor], *,
                  create_graph: bool = False) -> list[Any]:
    """Gradients of scalar ``target`` w.r.t. ``sources``, walking ``tape`` in reverse (`grad`:
    every op between its sources and the target is on it), or with ``tape=None`` the whole graph
    behind ``target``.

    Nothing is accumulated into ``.grad``; sources without a path get zeros.
    """
    def zeros(s: Tensor) -> Any:
        z = jnp.zeros_like(s.data)
        return Tensor(z) if create_graph else z

    if not isinstance(target, Tensor):
        return [zeros(s) for s in sources]
    seed = _seed(target, None, create_graph)
    leaves: dict[int, Any] = {}
    kept: dict[int, Any] = {}
    if target.grad_fn is not None:
        order = reversed(tape.nodes) if tape is not None else _graph_order(target.grad_fn)
        leaves, kept = _propagate(order, {target.grad_fn: seed},
                                  create_graph=create_graph, retain_graph=True,
                                  keep={id(s) for s in sources})
    out = []
    for s in sources:
        g = leaves.get(id(s)) if s.grad_fn is None else kept.get(id(s))
        if s is target:
            g = seed
        if g is not None and s.grad_fn is None and s._hooks:
            g = run_grad_hooks(s, g, create_graph)
        out.append(zeros(s) if g is None else g)
    return out


def _real_scalar(out: Any) -> None:
    data = out.data if isinstance(out, Tensor) else out
    shape = np.shape(data)
    if shape != ():
        raise TypeError("Gradient only defined for scalar-output functions. "
                        f"Output had shape: {shape}.")
    dtype = data.dtype if hasattr(data, "dtype") else jnp.result_type(data)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError("grad requires real-valued outputs (output dtype that is a sub-dtype of "
                        f"np.floating), but got {dtype.name}.")


def _source(x: Any, tape_root: Tape) -> Tensor:
    x = unwrap(x)
    if isinstance(x, Tensor) and x.requires_grad:
        return x  # nested grad: differentiate through the outer Tensor itself
    data = x.data if isinstance(x, Tensor) else x
    if not isinstance(data, jax.Array):
        data = jnp.asarray(data)
    if not jnp.issubdtype(data.dtype, jnp.inexact):
        raise TypeError("grad requires real- or complex-valued inputs (input dtype that is a "
                        f"sub-dtype of np.inexact), but got {data.dtype.name}. Pass float "
                        "arrays, or move integer inputs out of `argnums`.")
    source = Tensor(data, requires_grad=True, _tape=tape_root)
    if isinstance(x, Tensor):
        source._tangent = x._tangent  # a dual input (forward over reverse) keeps its tangent
    return source


def value_and_grad(f: Callable, argnums: int | Sequence[int] = 0,
                   has_aux: bool = False) -> Callable:
    """Like `jax.value_and_grad`, computed by recording ``f`` on a fresh tape.

    Each array leaf of the differentiated arguments (any pytree: dict, list, ``nnx.State``)
    becomes a `Tensor` that requires grad; ``f`` must compute with `funcdl.tape` functions.
    Works eagerly, under `jax.jit` (the tape is built while tracing) and `jax.vmap`. Nested
    calls (``grad(grad(f))``) record the inner backward on the outer tape.
    """
    single = isinstance(argnums, int)
    nums = (argnums,) if single else tuple(argnums)
    name = getattr(f, "__name__", type(f).__name__)

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for i in nums:
            if not -len(args) <= i < len(args):
                raise ValueError(f"differentiating with respect to argnums={argnums} requires "
                                 f"at least {i + 1} positional arguments to be passed by the "
                                 f"caller, but got only {len(args)} positional arguments.")
        tape = Tape(owner=f"tape.grad({name})")
        args = list(args)
        flat: list[tuple[list[Tensor], Any]] = []
        with _open(tape) as root:
            for i in nums:
                leaves, treedef = jax.tree_util.tree_flatten(args[i])
                sources = [_source(x, root) for x in leaves]
                flat.append((sources, treedef))
                args[i] = jax.tree_util.tree_unflatten(treedef, sources)
            out = f(*args, **kwargs)
        try:
            aux = None
            if has_aux:
                if not (isinstance(out, tuple | list) and len(out) == 2):
                    raise TypeError("has_aux=True requires the function to return a pair "
                                    f"(output, aux), but it returned {type(out).__name__}.")
                out, aux = out
            out = unwrap(out)
            _real_scalar(out)
            all_sources = [s for sources, _ in flat for s in sources]
            # record the backward pass when an outer tape differentiates it, or when the inputs
            # carry forward-mode tangents (each backward op then carries them: a Hessian product)
            create = (bool(_TAPES.get()) and _GRAD_ENABLED.get()) or any(
                s._tangent is not None for s in all_sources)
            grads = tape_gradient(tape, out, all_sources, create_graph=create)
        finally:
            tape.close()
        trees, k = [], 0
        for sources, treedef in flat:
            trees.append(jax.tree_util.tree_unflatten(treedef, grads[k:k + len(sources)]))
            k += len(sources)
        g = trees[0] if single else tuple(trees)
        if not create:
            out = out.data if isinstance(out, Tensor) else out
            aux = jax.tree_util.tree_map(lambda a: a.data if isinstance(a, Tensor) else a, aux)
        return ((out, aux), g) if has_aux else (out, g)

    return wrapper


def grad(f: Callable, argnums: int | Sequence[int] = 0, has_aux: bool = False) -> Callable:
    """Like `jax.grad`, computed by the tape (see `value_and_grad`)."""
    vg = value_and_grad(f, argnums, has_aux)

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if has_aux:
            (_, aux), g = vg(*args, **kwargs)
            return g, aux
        return vg(*args, **kwargs)[1]

    return wrapper


@contextlib.contextmanager
def _open(tape: Tape):
    """Activate ``tape`` for recording; yield the outermost open tape (owner of new Tensors)."""
    tape.__enter__()
    try:
        yield _TAPES.get()[0]
    finally:
        tape.deactivate()
