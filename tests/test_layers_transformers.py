"""Hugging Face BERT-family models against transformers itself: from_transformers,
load_transformers and save_transformers on tiny random configurations (no downloads).

Outputs within 1e-5 (float32) with padding and token types; gradients by jax.grad equal to
torch's backward through the transformers model and to funcdl.tape's; checkpoints round-trip
through transformers' own save_pretrained / from_pretrained; bad checkpoints are named errors.
"""

import functools
import json
import sys

import jax
import numpy as np
import pytest
import torch
import transformers as T
from flax import nnx
from safetensors.numpy import load_file, save_file

from funcdl import layers as L
from funcdl import tape
from funcdl.check import compare_with_jax

V, D, LAYERS, HEADS, FF, POS = 50, 16, 2, 2, 32, 20
B, S = 2, 7
BERT = dict(vocab_size=V, hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
            intermediate_size=FF, max_position_embeddings=POS)
DISTIL = dict(vocab_size=V, dim=D, n_layers=LAYERS, n_heads=HEADS, hidden_dim=FF,
              max_position_embeddings=POS)
CONFIGS = {
    "BertModel": lambda: T.BertConfig(**BERT),
    "BertForMaskedLM": lambda: T.BertConfig(**BERT, hidden_act="gelu_pytorch_tanh"),
    "BertForSequenceClassification": lambda: T.BertConfig(**BERT, num_labels=3),
    "DistilBertModel": lambda: T.DistilBertConfig(**DISTIL),
    "DistilBertForMaskedLM": lambda: T.DistilBertConfig(**DISTIL, activation="relu"),
    "RobertaModel": lambda: T.RobertaConfig(**BERT, type_vocab_size=1),
    "RobertaForMaskedLM": lambda: T.RobertaConfig(**BERT, layer_norm_eps=1e-5),
}
ARCHS = list(CONFIGS)


def _hf(arch: str):
    """The transformers model with every parameter moved off its initial value (std 0.02
    weights, LayerNorm's ones and zeros), so a tensor in the wrong place shows."""
    torch.manual_seed(ARCHS.index(arch))
    model = getattr(T, arch)(CONFIGS[arch]())
    with torch.no_grad():
        for p in model.parameters():  # a tied parameter once
            p.add_(0.2 * torch.randn(p.shape))
    return model.eval()


def _inputs(arch: str):
    """Token ids with padding (sequence 0 ends after 4 tokens) and both token types."""
    pad = CONFIGS[arch]().pad_token_id
    ids = np.random.default_rng(0).integers(3, V, (B, S))
    mask = np.ones((B, S), np.int64)
    mask[0, 4:] = 0
    ids[0, 4:] = pad
    types = np.zeros((B, S), np.int64)
    types[1, 3:] = 1
    if arch.startswith("Distil") or arch == "RobertaModel":  # no second token type
        types = None
    return ids, mask, types


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, ids, mask, types):
    return nnx.merge(graphdef, state)(ids, mask, types)


def _ours(model, ids, mask, types):
    out = _forward(*nnx.split(model), ids, mask, types)
    return {k: np.asarray(v) for k, v in out._asdict().items() if v is not None}


def _theirs(hf, ids, mask, types):
    kw = {} if types is None else {"token_type_ids": torch.from_numpy(types)}
    mask = None if mask is None else torch.from_numpy(mask)
    with torch.no_grad():
        out = hf(torch.from_numpy(ids), attention_mask=mask, output_hidden_states=True, **kw)
    got = {"last_hidden_state": out.hidden_states[-1].numpy()}
    for name in ("pooler_output", "logits"):
        if getattr(out, name, None) is not None:
            got[name] = getattr(out, name).numpy()
    return got


@pytest.fixture(scope="module")
def ported():
    out = {}
    for arch in ARCHS:
        hf = _hf(arch)
        out[arch] = (hf, L.from_transformers(hf))
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_outputs_equal_transformers_with_padding_and_token_types(ported, arch):
    hf, model = ported[arch]
    assert type(model) is L.Bert and model.config.architecture == arch
    ids, mask, types = _inputs(arch)
    ours, theirs = _ours(model, ids, mask, types), _theirs(hf, ids, mask, types)
    assert theirs.keys() <= ours.keys()  # and BertForSequenceClassification's pooler_output
    for name, want in theirs.items():
        np.testing.assert_allclose(ours[name], want, atol=1e-5, rtol=1e-5, err_msg=name)


def test_outputs_without_mask_and_token_types(ported):
    hf, model = ported["BertForMaskedLM"]
    ids, _, _ = _inputs("BertForMaskedLM")
    ours, theirs = _ours(model, ids, None, None), _theirs(hf, ids, None, None)
    for name, want in theirs.items():
        np.testing.assert_allclose(ours[name], want, atol=1e-5, rtol=1e-5, err_msg=name)


def _loss_weights(outputs: dict) -> dict:
    return {k: np.random.default_rng(i).uniform(0.5, 1.5, v.shape).astype(np.float32)
            for i, (k, v) in enumerate(sorted(outputs.items()))}


# Together these two compute every path: token types, pooler and classifier (BERT), RoBERTa's
# positions with their padding row, the tied masked-LM decoder. (DistilBERT computes what BERT
# does under other names, which the output and checkpoint tests check.)
@pytest.mark.parametrize("arch", ["BertForSequenceClassification", "RobertaForMaskedLM"])
def test_gradients_equal_torch_backward_and_tape(ported, arch):
    hf, model = ported[arch]
    ids, mask, types = _inputs(arch)
    weights = _loss_weights(_theirs(hf, ids, mask, types))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p):
        out = nnx.merge(graphdef, p, rest)(ids, mask, types)._asdict()
        total = 0.0
        for name, w in weights.items():
            total = tape.add(total, tape.sum(tape.mul(out[name], w)))
        return total

    result = compare_with_jax(loss, params)
    assert result.leafwise < 1e-5  # the tape and jax.grad

    kw = {} if types is None else {"token_type_ids": torch.from_numpy(types)}
    out = hf(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
             output_hidden_states=True, **kw)
    named = {"last_hidden_state": out.hidden_states[-1], "logits": out.logits}
    hf.zero_grad()
    sum((named[k] * torch.from_numpy(w)).sum() for k, w in weights.items()).backward()
    grads = nnx.merge(graphdef, result.jax_grads, rest)  # the gradients under torch's names
    ours = L.to_torch_state_dict(grads)
    theirs = {k: p.grad.numpy() for k, p in hf.named_parameters()}
    assert set(theirs) <= set(ours)
    for k, g in theirs.items():
        np.testing.assert_allclose(ours[k], g, atol=2e-5, rtol=1e-4, err_msg=k)
    word = [k for k in theirs if k.endswith("word_embeddings.weight")][0]
    pad = CONFIGS[arch]().pad_token_id
    # the padding row trains only through the tied decoder, as in transformers
    np.testing.assert_allclose(ours[word][pad], theirs[word][pad], atol=2e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_checkpoints_round_trip_through_transformers(ported, arch, tmp_path):
    hf, model = ported[arch]
    # transformers' save_pretrained -> load_transformers: the same parameters
    hf.save_pretrained(tmp_path / "hf")
    loaded = L.load_transformers(tmp_path / "hf")
    assert loaded.config == model.config
    want = L.to_torch_state_dict(model)
    for k, v in L.to_torch_state_dict(loaded).items():
        np.testing.assert_array_equal(v, want[k], err_msg=k)
    # save_transformers -> transformers' from_pretrained: the model it started from
    L.save_transformers(loaded, tmp_path / "ours")
    back = getattr(T, arch).from_pretrained(tmp_path / "ours")
    assert back.config.to_dict().keys() >= {"architectures", "model_type", "vocab_size"}
    theirs = hf.state_dict()
    for k, v in back.state_dict().items():
        torch.testing.assert_close(v, theirs[k], rtol=0, atol=0, msg=k)
    ids, mask, types = _inputs(arch)
    for name, v in _theirs(back, ids, mask, types).items():
        np.testing.assert_array_equal(v, _theirs(hf, ids, mask, types)[name], err_msg=name)


def test_to_torch_builds_the_transformers_model(ported):
    hf, model = ported["RobertaModel"]
    back = L.to_torch(model)
    assert type(back) is T.RobertaModel and not back.training
    for k, v in back.state_dict().items():
        torch.testing.assert_close(v, hf.state_dict()[k], rtol=0, atol=0, msg=k)
    assert type(L.from_torch(hf)) is L.Bert  # from_torch hands transformers models over


def test_load_transformers_needs_neither_torch_nor_transformers(ported, tmp_path, monkeypatch):
    ported["DistilBertForMaskedLM"][0].save_pretrained(tmp_path)
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    monkeypatch.setitem(sys.modules, "transformers", None)
    model = L.load_transformers(tmp_path)
    L.save_transformers(model, tmp_path / "again")
    assert load_file(tmp_path / "again" / "model.safetensors").keys() == load_file(
        tmp_path / "model.safetensors").keys()


# --------------------------------------------------------------------------- bad checkpoints


@pytest.fixture
def checkpoint(ported, tmp_path):
    """A BertForMaskedLM directory, and a function rewriting its config or tensors."""
    ported["BertForMaskedLM"][0].save_pretrained(tmp_path)

    def edit(config=None, tensors=None):
        if config is not None:
            d = json.loads((tmp_path / "config.json").read_text())
            config(d)
            (tmp_path / "config.json").write_text(json.dumps(d))
        if tensors is not None:
            arrays = load_file(tmp_path / "model.safetensors")
            tensors(arrays)
            save_file(arrays, tmp_path / "model.safetensors", metadata={"format": "pt"})
        return tmp_path

    return edit


PREFIX = "bert.encoder.layer.1."


@pytest.mark.parametrize("config, tensors, error, words", [
    (lambda d: d.update(architectures=["GPT2LMHeadModel"]), None, L.UnsupportedModuleError,
     "the architecture GPT2LMHeadModel (supported: BertModel"),
    (lambda d: d.update(position_embedding_type="relative_key"), None, L.UnsupportedModuleError,
     "position_embedding_type='relative_key'"),
    (lambda d: d.update(hidden_act="mish"), None, L.UnsupportedModuleError, "hidden_act='mish'"),
    (None, lambda a: a.pop(PREFIX + "output.dense.bias"), RuntimeError,
     f'Missing key(s) in state_dict: "{PREFIX}output.dense.bias"'),
    (None, lambda a: a.update(extra=np.zeros(3, np.float32)), RuntimeError,
     'Unexpected key(s) in state_dict: "extra"'),
    (None, lambda a: a.update({PREFIX + "attention.self.key.weight": np.zeros((16, 8),
                                                                            np.float32)}),
     RuntimeError, f"size mismatch for {PREFIX}attention.self.key.weight: copying a param with "
                   "shape (16, 8) from checkpoint, the shape in current model is (16, 16)"),
    (lambda d: d.update(intermediate_size=16), None, RuntimeError,
     f"size mismatch for {PREFIX}intermediate.dense.weight: copying a param with shape "
     "(32, 16) from checkpoint, the shape in current model is (16, 16)"),
    (lambda d: d.update(num_hidden_layers=1), None, RuntimeError,
     f'Unexpected key(s) in state_dict: "{PREFIX}attention.output.LayerNorm.bias", '),
    (None, lambda a: a.update({"cls.predictions.bias": np.zeros(V, np.int64)}), TypeError,
     "cls.predictions.bias: expected a floating tensor for the float32 parameter of shape "
     "(50,), got int64 of shape (50,)"),
    (None, lambda a: a.update({"cls.predictions.decoder.weight": np.zeros((V, D), np.float32)}),
     RuntimeError, "cls.predictions.decoder.weight is tied to "
                   "bert.embeddings.word_embeddings.weight"),
])
def test_bad_checkpoints_are_named_errors(checkpoint, config, tensors, error, words):
    path = checkpoint(config, tensors)
    with pytest.raises(error) as caught:
        L.load_transformers(path)
    assert words in str(caught.value)


def test_half_precision_checkpoints_load_as_float32(ported, checkpoint):
    path = checkpoint(tensors=lambda a: a.update({k: v.astype(np.float16) for k, v in a.items()}))
    model = L.load_transformers(path)
    want = {k: v.astype(np.float16).astype(np.float32)
            for k, v in L.to_torch_state_dict(ported["BertForMaskedLM"][1]).items()}
    for k, v in L.to_torch_state_dict(model).items():
        assert v.dtype == np.float32
        np.testing.assert_array_equal(v, want[k], err_msg=k)


def test_missing_files_and_unsupported_models_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        L.load_transformers(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"],
                                                       "model_type": "bert"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="no model.safetensors .* found config.json, "
                                                "pytorch_model.bin"):
        L.load_transformers(tmp_path)
    tiny = T.BertConfig(**BERT)
    with pytest.raises(L.UnsupportedModuleError, match="BertForTokenClassification"):
        L.from_transformers(T.BertForTokenClassification(tiny))
    with pytest.raises(L.UnsupportedModuleError, match="is_decoder=True"):
        L.from_transformers(T.BertModel(T.BertConfig(**BERT, is_decoder=True)))
    with pytest.raises(TypeError, match="save_transformers takes a funcdl Bert"):
        L.save_transformers(L.Linear(2, 2, rngs=nnx.Rngs(0)), tmp_path / "x")


@pytest.mark.parametrize("family, config", [("bert", T.BertConfig), ("roberta", T.RobertaConfig),
                                            ("distilbert", T.DistilBertConfig)])
def test_defaults_for_fields_a_config_json_leaves_out_are_transformers_own(family, config):
    from funcdl.layers.transformers_io import _DEFAULTS

    theirs = config().to_dict()
    assert {k: theirs[k] for k in _DEFAULTS[family]} == _DEFAULTS[family]
