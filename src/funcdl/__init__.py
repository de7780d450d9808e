"""funcdl: a PyTorch course's machinery rebuilt as pure, jittable JAX.

Floors, bottom up: ``ops`` (strided tensors and reductions) <- ``tape`` (closure autodiff and the
differentiable functions) <- ``layers`` (Flax NNX modules) <- ``optim`` / ``train``; ``data`` stands
beside them. Sub-packages are imported lazily so ``import funcdl`` stays cheap.

``funcdl.cpu_devices(n)``, called first, sets JAX's CPU backend up for training: ``n`` devices for
data-parallel steps (``fit(..., mesh="auto")``) and, on request, XLA's per-step buffers reused
instead of mapped afresh every step.
"""

import importlib

__version__ = "0.1.0"
_SUBPACKAGES = ("ops", "tape", "layers", "optim", "train", "data")
__all__ = [*_SUBPACKAGES, "cpu_devices"]


def cpu_devices(n: int | None = None, *, reuse_memory: bool = False) -> int:
    """Set JAX's CPU backend up for training before it starts: ``n`` CPU devices (default: one
    per core) and, with ``reuse_memory=True``, programs run on the calling thread with memory
    malloc keeps for reuse (jitted training steps faster, op-by-op code slower).
    See ``funcdl.devices.cpu_devices``."""
    from funcdl.devices import cpu_devices as set_up

    return set_up(n, reuse_memory=reuse_memory)


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"funcdl.{name}")
    raise AttributeError(f"module 'funcdl' has no attribute {name!r}")
