"""Parity cases: how an op declares the inputs it is checked on.

A `Case` is a label and ``make(draw) -> Call``: it draws shapes, dims and values through a `Draw`
and returns the op's arguments. The same case runs in ``funcdl check`` (a seeded `RandomDraw`),
in the hypothesis tests (a draw backed by ``st.data()``), against ``jax.grad`` (eager and jitted)
and against PyTorch. Conventions of a `Call`:

* float arrays, positional or keyword (also inside lists, as for ``cat``), are differentiated;
  wrap one in `const` to keep it constant (a target, a probability table);
* everything else (integer or boolean arrays, Python numbers, shapes, keys, dtypes) is passed as
  it is, and converted to torch tensors for the PyTorch call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

KINDS = ("normal", "pos", "away")


@dataclasses.dataclass(frozen=True)
class Const:
    """A float array that the checks keep constant (not differentiated)."""

    value: Any


def const(x: Any) -> Const:
    return Const(x)


@dataclasses.dataclass(frozen=True)
class Call:
    """The arguments of one call of an op."""

    args: tuple
    kwargs: dict


def call(*args: Any, **kwargs: Any) -> Call:
    return Call(args, kwargs)


@dataclasses.dataclass(frozen=True)
class Case:
    """One family of inputs for an op. ``rtol``/``atol`` bound its difference to torch (values
    and gradients); ``torch_no_grad`` names keyword arguments torch cannot differentiate (their
    gradients are checked against jax.grad only)."""

    label: str
    make: Callable[[Draw], Call]
    rtol: float = 1e-5
    atol: float = 1e-6
    torch_no_grad: tuple[str, ...] = ()


class Draw(Protocol):
    """Where a case's choices come from: a seeded generator, or hypothesis."""

    def integer(self, lo: int, hi: int, label: str = "") -> int: ...

    def choice(self, options: Sequence[Any], label: str = "") -> Any: ...

    def seed(self, label: str = "") -> int: ...


def values(rng: np.random.Generator, shape: tuple[int, ...], kind: str) -> np.ndarray:
    """float32 values of a ``kind``: normal; pos (>= 0.5, for log and sqrt); away (|x| >= 0.2,
    away from the kinks of relu and abs)."""
    x = rng.normal(size=shape)
    if kind == "pos":
        x = np.abs(x) + 0.5
    elif kind == "away":
        x = np.sign(x + (x == 0)) * (np.abs(x) + 0.2)
    elif kind != "normal":
        raise ValueError(f"unknown kind {kind!r}; valid kinds are {', '.join(KINDS)}")
    return np.asarray(x, np.float32)  # an array even for shape () (numpy gives a scalar there)


class RandomDraw:
    """Choices from a seeded numpy generator (``funcdl check`` and deterministic tests)."""

    def __init__(self, seed: int = 0):
        self._rng = np.random.default_rng(seed)

    def integer(self, lo: int, hi: int, label: str = "") -> int:
        return int(self._rng.integers(lo, hi + 1))

    def choice(self, options: Sequence[Any], label: str = "") -> Any:
        return options[int(self._rng.integers(len(options)))]

    def seed(self, label: str = "") -> int:
        return int(self._rng.integers(2**16))


# --------------------------------------------------------------------------- drawing helpers


def array(draw: Draw, shape: Sequence[int], kind: str = "normal") -> np.ndarray:
    """A float32 array of ``shape`` (values from a drawn seed, so hypothesis shrinks shapes)."""
    return values(np.random.default_rng(draw.seed("values")), tuple(shape), kind)


def boolean(draw: Draw, label: str = "") -> bool:
    return bool(draw.choice([False, True], label))


def shape(draw: Draw, min_dims: int = 0, max_dims: int = 3, min_side: int = 1) -> tuple:
    """Sides of 1 and 3 only: few distinct shapes keep JAX's per-shape compilations cached."""
    ndim = draw.integer(min_dims, max_dims, "ndim")
    sides = [3] if min_side > 1 else [1, 3]
    return tuple(draw.choice(sides, "side") for _ in range(ndim))


def two_shapes(draw: Draw) -> tuple[tuple, tuple]:
    """Two shapes that broadcast together: b drops leading dims of a and sets some sides to 1."""
    a = shape(draw)
    drop = draw.integer(0, len(a), "dropped dims")
    b = tuple(1 if boolean(draw, "ones") else n for n in a[drop:])
    return (a, b) if boolean(draw, "swap") else (b, a)


def dim(draw: Draw, ndim: int) -> int:
    """A valid dim of an ``ndim``-d array, negative ones included."""
    n = max(ndim, 1)
    return draw.integer(-n, n - 1, "dim")


def dims(draw: Draw, ndim: int) -> Any:
    """None, an int or a tuple of distinct dims (negative allowed)."""
    if ndim == 0:
        return draw.choice([None, 0, -1], "dim")
    kind = draw.choice(["none", "int", "tuple"], "dim kind")
    if kind == "none":
        return None
    if kind == "int":
        return dim(draw, ndim)
    count = draw.integer(1, ndim, "dims")
    chosen = list(range(ndim))
    picked = [chosen.pop(draw.integer(0, len(chosen) - 1, "dim")) for _ in range(count)]
    return tuple(d - ndim if boolean(draw, "negative") else d for d in picked)


# --------------------------------------------------------------------------- common cases


def unary(kind: str = "normal", label: str = "", **kwargs: Any) -> Case:
    """``op(x, **kwargs)`` on any shape up to 3-D."""
    return Case(label or kind, lambda d: call(array(d, shape(d), kind), **kwargs))


def binary(kind_a: str = "normal", kind_b: str = "normal") -> Case:
    """``op(a, b)`` on two shapes that broadcast together."""

    def make(d: Draw) -> Call:
        sa, sb = two_shapes(d)
        return call(array(d, sa, kind_a), array(d, sb, kind_b))

    return Case("broadcast", make)


def along_dim(**kwargs: Any) -> Case:
    """``op(x, dim)`` over one dim."""

    def make(d: Draw) -> Call:
        s = shape(d)
        return call(array(d, s), dim(d, len(s)), **kwargs)

    return Case("one dim", make)


def reduction(min_side: int = 1, **kwargs: Any) -> Case:
    """``op(x, dim, keepdim=..., **kwargs)`` with dim None, an int or a tuple; a list in ``kwargs``
    is a choice (``correction=[0, 1]``)."""

    def make(d: Draw) -> Call:
        s = shape(d, 1 if min_side > 1 else 0, min_side=min_side)
        return call(array(d, s), dims(d, len(s)), keepdim=boolean(d, "keepdim"),
                    **{k: (d.choice(v, k) if isinstance(v, list) else v)
                       for k, v in kwargs.items()})

    return Case("dims, keepdim", make)


def fixed(label: str, *shapes: Any, kinds: Sequence[str] = (), **kwargs: Any) -> Case:
    """``op`` on float arrays of fixed ``shapes`` (of ``kinds``, normal by default)."""

    def make(d: Draw) -> Call:
        kinds_ = list(kinds) + ["normal"] * (len(shapes) - len(kinds))
        return call(*(array(d, s, k) for s, k in zip(shapes, kinds_)), **kwargs)

    return Case(label, make)
