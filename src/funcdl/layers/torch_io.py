"""Load PyTorch ``state_dict``s into funcdl modules (and write them back out), by PyTorch's names.

Each module maps to the keys its ``torch.nn`` counterpart uses:

==========================  ============================================================
funcdl                      PyTorch keys (layout)
==========================  ============================================================
Linear                      ``weight`` [out, in] (transposed into ``w`` [in, out]), ``bias``
Embedding                   ``weight`` (nn.Embedding)
PositionalEmbedding         ``weight`` (an nn.Embedding(max_len, D)); none when sinusoidal
LayerNorm                   ``weight``, ``bias`` (nn.LayerNorm)
MultiHeadAttention          ``in_proj_weight`` [3D, D], ``in_proj_bias``, ``out_proj.weight/bias``
TransformerEncoderLayer     ``self_attn.*``, ``linear1.*``, ``linear2.*``, ``norm1.*``, ``norm2.*``
TransformerEncoder          ``layers.N.*`` (rows of the stacked parameters), ``norm.*`` if final
MLP                         ``0.*``, ``2.*``, ... (an nn.Sequential of Linear and activation)
MLMHead                     ``dense.*``, ``norm.*``, ``decoder.weight/bias`` (tied: ``bias``)
any other nnx.Module        its children under their attribute names (``embedding.weight``, ...)
==========================  ============================================================

PyTorch is never imported: values may be torch tensors (anything with ``.detach()``) or arrays.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
from flax import nnx

from funcdl.layers.attention import MultiHeadAttention
from funcdl.layers.basic import MLP, Dropout, Embedding, LayerNorm, Linear, PositionalEmbedding
from funcdl.layers.transformer import MLMHead, TransformerEncoder, TransformerEncoderLayer

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
    index: int | None = None  # layer row of a TransformerEncoder's stacked parameter

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


def _slots(m: Any, prefix: str = "", index: int | None = None) -> dict[str, _Slot]:
    """PyTorch key -> slot for every parameter of ``m``."""

    def slot(var, transpose=False):
        return _Slot(var, transpose, index)

    def sub(child, name):
        return _slots(child, prefix + name, index)

    if isinstance(m, Linear):
        out = {prefix + "weight": slot(m.w, transpose=True)}
        if m.b is not None:
            out[prefix + "bias"] = slot(m.b)
        return out
    if isinstance(m, (Embedding, LayerNorm, PositionalEmbedding)):
        out = {}
        if getattr(m, "weight", None) is not None:
            out[prefix + "weight"] = slot(m.weight)
        if getattr(m, "bias", None) is not None:
            out[prefix + "bias"] = slot(m.bias)
        return out
    if isinstance(m, Dropout):
        return {}
    if isinstance(m, MultiHeadAttention):
        out = {prefix + "in_proj_weight": slot(m.in_proj.w, transpose=True)}
        if m.in_proj.b is not None:
            out[prefix + "in_proj_bias"] = slot(m.in_proj.b)
        return out | sub(m.out_proj, "out_proj.")
    if isinstance(m, TransformerEncoderLayer):
        return (sub(m.attention, "self_attn.") | sub(m.feed_forward.linear1, "linear1.")
                | sub(m.feed_forward.linear2, "linear2.") | sub(m.norm1, "norm1.")
                | sub(m.norm2, "norm2."))
    if isinstance(m, TransformerEncoder):
        if index is not None:
            raise TypeError("a TransformerEncoder inside a stacked TransformerEncoder")
        out = {}
        for i in range(m.num_layers):
            out |= _slots(m.layers, f"{prefix}layers.{i}.", i)
        if m.norm is not None:
            out |= sub(m.norm, "norm.")
        return out
    if isinstance(m, MLP):
        out = {}
        for i, layer in enumerate(m.layers):
            out |= sub(layer, f"{2 * i}.")  # nn.Sequential(Linear, act, Linear, act, ..., Linear)
        return out
    if isinstance(m, MLMHead):
        out = sub(m.dense, "dense.") | sub(m.norm, "norm.")
        if m.decoder is not None:
            return out | sub(m.decoder, "decoder.")
        return out | {prefix + "decoder.bias": slot(m.bias)}  # weight: the tied embedding's
    if isinstance(m, nnx.Module):
        out = {}
        for name, child in vars(m).items():
            if isinstance(child, nnx.Param):
                out[prefix + name] = slot(child)
            elif isinstance(child, nnx.List):
                for i, c in enumerate(child):
                    out |= sub(c, f"{name}.{i}.")
            elif isinstance(child, nnx.Module):
                out |= sub(child, name + ".")
        return out
    return {}


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
