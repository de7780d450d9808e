"""Load PyTorch ``state_dict``s into funcdl modules (and write them back out), by PyTorch's names;
build the funcdl module of a live torch module (``from_torch``) and back (``to_torch``).

Each layer declares its torch keys beside itself (``funcdl.layers.counterpart``): ``Linear``'s
``weight`` is its ``w`` transposed, ``TransformerEncoder``'s ``layers.N.*`` are row N of its
stacked parameters, and so on. Any other ``nnx.Module`` (a user's model) maps its children
under their attribute names (``embedding.weight``, ``blocks.0.linear1.bias``, ...).

PyTorch is never imported at module level: values may be torch tensors (anything with
``.detach()``) or arrays.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
from flax import nnx

from funcdl.layers.counterpart import (
    Build,
    Part,
    Row,
    Tied,
    Transposed,
    UnsupportedModuleError,
    declaration,
    declared_layers,
)

__all__ = ["load_torch_state_dict", "to_torch_state_dict", "torch_state_dict_keys",
           "IncompatibleKeys", "check_dtypes", "from_torch", "to_torch", "UnsupportedModuleError"]


class IncompatibleKeys(NamedTuple):
    """What ``torch.nn.Module.load_state_dict`` returns."""

    missing_keys: list[str]
    unexpected_keys: list[str]


@dataclasses.dataclass(frozen=True)
class _Slot:
    """Where one PyTorch tensor lives: a Variable, maybe one row of a stack, maybe some columns,
    maybe transposed; ``tied`` when another key names the same tensor."""

    var: nnx.Variable
    transpose: bool = False
    index: int | None = None  # the row of a stacked parameter (a declared ``Row``)
    cols: tuple[int, int] | None = None  # columns of the last axis (a declared ``Part``)
    tied: bool = False

    def place(self) -> tuple[int, int | None, tuple[int, int] | None]:
        """What two keys naming the same tensor share."""
        return id(self.var), self.index, self.cols

    def torch_shape(self) -> tuple[int, ...]:
        shape = tuple(self.var.get_value().shape)
        if self.index is not None:
            shape = shape[1:]
        if self.cols is not None:
            shape = shape[:-1] + (self.cols[1] - self.cols[0],)
        return shape[::-1] if self.transpose else shape

    def read(self) -> np.ndarray:
        a = np.asarray(self.var.get_value())
        if self.index is not None:
            a = a[self.index]
        if self.cols is not None:
            a = a[..., self.cols[0]:self.cols[1]]
        return a.T if self.transpose else a

    def write(self, into: np.ndarray, a: np.ndarray) -> None:
        """Write torch's array ``a`` into ``into`` (a copy of the whole Variable's value)."""
        view = into if self.index is None else into[self.index]
        # `...` alone also indexes a 0-d Variable (BatchNorm's num_batches_tracked)
        view[(..., slice(*self.cols)) if self.cols is not None else ...] = (
            a.T if self.transpose else a)


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
    return _mapping(keys, prefix, index)


def _mapping(keys: Mapping[str, Any], prefix: str, index: int | None) -> dict[str, _Slot]:
    out: dict[str, _Slot] = {}
    for key, target in keys.items():
        out |= _place(prefix + key, target, index)
    return out


def _place(key: str, target: Any, index: int | None, tied: bool = False) -> dict[str, _Slot]:
    """The slots behind one declared key (see ``counterpart`` for what a target may be)."""
    prefix = key + "." if key and not key.endswith(".") else key
    if isinstance(target, Tied):
        return _place(key, target.target, index, tied=True)
    transpose = isinstance(target, Transposed)
    var = target.var if transpose else target
    if isinstance(var, Part):
        return {key: _Slot(var.var, transpose, index, (var.start, var.stop), tied)}
    if isinstance(var, nnx.Variable):
        return {key: _Slot(var, transpose, index, None, tied)}
    if tied:
        raise TypeError(f"{key}: Tied takes a Variable, Transposed or Part, not a "
                        f"{type(target).__name__}")
    if isinstance(target, Row):
        if index is not None:
            raise TypeError(f"{key}: a stacked module inside a stacked module")
        if isinstance(target.module, Mapping):
            return _mapping(target.module, prefix, target.index)
        return _slots(target.module, prefix, target.index)
    if isinstance(target, nnx.Module):
        return _slots(target, prefix, index)
    if isinstance(target, Mapping):
        return _mapping(target, prefix, index)
    if target is None:  # an absent optional tensor: a bias, a tied decoder
        return {}
    raise TypeError(f"{key}: a declared key maps to a {type(target).__name__}; expected a "
                    "Variable, Transposed, Part, Row, Tied, module, mapping or None")


def torch_state_dict_keys(module: nnx.Module) -> list[str]:
    """The keys ``load_torch_state_dict`` expects for ``module``, in order."""
    return list(_slots(module))


def to_torch_state_dict(module: nnx.Module, *, tied: bool = True) -> dict[str, np.ndarray]:
    """``module``'s parameters under PyTorch's names and layouts (numpy arrays); load into torch
    with ``torch_module.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})``.
    ``tied=False`` leaves out the second names of tied tensors (as transformers' files do)."""
    return {k: np.array(s.read()) for k, s in _slots(module).items() if tied or not s.tied}


def check_dtypes(module: nnx.Module, arrays: Mapping[str, Any], source: str) -> None:
    """Raise TypeError naming every key whose array is not floating where ``module``'s parameter
    is (floating dtypes are cast to the parameter's, as torch's ``load_state_dict`` does)."""
    bad = []
    for k, s in _slots(module).items():
        if k in arrays and jnp.issubdtype(s.var.get_value().dtype, jnp.floating):
            dtype = np.asarray(arrays[k]).dtype
            if not jnp.issubdtype(dtype, jnp.floating):
                bad.append(f"{k}: expected a floating tensor for the "
                           f"{s.var.get_value().dtype} parameter of shape "
                           f"{_shape(s.torch_shape())}, got {dtype} of shape "
                           f"{_shape(np.shape(arrays[k]))}")
    if bad:
        raise TypeError(f"dtype mismatch in {source}:\n\t" + "\n\t".join(bad))


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
    Nothing is written unless everything checks. Returns ``(missing_keys, unexpected_keys)``.

    A state dict holds weights, not the configuration: a torch ``nn.TransformerEncoderLayer``
    with torch's defaults (post-LN, relu) loads without complaint into a funcdl layer built with
    funcdl's (pre-LN, gelu) and computes something else. To port a live torch module use
    ``from_torch(torch_module)``, which reads its configuration and builds the matching module.
    """
    slots = _slots(module)
    arrays = {k: _to_numpy(v) for k, v in state_dict.items()}
    missing = [k for k, s in slots.items() if k not in arrays and not s.tied]
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
    primary = {s.place(): k for k, s in slots.items() if not s.tied and k in arrays}
    for k, s in slots.items():
        first = primary.get(s.place())
        if (s.tied and k in arrays and first is not None and not errors
                and not np.array_equal(arrays[k], arrays[first])):
            errors.append(f"{k} is tied to {first} (one tensor) but the two hold different "
                          "values.")
    if errors:
        raise RuntimeError(f"Error(s) in loading state_dict for {type(module).__name__}:\n\t"
                           + "\n\t".join(errors))

    # Group by Variable: a stacked or fused parameter receives its pieces, then is set once.
    pending: dict[int, tuple[nnx.Variable, np.ndarray]] = {}
    for k, s in slots.items():
        if k not in arrays or (s.tied and s.place() in primary):
            continue
        current = pending.get(id(s.var), (s.var, np.array(s.var.get_value())))[1]
        s.write(current, arrays[k])
        pending[id(s.var)] = (s.var, current)
    for var, new in pending.values():
        var.set_value(jnp.asarray(new, dtype=var.get_value().dtype))
    return IncompatibleKeys(missing, unexpected)


# --------------------------------------------------------------------------- from_torch / to_torch


def _torch_class(dotted: str) -> type | None:
    module, _, name = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def _builders() -> dict[type, type]:
    """torch class -> the funcdl class whose declaration reads it (``from_torch=``)."""
    out = {}
    for cls in declared_layers():
        decl = declaration(cls, inherit=False)
        if decl.from_torch is not None and (t := _torch_class(decl.torch)) is not None:
            out[t] = cls
    return out


def _supported() -> str:
    return ", ".join(sorted({declaration(c, inherit=False).torch.removeprefix("torch.nn.")
                             for c in _builders().values()}))


def _build_funcdl(t: Any, build: Build) -> nnx.Module:
    """The funcdl module of torch module ``t``'s configuration (weights not yet copied)."""
    builders = _builders()
    name = f"{type(t).__module__}.{type(t).__qualname__}"
    for base in type(t).__mro__:
        cls = builders.get(base)
        if cls is None:
            continue
        if base is not type(t) and not type(t).__module__.startswith("torch."):
            # a user's subclass may compute something else in forward()
            raise UnsupportedModuleError(
                f"from_torch: {name} subclasses {base.__module__}.{base.__qualname__} and may "
                "override its forward(); convert the plain torch class or declare a funcdl "
                "counterpart for it (funcdl.layers.counterpart.torch_layer(from_torch=...))")
        return declaration(cls, inherit=False).from_torch(t, build)
    raise UnsupportedModuleError(
        f"from_torch: {name} is not supported (supported: {_supported()}; Hugging Face models "
        "go through from_transformers)")


def from_torch(torch_module: Any, *, rngs: nnx.Rngs | None = None) -> nnx.Module:
    """The funcdl module equivalent to a live torch module, with its weights.

    Reads the configuration (sizes, ``norm_first``, activation, eps, dropout rates, bias,
    ``batch_first``: a sequence-first torch module comes back wrapped in ``SequenceFirst``) from
    the module itself, builds the funcdl layer through each layer's declaration, copies the
    weights (float32 only: call ``.float()`` first) and takes over train/eval mode. ``rngs``
    seeds the new module's dropout streams (default ``nnx.Rngs(0)``). A transformers model is
    handed to ``from_transformers``. An unsupported module, or a configuration funcdl cannot
    compute, raises ``UnsupportedModuleError`` naming it.
    """
    if type(torch_module).__module__.startswith("transformers."):
        from funcdl.layers.transformers_io import from_transformers

        return from_transformers(torch_module)
    import torch

    if not isinstance(torch_module, torch.nn.Module):
        raise TypeError(f"from_torch expects a torch.nn.Module, got {type(torch_module).__name__}")
    state = torch_module.state_dict()
    for key, v in state.items():
        if v.is_floating_point() and v.dtype != torch.float32:
            raise UnsupportedModuleError(
                f"from_torch: {key} is {v.dtype}; funcdl builds float32 layers: convert the "
                "module with .float() first")
    rngs = nnx.Rngs(0) if rngs is None else rngs
    build = Build(lambda child: _build_funcdl(child, build), torch, rngs)
    module = _build_funcdl(torch_module, build)
    load_torch_state_dict(module, state, strict=True)
    if not torch_module.training:
        module.eval()
    return module


def _build_torch(m: Any, build: Build) -> Any:
    decl = declaration(type(m)) if isinstance(m, nnx.Module) else None
    if decl is None or decl.to_torch is None:
        raise UnsupportedModuleError(
            f"to_torch: {type(m).__name__} has no torch counterpart declared (to_torch=...)")
    return decl.to_torch(m, build)


def to_torch(module: nnx.Module) -> Any:
    """The torch module equivalent to a funcdl module, with its weights (the reverse of
    ``from_torch``; a ``Bert`` gives the transformers model). The mode carries over: a funcdl
    module in ``eval()`` (every ``deterministic`` / ``use_running_average`` flag set) gives a
    torch module in eval mode; one without such flags, torch's default (training)."""
    import torch

    build = Build(lambda child: _build_torch(child, build), torch)
    tm = _build_torch(module, build)
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in to_torch_state_dict(module).items()},
                       strict=True)
    modes = [getattr(m, a) for _, m in nnx.iter_modules(module)
             for a in ("deterministic", "use_running_average") if hasattr(m, a)]
    if modes and all(modes):
        tm.eval()
    return tm
