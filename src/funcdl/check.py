"""Parity checks: funcdl.tape against ``jax.grad``, funcdl against PyTorch.

One runner for `funcdl check`, the tests and the examples. The cases come from the op registry
(each op declares its own, `funcdl.tape.registry`) and from the layer catalogue below:

* `compare_with_jax`: ``funcdl.tape.grad`` and ``jax.grad`` of one function, jitted or eager;
* `gradient_cases` / `compare_gradients`: that comparison for every op case and every layer;
* `op_calls` / `torch_reference`: an op's values and gradients by its torch counterpart.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from funcdl import layers as L
from funcdl import tape
from funcdl.layers.counterpart import declaration, declared_layers
from funcdl.tape.cases import Call, Case, Const, Draw, RandomDraw
from funcdl.tape.registry import OPS, Op

# --------------------------------------------------------------------------- tape vs jax.grad


@dataclasses.dataclass
class Comparison:
    """``funcdl.tape.grad`` against ``jax.grad`` of the same function."""

    abs_diff: float  # max |tape - jax| over every gradient element
    scale: float  # max |jax| over every gradient element
    leafwise: float  # max over gradient arrays of max |tape - jax| / max |jax|
    leaves: int
    tape_grads: Any
    jax_grads: Any
    tape_ms: float | None = None  # one call after compiling (``timed=True``)
    jax_ms: float | None = None

    @property
    def relative(self) -> float:
        """max |tape - jax| / max(1, max |jax|): the tolerance `funcdl check` applies."""
        return self.abs_diff / max(1.0, self.scale)


def max_abs_diff(a: Any, b: Any) -> float:
    """max |a - b| over every leaf of two pytrees of arrays (0.0 when they hold none)."""
    return max((float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)),
                              initial=0.0)) for x, y in zip(jax.tree.leaves(a),
                                                             jax.tree.leaves(b))), default=0.0)


def leafwise_relative(ours: Any, ref: Any) -> float:
    """max over the arrays of two pytrees of max |ours - ref| / max |ref|: a relative error that
    a small gradient array cannot hide behind a large one."""
    pairs = zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True)
    return max((max_abs_diff(a, b) / max(float(np.max(np.abs(np.asarray(b)), initial=0.0)),
                                         1e-30) for a, b in pairs), default=0.0)


def _timed(fn: Callable, args: tuple) -> tuple[Any, float]:
    jax.block_until_ready(fn(*args))  # compile (and warm up) first
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, (time.perf_counter() - t0) * 1e3


def compare_with_jax(loss: Callable, *args: Any, argnums: int | tuple[int, ...] = 0,
                     jit: bool = True, timed: bool = False) -> Comparison:
    """Differentiate the scalar ``loss(*args)`` by the tape and by ``jax.grad`` (both jitted,
    or op by op with ``jit=False``) and measure how far apart the gradients are."""
    compile_ = jax.jit if jit else (lambda f: f)
    ours_fn = compile_(tape.grad(loss, argnums=argnums))
    ref_fn = compile_(jax.grad(loss, argnums=argnums))
    times: dict[str, float | None] = {"tape_ms": None, "jax_ms": None}
    if timed:
        ours, times["tape_ms"] = _timed(ours_fn, args)
        ref, times["jax_ms"] = _timed(ref_fn, args)
    else:
        ours, ref = ours_fn(*args), ref_fn(*args)
    n_ours, n_ref = len(jax.tree.leaves(ours)), len(jax.tree.leaves(ref))
    if n_ours != n_ref:
        raise ValueError(f"the tape gave {n_ours} gradient arrays, jax.grad {n_ref}")
    scale = max((float(np.max(np.abs(np.asarray(b)), initial=0.0))
                 for b in jax.tree.leaves(ref)), default=0.0)
    return Comparison(abs_diff=max_abs_diff(ours, ref), scale=scale,
                      leafwise=leafwise_relative(ours, ref), leaves=n_ref, tape_grads=ours,
                      jax_grads=ref, **times)


def weights_for(outputs: list) -> list[np.ndarray]:
    """Fixed random weights in [0.5, 1.5], one array per output (seeded by position), the same
    for funcdl's outputs and torch's."""
    return [np.random.default_rng(i).uniform(0.5, 1.5, tuple(x.shape)).astype(np.float32)
            for i, x in enumerate(outputs)]


def weighted_sum(out: Any) -> Any:
    """A scalar that depends on every output element with a different weight, so a wrong
    gradient anywhere shows (written with funcdl.tape so Tensors flow through)."""
    leaves = jax.tree.leaves(out, is_leaf=lambda x: isinstance(x, tape.Tensor))
    total = 0.0
    for leaf, w in zip(leaves, weights_for(leaves)):
        total = tape.add(total, tape.sum(tape.mul(leaf, w)))
    return total


# --------------------------------------------------------------------------- a case's arguments


def _differentiable(x: Any) -> bool:
    return (isinstance(x, np.ndarray | np.generic | jax.Array)
            and jnp.issubdtype(x.dtype, jnp.floating))


def _walk(x: Any, leaf: Callable[[Any], Any], other: Callable[[Any], Any]) -> Any:
    """``x`` with each differentiable array replaced by ``leaf(it)`` and each constant value
    (a `Const`'s value, another array, anything else) by ``other(it)``; containers kept."""
    if isinstance(x, Const):
        return other(x.value)
    if isinstance(x, dict):
        return {k: _walk(v, leaf, other) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return type(x)(_walk(v, leaf, other) for v in x)
    return leaf(x) if _differentiable(x) else other(x)


def split_call(c: Call) -> tuple[list[np.ndarray], Callable[..., Call]]:
    """The call's differentiable arrays, and ``rebuild(*arrays) -> Call`` putting new ones in."""
    found: list[np.ndarray] = []
    _walk((c.args, c.kwargs), found.append, lambda v: v)

    def rebuild(*arrays: Any) -> Call:
        it = iter(arrays)
        args, kwargs = _walk((c.args, c.kwargs), lambda _: next(it), lambda v: v)
        return Call(args, kwargs)

    return found, rebuild


def op_calls(o: Op, draw: Draw | None = None) -> Iterator[tuple[str, Case, Call]]:
    """``(case name, case, call)`` for each of the op's cases, drawn from ``draw`` (a seeded
    `RandomDraw` per case when None)."""
    for case in o.cases:
        name = f"{o.name} ({case.label})"
        d = draw if draw is not None else RandomDraw(zlib.crc32(name.encode()))
        yield name, case, case.make(d)


# --------------------------------------------------------------------------- the gradient cases


@dataclasses.dataclass
class GradCase:
    """One gradient comparison: ``make() -> (fn, args)``; ``fn(*args)`` is differentiated w.r.t.
    every argument. ``make`` runs only when the case is checked (building layers takes time).
    An op's case also carries the op, its case and the call, for the comparison with torch."""

    name: str
    make: Callable[[], tuple[Callable, tuple]]
    op: Op | None = None
    case: Case | None = None
    call: Call | None = None


@dataclasses.dataclass
class GradResult:
    name: str
    abs_diff: float = float("nan")
    relative: float = float("nan")
    error: str | None = None
    torch_diff: float | None = None  # max |funcdl - torch| over values and gradients
    torch_ok: bool | None = None  # within the case's rtol/atol of torch

    def verdict(self, tol: float) -> str:
        """"ok", or what failed: an error, the tolerance, or the torch comparison."""
        if self.error is not None:
            return f"ERROR {self.error}"
        if not self.relative <= tol:
            return f"FAIL (relative > {tol:g})"
        if self.torch_ok is False:
            return "FAIL (differs from torch)"
        return "ok"


def op_function(o: Op, c: Call) -> tuple[Callable, tuple]:
    """``(fn, arrays)``: the op as a function of the call's differentiable arrays (as JAX
    arrays, so that plain arrays in give JAX arrays out)."""
    arrays, rebuild = split_call(c)

    def fn(*xs: Any) -> Any:
        call = rebuild(*xs)
        return o.fn(*call.args, **call.kwargs)

    return fn, tuple(jnp.asarray(a) for a in arrays)


def op_cases() -> list[GradCase]:
    """One case per declared case of every op of funcdl.tape (seeded draws)."""
    out = []
    for o in OPS.values():
        for name, case, c in op_calls(o):
            out.append(GradCase(name, lambda o=o, c=c: op_function(o, c), o, case, c))
    return out


def compare_gradients(case: GradCase, *, eager: bool = False, torch: bool = False
                      ) -> GradResult:
    """The case's tape gradient against ``jax.grad`` of its weighted sum (a row of the table);
    with ``torch=True`` (and torch installed) an op's values and gradients against torch's."""
    try:
        fn, args = case.make()
        result = compare_with_jax(lambda *a: weighted_sum(fn(*a)), *args,
                                  argnums=tuple(range(len(args))), jit=not eager)
        row = GradResult(case.name, result.abs_diff, result.relative)
        if not np.isfinite(result.abs_diff):
            row.error = "non-finite gradient"
        elif torch and case.op is not None and case.op.torch is not None and _has_torch():
            ours = ([np.asarray(x) for x in jax.tree.leaves(fn(*args))],
                    [np.asarray(g) for g in result.tape_grads])
            theirs = torch_reference(case.op, case.case, case.call)
            pairs = [(a, b) for a, b in zip(ours[0] + ours[1], theirs[0] + theirs[1])
                     if b is not None]
            row.torch_diff = max_abs_diff([a for a, _ in pairs], [b for _, b in pairs])
            row.torch_ok = torch_mismatch(case.case, ours, theirs) <= 0
        return row
    except Exception as err:  # a broken case is reported in the table, not a crash
        return GradResult(case.name, error=f"{type(err).__name__}: {err}".splitlines()[0][:120])


def _has_torch() -> bool:
    return importlib.util.find_spec("torch") is not None


def gradient_cases() -> list[GradCase]:
    """Every declared op case and every layer, on small float32 inputs."""
    return op_cases() + layer_cases()


# --------------------------------------------------------------------------- against PyTorch


def _to_torch(x: Any) -> Any:
    """A constant argument for torch: arrays become tensors (integers as Long, torch's index
    type); anything else is passed as it is."""
    import torch

    if not isinstance(x, np.ndarray | np.generic | jax.Array):
        return x
    a = np.asarray(x)
    return torch.from_numpy(np.array(a.astype(np.int64) if a.dtype.kind in "iu" else a))


def _to_numpy(x: Any) -> np.ndarray:
    """A torch tensor or an array as numpy, in its own dtype (bfloat16 as JAX's)."""
    if hasattr(x, "detach"):
        x = x.detach()
        if str(x.dtype) == "torch.bfloat16":  # numpy has no bfloat16; JAX's (ml_dtypes) is exact
            return x.float().numpy().astype(jnp.bfloat16)
        return x.numpy()
    return np.asarray(x)


def torch_reference(o: Op, case: Case, c: Call) -> tuple[list, list]:
    """PyTorch's outputs for the call, and its gradients of `weighted_sum` of them w.r.t. each
    differentiable array of the call (None where the case says torch cannot differentiate)."""
    import torch

    leaves: list[Any] = []

    def leaf(requires_grad: bool) -> Callable[[Any], Any]:
        def make(a: Any) -> Any:
            t = torch.tensor(np.asarray(a), requires_grad=requires_grad)
            leaves.append(t)
            return t

        return make

    args = _walk(c.args, leaf(True), _to_torch)  # the order of split_call's arrays
    kwargs = {k: _walk(v, leaf(k not in case.torch_no_grad), _to_torch)
              for k, v in c.kwargs.items()}
    out = o.torch_fn()(*args, **kwargs)
    outs = list(out) if isinstance(out, list | tuple) else [out]
    total = sum((r.float() * torch.from_numpy(w)).sum() for r, w in zip(outs, weights_for(outs)))
    if total.requires_grad:
        total.backward()
    grads = [None if not t.requires_grad else
             _to_numpy(torch.zeros(t.shape) if t.grad is None else t.grad) for t in leaves]
    return [_to_numpy(r) for r in outs], grads


def torch_mismatch(case: Case, ours: tuple[list, list], theirs: tuple[list, list]) -> float:
    """How far funcdl's (outputs, gradients) are from torch's: the largest
    |a - b| - atol - rtol |b| over every element (<= 0 means within the case's tolerance)."""
    worst = -np.inf
    for a, b in zip(ours[0] + ours[1], theirs[0] + theirs[1]):
        if b is None:
            continue
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a.shape != b.shape:
            raise ValueError(f"funcdl gave shape {a.shape} where torch gives {b.shape}")
        excess = np.abs(a - b) - case.atol - case.rtol * np.abs(b)
        worst = max(worst, float(np.max(excess, initial=-np.inf)))
    return worst


# --------------------------------------------------------------------------- the layer catalogue


def _module_case(name: str, build: Callable[[], tuple[nnx.Module, Callable]]) -> GradCase:
    """A case over every ``nnx.Param`` of the module ``build()`` makes, called by the function
    it returns with it (eval mode: dropout off, batch norm on its running statistics)."""

    def make():
        module, call = build()
        module.eval()
        graphdef, params, rest = nnx.split(module, nnx.Param, ...)
        return (lambda p: call(nnx.merge(graphdef, p, rest))), (params,)

    return GradCase(name, make)


def declared_layer_cases() -> list[GradCase]:
    """One case per layer declared with a torch example (``@torch_layer(example=...)``): the
    example's funcdl module on its input. Only when torch is installed (an example builds the
    torch twin too)."""
    if not _has_torch():
        return []

    def build(decl: Any) -> tuple[nnx.Module, Callable]:
        import torch

        example = decl.example(torch)
        return example.module, lambda mod: mod(example.input)

    declared = [(cls, declaration(cls, inherit=False)) for cls in declared_layers()]
    return [_module_case(f"{cls.__name__} (its declared example)",
                         lambda decl=decl: build(decl))
            for cls, decl in declared if decl is not None and decl.example is not None]


def layer_cases() -> list[GradCase]:
    """Every declared layer's example, and the variants and funcdl-only modules a declaration
    does not cover: attention with its masks, the classifier, a tied MLM head, LLaMA options."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 5, 8)).astype(np.float32)
    kv = rng.normal(size=(2, 3, 8)).astype(np.float32)
    ids = rng.integers(0, 10, (2, 5))
    padding = np.array([[False] * 5, [False, False, False, True, True]])
    blocked = np.array([[False, True, True], [True, True, True]])  # row 2: every key masked
    q, k, v = (rng.normal(size=(2, 2, 4, 4)).astype(np.float32) for _ in range(3))
    def m(name: str, make: Callable, call: Callable) -> GradCase:
        return _module_case(name, lambda: (make(nnx.Rngs(0)), call))

    return [
        GradCase("scaled_dot_product_attention (causal, padding)", lambda: (
            lambda q, k, v: L.scaled_dot_product_attention(
                q, k, v, is_causal=True, key_padding_mask=padding[:, :4]), (q, k, v))),
        GradCase("scaled_dot_product_attention (a fully masked row)", lambda: (
            lambda q, k, v: L.scaled_dot_product_attention(
                q[:, :, :3], k[:, :, :3], v[:, :, :3], key_padding_mask=blocked), (q, k, v))),
        m("AttentionHead", lambda r: L.AttentionHead(8, 4, rngs=r), lambda mod: mod(x)),
        m("MultiHeadAttention (self, key padding)", lambda r: L.MultiHeadAttention(8, 2, rngs=r),
          lambda mod: mod(x, key_padding_mask=padding)),
        m("MultiHeadAttention (cross)", lambda r: L.MultiHeadAttention(8, 2, rngs=r),
          lambda mod: mod(x, kv)),
        m("FeedForward", lambda r: L.FeedForward(8, 16, rngs=r), lambda mod: mod(x)),
        m("FeedForward (swiglu)", lambda r: L.FeedForward(8, 16, activation="swiglu", rngs=r),
          lambda mod: mod(x)),
        m("TransformerEncoderLayer (pre-LN, gelu, padding)",
          lambda r: L.TransformerEncoderLayer(8, 2, 16, rngs=r),
          lambda mod: mod(x, key_padding_mask=padding)),
        m("TransformerEncoderLayer (post-LN, relu, causal)",
          lambda r: L.TransformerEncoderLayer(8, 2, 16, activation="relu", norm_first=False,
                                              rngs=r),
          lambda mod: mod(x, is_causal=True)),
        m("TransformerEncoderLayer (rmsnorm, swiglu)",
          lambda r: L.TransformerEncoderLayer(8, 2, 16, activation="swiglu", norm="rmsnorm",
                                              rngs=r),
          lambda mod: mod(x, key_padding_mask=padding)),
        m("TransformerEncoder (2 layers, padding)",
          lambda r: L.TransformerEncoder(2, 8, 2, 16, final_norm=True, rngs=r),
          lambda mod: mod(x, key_padding_mask=padding)),
        m("TransformerClassifier (mean over non-padding)",
          lambda r: L.TransformerClassifier(10, 3, 8, 2, 16, 1, 5, rngs=r),
          lambda mod: mod(ids, key_padding_mask=padding)),
        m("MLMHead (tied to an Embedding)", _tied_mlm, lambda mod: mod(ids)),
    ] + declared_layer_cases()


def _tied_mlm(rngs: Any) -> Any:
    """Embedding -> MLMHead tied to it: gradients reach the table by two paths."""
    class TiedMLM(nnx.Module):
        def __init__(self, rngs):
            self.embedding = L.Embedding(10, 8, rngs=rngs)
            self.head = L.MLMHead(8, 10, embedding=self.embedding, rngs=rngs)

        def __call__(self, ids):
            return self.head(self.embedding(ids))

    return TiedMLM(rngs)
