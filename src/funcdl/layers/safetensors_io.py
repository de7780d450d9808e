"""Any funcdl module to and from a ``.safetensors`` file, under PyTorch's key names and layouts,
so that ``torch_module.load_state_dict(safetensors.torch.load_file(path))`` reads what
``save_safetensors`` wrote (and ``load_safetensors`` reads what ``safetensors.torch.save_file``
wrote). Needs ``safetensors`` only: neither torch nor transformers.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping

import numpy as np
from flax import nnx

from funcdl.layers.torch_io import (
    IncompatibleKeys,
    check_dtypes,
    load_torch_state_dict,
    to_torch_state_dict,
)

__all__ = ["save_safetensors", "load_safetensors", "read_safetensors"]


def save_safetensors(module: nnx.Module, path: str | os.PathLike, *,
                     metadata: Mapping[str, str] | None = None, tied: bool = True) -> None:
    """Write ``module``'s parameters to ``path`` by torch's names (``to_torch_state_dict``),
    atomically (a crash leaves the old file or the new one). ``metadata`` goes in the header
    beside ``{"format": "pt"}``; ``tied=False`` leaves out the second names of tied tensors."""
    from safetensors.numpy import save_file

    path = pathlib.Path(path)
    state = to_torch_state_dict(module, tied=tied)
    tensors = {k: np.ascontiguousarray(v) for k, v in state.items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt", **(metadata or {})})
    os.replace(tmp, path)


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of a ``.safetensors`` file as a numpy array (bfloat16 as ``ml_dtypes``')."""
    from safetensors.numpy import load_file

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no safetensors file at {path}")
    try:
        return load_file(path)
    except Exception as err:  # the library's SafetensorError and friends: say which file
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from err


def load_safetensors(module: nnx.Module, path: str | os.PathLike,
                     strict: bool = True) -> IncompatibleKeys:
    """Load a ``.safetensors`` file into ``module`` in place, as ``load_torch_state_dict`` does
    (missing, unexpected and mis-shaped keys raise RuntimeError naming them and the shapes; a
    non-floating tensor for a floating parameter raises TypeError). Nothing is written unless the
    whole file fits."""
    arrays = read_safetensors(path)
    check_dtypes(module, arrays, os.fspath(path))
    return load_torch_state_dict(module, arrays, strict=strict)
