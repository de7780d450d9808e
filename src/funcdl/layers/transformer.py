"""The encoder: FeedForward, TransformerEncoderLayer, a scanned TransformerEncoder, and the seed
notebook's TransformerClassifier and a BERT-style MLMHead."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from funcdl import tape as F
from funcdl.layers.attention import MultiHeadAttention, check_torch_attention
from funcdl.layers.basic import (
    MLP,
    Dropout,
    Embedding,
    LayerNorm,
    Linear,
    PositionalEmbedding,
    activation_fn,
    check_positive,
    check_rate,
    unsupported,
    value,
)
from funcdl.layers.counterpart import (
    Build,
    Example,
    Row,
    UnsupportedModuleError,
    sample,
    torch_layer,
)
from funcdl.layers.module import Module
from funcdl.layers.normalization import RMSNorm
from funcdl.layers.sequential import SequenceFirst, activation_module, activation_name

__all__ = [
    "FeedForward",
    "TransformerEncoderLayer",
    "TransformerEncoder",
    "TransformerClassifier",
    "MLMHead",
]


@torch_layer(None)  # torch inlines it: see TransformerEncoderLayer's keys
class FeedForward(Module):
    """Position-wise feed-forward block: ``linear2(dropout(activation(linear1(x))))``.

    This is PyTorch's ``TransformerEncoderLayer._ff_block`` without its trailing ``dropout2``
    (the encoder layer applies that one to the residual branch); the slides' ``FeedForward`` is
    the same block with its dropout moved to the end.

    ``activation="swiglu"`` is LLaMA's gated block, seed 004's SwiGLU ``MLP``:
    ``down_proj(dropout(silu(gate_proj(x)) * up_proj(x)))``, with the seed's names (its torch
    state dict loads by name). ``bias=False`` drops every projection's bias, as LLaMA does.
    """

    def __init__(self, embed_dim: int, ff_dim: int, *, dropout: float = 0.1,
                 activation: str = "gelu", bias: bool = True, rngs: nnx.Rngs):
        check_positive(embed_dim=embed_dim, ff_dim=ff_dim)
        self.activation = activation
        if activation == "swiglu":  # the seed's order of definition: its state dict's order
            self.up_proj = Linear(embed_dim, ff_dim, bias=bias, rngs=rngs)
            self.gate_proj = Linear(embed_dim, ff_dim, bias=bias, rngs=rngs)
            self.dropout = Dropout(dropout, rngs=rngs)
            self.down_proj = Linear(ff_dim, embed_dim, bias=bias, rngs=rngs)
            return
        try:
            activation_fn(activation)
        except ValueError as err:
            raise ValueError(f"{err} (or 'swiglu')") from None
        self.linear1 = Linear(embed_dim, ff_dim, bias=bias, rngs=rngs)
        self.dropout = Dropout(dropout, rngs=rngs)
        self.linear2 = Linear(ff_dim, embed_dim, bias=bias, rngs=rngs)

    def __call__(self, x):
        if self.activation == "swiglu":
            gated = F.mul(F.silu(self.gate_proj(x)), self.up_proj(x))
            return self.down_proj(self.dropout(gated))
        return self.linear2(self.dropout(activation_fn(self.activation)(self.linear1(x))))


def _norm(kind: str, dim: int, eps: float) -> nnx.Module:
    if kind == "layernorm":
        return LayerNorm(dim, eps=eps)
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=eps)
    raise ValueError(f"norm must be 'layernorm' or 'rmsnorm', got {kind!r}")


def _layer_config(t, b: Build) -> dict:
    """A torch ``nn.TransformerEncoderLayer``'s configuration as funcdl's keyword arguments."""
    a = t.self_attn
    check_torch_attention(a)
    if a.in_proj_bias is None or t.linear1.bias is None or t.norm1.bias is None:
        raise unsupported(t, "bias=False")
    if t.dropout1.p != t.dropout2.p:
        raise unsupported(t, f"dropout1.p={t.dropout1.p} != dropout2.p={t.dropout2.p}")
    if t.norm1.eps != t.norm2.eps:
        raise unsupported(t, f"norm1.eps={t.norm1.eps} != norm2.eps={t.norm2.eps}")
    return dict(embed_dim=a.embed_dim, num_heads=a.num_heads, ff_dim=t.linear1.out_features,
                dropout=t.dropout1.p, attention_dropout=a.dropout, activation_dropout=t.dropout.p,
                activation=activation_name(t.activation, b), norm_first=t.norm_first,
                layer_norm_eps=t.norm1.eps, batch_first=a.batch_first)


def _layer_from_torch(t, b: Build):
    c = _layer_config(t, b)
    batch_first = c.pop("batch_first")
    m = TransformerEncoderLayer(**c, rngs=b.rngs)
    return m if batch_first else SequenceFirst(m)


def _layer_to_torch(m: TransformerEncoderLayer, b: Build):
    """torch's layer of ``m``'s configuration (static attributes only: ``m`` may be stacked)."""
    ff, attn = m.feed_forward, m.attention
    if ff.activation == "swiglu" or isinstance(m.norm1, RMSNorm):
        raise UnsupportedModuleError(
            "to_torch: nn.TransformerEncoderLayer has no SwiGLU feed-forward or RMSNorm "
            "(activation='swiglu', norm='rmsnorm'); convert the layer's parts instead "
            "(attention, feed_forward's Linears, norm1/norm2)")
    act = ff.activation if ff.activation in ("relu", "gelu") else b.child(
        activation_module(ff.activation))  # torch's fast path knows the strings
    t = b.torch.nn.TransformerEncoderLayer(
        attn.embed_dim, attn.num_heads, ff.linear1.out_features, dropout=m.dropout1.rate,
        activation=act, layer_norm_eps=m.norm1.eps, batch_first=True, norm_first=m.norm_first)
    t.self_attn.dropout = attn.attn_dropout.rate  # torch has one rate; set each as funcdl has it
    t.dropout.p = ff.dropout.rate
    return t


def _feed_forward_keys(ff: FeedForward) -> dict:
    """torch's names of the feed-forward's tensors inside an encoder layer: ``linear1/linear2``
    (nn.TransformerEncoderLayer's), or the gated block under ``mlp`` (LLaMA's)."""
    if ff.activation == "swiglu":
        return {"mlp": ff}
    return {"linear1": ff.linear1, "linear2": ff.linear2}


@torch_layer(
    "torch.nn.TransformerEncoderLayer",
    keys=lambda m: {"self_attn": m.attention, **_feed_forward_keys(m.feed_forward),
                    "norm1": m.norm1, "norm2": m.norm2},
    example=lambda torch: Example(
        TransformerEncoderLayer(8, 2, 16, rngs=nnx.Rngs(0)),
        torch.nn.TransformerEncoderLayer(8, 2, 16, activation="gelu", batch_first=True,
                                         norm_first=True),
        sample(2, 3, 8)),
    from_torch=_layer_from_torch,
    to_torch=_layer_to_torch,
)
class TransformerEncoderLayer(Module):
    """Self-attention and feed-forward, each with a residual connection and a LayerNorm.

    ``norm_first=True`` is the slides' pre-LN layer (``x + attn(norm1(x))``, then
    ``x + ff(norm2(x))``); ``norm_first=False`` is PyTorch's default post-LN
    (``norm1(x + attn(x))``, then ``norm2(x + ff(x))``). Same sub-module names as
    ``nn.TransformerEncoderLayer`` apart from ``attention`` (torch: ``self_attn``) and
    ``feed_forward.linear1/2`` (torch: ``linear1/2``).

    ``dropout`` applies to both residual branches and, unless given their own rates, to the
    attention weights (``attention_dropout``) and after the activation (``activation_dropout``),
    as in torch; BERT has ``activation_dropout=0``.

    LLaMA-style: ``activation="swiglu"`` (a gated ``FeedForward``, torch keys ``mlp.gate_proj``,
    ``mlp.up_proj``, ``mlp.down_proj``) and ``norm="rmsnorm"`` (``RMSNorm`` with eps
    ``layer_norm_eps``); torch has no such encoder layer, so ``to_torch`` refuses them.
    """

    def __init__(self, embed_dim: int, num_heads: int, ff_dim: int, *, dropout: float = 0.1,
                 activation: str = "gelu", norm_first: bool = True, layer_norm_eps: float = 1e-5,
                 attention_dropout: float | None = None, activation_dropout: float | None = None,
                 norm: str = "layernorm", rngs: nnx.Rngs):
        check_positive(embed_dim=embed_dim, num_heads=num_heads, ff_dim=ff_dim)
        check_rate("dropout", dropout)
        attention_dropout = dropout if attention_dropout is None else attention_dropout
        activation_dropout = dropout if activation_dropout is None else activation_dropout
        check_rate("attention_dropout", attention_dropout)
        check_rate("activation_dropout", activation_dropout)
        self.norm_first = norm_first
        self.attention = MultiHeadAttention(embed_dim, num_heads, dropout=attention_dropout,
                                            rngs=rngs)
        self.feed_forward = FeedForward(embed_dim, ff_dim, dropout=activation_dropout,
                                        activation=activation, rngs=rngs)
        self.norm1 = _norm(norm, embed_dim, layer_norm_eps)
        self.norm2 = _norm(norm, embed_dim, layer_norm_eps)
        self.dropout1 = Dropout(dropout, rngs=rngs)
        self.dropout2 = Dropout(dropout, rngs=rngs)

    def _sa(self, x, masks):
        return self.dropout1(self.attention(x, **masks))

    def _ff(self, x):
        return self.dropout2(self.feed_forward(x))

    def __call__(self, x, *, key_padding_mask=None, attn_mask=None, is_causal: bool = False):
        masks = dict(key_padding_mask=key_padding_mask, attn_mask=attn_mask, is_causal=is_causal)
        if self.norm_first:
            x = F.add(x, self._sa(self.norm1(x), masks))
            return F.add(x, self._ff(self.norm2(x)))
        x = self.norm1(F.add(x, self._sa(x, masks)))
        return self.norm2(F.add(x, self._ff(x)))


def _encoder_from_torch(t, b: Build):
    configs = [_layer_config(layer, b) for layer in t.layers]
    if any(c != configs[0] for c in configs):
        diff = next(i for i, c in enumerate(configs) if c != configs[0])
        raise UnsupportedModuleError(
            f"from_torch: TransformerEncoder layers 0 and {diff} differ in configuration "
            "(funcdl stacks identical layers)")
    c = configs[0]
    batch_first = c.pop("batch_first")
    m = TransformerEncoder(t.num_layers, **c, final_norm=t.norm is not None, rngs=b.rngs)
    if t.norm is not None:
        m.norm = b.child(t.norm)  # with its own eps
    return m if batch_first else SequenceFirst(m)


def _encoder_to_torch(m: TransformerEncoder, b: Build):
    # No nested tensors: torch's fast path returns zeros at padding positions where funcdl (and
    # torch's regular path) computes them.
    return b.torch.nn.TransformerEncoder(
        _layer_to_torch(m.layers, b), m.num_layers,
        norm=None if m.norm is None else b.child(m.norm), enable_nested_tensor=False)


def _row(v, i: int):
    """Layer ``i``'s slice of a stacked value: through the tape for a Tensor (its gradient flows
    back into the stack), plain indexing for arrays (``jax.grad`` sees ordinary ``jnp``)."""
    return F.getitem(v, i) if isinstance(v, F.Tensor) else v[i]


UNROLL_UP_TO = 4  # TransformerEncoder's default: unroll stacks this deep, scan deeper ones


@torch_layer(
    "torch.nn.TransformerEncoder",
    keys=lambda m: {**{f"layers.{i}": Row(m.layers, i) for i in range(m.num_layers)},
                    "norm": m.norm},
    example=lambda torch: Example(
        TransformerEncoder(2, 8, 2, 16, final_norm=True, unroll=False, rngs=nnx.Rngs(0)),
        torch.nn.TransformerEncoder(
            torch.nn.TransformerEncoderLayer(8, 2, 16, activation="gelu", batch_first=True,
                                             norm_first=True),
            2, norm=torch.nn.LayerNorm(8), enable_nested_tensor=False),
        sample(2, 3, 8)),
    from_torch=_encoder_from_torch,
    to_torch=_encoder_to_torch,
)
class TransformerEncoder(Module):
    """``num_layers`` identical ``TransformerEncoderLayer``s with stacked parameters.

    ``self.layers`` is one ``TransformerEncoderLayer`` whose every parameter has a leading
    ``num_layers`` axis. ``unroll=False`` runs the layers with ``funcdl.tape.scan`` over that
    axis (``jax.lax.scan`` on arrays; one recorded node when tape Tensors flow), so the compiled
    program holds one layer body and compile time does not grow with depth, for ``jax.grad`` and
    the tape alike. ``unroll=True`` runs the same stacked layers in a Python loop: the program
    holds every layer (compile time grows with depth, about 0.7 s a layer for D=256 on 2 cores)
    and XLA:CPU runs it faster, presumably for want of the loop's stacked copies and for fusions
    across layers (the 2-layer ``TransformerClassifier`` of ``benchmarks/bench_train.py`` with
    dropout 0.1: a training step 1.3x faster, 72 against 91 ms on 2 cores). The default,
    ``unroll=None``, unrolls stacks of up to ``UNROLL_UP_TO`` (4) layers, where that costs at
    most ~1 s of compile time, and scans deeper ones. The result is the same either way.
    ``final_norm=True`` adds a LayerNorm at the end (PyTorch's ``norm=`` argument; its default
    ``None`` matches ``final_norm=False``). The dropout, ``activation`` and ``norm`` options are
    ``TransformerEncoderLayer``'s (the final norm is of the same kind).
    """

    def __init__(self, num_layers: int, embed_dim: int, num_heads: int, ff_dim: int, *,
                 dropout: float = 0.1, activation: str = "gelu", norm_first: bool = True,
                 layer_norm_eps: float = 1e-5, final_norm: bool = False,
                 attention_dropout: float | None = None, activation_dropout: float | None = None,
                 norm: str = "layernorm", unroll: bool | None = None, rngs: nnx.Rngs):
        check_positive(num_layers=num_layers)
        self.num_layers = num_layers
        self.embed_dim = embed_dim
        self.unroll = num_layers <= UNROLL_UP_TO if unroll is None else bool(unroll)

        layers = [
            TransformerEncoderLayer(
                embed_dim, num_heads, ff_dim, dropout=dropout, activation=activation,
                norm_first=norm_first, layer_norm_eps=layer_norm_eps,
                attention_dropout=attention_dropout, activation_dropout=activation_dropout,
                norm=norm, rngs=rngs)
            for _ in range(num_layers)
        ]
        # Stack the layers' states along a new leading axis (what nnx.vmap over the constructor
        # would build, without compiling a vmapped initialiser for every new configuration).
        graphdef = nnx.graphdef(layers[0])
        states = [nnx.state(layer) for layer in layers]
        self.layers = nnx.merge(graphdef, jax.tree.map(lambda *a: jnp.stack(a), *states))
        self.norm = _norm(norm, embed_dim, layer_norm_eps) if final_norm else None

    def __call__(self, x, *, key_padding_mask=None, attn_mask=None, is_causal: bool = False):
        graphdef, state = nnx.split(self.layers)
        # Dropout draws keys, advancing the layers' RngCount; only then is there state to hand
        # back (and writing it back unconditionally would trip NNX's trace-level check in eval).
        draws = any(isinstance(m, Dropout) and not m.deterministic and m.rate > 0
                    for _, m in nnx.iter_modules(self.layers))

        def body(h, layer_state):
            layer = nnx.merge(graphdef, layer_state)
            h = layer(h, key_padding_mask=key_padding_mask, attn_mask=attn_mask,
                      is_causal=is_causal)
            return h, (nnx.state(layer, nnx.RngState) if draws else None)

        if self.unroll:
            rngs = []
            for i in range(self.num_layers):
                x, rng = body(x, jax.tree.map(lambda v, i=i: _row(v, i), state))
                rngs.append(rng)
            new_rng = jax.tree.map(lambda *r: jnp.stack(r), *rngs) if draws else None
        else:
            x, new_rng = F.scan(body, x, state)
        if draws:
            nnx.update(self.layers, new_rng)
        return x if self.norm is None else self.norm(x)


@torch_layer(None)
class TransformerClassifier(Module):
    """The seed notebook's sequence classifier: token embedding + position embedding, a
    Transformer encoder, an aggregation over positions, and an MLP decoder.

    ``aggregation``: ``"mean"`` (average over non-padding positions), ``"first"`` (the first
    token, BERT's [CLS]) or ``"flatten"`` (concatenate all ``max_len`` positions; inputs must then
    have length ``max_len``). The decoder is ``MLP((agg_dim, *decoder_hidden_sizes, num_classes),
    decoder_activation)``; ``output_activation`` None returns logits, or "softmax",
    "log_softmax", "sigmoid" as the notebook's ``decoder_output_activation``.
    ``unroll`` is the encoder's: by default its layers run in a Python loop up to
    ``UNROLL_UP_TO`` (4) layers (faster steps) and in a scan beyond (compile time flat in depth);
    see ``TransformerEncoder``.
    ``m(ids, key_padding_mask=None)`` with ``ids (B, T)`` int -> ``(B, num_classes)``.
    """

    def __init__(self, vocab_size: int, num_classes: int, embed_dim: int, num_heads: int,
                 ff_dim: int, num_layers: int, max_len: int, *, aggregation: str = "mean",
                 dropout: float = 0.1, decoder_hidden_sizes: Sequence[int] = (),
                 decoder_activation: str = "relu", output_activation: str | None = None,
                 activation: str = "gelu", norm_first: bool = True,
                 positional: str = "learned", unroll: bool | None = None, rngs: nnx.Rngs):
        check_positive(vocab_size=vocab_size, num_classes=num_classes, max_len=max_len)
        if aggregation not in ("mean", "first", "flatten"):
            raise ValueError(
                f"aggregation must be 'mean', 'first' or 'flatten', got {aggregation!r}")
        if output_activation not in (None, "softmax", "log_softmax", "sigmoid"):
            raise ValueError(
                "output_activation must be None, 'softmax', 'log_softmax' or 'sigmoid', got "
                f"{output_activation!r}")
        self.aggregation = aggregation
        self.max_len = max_len
        self.output_activation = output_activation
        self.embedding = Embedding(vocab_size, embed_dim, rngs=rngs)
        self.pos_embedding = PositionalEmbedding(max_len, embed_dim, kind=positional, rngs=rngs)
        self.dropout = Dropout(dropout, rngs=rngs)
        # A pre-LN stack leaves its residual stream un-normalised: end it with a LayerNorm.
        self.encoder = TransformerEncoder(
            num_layers, embed_dim, num_heads, ff_dim, dropout=dropout, activation=activation,
            norm_first=norm_first, final_norm=norm_first, unroll=unroll, rngs=rngs)
        agg_dim = embed_dim * max_len if aggregation == "flatten" else embed_dim
        self.decoder = MLP((agg_dim, *decoder_hidden_sizes, num_classes), decoder_activation,
                           rngs=rngs)

    def _aggregate(self, h, key_padding_mask):
        b, t, d = h.shape
        if self.aggregation == "first":
            return F.getitem(h, (slice(None), 0))
        if self.aggregation == "flatten":
            return F.reshape(h, (b, t * d))
        if key_padding_mask is None:
            return F.mean(h, dim=1)
        keep = (~jnp.asarray(key_padding_mask, bool)).astype(h.dtype)  # (B, T)
        count = jnp.maximum(keep.sum(axis=1, keepdims=True), 1.0)  # all-padding rows -> zeros
        return F.div(F.sum(F.mul(h, keep[:, :, None]), dim=1), count)

    def __call__(self, ids, *, key_padding_mask=None):
        ids = jnp.asarray(ids)
        if ids.ndim != 2:
            raise ValueError(f"expected token ids of shape (B, T), got {tuple(ids.shape)}")
        if self.aggregation == "flatten" and ids.shape[1] != self.max_len:
            raise ValueError(
                f"aggregation='flatten' needs sequences of exactly max_len={self.max_len} tokens "
                f"(pad them), got length {ids.shape[1]}")
        if key_padding_mask is not None and jnp.asarray(key_padding_mask).dtype != jnp.bool_:
            raise TypeError(
                "TransformerClassifier's key_padding_mask must be bool (True = padding)")
        h = self.dropout(self.pos_embedding(self.embedding(ids)))
        h = self.encoder(h, key_padding_mask=key_padding_mask)
        out = self.decoder(self._aggregate(h, key_padding_mask))
        if self.output_activation == "softmax":
            return F.softmax(out, dim=-1)
        if self.output_activation == "log_softmax":
            return F.log_softmax(out, dim=-1)
        if self.output_activation == "sigmoid":
            return F.sigmoid(out)
        return out


@torch_layer(
    None,  # BERT's head; tied, the decoder weight is the embedding's and only its bias is ours
    keys=lambda m: {"dense": m.dense, "norm": m.norm, "decoder": m.decoder,
                    "decoder.bias": m.bias},
)
class MLMHead(Module):
    """BERT's masked-language-model head on encoder output ``(B, T, D)`` -> logits ``(B, T, V)``:
    ``dense`` (D -> D), ``activation``, ``norm``, then the decoder to the vocabulary.

    With ``embedding=`` an ``Embedding(V, D)`` the decoder is tied to it
    (``logits = h @ embedding.weight^T + bias``; the head shares, not copies, the table);
    otherwise it owns ``decoder = Linear(D, V)``.
    """

    def __init__(self, embed_dim: int, vocab_size: int, *, embedding: Embedding | None = None,
                 activation: str = "gelu", layer_norm_eps: float = 1e-5, rngs: nnx.Rngs):
        check_positive(embed_dim=embed_dim, vocab_size=vocab_size)
        activation_fn(activation)
        self.activation = activation
        self.dense = Linear(embed_dim, embed_dim, rngs=rngs)
        self.norm = LayerNorm(embed_dim, eps=layer_norm_eps)
        if embedding is not None:
            want = (vocab_size, embed_dim)
            if (embedding.num_embeddings, embedding.embedding_dim) != want:
                raise ValueError(
                    f"tied embedding must be Embedding{want}, got Embedding"
                    f"{(embedding.num_embeddings, embedding.embedding_dim)}")
            self.embedding = embedding
            self.decoder = None
            self.bias = nnx.Param(jnp.zeros((vocab_size,), jnp.float32))
        else:
            self.embedding = None
            self.decoder = Linear(embed_dim, vocab_size, rngs=rngs)
            self.bias = None

    def __call__(self, h):
        h = self.norm(activation_fn(self.activation)(self.dense(h)))
        if self.decoder is not None:
            return self.decoder(h)
        table = F.transpose(value(self.embedding.weight), 0, 1)  # (D, V)
        return F.add(F.matmul(h, table), value(self.bias))
