"""Hugging Face ``transformers`` BERT-family models into funcdl and back.

- ``from_transformers(model)``: a live transformers model -> ``Bert`` with its weights.
- ``load_transformers(path)``: a ``save_pretrained`` directory (``config.json`` and
  ``model.safetensors``, or its shards) -> ``Bert``, with ``safetensors`` only (no torch, no
  transformers).
- ``save_transformers(model, path)``: the directory transformers' ``from_pretrained`` reads.

The configuration is read from transformers' config (its field names, and its class defaults for
fields a ``config.json`` leaves out); what funcdl does not compute (relative positions, a decoder,
untied decoders, sinusoidal DistilBERT positions, an unknown activation) raises
``UnsupportedModuleError`` naming it. Loading checks every key, shape and dtype before writing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx

from funcdl.layers.bert import ARCHITECTURES, Bert, BertConfig
from funcdl.layers.counterpart import UnsupportedModuleError
from funcdl.layers.safetensors_io import read_safetensors, save_safetensors
from funcdl.layers.torch_io import check_dtypes, load_torch_state_dict

__all__ = ["from_transformers", "load_transformers", "save_transformers",
           "config_from_transformers", "config_to_transformers", "transformers_model"]

# transformers' field -> BertConfig's, per family (the rest is kept as transformers_extra)
_FIELDS = {
    "bert": {"vocab_size": "vocab_size", "hidden_size": "hidden_size",
             "num_hidden_layers": "num_layers", "num_attention_heads": "num_heads",
             "intermediate_size": "intermediate_size",
             "max_position_embeddings": "max_positions", "type_vocab_size": "type_vocab_size",
             "layer_norm_eps": "layer_norm_eps", "hidden_act": "activation",
             "hidden_dropout_prob": "dropout",
             "attention_probs_dropout_prob": "attention_dropout",
             "classifier_dropout": "classifier_dropout", "pad_token_id": "pad_token_id"},
    "distilbert": {"vocab_size": "vocab_size", "dim": "hidden_size", "n_layers": "num_layers",
                   "n_heads": "num_heads", "hidden_dim": "intermediate_size",
                   "max_position_embeddings": "max_positions", "activation": "activation",
                   "dropout": "dropout", "attention_dropout": "attention_dropout",
                   "pad_token_id": "pad_token_id"},
}
_FIELDS["roberta"] = _FIELDS["bert"]

# transformers' config-class defaults, for fields a config.json leaves out
_BERT_DEFAULTS = {"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12,
                  "num_attention_heads": 12, "intermediate_size": 3072, "hidden_act": "gelu",
                  "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
                  "max_position_embeddings": 512, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
                  "pad_token_id": 0, "classifier_dropout": None}
_DEFAULTS = {
    "bert": _BERT_DEFAULTS,
    "roberta": {**_BERT_DEFAULTS, "vocab_size": 50265, "pad_token_id": 1},
    "distilbert": {"vocab_size": 30522, "max_position_embeddings": 512, "n_layers": 6,
                   "n_heads": 12, "dim": 768, "hidden_dim": 3072, "dropout": 0.1,
                   "attention_dropout": 0.1, "activation": "gelu", "pad_token_id": 0},
}

# transformers' activation names -> funcdl's (and back, as what funcdl computes)
_ACTIVATIONS = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh",
                "relu": "relu", "silu": "silu", "swish": "silu", "tanh": "tanh",
                "sigmoid": "sigmoid"}
_ACTIVATION_NAMES = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu",
                     "silu": "silu", "tanh": "tanh", "sigmoid": "sigmoid"}
_NOT_KEPT = ("architectures", "model_type", "transformers_version", "_name_or_path", "dtype",
             "torch_dtype", "num_labels")


def _unsupported(where: str, what: str) -> UnsupportedModuleError:
    return UnsupportedModuleError(f"{where}: {what} is not supported by funcdl's Bert")


def _architecture(d: Mapping[str, Any]) -> str:
    names = d.get("architectures") or []
    if names:
        return names[0]
    # no architectures: the base model of the model type
    return {"bert": "BertModel", "roberta": "RobertaModel",
            "distilbert": "DistilBertModel"}.get(d.get("model_type"), str(d.get("model_type")))


def config_from_transformers(d: Mapping[str, Any], architecture: str | None = None, *,
                             where: str = "config",
                             extra: Mapping[str, Any] | None = None) -> BertConfig:
    """A ``BertConfig`` from transformers' config fields (``config.json``'s content, or
    ``model.config.to_dict()``); ``architecture`` defaults to the config's ``architectures``.
    The fields funcdl does not read are kept from ``extra`` (default: ``d``) for saving."""
    arch = architecture or _architecture(d)
    if arch not in ARCHITECTURES:
        raise _unsupported(where, f"the architecture {arch} (supported: "
                                  f"{', '.join(ARCHITECTURES)})")
    family, head = ARCHITECTURES[arch]
    if d.get("model_type", family) != family:
        raise ValueError(f"{where}: model_type {d.get('model_type')!r} does not match the "
                         f"architecture {arch} (model_type {family!r})")
    d = {**_DEFAULTS[family], **d}
    if d.get("position_embedding_type", "absolute") != "absolute":
        raise _unsupported(where, f"position_embedding_type={d['position_embedding_type']!r}")
    for flag in ("is_decoder", "add_cross_attention", "sinusoidal_pos_embds"):
        if d.get(flag):
            raise _unsupported(where, f"{flag}=True")
    if head == "mlm" and not d.get("tie_word_embeddings", True):
        raise _unsupported(where, "an untied masked-LM decoder (tie_word_embeddings=False)")
    act_key = "activation" if family == "distilbert" else "hidden_act"
    act = d[act_key]
    if act not in _ACTIVATIONS:
        raise _unsupported(where, f"{act_key}={act!r} (supported: {', '.join(_ACTIVATIONS)})")
    fields = {ours: d[theirs] for theirs, ours in _FIELDS[family].items()}
    fields["activation"] = _ACTIVATIONS[act]
    if family == "distilbert":
        fields["type_vocab_size"] = 0
        fields["layer_norm_eps"] = 1e-12  # fixed in transformers' DistilBERT
    labels = d.get("id2label")
    extra = {k: v for k, v in (d if extra is None else extra).items()
             if k not in _FIELDS[family] and k not in _NOT_KEPT}
    return BertConfig(
        architecture=arch, **fields,
        head_activation="gelu" if family == "roberta" else fields["activation"],
        num_labels=len(labels) if labels else int(d.get("num_labels", 2)),
        transformers_extra=json.dumps(extra, sort_keys=True, default=str))


def config_to_transformers(c: BertConfig) -> dict[str, Any]:
    """transformers' config fields (``config.json``) for ``c``."""
    d = json.loads(c.transformers_extra)
    fields = dataclasses.asdict(c)
    fields["activation"] = _ACTIVATION_NAMES[c.activation]
    d |= {theirs: fields[ours] for theirs, ours in _FIELDS[c.family].items()}
    if c.family != "distilbert":
        d["type_vocab_size"] = c.type_vocab_size
    if len(d.get("id2label") or {}) != c.num_labels:
        d["id2label"] = {str(i): f"LABEL_{i}" for i in range(c.num_labels)}
        d["label2id"] = {f"LABEL_{i}": i for i in range(c.num_labels)}
    d |= {"architectures": [c.architecture], "model_type": c.family, "dtype": "float32",
          "tie_word_embeddings": True}
    return d


def transformers_model(c: BertConfig) -> Any:
    """A new (randomly initialised) transformers model of ``c``'s configuration."""
    import transformers

    d = config_to_transformers(c)
    config = transformers.AutoConfig.for_model(d.pop("model_type"), **d)
    return getattr(transformers, c.architecture)(config)


def _clean(arrays: Mapping[str, Any]) -> dict[str, Any]:
    """transformers' legacy spellings: ``LayerNorm.gamma/beta``, a saved ``position_ids``."""
    out = {}
    for k, v in arrays.items():
        if k.endswith("position_ids"):  # a buffer older transformers saved; not a parameter
            continue
        k = k.removesuffix(".gamma") + ".weight" if k.endswith(".gamma") else k
        k = k.removesuffix(".beta") + ".bias" if k.endswith(".beta") else k
        out[k] = v
    return out


def from_transformers(model: Any, *, rngs: nnx.Rngs | None = None) -> Bert:
    """The funcdl ``Bert`` equal to a live transformers model (one of ``ARCHITECTURES``), with
    its weights (floating dtypes cast to float32) and its train/eval mode. ``rngs`` seeds the
    dropout streams (default ``nnx.Rngs(0)``)."""
    arch = type(model).__name__
    if arch not in ARCHITECTURES:
        raise _unsupported("from_transformers", f"{type(model).__module__}.{arch} (supported: "
                                                f"{', '.join(ARCHITECTURES)})")
    # the fields save_pretrained would write (to_diff_dict) are the ones kept for saving
    config = config_from_transformers(model.config.to_dict(), arch,
                                      where=f"from_transformers({arch})",
                                      extra=model.config.to_diff_dict())
    bert = Bert(config, rngs=nnx.Rngs(0) if rngs is None else rngs)
    load_torch_state_dict(bert, _clean(model.state_dict()), strict=True)
    if not model.training:
        bert.eval()
    return bert


def _weights(path: pathlib.Path) -> dict[str, np.ndarray]:
    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    if single.is_file():
        return read_safetensors(single)
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for f in files for k, v in read_safetensors(path / f).items()}
    found = ", ".join(sorted(p.name for p in path.iterdir())) or "nothing"
    raise FileNotFoundError(
        f"{path}: no model.safetensors (or model.safetensors.index.json); found {found}. "
        "Save with save_pretrained(path) (safetensors is its default) or save_transformers")


def load_transformers(path: str | os.PathLike, *, rngs: nnx.Rngs | None = None) -> Bert:
    """The funcdl ``Bert`` of a ``save_pretrained`` directory (``config.json`` and
    ``model.safetensors``), in eval mode like ``from_pretrained``; reads files only (no torch,
    no transformers, no downloads).

    Raises ``UnsupportedModuleError`` for an architecture or configuration funcdl does not
    compute, ``RuntimeError`` naming every missing, unexpected or mis-shaped tensor (a config that
    disagrees with the weights) with the expected and actual shapes, and ``TypeError`` for a
    non-floating tensor; floating tensors (float16, bfloat16) are cast to float32.
    """
    path = pathlib.Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path}: no config.json (expected a directory written by "
                                "save_pretrained or save_transformers)")
    config = config_from_transformers(json.loads(config_file.read_text()),
                                      where=str(config_file))
    arrays = _clean(_weights(path))
    bert = Bert(config, rngs=nnx.Rngs(0) if rngs is None else rngs)
    check_dtypes(bert, arrays, str(path))
    load_torch_state_dict(bert, arrays, strict=True)
    bert.eval()
    return bert


def save_transformers(model: Bert, path: str | os.PathLike) -> pathlib.Path:
    """Write ``model`` as transformers' ``save_pretrained`` does: ``config.json`` and
    ``model.safetensors`` (float32, tied tensors once), which
    ``transformers.AutoModel*.from_pretrained(path)`` loads. Returns the directory."""
    if not isinstance(model, Bert):
        raise TypeError(f"save_transformers takes a funcdl Bert, got {type(model).__name__}; "
                        "for any module use save_safetensors")
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = json.dumps(config_to_transformers(model.config), indent=2, sort_keys=True)
    save_safetensors(model, path / "model.safetensors", tied=False)
    (path / "config.json").write_text(config + "\n")
    return path
