"""Building blocks: Linear, Embedding, PositionalEmbedding, LayerNorm, Dropout, MLP.

Every forward pass is written with ``funcdl.tape``'s differentiable functions, never with ``jnp``
directly, so one definition is differentiated by ``jax.grad`` (plain arrays) and by the tape (tape
``Tensor`` values inside the Variables). ``jnp`` appears only for initialisation and for constants
that carry no gradient (index tables, sinusoids, masks).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from funcdl import tape as F
from funcdl.layers.counterpart import (
    Example,
    Transposed,
    UnsupportedModuleError,
    sample,
    torch_layer,
)
from funcdl.layers.module import Module
from funcdl.tape.tensor import constant

__all__ = [
    "Linear",
    "Embedding",
    "PositionalEmbedding",
    "LayerNorm",
    "Dropout",
    "MLP",
    "activation_fn",
    "sinusoidal_table",
]


def value(var: nnx.Variable):
    """The raw value of a Variable: a jax array, or a tape Tensor while the tape is recording.

    ``var.get_value()`` rather than ``var[...]``: indexing a tape Tensor with ``...`` would record
    a useless node, and ``.value`` is deprecated in flax 0.12.
    """
    return var.get_value()


def check_positive(**sizes: int) -> None:
    """Raise ValueError naming the first size that is not a positive int."""
    for name, size in sizes.items():
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0:
            raise ValueError(f"{name} must be a positive integer, got {size!r}")


def check_rate(name: str, p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} probability has to be between 0 and 1, but got {p}")


_ACTIVATIONS: dict[str, Callable] = {
    "relu": F.relu,
    "gelu": F.gelu,  # exact (erf) GELU, torch's default
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "tanh": F.tanh,
    "sigmoid": F.sigmoid,
    "silu": F.silu,
    "identity": lambda x: x,
}


def activation_fn(name: str | None) -> Callable:
    """Look up an activation by name ("relu", "gelu", "gelu_tanh", "tanh", "sigmoid", "silu",
    "identity"; None means identity)."""
    if name is None:
        return _ACTIVATIONS["identity"]
    try:
        return _ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"activation should be one of {sorted(_ACTIVATIONS)}, not {name!r}"
        ) from None


def _uniform(key: jax.Array, shape: tuple[int, ...], bound: float, dtype) -> jax.Array:
    """Uniform in [-bound, bound): the values ``jax.random.uniform(key, shape, ...)`` draws."""
    return _flat_uniform(key, math.prod(shape), bound, dtype).reshape(shape)


def _normal(key: jax.Array, shape: tuple[int, ...], dtype) -> jax.Array:
    """Standard normal: the values ``jax.random.normal(key, shape, dtype)`` draws."""
    return _flat_normal(key, math.prod(shape), dtype).reshape(shape)


# Initialisers draw a flat vector, reshaped after: the same values (the random bits follow the
# row-major index), one compiled program per size and dtype rather than per shape and bound, and
# XLA:CPU compiles a flat draw 4-5x faster than a 4-D one (0.18 against 0.8 s for a conv weight).
@functools.partial(jax.jit, static_argnums=(1, 3))
def _flat_uniform(key: jax.Array, size: int, bound: float, dtype) -> jax.Array:
    return jax.random.uniform(key, (size,), dtype, minval=-bound, maxval=bound)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _flat_normal(key: jax.Array, size: int, dtype) -> jax.Array:
    return jax.random.normal(key, (size,), dtype)


def unsupported(t, what: str) -> UnsupportedModuleError:
    """The error for a torch module configuration funcdl does not compute."""
    return UnsupportedModuleError(f"from_torch: {type(t).__name__} with {what} is not supported")


@torch_layer(
    "torch.nn.Linear",
    keys=lambda m: {"weight": Transposed(m.w), "bias": m.b},
    example=lambda torch: Example(Linear(3, 2, rngs=nnx.Rngs(0)), torch.nn.Linear(3, 2),
                                  sample(4, 3)),
    from_torch=lambda t, b: Linear(t.in_features, t.out_features, bias=t.bias is not None,
                                   rngs=b.rngs),
    to_torch=lambda m, b: b.torch.nn.Linear(m.in_features, m.out_features, bias=m.b is not None),
)
class Linear(Module):
    """The slides' ``LinearLayer``: ``y = x @ w + b``, ``w`` stored ``[in_features, out_features]``.

    PyTorch's ``nn.Linear`` stores the transpose (``[out, in]``, ``y = x A^T + b``);
    ``load_torch_state_dict`` transposes on load. Initialised as ``nn.Linear``: weight and bias
    uniform in ``±1/sqrt(in_features)``.
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True,
                 dtype=jnp.float32, rngs: nnx.Rngs):
        check_positive(in_features=in_features, out_features=out_features)
        self.in_features = in_features
        self.out_features = out_features
        bound = 1.0 / math.sqrt(in_features)
        self.w = nnx.Param(_uniform(rngs.params(), (in_features, out_features), bound, dtype))
        self.b = nnx.Param(_uniform(rngs.params(), (out_features,), bound, dtype)) if bias else None

    def __call__(self, x):
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"Linear expected the last dimension of the input to be in_features="
                f"{self.in_features}, got input of shape {tuple(x.shape)}"
            )
        lead = tuple(x.shape[:-1])
        if len(lead) > 1:
            # One (N, in) @ (in, out) GEMM: with the batch dims kept, XLA:CPU compiles the
            # backward pass (and fused elementwise producers) about 2x slower.
            x = F.reshape(x, (-1, self.in_features))
        y = F.matmul(x, value(self.w))
        if self.b is not None:
            y = F.add(y, value(self.b))
        return F.reshape(y, lead + (self.out_features,)) if len(lead) > 1 else y


def _embedding_from_torch(t, b) -> Embedding:
    if t.max_norm is not None:
        raise unsupported(t, f"max_norm={t.max_norm}")
    if t.scale_grad_by_freq:
        raise unsupported(t, "scale_grad_by_freq=True")
    return Embedding(t.num_embeddings, t.embedding_dim, padding_idx=t.padding_idx, rngs=b.rngs)


@torch_layer(
    "torch.nn.Embedding",
    keys=lambda m: {"weight": m.weight},
    example=lambda torch: Example(Embedding(5, 3, rngs=nnx.Rngs(0)), torch.nn.Embedding(5, 3),
                                  np.array([[0, 4, 2], [1, 1, 3]])),
    from_torch=_embedding_from_torch,
    to_torch=lambda m, b: b.torch.nn.Embedding(m.num_embeddings, m.embedding_dim,
                                               padding_idx=m.padding_idx),
)
class Embedding(Module):
    """A trainable lookup table, ``weight[num_embeddings, embedding_dim]``, initialised N(0, 1)
    like ``nn.Embedding``; ``emb(ids)`` returns ``weight[ids]``.

    ``padding_idx`` as ``nn.Embedding``'s: that row starts at zero and gets no gradient from the
    lookup (a tied decoder still trains it, as in torch).
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, *, padding_idx: int | None = None,
                 dtype=jnp.float32, rngs: nnx.Rngs):
        check_positive(num_embeddings=num_embeddings, embedding_dim=embedding_dim)
        if padding_idx is not None:
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError("Padding_idx must be within num_embeddings (got padding_idx="
                                 f"{padding_idx}, num_embeddings={num_embeddings})")
            padding_idx %= num_embeddings
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.padding_idx = padding_idx
        weight = _normal(rngs.params(), (num_embeddings, embedding_dim), dtype)
        if padding_idx is not None:
            weight = weight.at[padding_idx].set(0)
        self.weight = nnx.Param(weight)

    def __call__(self, ids):
        ids = jnp.asarray(ids)
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise TypeError(
                "Expected tensor for argument #1 'indices' to have an integer dtype, but got "
                f"{ids.dtype}; pass token ids (e.g. ids.astype(jnp.int32))"
            )
        if not isinstance(ids, jax.core.Tracer) and ids.size:
            lo, hi = int(np.min(np.asarray(ids))), int(np.max(np.asarray(ids)))  # not staged
            if lo < 0 or hi >= self.num_embeddings:
                # XLA would clamp silently; PyTorch raises, and so do we (when ids are concrete).
                raise IndexError(
                    f"index out of range in self: ids span [{lo}, {hi}] but the table has "
                    f"num_embeddings={self.num_embeddings}"
                )
        rows = F.embedding(ids, value(self.weight))
        if self.padding_idx is None:
            return rows
        # The padding row's value, cut from both engines' graphs: no gradient reaches it.
        frozen = jax.lax.stop_gradient(constant(value(self.weight))[self.padding_idx])
        return F.where((ids == self.padding_idx)[..., None], frozen, rows)


def sinusoidal_table(length: int, dim: int, dtype=jnp.float32) -> jax.Array:
    """The Transformer paper's fixed encoding: ``P[t, 2i] = sin(t / 10000^(2i/dim))``,
    ``P[t, 2i+1] = cos(...)``; shape ``(length, dim)``."""
    pos = np.arange(length, dtype=np.float64)[:, None]
    freq = np.exp(-math.log(10000.0) * np.arange(0, dim, 2, dtype=np.float64) / dim)
    table = np.zeros((length, dim))
    table[:, 0::2] = np.sin(pos * freq)
    table[:, 1::2] = np.cos(pos * freq[: dim // 2])
    return jnp.asarray(table, dtype)


def _learned_only(m: PositionalEmbedding, embedding: type):
    if m.weight is None:
        raise UnsupportedModuleError("to_torch: a sinusoidal PositionalEmbedding has no torch "
                                     "module (its table is not a parameter)")
    return embedding(m.max_len, m.embed_dim)


@torch_layer(
    "torch.nn.Embedding",  # of positions: funcdl adds the table's first T rows to its input
    keys=lambda m: {"weight": m.weight},  # None when sinusoidal
    example=lambda torch: Example(
        PositionalEmbedding(6, 4, rngs=nnx.Rngs(0)), torch.nn.Embedding(6, 4), sample(2, 5, 4),
        call=lambda t, x: x + t(torch.arange(x.shape[-2]))),
    to_torch=lambda m, b: _learned_only(m, b.torch.nn.Embedding),
)
class PositionalEmbedding(Module):
    """Adds a position code to ``x`` of shape ``(B, T, D)``: ``x + P[arange(T)]``.

    ``kind="learned"``: ``P`` is a trainable ``weight[max_len, D]`` (the GPT-style absolute
    embedding of seed 003, ``nn.Embedding(max_len, D)(arange(T))``); ``kind="sinusoidal"``: the
    fixed table of ``sinusoidal_table`` (no parameters).
    """

    def __init__(self, max_len: int, embed_dim: int, *, kind: str = "learned",
                 dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        check_positive(max_len=max_len, embed_dim=embed_dim)
        if kind not in ("learned", "sinusoidal"):
            raise ValueError(f"kind must be 'learned' or 'sinusoidal', got {kind!r}")
        self.max_len = max_len
        self.embed_dim = embed_dim
        self.kind = kind
        if kind == "learned":
            if rngs is None:
                raise ValueError("PositionalEmbedding(kind='learned') needs rngs=nnx.Rngs(...)")
            self.weight = nnx.Param(_normal(rngs.params(), (max_len, embed_dim), dtype))
        else:
            self.weight = None
            self.dtype = dtype

    def __call__(self, x):
        t, d = x.shape[-2], x.shape[-1]
        if t > self.max_len:
            raise ValueError(
                f"sequence length {t} is longer than the positional table (max_len="
                f"{self.max_len}); build PositionalEmbedding with max_len >= {t} or truncate"
            )
        if d != self.embed_dim:
            raise ValueError(f"expected embed_dim={self.embed_dim} features, got shape {x.shape}")
        if self.weight is None:
            return F.add(x, sinusoidal_table(t, d, self.dtype))
        return F.add(x, F.getitem(value(self.weight), slice(0, t)))


def _layer_norm_from_torch(t, b) -> LayerNorm:
    if len(t.normalized_shape) != 1:
        raise unsupported(t, f"normalized_shape={tuple(t.normalized_shape)} (funcdl normalises "
                             "the last dimension)")
    if t.weight is None or t.bias is None:
        raise unsupported(t, "elementwise_affine=False or bias=False")
    return LayerNorm(t.normalized_shape[0], eps=t.eps)


@torch_layer(
    "torch.nn.LayerNorm",
    keys=lambda m: {"weight": m.weight, "bias": m.bias},
    example=lambda torch: Example(LayerNorm(4), torch.nn.LayerNorm(4), sample(3, 4)),
    from_torch=_layer_norm_from_torch,
    to_torch=lambda m, b: b.torch.nn.LayerNorm(m.normalized_shape, eps=m.eps),
)
class LayerNorm(Module):
    """``nn.LayerNorm(normalized_shape)`` over the last dimension: ``weight`` ones, ``bias`` zeros,
    biased variance, ``eps`` inside the square root."""

    def __init__(self, normalized_shape: int, *, eps: float = 1e-5, dtype=jnp.float32,
                 rngs: nnx.Rngs | None = None):
        check_positive(normalized_shape=normalized_shape)
        self.normalized_shape = normalized_shape
        self.eps = eps
        self.weight = nnx.Param(jnp.ones((normalized_shape,), dtype))
        self.bias = nnx.Param(jnp.zeros((normalized_shape,), dtype))

    def __call__(self, x):
        return F.layer_norm(x, (self.normalized_shape,), value(self.weight), value(self.bias),
                            self.eps)


@torch_layer(
    "torch.nn.Dropout",
    keys=lambda m: {},
    example=lambda torch: Example(Dropout(0.5), torch.nn.Dropout(0.5), sample(3, 4)),
    from_torch=lambda t, b: Dropout(t.p, rngs=b.rngs),
    to_torch=lambda m, b: b.torch.nn.Dropout(m.rate),
)
class Dropout(Module):
    """Inverted dropout with its own key stream (forked from ``rngs['dropout']``, which falls back
    to ``rngs``' default stream).

    ``model.train()`` / ``model.eval()`` set ``deterministic`` (flax's ``Module.set_attributes``),
    so a whole model switches at once. Like ``torch.nn`` (and ``nnx.Dropout``) a new module is in
    training mode.
    """

    def __init__(self, rate: float, *, rngs: nnx.Rngs | None = None):
        check_rate("dropout", rate)
        self.rate = float(rate)
        self.deterministic = False
        self.rngs = rngs["dropout"].fork() if (rngs is not None and rate > 0) else None

    def next_key(self) -> jax.Array | None:
        """A fresh key when dropout is active (training and rate > 0), else None."""
        if self.deterministic or self.rate == 0.0:
            return None
        if self.rngs is None:
            raise ValueError("Dropout in training mode needs rngs=nnx.Rngs(...) at construction")
        return self.rngs()

    def __call__(self, x):
        key = self.next_key()
        if key is None:
            return x
        return F.dropout(x, self.rate, key=key, training=True)


@torch_layer(
    "torch.nn.Sequential",  # (Linear, activation, Linear, ..., Linear): Linears at even indices
    keys=lambda m: {str(2 * i): layer for i, layer in enumerate(m.layers)},
    example=lambda torch: Example(
        MLP((4, 3, 2), rngs=nnx.Rngs(0)),
        torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)),
        sample(5, 4)),
    to_torch=lambda m, b: _mlp_to_torch(m, b),
)
class MLP(Module):
    """The slides' fully connected network (default 784-100-50-20-1): ``Linear`` layers with
    ``activation`` between them and none after the last (it returns logits)."""

    def __init__(self, sizes: Sequence[int] = (784, 100, 50, 20, 1), activation: str = "relu", *,
                 rngs: nnx.Rngs):
        sizes = tuple(sizes)
        if len(sizes) < 2:
            raise ValueError(f"MLP needs at least an input and an output size, got sizes={sizes}")
        for i, s in enumerate(sizes):
            check_positive(**{f"sizes[{i}]": s})
        self.sizes = sizes
        self.activation = activation
        activation_fn(activation)  # validate now, not at the first call
        self.layers = nnx.List(
            [Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])]
        )

    def __call__(self, x):
        act = activation_fn(self.activation)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = act(x)
        return x


def _mlp_to_torch(m: MLP, b):
    from funcdl.layers.sequential import activation_module  # it builds on this module

    mods = []
    for i, layer in enumerate(m.layers):
        mods.append(b.child(layer))
        if i < len(m.layers) - 1:
            mods.append(b.child(activation_module(m.activation)))
    return b.torch.nn.Sequential(*mods)
