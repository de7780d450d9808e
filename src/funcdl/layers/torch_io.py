"""Load PyTorch ``state_dict``s into funcdl modules (and write them back out), by PyTorch's names.

Each layer declares its torch keys beside itself (``funcdl.layers.counterpart``): ``Linear``'s
``weight`` is its ``w`` transposed, ``TransformerEncoder``'s ``layers.N.*`` are row N of its
stacked parameters, and so on. Any other ``nnx.Module`` (a user's model) maps its children
under their attribute names (``embedding.weight``, ``blocks.0.linear1.bias``, ...).

PyTorch is never imported: values may be torch tensors (anything with ``.detach()``) or arrays.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
from flax import nnx

from funcdl.layers.counterpart import Row, Transposed, declaration

__all__ = ["load_torch_state_dict", "to_torch_state_dict", "torch_state_dict_keys",
           "IncompatibleKeys"]


class IncompatibleKeys(NamedTuple):
    """What ``torch.nn.Module.load_state_dict`` returns."""

    missing_keys: list[str]
    unexpected_keys: list[str]


@dataclasses.dataclass(frozen=True)
class _Slot:
    """Where one PyTorch tensor lives: a Variable, maybe one row of a stack, maybe transposed."""

    var: nnx.Variable
    transpose: bool = False
    index: int | None = None  # the row of a stacked parameter (a declared ``Row``)

    def torch_shape(self) -> tuple[int, ...]:
        shape = tuple(self.var.get_value().shape)
        if self.index is not None:
            shape = shape[1:]
        return shape[::-1] if self.transpose else shape

    def read(self) -> np.ndarray:
        a = np.asarray(self.var.get_value())
        if self.index is not None:
            a = a[self.index]
        return a.T if self.transpose else a


def _children(m: nnx.Module) -> dict[str, Any]:
    """An undeclared module's keys: its parameters and child modules by attribute name."""
    out = {}
    for name, child in vars(m).items():
        if isinstance(child, nnx.List):  # a Module itself, but torch numbers its items
            out |= {f"{name}.{i}": c for i, c in enumerate(child)}
        elif isinstance(child, (nnx.Param, nnx.Module)):
            out[name] = child
    return out


def _slots(m: Any, prefix: str = "", index: int | None = None) -> dict[str, _Slot]:
    """PyTorch key -> slot for every parameter of module ``m``, through its declaration."""
    if not isinstance(m, nnx.Module):
        raise TypeError(f"expected an nnx.Module, got {type(m).__name__}")
    decl = declaration(type(m))
    keys = decl.keys(m) if decl is not None and decl.keys is not None else _children(m)
    out = {}
    for key, target in keys.items():
        out |= _place(prefix + key, target, index)
    return out


def _place(key: str, target: Any, index: int | None) -> dict[str, _Slot]:
    """The slots behind one declared key (see ``counterpart`` for what a target may be)."""
    if isinstance(target, Transposed):
        return {key: _Slot(target.var, True, index)}
    if isinstance(target, nnx.Variable):
        return {key: _Slot(target, False, index)}
    if isinstance(target, Row):
        if index is not None:
            raise TypeError(f"{key}: a stacked module inside a stacked module")
        return _slots(target.module, key + ".", target.index)
    if isinstance(target, nnx.Module):
        return _slots(target, key + ".", index)
    if target is None:  # an absent optional tensor: a bias, a tied decoder
        return {}
    raise TypeError(f"{key}: a declared key maps to a {type(target).__name__}; expected a "
                    "Variable, Transposed, Row, module or None")


def torch_state_dict_keys(module: nnx.Module) -> list[str]:
    """The keys ``load_torch_state_dict`` expects for ``module``, in order."""
    return list(_slots(module))


def to_torch_state_dict(module: nnx.Module) -> dict[str, np.ndarray]:
    """``module``'s parameters under PyTorch's names and layouts (numpy arrays); load into torch
    with ``torch_module.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})``."""
    return {k: np.array(s.read()) for k, s in _slots(module).items()}


def _to_numpy(v: Any) -> np.ndarray:
    if hasattr(v, "detach"):  # a torch tensor; torch itself is never imported here
        v = v.detach().cpu()
        if str(v.dtype) == "torch.bfloat16":
            v = v.float()
        v = v.numpy()
    return np.asarray(v)


def _shape(s) -> str:
    return f"({', '.join(map(str, s))})" if len(s) != 1 else f"({s[0]},)"


def load_torch_state_dict(module: nnx.Module, state_dict: Mapping[str, Any],
                          strict: bool = True) -> IncompatibleKeys:
    """Copy a PyTorch ``state_dict`` into ``module`` in place, like ``Module.load_state_dict``.

    Weights are transposed where funcdl's layout differs (``Linear.w`` is ``[in, out]``) and cast
    to the parameter's dtype. Shape mismatches always raise; with ``strict=True`` missing and
    unexpected keys raise too (RuntimeError naming every offending key, in PyTorch's words).
    Returns ``(missing_keys, unexpected_keys)``.
    """
    slots = _slots(module)
    arrays = {k: _to_numpy(v) for k, v in state_dict.items()}
    missing = [k for k in slots if k not in arrays]
    unexpected = [k for k in arrays if k not in slots]
    errors = []
    if strict and missing:
        errors.append("Missing key(s) in state_dict: " + ", ".join(f'"{k}"' for k in missing)
                      + ". ")
    if strict and unexpected:
        errors.append("Unexpected key(s) in state_dict: "
                      + ", ".join(f'"{k}"' for k in unexpected) + ". ")
    for k, s in slots.items():
        if k in arrays and tuple(arrays[k].shape) != s.torch_shape():
            errors.append(
                f"size mismatch for {k}: copying a param with shape {_shape(arrays[k].shape)} "
                f"from checkpoint, the shape in current model is {_shape(s.torch_shape())}.")
    if errors:
        raise RuntimeError(f"Error(s) in loading state_dict for {type(module).__name__}:\n\t"
                           + "\n\t".join(errors))

    # Group by Variable: a stacked parameter receives one row per layer, then is set once.
    pending: dict[int, tuple[nnx.Variable, np.ndarray]] = {}
    for k, s in slots.items():
        if k not in arrays:
            continue
        var = s.var
        current = pending.get(id(var), (var, np.array(var.get_value())))[1]
        a = arrays[k].T if s.transpose else arrays[k]
        if s.index is None:
            current = a.astype(current.dtype)
        else:
            current[s.index] = a
        pending[id(var)] = (var, current)
    for var, new in pending.values():
        var.set_value(jnp.asarray(new, dtype=var.get_value().dtype))
    return IncompatibleKeys(missing, unexpected)
