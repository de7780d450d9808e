"""Recurrent layers at parity with ``torch.nn``: ``RNN``, ``LSTM``, ``GRU`` and their cells.

torch's maths, gate orders (LSTM i, f, g, o; GRU r, z, n), state-dict keys (``weight_ih_l{k}``,
``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}``, ``weight_hr_l{k}``, ``_reverse`` for the
backward direction) and default init (every tensor uniform in ``±1/sqrt(hidden_size)``); weights
are stored transposed (``x @ w``), as ``Linear``'s. Batch-first ``(B, T, F)`` by default.

Each direction of each layer is one `funcdl.tape.scan` over time, after one matmul that projects
every frame's input at once; both engines differentiate it, and the compiled program does not
grow with the sequence length. ``lengths=`` gives ``pack_padded_sequence(...,
enforce_sorted=False)``'s semantics without packing: outputs past a sequence's length are zero,
``h_n`` is its state at its last frame, and the reverse direction starts at that frame.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from funcdl import tape as F
from funcdl.layers.basic import Dropout, _uniform, check_positive, value
from funcdl.layers.counterpart import Build, Example, Transposed, sample, torch_layer
from funcdl.layers.module import Module
from funcdl.tape.tensor import constant

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"]

_GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}


class _Weights(Module):
    """One cell's parameters (one layer and direction of an RNN), stored transposed."""

    def __init__(self, input_size: int, hidden_size: int, gates: int, *, bias: bool,
                 proj_size: int, dtype: Any, rngs: nnx.Rngs):
        bound = 1.0 / math.sqrt(hidden_size)

        def param(*shape: int) -> nnx.Param:
            return nnx.Param(_uniform(rngs.params(), shape, bound, dtype))

        self.w_ih = param(input_size, gates * hidden_size)
        self.w_hh = param(proj_size or hidden_size, gates * hidden_size)
        self.b_ih = param(gates * hidden_size) if bias else None
        self.b_hh = param(gates * hidden_size) if bias else None
        self.w_hr = param(hidden_size, proj_size) if proj_size else None

    def named(self, suffix: str = "") -> dict:
        """torch key -> Variable, for keys ending in ``suffix``."""
        out = {f"weight_ih{suffix}": Transposed(self.w_ih),
               f"weight_hh{suffix}": Transposed(self.w_hh),
               f"bias_ih{suffix}": self.b_ih, f"bias_hh{suffix}": self.b_hh}
        if self.w_hr is not None:
            out[f"weight_hr{suffix}"] = Transposed(self.w_hr)
        return out

    def input_gates(self, x: Any, mode: str) -> Any:
        """x @ w_ih + b_ih (and b_hh, except for GRU, whose b_hn stays inside r * (...))."""
        lead = tuple(x.shape[:-1])
        g = F.matmul(F.reshape(x, (-1, x.shape[-1])) if len(lead) > 1 else x, value(self.w_ih))
        if self.b_ih is not None:
            bias = value(self.b_ih)
            g = F.add(g, bias if mode == "GRU" else F.add(bias, value(self.b_hh)))
        return F.reshape(g, lead + (g.shape[-1],)) if len(lead) > 1 else g

    def recurrent(self) -> tuple[Any, Any, Any]:
        """(w_hh, b_hh, w_hr) values (None where absent)."""
        return tuple(None if v is None else value(v) for v in (self.w_hh, self.b_hh, self.w_hr))


def _step(mode: str, gx: Any, h: Any, c: Any, w_hh: Any, b_hh: Any, w_hr: Any
          ) -> tuple[Any, Any]:
    """One time step from the input gates ``gx``: the new (h, c) (c None but for LSTM). With a
    leading direction axis on everything, both directions of a layer step at once."""
    gh = F.matmul(h, w_hh)
    if mode == "GRU":
        if b_hh is not None:
            gh = F.add(gh, b_hh)
        n_hidden = gh.shape[-1] // 3
        rx, zx, nx = F.split(gx, n_hidden, -1)
        rh, zh, nh = F.split(gh, n_hidden, -1)
        r, z = F.sigmoid(F.add(rx, rh)), F.sigmoid(F.add(zx, zh))
        n = F.tanh(F.add(nx, F.mul(r, nh)))
        return F.add(F.mul(F.sub(1.0, z), n), F.mul(z, h)), None
    pre = F.add(gx, gh)
    if mode != "LSTM":
        return (F.tanh(pre) if mode == "RNN_TANH" else F.relu(pre)), None
    i, f, g, o = F.split(pre, pre.shape[-1] // 4, -1)
    c = F.add(F.mul(F.sigmoid(f), c), F.mul(F.sigmoid(i), F.tanh(g)))
    h = F.mul(F.sigmoid(o), F.tanh(c))
    return (h if w_hr is None else F.matmul(h, w_hr)), c


# --------------------------------------------------------------------------- RNN, LSTM, GRU


def _check_config(mode: str, hidden_size: int, num_layers: int, dropout: float,
                  proj_size: int) -> None:
    """torch's constructor errors (and its warning for dropout on a single layer)."""
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or \
            not 0 <= dropout <= 1:
        raise ValueError("dropout should be a number in range [0, 1] representing the "
                         "probability of an element being zeroed")
    if dropout > 0 and num_layers == 1:
        warnings.warn("dropout option adds dropout after all but last recurrent layer, so "
                      "non-zero dropout expects num_layers greater than 1, but got "
                      f"dropout={dropout} and num_layers={num_layers}", UserWarning, stacklevel=3)
    if not isinstance(hidden_size, int) or hidden_size <= 0:
        raise ValueError("hidden_size must be greater than zero")
    if not isinstance(num_layers, int) or num_layers <= 0:
        raise ValueError("num_layers must be greater than zero")
    if proj_size < 0:
        raise ValueError("proj_size should be a positive integer or zero to disable projections")
    if proj_size >= hidden_size:
        raise ValueError("proj_size has to be smaller than hidden_size")
    if proj_size and mode != "LSTM":
        raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")


class _Recurrent(Module):
    """The shared machinery of RNN, LSTM and GRU (torch's ``RNNBase``)."""

    mode = "RNN_TANH"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, *,
                 bias: bool = True, batch_first: bool = True, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, dtype: Any = jnp.float32,
                 rngs: nnx.Rngs):
        _check_config(self.mode, hidden_size, num_layers, dropout, proj_size)
        check_positive(input_size=input_size)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.bidirectional = bias, batch_first, bidirectional
        self.proj_size = proj_size
        directions, out = self.directions, proj_size or hidden_size
        self.cells = nnx.List([
            _Weights(input_size if k == 0 else directions * out, hidden_size,
                     _GATES[self.mode], bias=bias, proj_size=proj_size, dtype=dtype, rngs=rngs)
            for k in range(num_layers) for _ in range(directions)])
        self.dropout = Dropout(dropout, rngs=rngs if dropout > 0 else None)

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    def torch_keys(self) -> dict:
        keys = {}
        for i, cell in enumerate(self.cells):
            k, d = divmod(i, self.directions)
            keys.update(cell.named(f"_l{k}" + ("_reverse" if d else "")))
        return keys

    def __call__(self, x: Any, hx: Any = None, *, lengths: Any = None) -> tuple[Any, Any]:
        """``(output, h_n)`` (LSTM: ``(output, (h_n, c_n))``) as torch's module returns them."""
        ndim = len(getattr(x, "shape", ()))
        if ndim not in (2, 3):
            raise ValueError(f"{type(self).__name__}: Expected input to be 2D or 3D, got "
                             f"{ndim}D instead")
        batched = ndim == 3
        if x.shape[-1] != self.input_size:
            raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected "
                               f"{self.input_size}, got {x.shape[-1]}")
        seq = x if not batched else (F.transpose(x, 0, 1) if self.batch_first else x)
        seq = seq if batched else F.unsqueeze(seq, 1)  # (T, B, F), time-major
        frames, batch = seq.shape[0], seq.shape[1]
        h0, c0 = self._initial(hx, batch, batched, x.dtype)
        mask = None if lengths is None else _mask(lengths, frames, batch)
        h_n, c_n = [], []
        for k in range(self.num_layers):
            ds = range(k * self.directions, (k + 1) * self.directions)
            seq, h, c = self._layer([self.cells[i] for i in ds], seq, [h0[i] for i in ds],
                                    [c0[i] for i in ds], mask)
            h_n += h
            c_n += c
            if k < self.num_layers - 1:
                seq = self.dropout(seq)
        out = (F.transpose(seq, 0, 1) if self.batch_first else seq) if batched \
            else F.squeeze(seq, 1)
        h_n = F.stack(h_n, 0) if batched else F.squeeze(F.stack(h_n, 0), 1)
        if self.mode != "LSTM":
            return out, h_n
        c_n = F.stack(c_n, 0) if batched else F.squeeze(F.stack(c_n, 0), 1)
        return out, (h_n, c_n)

    def _layer(self, cells: list, seq: Any, h0: list, c0: list, mask: Any
               ) -> tuple[Any, list, list]:
        """One layer: (outputs (T, B, D*H), h and c at each direction's end). Both directions
        run in one scan (half the sequential steps): the backward one reads time reversed, and
        the directions' weights and states are stacked on a leading axis."""
        mode, d = self.mode, len(cells)
        gx = [cell.input_gates(seq, mode) for cell in cells]
        flip = (slice(None, None, -1),)
        gx = F.stack([gx[0]] + [F.getitem(g, flip) for g in gx[1:]], 1)  # (T, D, B, G)
        if mask is not None:
            mask = jnp.stack([mask, mask[::-1]][:d], 1)[..., None]  # (T, D, B, 1)
        w_hh, b_hh, w_hr = (None if v[0] is None else F.stack(v, 0)
                            for v in zip(*(cell.recurrent() for cell in cells)))
        b_hh = None if b_hh is None else F.unsqueeze(b_hh, 1)  # (D, 1, G)

        def step(carry: tuple, x: tuple) -> tuple:
            (h, c), (g, m) = carry, x
            h_new, c_new = _step(mode, g, h, c, w_hh, b_hh, w_hr)
            if m is None:
                return (h_new, c_new), h_new
            # frames past a sequence's length keep its state and output zero
            h_new = F.where(m, h_new, h)
            c_new = None if c is None else F.where(m, c_new, c)
            return (h_new, c_new), F.where(m, h_new, 0.0)

        start = (F.stack(h0, 0), None if c0[0] is None else F.stack(c0, 0))
        (h, c), ys = F.scan(step, start, (gx, mask))  # ys (T, D, B, H)
        outs = [F.getitem(ys, (slice(None), 0))]
        outs += [F.getitem(ys, (slice(None, None, -1), 1))] if d == 2 else []
        hs = [F.getitem(h, i) for i in range(d)]
        cs = [None] * d if c is None else [F.getitem(c, i) for i in range(d)]
        return (outs[0] if d == 1 else F.concatenate(outs, -1)), hs, cs

    def _initial(self, hx: Any, batch: int, batched: bool, dtype: Any) -> tuple[list, list]:
        """Per layer and direction: h0 (and c0), from ``hx`` or zeros of the input's dtype;
        torch's shape errors."""
        n = self.num_layers * self.directions
        h_shape = (n, batch, self.proj_size or self.hidden_size)
        c_shape = (n, batch, self.hidden_size)
        if self.mode == "LSTM":
            h, c = (None, None) if hx is None else hx
            ndims = [len(v.shape) for v in (h, c) if v is not None]
            if ndims and ndims != [3 if batched else 2] * 2:
                what = "batched 3-D" if batched else "unbatched 2-D"
                raise RuntimeError(f"For {what} input, hx and cx should also be "
                                   f"{3 if batched else 2}-D but got ({ndims[0]}-D, {ndims[-1]}-D)"
                                   " tensors")
            h = _state(h, h_shape, batched, "hidden[0]", dtype)
            c = _state(c, c_shape, batched, "hidden[1]", dtype)
            return [F.getitem(h, i) for i in range(n)], [F.getitem(c, i) for i in range(n)]
        h = _state(hx, h_shape, batched, "hidden", dtype)
        return [F.getitem(h, i) for i in range(n)], [None] * n


def _state(h: Any, shape: tuple, batched: bool, name: str, dtype: Any) -> Any:
    if h is None:
        return jnp.zeros(shape, dtype)
    ndim = len(h.shape)
    if batched and ndim != 3:
        raise RuntimeError(f"For batched 3-D input, hx should also be 3-D but got {ndim}-D tensor")
    if not batched:
        if ndim != 2:
            raise RuntimeError(f"For unbatched 2-D input, hx should also be 2-D but got {ndim}-D "
                               "tensor")
        h = F.unsqueeze(h, 1)
    if tuple(h.shape) != shape:
        got = list(h.shape) if batched else [h.shape[0], h.shape[2]]
        want = shape if batched else (shape[0], shape[2])
        raise RuntimeError(f"Expected {name} size {want}, got {got}")
    return h


def _mask(lengths: Any, frames: int, batch: int) -> Any:
    """(T, B) booleans: frame t of sequence b is real. torch's error for lengths <= 0; a length
    above T is refused too (torch packs past the end of the input without a word)."""
    lengths = jnp.asarray(constant(lengths))
    if lengths.shape != (batch,):
        raise ValueError(f"lengths must hold one length per sequence ({batch}), got shape "
                         f"{tuple(lengths.shape)}")
    if isinstance(lengths, jax.core.Tracer):  # checked when concrete only
        return jnp.arange(frames)[:, None] < lengths[None]
    concrete = np.asarray(lengths)
    if (concrete <= 0).any():
        raise RuntimeError("Length of all samples has to be greater than 0, but found an element "
                           "in 'lengths' that is <= 0")
    if (concrete > frames).any():
        raise ValueError(f"lengths must be at most the sequence length {frames}, got "
                         f"{int(concrete.max())}")
    return jnp.arange(frames)[:, None] < lengths[None]


def _from_torch(cls: type) -> Any:
    def build(t: Any, b: Build) -> _Recurrent:
        kwargs = dict(bias=t.bias, batch_first=t.batch_first, dropout=float(t.dropout),
                      bidirectional=t.bidirectional, rngs=b.rngs)
        if cls is RNN:
            kwargs["nonlinearity"] = t.nonlinearity
        if cls is LSTM:
            kwargs["proj_size"] = t.proj_size
        return cls(t.input_size, t.hidden_size, t.num_layers, **kwargs)

    return build


def _to_torch(m: _Recurrent, b: Build) -> Any:
    kwargs = dict(bias=m.bias, batch_first=m.batch_first, dropout=m.dropout.rate,
                  bidirectional=m.bidirectional)
    if isinstance(m, RNN):
        kwargs["nonlinearity"] = m.nonlinearity
    if isinstance(m, LSTM):
        kwargs["proj_size"] = m.proj_size
    return getattr(b.torch.nn, type(m).__name__)(m.input_size, m.hidden_size, m.num_layers,
                                                 **kwargs)


def _example(cls: type, **kwargs: Any) -> Any:
    """A 2-layer bidirectional module and its torch twin on a (2, 5, 3) batch."""
    return lambda torch: Example(
        cls(3, 4, 2, bidirectional=True, rngs=nnx.Rngs(0), **kwargs),
        getattr(torch.nn, cls.__name__)(3, 4, 2, batch_first=True, bidirectional=True, **kwargs),
        sample(2, 5, 3))


def _declare(**example: Any) -> Any:
    """``@torch_layer`` for a recurrent class: torch's class of the same name, with ``example``'s
    extra arguments in its declared example."""
    def declare(cls: type) -> type:
        return torch_layer(f"torch.nn.{cls.__name__}", keys=lambda m: m.torch_keys(),
                           example=_example(cls, **example), from_torch=_from_torch(cls),
                           to_torch=_to_torch)(cls)

    return declare


@_declare(nonlinearity="relu")
class RNN(_Recurrent):
    """``torch.nn.RNN``: h' = tanh(x W_ih + b_ih + h W_hh + b_hh) (or relu), stacked
    ``num_layers`` deep, optionally bidirectional. ``rnn(x, h0=None, *, lengths=None) ->
    (output (B, T, D*H), h_n (D*num_layers, B, H))``; dropout between layers while training."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, *,
                 nonlinearity: str = "tanh", **kwargs: Any):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or "
                             "'relu'.")
        self.nonlinearity = nonlinearity
        self.mode = "RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU"
        super().__init__(input_size, hidden_size, num_layers, **kwargs)


@_declare(proj_size=2)
class LSTM(_Recurrent):
    """``torch.nn.LSTM`` (gates i, f, g, o; ``proj_size`` projects h). Takes and returns the
    state as ``(h, c)``: ``lstm(x, (h0, c0)=None, *, lengths=None) -> (output, (h_n, c_n))``."""

    mode = "LSTM"


@_declare()
class GRU(_Recurrent):
    """``torch.nn.GRU`` (gates r, z, n; n = tanh(x W_in + b_in + r * (h W_hn + b_hn)),
    h' = (1 - z) n + z h)."""

    mode = "GRU"



# --------------------------------------------------------------------------- cells


class _Cell(_Weights):
    """One step of a recurrent layer (torch's ``RNNCell`` family): input (B, F) or (F,)."""

    mode = "RNN_TANH"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *,
                 dtype: Any = jnp.float32, rngs: nnx.Rngs):
        check_positive(input_size=input_size, hidden_size=hidden_size)
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        super().__init__(input_size, hidden_size, _GATES[self.mode], bias=bias, proj_size=0,
                         dtype=dtype, rngs=rngs)

    def _checked(self, x: Any, hx: Any) -> tuple[Any, list, bool]:
        """(x as (B, F), the states as (B, H) each, whether the input was batched)."""
        ndim = len(getattr(x, "shape", ()))
        if ndim not in (1, 2):
            raise ValueError(f"{type(self).__name__}: Expected input to be 1D or 2D, got "
                             f"{ndim}D instead")
        if x.shape[-1] != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {x.shape[-1]} expected "
                               f"{self.input_size}")
        batched = ndim == 2
        x = x if batched else F.unsqueeze(x, 0)
        states = hx if isinstance(hx, tuple | list) else [hx]
        out = []
        for k, h in enumerate(states):
            if h is None:
                out.append(jnp.zeros((x.shape[0], self.hidden_size), x.dtype))
                continue
            h = h if batched else F.unsqueeze(h, 0)
            if h.shape[0] != x.shape[0]:
                raise RuntimeError(f"Input batch size {x.shape[0]} doesn't match hidden{k} "
                                   f"batch size {h.shape[0]}")
            if h.shape[1] != self.hidden_size:
                raise RuntimeError(f"hidden{k} has inconsistent hidden_size: got {h.shape[1]}, "
                                   f"expected {self.hidden_size}")
            out.append(h)
        return x, out, batched

    def __call__(self, x: Any, hx: Any = None) -> Any:
        x, (h,), batched = self._checked(x, hx)
        h, _ = _step(self.mode, self.input_gates(x, self.mode), h, None, *self.recurrent())
        return h if batched else F.squeeze(h, 0)


def _cell_example(cls: type, **kwargs: Any) -> Any:
    return lambda torch: Example(cls(3, 4, rngs=nnx.Rngs(0), **kwargs),
                                 getattr(torch.nn, cls.__name__)(3, 4, **kwargs), sample(2, 3))


def _declare_cell(**example: Any) -> Any:
    """``@torch_layer`` for a cell class: torch's class of the same name, with ``example``'s
    extra arguments in its declared example."""
    def declare(cls: type) -> type:
        name = cls.__name__

        def from_torch(t: Any, b: Build) -> _Cell:
            extra = {"nonlinearity": t.nonlinearity} if name == "RNNCell" else {}
            return cls(t.input_size, t.hidden_size, t.bias, rngs=b.rngs, **extra)

        def to_torch(m: _Cell, b: Build) -> Any:
            extra = {"nonlinearity": m.nonlinearity} if name == "RNNCell" else {}
            return getattr(b.torch.nn, name)(m.input_size, m.hidden_size, m.bias, **extra)

        return torch_layer(f"torch.nn.{name}", keys=lambda m: m.named(),
                           example=_cell_example(cls, **example), from_torch=from_torch,
                           to_torch=to_torch)(cls)

    return declare


@_declare_cell(nonlinearity="tanh")
class RNNCell(_Cell):
    """``torch.nn.RNNCell``: ``cell(x, h=None) -> h'``."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "tanh", *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity: {nonlinearity}")
        self.nonlinearity = nonlinearity
        self.mode = "RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU"
        super().__init__(input_size, hidden_size, bias, dtype=dtype, rngs=rngs)


@_declare_cell()
class LSTMCell(_Cell):
    """``torch.nn.LSTMCell``: ``cell(x, (h, c)=None) -> (h', c')``."""

    mode = "LSTM"

    def __call__(self, x: Any, hx: Any = None) -> tuple[Any, Any]:
        x, (h, c), batched = self._checked(x, (None, None) if hx is None else hx)
        h, c = _step(self.mode, self.input_gates(x, self.mode), h, c, *self.recurrent())
        return (h, c) if batched else (F.squeeze(h, 0), F.squeeze(c, 0))


@_declare_cell()
class GRUCell(_Cell):
    """``torch.nn.GRUCell``: ``cell(x, h=None) -> h'``."""

    mode = "GRU"
