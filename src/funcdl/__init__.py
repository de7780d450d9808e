"""funcdl: a PyTorch course's machinery rebuilt as pure, jittable JAX.

Floors, bottom up: ``ops`` (strided tensors and reductions) <- ``tape`` (closure autodiff and the
differentiable functions) <- ``layers`` (Flax NNX modules) <- ``optim`` / ``train``; ``data`` stands
beside them. Sub-packages are imported lazily so ``import funcdl`` stays cheap.
"""

import importlib

__version__ = "0.1.0"
__all__ = ["ops", "tape", "layers", "optim", "train", "data"]


def __getattr__(name: str):
    if name in __all__:
        return importlib.import_module(f"funcdl.{name}")
    raise AttributeError(f"module 'funcdl' has no attribute {name!r}")
