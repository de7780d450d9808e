"""The op registry: each differentiable function is declared once, beside its rules.

    @op(unary(), torch="torch.tanh", method=True)
    def tanh(x): ...

records everything the rest of funcdl derives from the function: its public name
(``funcdl.tape.tanh``, in ``__all__``), its Tensor method (``t.tanh()``) and operators (``a + b``),
its PyTorch counterpart (forward values compared with torch), and its parity cases (`funcdl check`,
the gradient tests against ``jax.grad``, eager and jitted). An op without cases, or without a torch
counterpart and no reason for having none, cannot be declared.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

from funcdl.tape.cases import Case


@dataclasses.dataclass(frozen=True)
class Op:
    """One declared differentiable function."""

    name: str
    fn: Callable
    family: str  # the module it lives in, e.g. "activations"
    cases: tuple[Case, ...]
    torch: str | Callable | None  # "torch.tanh", or a function taking torch tensors
    no_torch: str | None  # why there is no torch counterpart
    method: bool | Callable  # True: Tensor.<name>; a callable: that method (e.g. varargs)
    operators: tuple[str, ...]  # Tensor dunders; "__rX__" ones call fn(other, self)
    aliases: tuple[str, ...]  # other public names (and methods) of the same function

    def torch_fn(self) -> Callable | None:
        """The torch function to compare forward values with (imports torch)."""
        if self.torch is None or callable(self.torch):
            return self.torch
        module, _, attr = self.torch.rpartition(".")
        if module == "torch.Tensor":
            return getattr(importlib.import_module("torch").Tensor, attr)
        return getattr(importlib.import_module(module), attr)


OPS: dict[str, Op] = {}


def op(*cases: Case, torch: str | Callable | None = None, no_torch: str | None = None,
       method: bool | Callable = False, operators: tuple[str, ...] = (),
       aliases: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """Declare the decorated function a public differentiable op (see the module docstring)."""
    if not cases or not all(isinstance(c, Case) for c in cases):
        raise TypeError("an op declares at least one parity Case (funcdl.tape.cases)")
    if (torch is None) == (no_torch is None):
        raise TypeError("an op names its torch counterpart (torch=...) or says why it has none "
                        "(no_torch=...), not both")

    def declare(fn: Callable) -> Callable:
        names = (fn.__name__, *aliases)
        taken = [n for n in names if n in OPS or n in public()]
        if taken:
            raise ValueError(f"op name(s) {taken} already declared")
        OPS[fn.__name__] = Op(fn.__name__, fn, fn.__module__.rpartition(".")[2], tuple(cases),
                              torch, no_torch, method, tuple(operators), tuple(aliases))
        return fn

    return declare


def public() -> dict[str, Callable]:
    """Every public name of a declared op (aliases included) -> its function."""
    return {name: o.fn for o in OPS.values() for name in (o.name, *o.aliases)}


def tensor_methods() -> dict[str, Callable]:
    """Tensor attribute name -> function, for every op method, alias method and operator."""
    out: dict[str, Callable] = {}
    for o in OPS.values():
        if o.method:
            method = o.method if callable(o.method) else o.fn
            out.update({name: method for name in (o.name, *o.aliases)})
        for dunder in o.operators:
            out[dunder] = _reflected(o.fn) if dunder.startswith("__r") else o.fn
    return out


def _reflected(fn: Callable) -> Callable:
    def method(self: Any, other: Any) -> Any:
        return fn(other, self)

    return method
