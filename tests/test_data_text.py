"""funcdl.data.text against torchtext's rules (hand-worked), torch, and counted statistics."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from funcdl.data.text import (
    Vocab,
    build_vocab,
    get_tokenizer,
    mask_tokens,
    ngrams,
    one_hot,
    pad_batch,
    train_bpe,
)

# Each expectation worked by hand through torchtext's basic_english: lowercase, then in order
# ' -> " '  ", " -> "", . -> " . ", <br /> -> " ", , -> " , ", ( ) ! ? spaced, ; : -> " ", split.
BASIC_ENGLISH_CASES = [
    ("You can now install TorchText using pip!",
     ["you", "can", "now", "install", "torchtext", "using", "pip", "!"]),  # torchtext's docstring
    ("Don't stop", ["don", "'", "t", "stop"]),
    ('He said "hi".', ["he", "said", "hi", "."]),
    ("Great movie!<br /><br />Loved it...",
     ["great", "movie", "!", "loved", "it", ".", ".", "."]),
    ("Wait?!;:ok", ["wait", "?", "!", "ok"]),
    ("Ça VA, Über (naïve)", ["ça", "va", ",", "über", "(", "naïve", ")"]),
    ("", []),
    ("   \t\n ", []),
    ("<BR />x", ["x"]),
    ("<br/>", ["<br/>"]),  # no space before the slash: not torchtext's pattern
    ("pi=3.14", ["pi=3", ".", "14"]),
    ("a-b  c\td\ne", ["a-b", "c", "d", "e"]),
    ("''", ["'", "'"]),
]


@pytest.mark.parametrize("text,expected", BASIC_ENGLISH_CASES)
def test_basic_english_matches_torchtext_rules(text, expected):
    assert get_tokenizer("basic_english")(text) == expected


def test_get_tokenizer_variants_and_errors():
    assert get_tokenizer(None)("A b  C.") == ["A", "b", "C."]
    upper = str.upper
    assert get_tokenizer(upper) is upper
    with pytest.raises(ValueError, match="basic_english"):
        get_tokenizer("spacy")
    with pytest.raises(ValueError, match="English"):
        get_tokenizer("basic_english", language="de")


def test_ngrams_follow_torchtext_ngrams_iterator():
    # torchtext's generator yields all tokens first, then the 2-grams, then the 3-grams
    assert ngrams(["here", "we", "are"], 2) == ["here", "we", "are", "here we", "we are"]
    assert ngrams(list("abcd"), 3) == ["a", "b", "c", "d", "a b", "b c", "c d", "a b c", "b c d"]
    assert ngrams(["x"], 3) == ["x"]
    with pytest.raises(ValueError):
        ngrams(["x"], 0)


CORPUS = [["b", "a", "c", "a"], ["c", "d", "b", "a"]]  # a:3, b:2, c:2, d:1


def test_build_vocab_orders_as_torchtext():
    assert build_vocab(CORPUS).get_itos() == ["a", "b", "c", "d"]  # ties b/c alphabetical
    v = build_vocab(CORPUS, specials=["<unk>", "<pad>"])
    assert v.get_itos() == ["<unk>", "<pad>", "a", "b", "c", "d"]
    assert build_vocab(CORPUS, min_freq=2).get_itos() == ["a", "b", "c"]
    assert build_vocab(CORPUS, specials=["<unk>"], special_first=False).get_itos() == [
        "a", "b", "c", "d", "<unk>"]
    assert build_vocab(CORPUS, specials=["<unk>", "<pad>"], max_tokens=4).get_itos() == [
        "<unk>", "<pad>", "a", "b"]
    # a special that occurs in the text is not listed twice
    assert build_vocab([["<unk>", "x", "<unk>"]], specials=["<unk>"]).get_itos() == ["<unk>", "x"]
    with pytest.raises(ValueError, match="max_tokens"):
        build_vocab(CORPUS, specials=["<unk>"], max_tokens=1)
    with pytest.raises(TypeError, match="tokenize"):
        build_vocab(["a b c"])


def test_vocab_lookups_default_index_and_unknown_tokens():
    v = build_vocab(CORPUS, specials=["<unk>"])
    assert v["a"] == 1 and v(["d", "a"]) == [4, 1] and len(v) == 5
    assert "c" in v and "z" not in v
    assert v.lookup_token(2) == "b" and v.lookup_tokens([4, 0]) == ["d", "<unk>"]
    assert v.get_stoi() == {"<unk>": 0, "a": 1, "b": 2, "c": 3, "d": 4}
    assert v.get_default_index() is None
    with pytest.raises(KeyError, match="'zebra'"):
        v["zebra"]
    v.set_default_index(v["<unk>"])
    assert v["zebra"] == 0 and v(["a", "zebra"]) == [1, 0]
    with pytest.raises(IndexError, match="out of bounds"):
        v.lookup_token(5)
    with pytest.raises(ValueError, match="already exists"):
        Vocab(["a", "a"])


def test_vocab_save_load_roundtrip(tmp_path):
    v = build_vocab([["naïve", "x", "x"]], specials=["<unk>"])
    v.set_default_index(0)
    path = tmp_path / "vocab.json"
    v.save(path)
    assert json.loads(path.read_text(encoding="utf-8")) == {
        "itos": ["<unk>", "x", "naïve"], "default_index": 0}
    w = Vocab.load(path)
    assert w == v and w["unseen"] == 0
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="bad.json"):
        Vocab.load(tmp_path / "bad.json")


def test_one_hot_matches_torch():
    ids = np.array([[0, 3], [2, 1]])
    for k in (-1, 5):
        want = torch.nn.functional.one_hot(torch.from_numpy(ids), k).numpy()
        got = one_hot(ids, k)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="smaller than num_classes"):
        one_hot(ids, 3)
    with pytest.raises(ValueError, match="non-negative"):
        one_hot(np.array([-1]), 3)


def test_pad_batch_by_hand():
    ids, mask = pad_batch([[5, 6, 7], [8], []], pad_id=0)
    assert ids.dtype == np.int32 and mask.dtype == np.bool_
    np.testing.assert_array_equal(ids, [[5, 6, 7], [8, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(mask, [[0, 0, 0], [0, 1, 1], [1, 1, 1]])
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=1, max_len=2)
    np.testing.assert_array_equal(ids, [[5, 6], [8, 1]])
    np.testing.assert_array_equal(mask, [[0, 0], [0, 1]])
    ids, _ = pad_batch([[5]], pad_id=1, max_len=3)
    np.testing.assert_array_equal(ids, [[5, 1, 1]])
    with pytest.raises(ValueError, match="truncate=True"):
        pad_batch([[5, 6, 7]], pad_id=0, max_len=2, truncate=False)
    with pytest.raises(ValueError, match="at least one"):
        pad_batch([], pad_id=0)


PAD, CLS, SEP, MASK, VOCAB = 0, 1, 2, 3, 40
SPECIALS = (PAD, CLS, SEP, MASK)
ROWS, LENGTH = 1280, 64  # both tests use this shape so the masker compiles once
masker = jax.jit(functools.partial(mask_tokens, mask_id=MASK, vocab_size=VOCAB,
                                   special_ids=SPECIALS))


def test_mask_tokens_rates_and_untouched_specials():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, LENGTH, size=ROWS)
    ids, padding = pad_batch([[CLS, *rng.integers(4, VOCAB, n - 2), SEP] for n in lengths], PAD,
                             max_len=LENGTH)
    inputs, labels = (np.asarray(a) for a in masker(ids, jax.random.key(0), padding_mask=padding))
    original = ids
    special = np.isin(original, SPECIALS)
    chosen = labels != -100
    assert not chosen[special].any()  # specials and padding never chosen ...
    np.testing.assert_array_equal(inputs[special], original[special])  # ... nor changed
    np.testing.assert_array_equal(labels[chosen], original[chosen])
    np.testing.assert_array_equal(inputs[~chosen], original[~chosen])
    eligible = (~special).sum()  # ~ 40,000 positions
    assert chosen.sum() / eligible == pytest.approx(0.15, abs=0.008)
    picked_in, picked_orig = inputs[chosen], original[chosen]
    masked = picked_in == MASK
    replaced = ~masked & (picked_in != picked_orig)
    kept = picked_in == picked_orig
    # a random draw equals the original 1 time in 36 (ids 4..39), so it then counts as kept
    assert masked.mean() == pytest.approx(0.8, abs=0.02)
    assert replaced.mean() == pytest.approx(0.1 * 35 / 36, abs=0.015)
    assert kept.mean() == pytest.approx(0.1 + 0.1 / 36, abs=0.015)
    assert not np.isin(picked_in[replaced], SPECIALS).any()  # random tokens are never special
    assert set(np.unique(picked_in[replaced])) == set(range(4, VOCAB))  # all others are drawn


def test_mask_tokens_padding_mask_argument_and_determinism():
    ids = jnp.full((ROWS, LENGTH), 7, dtype=jnp.int32)
    padding = jnp.broadcast_to(jnp.arange(LENGTH)[None, :] >= 10, ids.shape)
    inputs, labels = masker(ids, jax.random.key(1), padding_mask=padding)
    assert (np.asarray(labels)[:, 10:] == -100).all() and (np.asarray(inputs)[:, 10:] == 7).all()
    assert (np.asarray(labels)[:, :10] != -100).mean() == pytest.approx(0.15, abs=0.02)
    again, _ = masker(ids, jax.random.key(1), padding_mask=padding)
    np.testing.assert_array_equal(inputs, again)
    other, _ = masker(ids, jax.random.key(2), padding_mask=padding)
    assert (np.asarray(other) != np.asarray(inputs)).any()


def test_bpe_trains_offline_and_round_trips():
    from funcdl.data.datasets import python_docs_corpus

    tok = train_bpe(python_docs_corpus()[:600], vocab_size=600)
    assert tok.vocab.get_itos()[:3] == ["<pad>", "<unk>", "<mask>"]
    assert 256 + 3 < len(tok) <= 600
    for text in ["The statement is executed.", "naïve café — 東京 🙂", "", "  spaces\tand\nlines"]:
        assert tok.decode(tok.encode(text)) == text
    assert len(tok.tokenize("the")) == 1  # a word this frequent is one merged token
    ids = tok.encode("return the value")
    assert tok.vocab.lookup_tokens(ids) == tok.tokenize("return the value")
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe(["abc"], vocab_size=100)
