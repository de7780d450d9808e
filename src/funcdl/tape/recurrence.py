"""Loops the tape differentiates without unrolling: `scan`, ``jax.lax.scan`` through which tape
Tensors flow (in the carry, in the scanned inputs, and closed over by the body: weights).

Plain arrays in, and a body that closes over no Tensor: this is ``jax.lax.scan`` itself. Otherwise
the forward is one ``lax.scan`` and the tape records ONE node, ``ScanBackward0``. Its output is
every float output (final carry, then ``ys``) flattened into one vector, of which the returned
carry and ``ys`` are views; its inputs are the float leaves of ``init`` and ``xs`` and the Tensors
the body closes over that require grad. Those are found while ``lax.scan`` traces the body (once):
a `Scope` sees every op the body records, and an input Tensor the body did not make is a closure.

* Backward: a reverse ``lax.scan`` whose step runs the body on a private tape (per-step leaves
  for the carry, the inputs and each closure: a `Scope` stands them in for the closed-over
  Tensors) and walks it back from the step's output gradients; the closures' gradients add up in
  its carry. The forward saved every op's output per step, and the backward step replays them
  in place of the recomputed ones, so XLA drops the recomputation (what ``jax.grad`` saves too).
* ``create_graph``: the backward is itself a `scan` of that step on Tensors, recorded like any op
  (so nested scans, Hessians and gradients of gradients work); it recomputes the carries with a
  scan instead of replaying.
* Forward mode: a ``lax.scan`` of the body's tangents (the carry holds value and tangent).

Compile time does not grow with the length: every loop is a ``lax.scan`` of one body.
A body must not make Tensors that require grad itself (a nested ``tape.grad`` inside it).
"""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcdl.tape.activations import sigmoid, tanh
from funcdl.tape.autograd import Tape, tape_gradient
from funcdl.tape.cases import Case, array, call
from funcdl.tape.elementwise import add, astype, exp, mul
from funcdl.tape.indexing import getitem
from funcdl.tape.reductions import sum
from funcdl.tape.registry import op
from funcdl.tape.shape import reshape
from funcdl.tape.tensor import (
    _DUAL_LEVEL,
    _GRAD_ENABLED,
    _SCOPES,
    _TAPES,
    Tensor,
    apply,
    constant,
    tangent_at,
    unwrap,
    wrap,
)

__all__ = ["scan"]


class _NeedsTape(Exception):
    """A body traced on plain arrays touched a Tensor: trace it again on Tensors."""


# --------------------------------------------------------------------------- scopes


class Scope:
    """One scan body being traced. Every op recorded inside it passes through `wrap`:

    * inputs are first replaced by their stand-ins (``stand_in``, of this scope and the ones
      around it): the per-step Tensor the body sees instead of a closed-over one;
    * an input that requires grad and was not made in the body is a closure (``closures``);
    * ``mode`` "record" appends each op's output to ``saved``, "replay" hands the saved ones back
      in order (the backward step's ops then reuse the forward's values), "abort" refuses any op
      (a body traced on plain arrays). ``paused`` lets the machinery's own ops through untouched.
    """

    def __init__(self, mode: str | None = None, saved: Sequence = (),
                 stand_in: dict[int, Tensor] | None = None) -> None:
        self.mode = mode
        self.saved = list(saved)
        self.stand_in = dict(stand_in or {})
        self.internal: dict[int, Tensor] = {}  # made in the body (kept alive: ids stay unique)
        self.closures: dict[int, Tensor] = {}
        self.paused = False
        self.wrapping = False
        self._next = 0

    def adopt(self, t: Any) -> Any:
        """Mark ``t`` as made in the body (a step value, a stand-in)."""
        if isinstance(t, Tensor):
            self.internal[id(t)] = t
        return t

    def see(self, inputs: Sequence) -> None:
        for x in inputs:
            if isinstance(x, Tensor) and x.requires_grad and id(x) not in self.internal:
                self.closures.setdefault(id(x), x)

    def wrap(self, name: str, out: Any, inputs: tuple, rules: Any, joint: Any) -> Tensor:
        if self.mode == "abort":
            raise _NeedsTape
        inputs = tuple(resolve(x) for x in inputs)
        self.see(inputs)
        if not self.paused:
            if self.mode == "record":
                self.saved.append(out)
            elif self.mode == "replay":
                out = self._replayed(name, out)
        self.wrapping = True
        try:
            return self.adopt(wrap(name, out, inputs, rules, joint))
        finally:
            self.wrapping = False

    def _replayed(self, name: str, out: Any) -> Any:
        if self._next >= len(self.saved):
            raise RuntimeError(f"tape.scan: the body recorded more ops when differentiated than "
                               f"when run (at {name}); does it branch on requires_grad?")
        saved = self.saved[self._next]
        self._next += 1
        if jnp.shape(saved) != jnp.shape(out) or jnp.result_type(saved) != jnp.result_type(out):
            raise RuntimeError(f"tape.scan: the body's op {name} gave {jnp.shape(out)} when "
                               f"differentiated but {jnp.shape(saved)} when run")
        return saved


def resolve(x: Any) -> Any:
    """The Tensor the current scan bodies see for ``x`` (its stand-in, or ``x``)."""
    scopes = _SCOPES.get()
    while isinstance(x, Tensor):
        for scope in reversed(scopes):
            if id(x) in scope.stand_in:
                x = scope.stand_in[id(x)]
                break
        else:
            return x
    return x


@contextlib.contextmanager
def _pushed(scope: Scope) -> Iterator[Scope]:
    token = _SCOPES.set(_SCOPES.get() + (scope,))
    try:
        yield scope
    finally:
        _SCOPES.reset(token)


@contextlib.contextmanager
def _isolated(tapes: tuple = (), grad: bool = False, level: int | None = None) -> Iterator[None]:
    """Run a body with its own tapes, grad mode and forward-mode level."""
    tokens = [(v, v.set(x)) for v, x in ((_TAPES, tapes), (_GRAD_ENABLED, grad),
                                         (_DUAL_LEVEL, level))]
    try:
        yield
    finally:
        for v, token in reversed(tokens):
            v.reset(token)


@contextlib.contextmanager
def _paused() -> Iterator[None]:
    """The machinery's ops are no part of the enclosing body's record or replay."""
    scopes = _SCOPES.get()
    if not scopes:
        yield
        return
    scope, was = scopes[-1], scopes[-1].paused
    scope.paused = True
    try:
        yield
    finally:
        scope.paused = was


# --------------------------------------------------------------------------- the body


def _is_float(x: Any) -> bool:
    dtype = getattr(constant(x), "dtype", None)
    if dtype is None:
        dtype = jnp.result_type(constant(x))
    return jnp.issubdtype(dtype, jnp.floating)


class _Body:
    """``f`` over flat leaves: ``call(carry_leaves, x_leaves) -> (carry_leaves, y_leaves)``."""

    def __init__(self, f: Callable, init: Any, xs: Any) -> None:
        self.f = f
        init_leaves, self.carry_tree = jax.tree.flatten(init)
        x_leaves, self.x_tree = jax.tree.flatten(xs)
        self.init = [unwrap(v) for v in init_leaves]
        self.xs = [unwrap(v) for v in x_leaves]
        self.carry_float = [_is_float(v) for v in self.init]
        self.x_float = [_is_float(v) for v in self.xs]
        self.y_tree: Any = None

    def call(self, c: Sequence, x: Sequence) -> tuple[list, list]:
        out = self.f(jax.tree.unflatten(self.carry_tree, c), jax.tree.unflatten(self.x_tree, x))
        if not (isinstance(out, tuple | list) and len(out) == 2):
            raise TypeError(f"scan body output must be a pair, got {type(out).__name__}.")
        c_out, tree = jax.tree.flatten(out[0])
        if tree != self.carry_tree:
            raise TypeError("scan body function carry input and carry output must have the same "
                            f"pytree structure, but they differ: input {self.carry_tree}, "
                            f"output {tree}")
        y, self.y_tree = jax.tree.flatten(out[1])
        return c_out, y


def _step_values(values: Sequence, floats: Sequence[bool], scope: Scope,
                 make: Callable[[Any, int], Tensor]) -> list:
    """Per-step Tensors (``make(data, i)``) for the float leaves; other leaves as they are."""
    return [scope.adopt(make(v, i)) if fl else v for i, (v, fl) in enumerate(zip(values, floats))]


# --------------------------------------------------------------------------- scan


@op(Case("tanh RNN: carry and ys", lambda d: _rnn_case(d)),
    Case("pytree carry and ys, reverse", lambda d: _tree_case(d)),
    Case("nested: the inner body closes over the outer carry", lambda d: _nested_case(d)),
    no_torch="torch has no scan (a Python loop is its equivalent); the recurrent layers built "
             "on scan are compared with torch.nn.RNN/LSTM/GRU")
def scan(f: Callable, init: Any, xs: Any, length: int | None = None,
         reverse: bool = False) -> tuple[Any, Any]:
    """``jax.lax.scan(f, init, xs, length, reverse)``: ``f(carry, x) -> (carry, y)`` over the
    leading axis of ``xs``; returns the final carry and the stacked ``y``. Tape Tensors may flow
    in ``init``, ``xs`` and the body's closure (see the module docstring)."""
    if not any(isinstance(unwrap(v), Tensor) for v in jax.tree.leaves((init, xs))):
        try:
            return _plain_scan(f, init, xs, length, reverse)
        except _NeedsTape:
            pass  # the body closes over a Tensor: run it on Tensors
    return _tape_scan(_Body(f, init, xs), length, reverse)


def _plain_scan(f: Callable, init: Any, xs: Any, length: int | None, reverse: bool) -> Any:
    def body(c: Any, x: Any) -> Any:
        out = f(c, x)
        if any(isinstance(v, Tensor) for v in jax.tree.leaves(out)):
            raise _NeedsTape
        return out

    with _pushed(Scope(mode="abort")):
        return jax.lax.scan(body, init, xs, length=length, reverse=reverse)


def _tape_scan(body: _Body, length: int | None, reverse: bool) -> tuple[Any, Any]:
    record = _GRAD_ENABLED.get()  # save every op's output for the backward
    level = _DUAL_LEVEL.get()
    scopes: list[Scope] = []

    def step(c: list, x: list) -> tuple:
        scope = Scope(mode="record" if record else None)
        scopes.append(scope)
        with _isolated(), _pushed(scope):
            c_out, y = body.call(_step_values(c, body.carry_float, scope, _plain_step),
                                 _step_values(x, body.x_float, scope, _plain_step))
        return [constant(v) for v in c_out], ([constant(v) for v in y], scope.saved,
                                           c if record else [])

    init, xs = [constant(v) for v in body.init], [constant(v) for v in body.xs]
    carry, (ys, saved, carries) = jax.lax.scan(step, init, xs, length=length, reverse=reverse)
    outs = list(carry) + list(ys)
    floats = [i for i, v in enumerate(outs) if _is_float(v)]
    if not floats:  # nothing to differentiate
        return _rebuild(body, outs)
    closures = list(scopes[0].closures.values()) if scopes else []
    like = [jax.ShapeDtypeStruct(outs[i].shape, outs[i].dtype) for i in floats]
    dtype = jnp.result_type(*[s.dtype for s in like])
    flat = jnp.concatenate([jnp.ravel(outs[i]).astype(dtype) for i in floats])
    node = _Node(body, closures, like, length, reverse, saved, carries)
    result = wrap("ScanBackward0", flat, tuple(body.init) + tuple(body.xs) + tuple(closures),
                  joint=node.backward)
    if level is not None:  # a closure may carry a tangent too: always compute it in a level
        result._tangent = (level, node.tangent(level, dtype, floats))
    for i, v in zip(floats, _views(result, like)):
        outs[i] = v
    return _rebuild(body, outs)


def _plain_step(v: Any, i: int) -> Tensor:
    return Tensor(v)


def _views(flat: Any, like: Sequence) -> list:
    """Pieces of ``flat`` with the shapes and dtypes of ``like`` (tape ops: gradients flow)."""
    out, start = [], 0
    for v in like:
        n = int(np.prod(v.shape))
        piece = reshape(getitem(flat, slice(start, start + n)), tuple(v.shape))
        out.append(astype(piece, v.dtype) if piece.dtype != v.dtype else piece)
        start += n
    return out


def _rebuild(body: _Body, outs: Sequence) -> tuple[Any, Any]:
    n = len(body.init)
    return (jax.tree.unflatten(body.carry_tree, outs[:n]),
            jax.tree.unflatten(body.y_tree, outs[n:]))


# --------------------------------------------------------------------------- the node's rules


class _Node:
    """The rules of one ``ScanBackward0`` node, with the forward's residuals: the carry entering
    each step and every op's output per step (``saved``)."""

    def __init__(self, body: _Body, closures: list, like: list, length: int | None,
                 reverse: bool, saved: list, carries: list) -> None:
        self.body, self.closures, self.like = body, closures, like
        self.length, self.reverse = length, reverse
        self.saved, self.carries = saved, carries

    def _split(self, values: Sequence) -> tuple[list, list, list]:
        c, x = len(self.body.init), len(self.body.init) + len(self.body.xs)
        return list(values[:c]), list(values[c:x]), list(values[x:])

    def backward(self, g: Any, z: Any, needs: tuple, *inputs: Any) -> list:
        """Every input's gradient: one reverse scan of the body's tape gradient."""
        body = self.body
        init, xs, _ = self._split(inputs)
        needs_x = [bool(n) for n in self._split(needs)[1]]
        pieces = _views(g, self.like)
        n_c = builtins.sum(body.carry_float)
        g_c, g_y = pieces[:n_c], pieces[n_c:]
        graph = isinstance(g, Tensor) or any(isinstance(v, Tensor) for v in inputs)
        vjp = _VjpStep(body, self.closures, needs_x)
        acc = [jnp.zeros_like(constant(w)) for w in self.closures]
        if graph:  # create_graph: a recorded scan, itself differentiable
            carries = self._recomputed_carries(init, xs)
            (d_init, d_w), d_xs = scan(vjp, (g_c, acc), (carries, xs, g_y, None),
                                       length=self.length, reverse=not self.reverse)
        else:
            xs_data = [constant(v) for v in xs]
            (d_init, d_w), d_xs = jax.lax.scan(
                vjp, ([constant(v) for v in g_c], acc),
                (self.carries, xs_data, [constant(v) for v in g_y], self.saved),
                length=self.length, reverse=not self.reverse)
        d_init, d_xs = iter(d_init), iter(d_xs)
        grads = [next(d_init) if fl else None for fl in body.carry_float]
        grads += [next(d_xs) if fl and n else None for fl, n in zip(body.x_float, needs_x)]
        return grads + list(d_w)

    def _recomputed_carries(self, init: list, xs: list) -> list:
        """The carry entering each step, stacked, by a recorded scan (differentiable)."""
        f = self.body.f

        def with_carries(c: Any, x: Any) -> tuple:
            return f(c, x)[0], c

        _, stacked = scan(with_carries, jax.tree.unflatten(self.body.carry_tree, init),
                          jax.tree.unflatten(self.body.x_tree, xs), length=self.length,
                          reverse=self.reverse)
        return jax.tree.leaves(stacked)

    def tangent(self, level: int, dtype: Any, floats: Sequence[int]) -> Any:
        """The flat output's tangent: a scan of the body on dual per-step Tensors."""
        body = self.body

        def tangent_of(v: Any) -> Any:
            t = tangent_at(v, level)
            return jnp.zeros_like(constant(v)) if t is None else constant(t)

        def step(carry: tuple, x: tuple) -> tuple:
            (c, tc), (xv, tx) = carry, x
            scope = Scope()
            with _isolated(level=level), _pushed(scope):
                c_out, y = body.call(
                    _step_values(c, body.carry_float, scope, lambda v, i: _dual(v, tc[i], level)),
                    _step_values(xv, body.x_float, scope, lambda v, i: _dual(v, tx[i], level)))
            return ([constant(v) for v in c_out], [tangent_of(v) for v in c_out]), \
                [tangent_of(v) for v in y]

        start = ([constant(v) for v in body.init], [tangent_of(v) for v in body.init])
        xs = ([constant(v) for v in body.xs], [tangent_of(v) for v in body.xs])
        (_, t_carry), t_ys = jax.lax.scan(step, start, xs, length=self.length,
                                          reverse=self.reverse)
        outs = list(t_carry) + list(t_ys)
        return jnp.concatenate([jnp.ravel(outs[i]).astype(dtype) for i in floats])


def _dual(v: Any, t: Any, level: int) -> Tensor:
    x = Tensor(v)
    x._tangent = (level, t)
    return x


class _VjpStep:
    """One backward step: ``((dL/dcarry_out, closure sums), (carry_in, x, dL/dy, saved)) ->
    ((dL/dcarry_in, closure sums), dL/dx)``, by the tape on a private tape.

    On arrays (the plain backward) it replays ``saved``; on Tensors (``create_graph``, or dual
    Tensors under forward-over-reverse) its sources are views of them and the gradient it returns
    is recorded, so the scan that runs it is differentiable in turn.
    """

    def __init__(self, body: _Body, closures: list, needs_x: list[bool]) -> None:
        self.body, self.closures, self.needs_x = body, closures, needs_x

    def __call__(self, carry: tuple, xs: tuple) -> tuple:
        (g_c, acc), (c_t, x_t, g_y, saved) = carry, xs
        body, level = self.body, _DUAL_LEVEL.get()
        closures = [resolve(w) for w in self.closures]
        values = [*g_c, *acc, *c_t, *x_t, *g_y, *closures]
        graph = _GRAD_ENABLED.get() and any(isinstance(v, Tensor) and v.requires_grad
                                            for v in values)
        create = graph or (level is not None and any(tangent_at(v, level) is not None
                                                     for v in values))
        private = Tape(owner="tape.scan")
        tapes = _TAPES.get() + (private,) if graph else (private,)
        with _isolated(tapes, grad=True, level=level if create else None):
            with _paused():
                c_src = [_source(v, graph) if fl else constant(v)
                         for v, fl in zip(c_t, body.carry_float)]
                x_src = [_source(v, graph, need) if fl else constant(v)
                         for v, fl, need in zip(x_t, body.x_float, self.needs_x)]
                w_src = [_source(w, graph) for w in closures]
            own = Scope(stand_in={id(w): s for w, s in zip(closures, w_src)})
            for s in (*c_src, *x_src, *w_src):
                own.adopt(s)
            with _pushed(own):
                out = self._run(c_src, x_src, saved)
                total = _weighted(out, list(g_c) + list(g_y))
                c_sources = [s for s, fl in zip(c_src, body.carry_float) if fl]
                x_sources = [s for s, fl, n in zip(x_src, body.x_float, self.needs_x)
                             if fl and n]
                grads = tape_gradient(private, total, c_sources + x_sources + w_src,
                                      create_graph=create)
                k = len(c_sources) + len(x_sources)
                d_c, d_x, d_w = grads[:len(c_sources)], grads[len(c_sources):k], grads[k:]
                acc = [add(a, d) for a, d in zip(acc, d_w)]
        return (d_c, acc), d_x

    def _run(self, c_src: list, x_src: list, saved: Any) -> list:
        """The body's float outputs, its ops replaying ``saved`` when given."""
        replay = Scope(mode="replay", saved=saved) if saved is not None else Scope()
        with _pushed(replay):
            c_out, y = self.body.call(c_src, x_src)
        if saved is not None and replay._next != len(replay.saved):
            raise RuntimeError("tape.scan: the body recorded fewer ops when differentiated than "
                               "when run; does it branch on requires_grad?")
        return [v for v, fl in zip(c_out, self.body.carry_float) if fl] + \
            [v for v in y if _is_float(v)]


def _source(v: Any, graph: bool, need: bool = True) -> Tensor:
    """A per-step leaf for ``v``: a recorded view of it when the backward is recorded (so the
    gradient is a function of ``v``), else a new leaf with ``v``'s value and tangent."""
    if graph and need and isinstance(v, Tensor) and v.requires_grad:
        return apply("AliasBackward0", lambda x: x, (v,), (lambda g, z, x: g,),
                     tangents="linear")
    scopes = _SCOPES.get()
    if scopes:  # the enclosing body uses v: a closure of its scan when v requires grad
        scopes[-1].see([v])
    t = Tensor(constant(v), requires_grad=need)
    if isinstance(v, Tensor):
        t._tangent = v._tangent
    return t


def _weighted(outs: Sequence, gs: Sequence) -> Any:
    """sum_k <outs[k], gs[k]>: the scalar whose gradient is the vector-Jacobian product."""
    total: Any = 0.0
    for y, g in zip(outs, gs):
        total = add(total, sum(mul(y, g)))
    return total


# --------------------------------------------------------------------------- parity cases


def _rnn_case(d: Any) -> Any:
    n = d.choice([1, 3], "features")
    return call(_rnn_body, array(d, (n,)), array(d, (d.integer(1, 4, "length"), n)))


def _rnn_body(h: Any, x: Any) -> tuple:
    h = tanh(add(mul(h, 0.7), x))
    return h, mul(h, exp(mul(x, 0.5)))


def _tree_case(d: Any) -> Any:
    n = d.choice([1, 3], "features")
    init = {"h": array(d, (n,)), "c": array(d, (2, n))}
    return call(_tree_body, init, [array(d, (3, n))], reverse=True)


def _tree_body(carry: dict, xs: list) -> tuple:
    h = tanh(add(carry["h"], mul(getitem(carry["c"], 0), xs[0])))
    return {"h": h, "c": mul(carry["c"], sigmoid(h))}, {"y": [h]}


def _nested_case(d: Any) -> Any:
    return call(_nested_body, array(d, (2,)), array(d, (d.integer(1, 3, "length"), 3, 2)))


def _nested_body(h: Any, xs: Any) -> tuple:
    """An inner scan over the rows of one outer step, closing over the outer carry ``h``."""
    inner, _ = scan(lambda c, x: (tanh(add(mul(c, h), x)), None), h, xs)
    return inner, sum(inner)
