"""BERT, DistilBERT and RoBERTa encoders built from funcdl's own layers, under Hugging Face's
``transformers`` key names.

``Bert(config)`` is one model for the seven supported architectures (``ARCHITECTURES``): token,
learned-position (and token-type) embeddings with a LayerNorm, a post-LN ``TransformerEncoder``
(GELU, BERT's eps 1e-12, dropout where transformers has it), and per architecture a pooler, the
masked-LM head with its decoder tied to the word embeddings, or a classifier. Its declaration
maps every parameter to the transformers model's ``state_dict`` key, so ``to_torch_state_dict``,
``load_torch_state_dict``, ``save_safetensors`` and ``to_torch`` speak transformers' names.
``funcdl.layers.transformers_io`` reads and writes transformers models and checkpoints.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from funcdl import tape as F
from funcdl.layers.basic import (
    Dropout,
    Embedding,
    LayerNorm,
    Linear,
    activation_fn,
    check_positive,
    value,
)
from funcdl.layers.counterpart import Part, Row, Tied, Transposed, torch_layer
from funcdl.layers.module import Module
from funcdl.layers.transformer import MLMHead, TransformerEncoder

__all__ = ["ARCHITECTURES", "BertConfig", "BertOutput", "TextEmbeddings", "Bert"]

# transformers class -> (family, head)
ARCHITECTURES: dict[str, tuple[str, str | None]] = {
    "BertModel": ("bert", None),
    "BertForMaskedLM": ("bert", "mlm"),
    "BertForSequenceClassification": ("bert", "classifier"),
    "DistilBertModel": ("distilbert", None),
    "DistilBertForMaskedLM": ("distilbert", "mlm"),
    "RobertaModel": ("roberta", None),
    "RobertaForMaskedLM": ("roberta", "mlm"),
}
_POOLED = ("BertModel", "BertForSequenceClassification", "RobertaModel")


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """What ``Bert`` is built from (transformers' names in the comments; defaults: bert-base).

    ``head_activation``: the masked-LM transform's activation (RoBERTa's is always GELU).
    ``transformers_extra``: the transformers config's other fields as JSON (label names, special
    token ids, ...), written back unchanged by ``save_transformers``.
    """

    architecture: str = "BertModel"
    vocab_size: int = 30522
    hidden_size: int = 768  # DistilBERT: dim
    num_layers: int = 12  # num_hidden_layers / n_layers
    num_heads: int = 12  # num_attention_heads / n_heads
    intermediate_size: int = 3072  # DistilBERT: hidden_dim
    max_positions: int = 512  # max_position_embeddings
    type_vocab_size: int = 2  # 0: no token types (DistilBERT)
    layer_norm_eps: float = 1e-12
    activation: str = "gelu"  # hidden_act / activation
    head_activation: str = "gelu"
    dropout: float = 0.1  # hidden_dropout_prob / dropout
    attention_dropout: float = 0.1  # attention_probs_dropout_prob / attention_dropout
    classifier_dropout: float | None = None  # None: dropout
    num_labels: int = 2
    pad_token_id: int | None = 0
    transformers_extra: str = "{}"

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {', '.join(ARCHITECTURES)}; got "
                             f"{self.architecture!r}")
        check_positive(vocab_size=self.vocab_size, hidden_size=self.hidden_size,
                       num_layers=self.num_layers, num_heads=self.num_heads,
                       intermediate_size=self.intermediate_size,
                       max_positions=self.max_positions, num_labels=self.num_labels)
        activation_fn(self.activation)
        activation_fn(self.head_activation)
        if self.family == "distilbert" and self.type_vocab_size:
            raise ValueError("DistilBERT has no token types: type_vocab_size must be 0")
        if self.pad_token_id is None and self.family == "roberta":
            raise ValueError("RoBERTa numbers positions after pad_token_id: it cannot be None")
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"pad_token_id={self.pad_token_id} is not an id of the vocabulary "
                             f"(vocab_size={self.vocab_size})")

    @property
    def family(self) -> str:
        return ARCHITECTURES[self.architecture][0]

    @property
    def head(self) -> str | None:
        return ARCHITECTURES[self.architecture][1]


class BertOutput(NamedTuple):
    """transformers' output fields (None where the architecture has no such output)."""

    last_hidden_state: Any
    pooler_output: Any = None
    logits: Any = None


@torch_layer(None, keys=lambda m: {"word_embeddings": m.word,
                                   "position_embeddings": m.position,
                                   "token_type_embeddings": m.token_type, "LayerNorm": m.norm})
class TextEmbeddings(Module):
    """BERT's input block: ``dropout(norm(word[ids] + token_type[types] + position[pos]))``.

    ``positions="absolute"``: position ``t`` is ``t`` (BERT, DistilBERT). ``"roberta"``: tokens
    count from ``pad_token_id + 1`` and padding takes position ``pad_token_id``, as RoBERTa
    (fairseq) numbers them. ``type_vocab_size=0`` has no token types. The word (and RoBERTa's
    position) table's padding row gets no gradient, as transformers' ``padding_idx``.
    """

    def __init__(self, vocab_size: int, hidden_size: int, max_positions: int, *,
                 type_vocab_size: int = 2, pad_token_id: int | None = 0,
                 positions: str = "absolute",
                 layer_norm_eps: float = 1e-12, dropout: float = 0.1, rngs: nnx.Rngs):
        if positions not in ("absolute", "roberta"):
            raise ValueError(f"positions must be 'absolute' or 'roberta', got {positions!r}")
        self.positions = positions
        self.pad_token_id = pad_token_id
        self.max_positions = max_positions
        self.word = Embedding(vocab_size, hidden_size, padding_idx=pad_token_id, rngs=rngs)
        self.position = Embedding(
            max_positions, hidden_size,
            padding_idx=pad_token_id if positions == "roberta" else None, rngs=rngs)
        self.token_type = (Embedding(type_vocab_size, hidden_size, rngs=rngs)
                           if type_vocab_size else None)
        self.norm = LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = Dropout(dropout, rngs=rngs)

    def __call__(self, ids, token_type_ids=None):
        t = ids.shape[1]
        last = t - 1 if self.positions == "absolute" else t + self.pad_token_id
        if last >= self.max_positions:
            raise ValueError(f"sequence length {t} needs position {last}, but the model has "
                             f"max_position_embeddings={self.max_positions}; truncate the input")
        h = self.word(ids)
        if self.token_type is not None:
            if token_type_ids is None:  # transformers' default: every token of type 0
                h = F.add(h, F.getitem(value(self.token_type.weight), 0))
            else:
                h = F.add(h, self.token_type(_ids(token_type_ids, ids.shape, "token_type_ids")))
        elif token_type_ids is not None:
            raise ValueError("this model has no token types (DistilBERT): pass "
                             "token_type_ids=None")
        if self.positions == "absolute":
            h = F.add(h, F.getitem(value(self.position.weight), slice(0, t)))
        else:
            keep = (ids != self.pad_token_id).astype(jnp.int32)
            h = F.add(h, self.position(jnp.cumsum(keep, axis=1) * keep + self.pad_token_id))
        return self.dropout(self.norm(h))


def _ids(x, shape: tuple[int, ...], name: str) -> jax.Array:
    x = jnp.asarray(x)
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(x.shape)}; expected {tuple(shape)}, the shape "
                         "of input_ids")
    return x


# --------------------------------------------------------------------------- transformers' keys


def _qkv(attention, names: tuple[str, str, str]) -> dict[str, Any]:
    """Separate q, k, v Linears (transformers) over funcdl's fused projection."""
    d = attention.embed_dim
    w, b = attention.in_proj.w, attention.in_proj.b
    return {name: {"weight": Transposed(Part(w, i * d, (i + 1) * d)),
                   "bias": Part(b, i * d, (i + 1) * d)} for i, name in enumerate(names)}


def _bert_layer(layer) -> dict[str, Any]:
    return {"attention.self": _qkv(layer.attention, ("query", "key", "value")),
            "attention.output.dense": layer.attention.out_proj,
            "attention.output.LayerNorm": layer.norm1,
            "intermediate.dense": layer.feed_forward.linear1,
            "output.dense": layer.feed_forward.linear2, "output.LayerNorm": layer.norm2}


def _distilbert_layer(layer) -> dict[str, Any]:
    return {"attention": {**_qkv(layer.attention, ("q_lin", "k_lin", "v_lin")),
                          "out_lin": layer.attention.out_proj},
            "sa_layer_norm": layer.norm1, "ffn.lin1": layer.feed_forward.linear1,
            "ffn.lin2": layer.feed_forward.linear2, "output_layer_norm": layer.norm2}


def _body(m: Bert) -> dict[str, Any]:
    n, layers = m.config.num_layers, m.encoder.layers
    if m.config.family == "distilbert":
        return {"embeddings": m.embeddings,
                **{f"transformer.layer.{i}": Row(_distilbert_layer(layers), i) for i in range(n)}}
    return {"embeddings": m.embeddings,
            **{f"encoder.layer.{i}": Row(_bert_layer(layers), i) for i in range(n)},
            "pooler.dense": m.pooler}


def _head(m: Bert) -> dict[str, Any]:
    family, head = m.config.family, m.config.head
    if head == "classifier":
        return {"classifier": m.classifier}
    word = m.embeddings.word.weight
    h = m.head
    if family == "bert":
        return {"cls.predictions": {"bias": h.bias, "transform.dense": h.dense,
                                    "transform.LayerNorm": h.norm,
                                    "decoder.weight": Tied(word), "decoder.bias": Tied(h.bias)}}
    if family == "roberta":
        return {"lm_head": {"bias": h.bias, "dense": h.dense, "layer_norm": h.norm,
                            "decoder.weight": Tied(word), "decoder.bias": Tied(h.bias)}}
    return {"vocab_transform": h.dense, "vocab_layer_norm": h.norm,
            "vocab_projector.weight": Tied(word), "vocab_projector.bias": h.bias}


def transformers_keys(m: Bert) -> dict[str, Any]:
    """The transformers model's state-dict keys over ``m``'s parameters."""
    if m.config.head is None:
        return _body(m)
    return {m.config.family: _body(m), **_head(m)}


def _to_transformers(m: Bert, b) -> Any:
    from funcdl.layers.transformers_io import transformers_model

    return transformers_model(m.config)


@torch_layer(None, keys=transformers_keys, to_torch=_to_transformers)
class Bert(Module):
    """A BERT-family encoder (see the module docstring); ``config.architecture`` names the
    transformers class it equals.

    ``model(input_ids, attention_mask=None, token_type_ids=None)`` with ``input_ids (B, T)``;
    ``attention_mask`` is transformers': 1 (or True) at tokens, 0 at padding (the opposite of
    funcdl's ``key_padding_mask``). Returns a ``BertOutput``: ``last_hidden_state (B, T, D)``,
    ``pooler_output (B, D)`` (BertModel, RobertaModel, BertForSequenceClassification) and
    ``logits`` (``(B, T, V)`` for masked LM, ``(B, num_labels)`` for classification).
    """

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        c = config
        self.config = c
        self.embeddings = TextEmbeddings(
            c.vocab_size, c.hidden_size, c.max_positions, type_vocab_size=c.type_vocab_size,
            pad_token_id=c.pad_token_id,
            positions="roberta" if c.family == "roberta" else "absolute",
            layer_norm_eps=c.layer_norm_eps, dropout=c.dropout, rngs=rngs)
        self.encoder = TransformerEncoder(
            c.num_layers, c.hidden_size, c.num_heads, c.intermediate_size, dropout=c.dropout,
            attention_dropout=c.attention_dropout, activation_dropout=0.0,
            activation=c.activation, norm_first=False, layer_norm_eps=c.layer_norm_eps,
            rngs=rngs)
        if c.family == "distilbert":  # its attention output goes to the residual undropped
            self.encoder.layers.dropout1 = Dropout(0.0)
        self.pooler = (Linear(c.hidden_size, c.hidden_size, rngs=rngs)
                       if c.architecture in _POOLED else None)
        self.head = (MLMHead(c.hidden_size, c.vocab_size, embedding=self.embeddings.word,
                             activation=c.head_activation, layer_norm_eps=c.layer_norm_eps,
                             rngs=rngs) if c.head == "mlm" else None)
        classify = c.head == "classifier"
        rate = c.dropout if c.classifier_dropout is None else c.classifier_dropout
        self.classifier_dropout = Dropout(rate, rngs=rngs) if classify else None
        self.classifier = Linear(c.hidden_size, c.num_labels, rngs=rngs) if classify else None

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None) -> BertOutput:
        ids = jnp.asarray(input_ids)
        if ids.ndim != 2:
            raise ValueError(f"expected input_ids of shape (B, T), got {tuple(ids.shape)}")
        padding = None
        if attention_mask is not None:
            padding = _ids(attention_mask, ids.shape, "attention_mask") == 0
        h = self.encoder(self.embeddings(ids, token_type_ids), key_padding_mask=padding)
        pooled = logits = None
        if self.pooler is not None:
            pooled = F.tanh(self.pooler(F.getitem(h, (slice(None), 0))))
        if self.head is not None:
            logits = self.head(h)
        elif self.classifier is not None:
            logits = self.classifier(self.classifier_dropout(pooled))
        return BertOutput(h, pooled, logits)
