"""funcdl.data.text.load_tokenizer against transformers' own fast tokenizer on the same
``tokenizer.json``: the same ids, attention masks and token types, with padding, pairs and
truncation, for WordPiece, byte-level BPE and Unigram tokenizers trained offline here."""

import json

import numpy as np
import pytest
import transformers as T
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    pre_tokenizers,
    trainers,
)

from funcdl.data.datasets import python_docs_corpus
from funcdl.data.text import PretrainedTokenizer, load_tokenizer, train_wordpiece

TEXTS = ["The interpreter reads a line.", "Lists are mutable sequences, typically used to store "
         "collections of homogeneous items!", "ünïcödé and UPPER case", ""]
PAIRS = ["a second segment", "short", "Another one, longer than the first of them all", "x"]


@pytest.fixture(scope="module")
def corpus():
    return python_docs_corpus()[:2000]


@pytest.fixture(scope="module")
def wordpiece(corpus, tmp_path_factory):
    """A BERT-style tokenizer.json, and transformers' tokenizer of it saved as a directory."""
    d = tmp_path_factory.mktemp("wordpiece")
    path = d / "tokenizer.json"
    train_wordpiece(corpus, 300).save(path)
    hf = T.PreTrainedTokenizerFast(tokenizer_file=str(path), pad_token="[PAD]",
                                   unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                                   mask_token="[MASK]")
    hf.save_pretrained(d / "saved")
    return path, hf


def _same(ours: dict, theirs) -> None:
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        assert ours[name].dtype == np.int32
        np.testing.assert_array_equal(ours[name], np.asarray(theirs[name]), err_msg=name)
    np.testing.assert_array_equal(ours["key_padding_mask"],
                                  np.asarray(theirs["attention_mask"]) == 0)


@pytest.mark.parametrize("kwargs", [
    {},
    {"padding": "max_length", "max_length": 48},
    {"truncation": True, "max_length": 6},
    {"padding": "longest", "truncation": True, "max_length": 9, "pairs": True},
    {"add_special_tokens": False},
])
def test_batches_equal_transformers(wordpiece, kwargs):
    path, hf = wordpiece
    kwargs = dict(kwargs)
    pairs = PAIRS if kwargs.pop("pairs", False) else None
    ours = load_tokenizer(path, pad_token="[PAD]")(TEXTS, pairs, **kwargs)
    theirs = hf(TEXTS, pairs, padding=kwargs.pop("padding", True), return_token_type_ids=True,
                **kwargs)
    _same(ours, theirs)


def test_a_saved_directory_names_its_padding_token(wordpiece):
    path, hf = wordpiece
    tok = load_tokenizer(path.parent / "saved")  # tokenizer.json + tokenizer_config.json
    assert (tok.pad_token, tok.pad_id) == ("[PAD]", hf.pad_token_id)
    _same(tok(TEXTS), hf(TEXTS, padding=True, return_token_type_ids=True))


def test_vocab_encode_decode_equal_transformers(wordpiece):
    path, hf = wordpiece
    tok = load_tokenizer(path)
    assert len(tok) == len(hf) and tok.vocab.get_stoi() == hf.get_vocab()
    for text, pair in zip(TEXTS, PAIRS):
        ids = tok.encode(text, pair)
        assert ids == hf(text, pair)["input_ids"]
        assert tok.decode(ids, skip_special_tokens=True) == hf.decode(ids,
                                                                       skip_special_tokens=True)
        assert tok.tokenize(text) == hf.tokenize(text)
    assert tok.encode_batch(TEXTS) == [hf(t)["input_ids"] for t in TEXTS]
    assert tok.id_to_token(tok.token_to_id("[MASK]")) == "[MASK]"


def test_the_tokenizers_own_settings_are_left_as_they_were(wordpiece):
    path, _ = wordpiece
    tok = load_tokenizer(path, pad_token="[PAD]")
    tok(TEXTS, truncation=True, max_length=5)
    assert tok._tok.padding is None and tok._tok.truncation is None
    assert len(tok.encode(TEXTS[1])) > 5


def _bpe(corpus):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "<s>", "</s>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.enable_padding(pad_id=0, pad_token="<pad>", direction="left")  # the file's own setting
    return tok


def _unigram(corpus):
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(corpus, trainers.UnigramTrainer(
        vocab_size=300, special_tokens=["<pad>", "<unk>"], unk_token="<unk>",
        show_progress=False))
    return tok


@pytest.mark.parametrize("make, pad", [(_bpe, None), (_unigram, "<pad>")])
def test_bpe_and_unigram_equal_transformers(corpus, tmp_path, make, pad):
    path = tmp_path / "tokenizer.json"
    make(corpus[:500]).save(str(path))  # a smaller corpus: Unigram training is slow
    ours = load_tokenizer(path, pad_token=pad)
    hf = T.PreTrainedTokenizerFast(tokenizer_file=str(path), **({} if pad is None else
                                                                 {"pad_token": pad}))
    assert ours.padding_side == hf.padding_side  # left for the BPE file, which says so
    _same(ours(TEXTS), hf(TEXTS, padding=True, return_token_type_ids=True))
    text = TEXTS[2] + " " + TEXTS[1]
    assert ours.decode(ours.encode(text)) == hf.decode(hf(text)["input_ids"])


def test_bad_input_is_named(wordpiece, tmp_path):
    path, _ = wordpiece
    with pytest.raises(FileNotFoundError, match="no tokenizer.json at"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": "nope"}))
    with pytest.raises(ValueError, match="not a tokenizers tokenizer.json"):
        load_tokenizer(tmp_path / "tokenizer.json")
    tok = load_tokenizer(path)  # the file names no padding token
    with pytest.raises(ValueError, match="no padding token: pass load_tokenizer"):
        tok(TEXTS)
    with pytest.raises(ValueError, match="encode to different lengths"):
        tok(TEXTS, padding=False)
    with pytest.raises(ValueError, match="need max_length"):
        load_tokenizer(path, pad_token="[PAD]")(TEXTS, truncation=True)
    with pytest.raises(ValueError, match="pad_token '<nope>' is not in the vocabulary"):
        load_tokenizer(path, pad_token="<nope>")
    assert isinstance(tok, PretrainedTokenizer)
    with pytest.raises(ValueError, match=r"specials must include \['\[CLS\]'\]"):
        train_wordpiece(TEXTS, 100, specials=("[PAD]", "[UNK]", "[SEP]"))
