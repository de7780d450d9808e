"""Checks on values that JAX only knows when the compiled program runs.

An op given an id of 49 for a table of 20 rows must not return a plausible number. On concrete
values ``require`` raises at once, in PyTorch's words. Under ``jax.jit`` the values are tracers and
nothing can be raised while tracing, so:

- inside ``collect()`` (``funcdl.train``'s train and eval steps open one) the condition is
  recorded; the step returns ``Checks.fault()``, an int32 ``[code, value]`` that is ``[0, 0]``
  when every check held, skips the update when it is not, and the host raises the check's error
  (``raise_fault``) at its next sync with the device;
- elsewhere (your own ``jax.jit``, or inside ``lax.scan``/``vmap`` bodies) the op makes the
  offending entries NaN (``FILL``), so a loss computed from them is NaN, never a finite wrong value.

The registry of a step's checks is an append-only list of ``Check``: a code is its 1-based index
there, valid for every trace of the step.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import get_opaque_trace_state

FILL = "fill"  # the gather mode of an unrecorded traced check: NaN (ints: their minimum) entries


@dataclasses.dataclass(frozen=True)
class Check:
    """What a failed check raises: ``error(message.format(value=...))``; ``advice`` is added
    when a training run stops on it."""

    error: type[Exception]
    message: str
    advice: str = ""

    def exception(self, value: int, where: str = "") -> Exception:
        text = self.message.format(value=value)
        if where:
            text = f"{text.rstrip('.')} {where}"
        return self.error(text.rstrip(".") + "." + (f" {self.advice}" if self.advice else ""))


class Checks:
    """The checks recorded while one step is traced (see ``collect``)."""

    def __init__(self, registry: list[Check]):
        self.registry = registry
        self.found: list[tuple[int, Any, Any]] = []
        self._trace = get_opaque_trace_state(convention="funcdl")

    def owns_trace(self) -> bool:
        """Whether the current trace is the one the collector was opened in (a check inside a
        ``scan`` or ``vmap`` body would leak its tracers out of that body)."""
        return get_opaque_trace_state(convention="funcdl") == self._trace

    def code(self, check: Check) -> int:
        if check not in self.registry:
            self.registry.append(check)
        return self.registry.index(check) + 1

    def record(self, failed: Any, value: Any, check: Check) -> None:
        self.found.append((self.code(check), failed, value))

    def fault(self) -> jax.Array:
        """int32 ``[code, value]`` of the first recorded check that failed; ``[0, 0]`` if none."""
        return first_fault([(failed, code, value) for code, failed, value in self.found])


_ACTIVE: contextvars.ContextVar[Checks | None] = contextvars.ContextVar("funcdl_checks",
                                                                          default=None)


@contextlib.contextmanager
def collect(registry: list[Check] | None = None) -> Iterator[Checks]:
    """Record the traced checks of the ops called in the block (open it inside the jitted
    function, around the forward pass); ``registry`` keeps the codes stable across traces."""
    checks = Checks([] if registry is None else registry)
    token = _ACTIVE.set(checks)
    try:
        yield checks
    finally:
        _ACTIVE.reset(token)


def first_fault(candidates: list[tuple[Any, int, Any]]) -> jax.Array:
    """int32 ``[code, value]`` of the first ``(failed, code, value)`` whose ``failed`` holds;
    ``[0, 0]`` when none does."""
    out = jnp.zeros(2, jnp.int32)
    for failed, code, value in reversed(candidates):
        pick = jnp.asarray([code, value], jnp.int32)
        out = jnp.where(jnp.asarray(failed), pick, out)
    return out


def require(failed: Any, value: Any, check: Check) -> bool:
    """Raise ``check``'s error now if ``failed`` is concrete and true; record it in the active
    collector if it is traced. Returns whether the caller must make its traced result loud
    itself (``FILL``): True when nothing recorded the check."""
    if not isinstance(failed, jax.core.Tracer):
        if bool(failed):
            raise check.exception(int(np.asarray(value)))
        return False
    checks = _ACTIVE.get()
    if checks is None or not checks.owns_trace():
        return True
    checks.record(failed, value, check)
    return False


def out_of_range(ids: Any, low: int, high: int) -> tuple[Any, Any]:
    """``(any id outside [low, high), the first such id found by max/min)``; for empty ids
    ``(False, 0)``."""
    ids = jnp.asarray(ids)
    if ids.size == 0:
        return False, 0
    lo, hi = jnp.min(ids), jnp.max(ids)
    return (lo < low) | (hi >= high), jnp.where(hi >= high, hi, lo)


def raise_fault(fault: Any, registry: list[Check], where: str = "") -> None:
    """Raise the error of a step's ``fault`` (host side); nothing when its code is 0."""
    code, value = (int(v) for v in np.asarray(jax.device_get(fault)).reshape(-1)[:2])
    if code == 0:
        return
    raise registry[code - 1].exception(value, where)


__all__ = ["FILL", "Check", "Checks", "collect", "first_fault", "out_of_range", "raise_fault",
           "require"]
