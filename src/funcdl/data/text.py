"""Text pipeline: tokenizers, n-grams, vocabulary, one-hot, padding, BERT masking, BPE, and
Hugging Face ``tokenizer.json`` files (``load_tokenizer``).

``get_tokenizer``, ``ngrams`` and ``build_vocab`` follow torchtext (``torchtext.data.utils`` and
``torchtext.vocab.build_vocab_from_iterator``) rule for rule. JAX and ``tokenizers`` are imported
only by the functions that need them, so DataLoader worker processes stay light.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from funcdl.data.collate import default_collate

__all__ = [
    "get_tokenizer",
    "basic_english",
    "ngrams",
    "Vocab",
    "build_vocab",
    "one_hot",
    "pad_batch",
    "pad_collate",
    "mask_tokens",
    "PretrainedTokenizer",
    "BPETokenizer",
    "train_bpe",
    "train_wordpiece",
    "load_tokenizer",
]

# torchtext.data.utils._patterns / _replacements, applied in this order after lowercasing.
_BASIC_ENGLISH_RULES = [
    (re.compile(p), r)
    for p, r in [
        (r"\'", " '  "),
        (r"\"", ""),
        (r"\.", " . "),
        (r"<br \/>", " "),
        (r",", " , "),
        (r"\(", " ( "),
        (r"\)", " ) "),
        (r"\!", " ! "),
        (r"\?", " ? "),
        (r"\;", " "),
        (r"\:", " "),
        (r"\s+", " "),
    ]
]


def basic_english(line: str) -> list[str]:
    """torchtext's ``basic_english``: lowercase, space out ``' . , ( ) ! ?``, drop ``"``, turn
    ``<br />``, ``;`` and ``:`` into spaces, split on whitespace."""
    line = line.lower()
    for pattern, replacement in _BASIC_ENGLISH_RULES:
        line = pattern.sub(replacement, line)
    return line.split()


def _split(line: str) -> list[str]:
    return line.split()


def get_tokenizer(tokenizer: str | Callable[[str], list[str]] | None,
                  language: str = "en") -> Callable[[str], list[str]]:
    """A string -> tokens function: ``None`` is ``str.split``, ``"basic_english"`` torchtext's
    rules, a callable is returned as is."""
    if tokenizer is None:
        return _split
    if tokenizer == "basic_english":
        if language != "en":
            raise ValueError("Basic normalization is only available for English (en)")
        return basic_english
    if callable(tokenizer):
        return tokenizer
    raise ValueError(f"Requested tokenizer {tokenizer!r}; valid choices are None (str.split), "
                     "'basic_english', or a callable that takes a string and returns tokens "
                     "(for subwords see funcdl.data.text.train_bpe)")


def ngrams(tokens: Sequence[str], n: int) -> list[str]:
    """The tokens, then their 2-grams, ..., n-grams joined by spaces (torchtext's order).

    ``ngrams(["here", "we", "are"], 2) == ["here", "we", "are", "here we", "we are"]``
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    tokens = list(tokens)
    out = list(tokens)
    for k in range(2, n + 1):
        out.extend(" ".join(g) for g in zip(*[tokens[i:] for i in range(k)]))
    return out


class Vocab:
    """Token <-> index mapping, torchtext's ``Vocab`` API.

    ``vocab[token]`` and ``vocab(tokens)`` map to indices; an unknown token gives the default
    index when one is set (``set_default_index``) and a ``KeyError`` naming it otherwise.
    """

    def __init__(self, tokens: Iterable[str], default_index: int | None = None):
        self._itos: list[str] = []
        self._stoi: dict[str, int] = {}
        for t in tokens:
            self.append_token(t)
        self._default: int | None = None
        self.set_default_index(default_index)

    def __len__(self) -> int:
        return len(self._itos)

    def __contains__(self, token: str) -> bool:
        return token in self._stoi

    def __getitem__(self, token: str) -> int:
        index = self._stoi.get(token)
        if index is not None:
            return index
        if self._default is None:
            raise KeyError(f"token {token!r} is not in the vocabulary and no default index is "
                           "set; call vocab.set_default_index(vocab['<unk>']) to map unknown "
                           "tokens")
        return self._default

    def __call__(self, tokens: Iterable[str]) -> list[int]:
        return self.lookup_indices(tokens)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Vocab) and self._itos == other._itos
                and self._default == other._default)

    def __repr__(self) -> str:
        head = ", ".join(map(repr, self._itos[:5]))
        return f"Vocab({len(self)} tokens: [{head}{', ...' if len(self) > 5 else ''}])"

    def lookup_indices(self, tokens: Iterable[str]) -> list[int]:
        return [self[t] for t in tokens]

    def lookup_token(self, index: int) -> str:
        if not 0 <= index < len(self._itos):
            raise IndexError(f"Specified index {index} is out of bounds of the size of itos "
                             f"dictionary: {len(self._itos)}.")
        return self._itos[index]

    def lookup_tokens(self, indices: Iterable[int]) -> list[str]:
        return [self.lookup_token(int(i)) for i in indices]

    def get_itos(self) -> list[str]:
        return list(self._itos)

    def get_stoi(self) -> dict[str, int]:
        return dict(self._stoi)

    def set_default_index(self, index: int | None) -> None:
        """Index returned for unknown tokens (``None``: raise KeyError instead)."""
        if index is not None and not isinstance(index, int | np.integer):
            raise TypeError(f"default index must be an int or None, got {type(index).__name__}")
        if index is not None and not 0 <= index < len(self._itos):
            raise IndexError(f"default index {index} is out of range for a vocabulary of "
                             f"{len(self._itos)} tokens; pass an index in [0, {len(self._itos)}), "
                             "e.g. vocab['<unk>']")
        self._default = None if index is None else int(index)

    def get_default_index(self) -> int | None:
        return self._default

    def append_token(self, token: str) -> None:
        if token in self._stoi:
            raise ValueError(f"Token {token!r} already exists in the Vocab with index "
                             f"{self._stoi[token]}")
        self._stoi[token] = len(self._itos)
        self._itos.append(token)

    def insert_token(self, token: str, index: int) -> None:
        if token in self._stoi:
            raise ValueError(f"Token {token!r} already exists in the Vocab with index "
                             f"{self._stoi[token]}")
        if not 0 <= index <= len(self._itos):
            raise IndexError(f"Specified index {index} is out of bounds of the size of stoi "
                             f"dictionary: {len(self._itos)}.")
        self._itos.insert(index, token)
        self._stoi = {t: i for i, t in enumerate(self._itos)}

    def save(self, path: str | os.PathLike) -> None:
        """Write ``{"itos": [...], "default_index": ...}`` as UTF-8 JSON."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"itos": self._itos, "default_index": self._default}, f,
                      ensure_ascii=False)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocab:
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{os.fspath(path)}: not a saved Vocab (invalid JSON: {e})") from e
        if not isinstance(data, dict) or not isinstance(data.get("itos"), list):
            raise ValueError(f"{os.fspath(path)}: not a saved Vocab (expected a JSON object with "
                             "an 'itos' list)")
        return cls(data["itos"], data.get("default_index"))


def build_vocab(iterator: Iterable[Iterable[str]], min_freq: int = 1,
                specials: Sequence[str] = (), special_first: bool = True,
                max_tokens: int | None = None) -> Vocab:
    """torchtext's ``build_vocab_from_iterator``: tokens by descending count, ties alphabetical.

    Tokens seen fewer than ``min_freq`` times are dropped; ``specials`` keep their given order at
    the front (or the end with ``special_first=False``) and are removed from the counted tokens;
    ``max_tokens`` keeps the ``max_tokens - len(specials)`` most frequent tokens.
    """
    counter: Counter[str] = Counter()
    for tokens in iterator:
        if isinstance(tokens, str):
            raise TypeError("build_vocab expects an iterator of token lists, got a string; "
                            "tokenize first, e.g. map(get_tokenizer('basic_english'), lines)")
        counter.update(tokens)
    specials = list(specials)
    ordered = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
    if max_tokens is not None:
        if len(specials) >= max_tokens:
            raise ValueError(f"len(specials) >= max_tokens ({len(specials)} >= {max_tokens}), so "
                             "the vocab would be entirely special tokens")
        ordered = ordered[: max_tokens - len(specials)]
    special_set = set(specials)
    tokens = [t for t, c in ordered if c >= min_freq and t not in special_set]
    tokens = specials + tokens if special_first else tokens + specials
    return Vocab(tokens)


def one_hot(ids: Any, num_classes: int = -1, dtype: Any = np.int64) -> np.ndarray:
    """``torch.nn.functional.one_hot``: a trailing axis of size ``num_classes`` (-1: max + 1)."""
    ids = np.asarray(ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"one_hot is only applicable to index tensor; got dtype {ids.dtype}")
    if ids.size and ids.min() < 0:
        raise ValueError("Class values must be non-negative.")
    if num_classes == -1:
        if ids.size == 0:
            raise ValueError("Can not infer total number of classes from empty tensor.")
        num_classes = int(ids.max()) + 1
    elif ids.size and ids.max() >= num_classes:
        raise ValueError("Class values must be smaller than num_classes.")
    return (ids[..., None] == np.arange(num_classes)).astype(dtype)


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int, max_len: int | None = None,
              truncate: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token sequences: ``(ids int32 [B, L], key_padding_mask bool [B, L])``.

    ``L`` is the longest sequence, or ``max_len`` when given (longer sequences are cut when
    ``truncate``, else a ValueError). The mask is True at padding, as PyTorch's
    ``src_key_padding_mask``. Sequences must be 1-D integer ids that fit int32 (TypeError or
    ValueError otherwise: nothing is rounded, wrapped or flattened).
    """
    if len(sequences) == 0:
        raise ValueError("pad_batch needs at least one sequence")
    seqs = [_token_ids(s, i) for i, s in enumerate(sequences)]
    _token_ids([pad_id], "pad_id")
    longest = max(len(s) for s in seqs)
    length = longest if max_len is None else int(max_len)
    if max_len is not None and max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    if longest > length and not truncate:
        raise ValueError(f"a sequence has {longest} tokens, more than max_len={length}; pass "
                         "truncate=True to cut it or a larger max_len")
    ids = np.full((len(seqs), length), pad_id, dtype=np.int32)
    mask = np.ones((len(seqs), length), dtype=bool)
    for row, s in enumerate(seqs):
        s = s[:length]
        ids[row, : len(s)] = s
        mask[row, : len(s)] = False
    return ids, mask


def _token_ids(seq: Any, which: int | str) -> np.ndarray:
    """``seq`` as a 1-D int64 array of ids that fit int32; torch-style errors otherwise."""
    a = np.asarray(seq)
    name = f"sequence {which}" if isinstance(which, int) else which
    if a.ndim != 1:
        raise ValueError(f"pad_batch: {name} has shape {a.shape}; each sequence must be 1-D "
                         "token ids (pass the rows of a 2-D array as separate sequences)")
    if a.size == 0:
        return a.astype(np.int64)
    if a.dtype.kind not in "iu":
        raise TypeError(f"pad_batch: {name} has dtype {a.dtype} (e.g. {a.flat[0]!r}); token ids "
                        "must be integers (round or map them to ids first)")
    low, high = np.iinfo(np.int32).min, np.iinfo(np.int32).max
    if a.min() < low or a.max() > high:
        bad = a.max() if a.max() > high else a.min()
        raise ValueError(f"pad_batch: {name} holds id {bad}, which does not fit int32 (the ids' "
                         "dtype)")
    return a.astype(np.int64)


def pad_collate(pad_id: int, max_len: int | None = None,
                truncate: bool = True) -> Callable[[list[Any]], Any]:
    """A DataLoader ``collate_fn`` padding variable-length samples with ``pad_batch``.

    A sample is a token sequence, or a tuple ``(tokens, *others)`` whose other fields are stacked
    by ``default_collate``. The batch is ``(ids, key_padding_mask)`` or
    ``(ids, key_padding_mask, *others)``.
    """
    def collate(samples: list[Any]) -> Any:
        if isinstance(samples[0], tuple):
            ids, mask = pad_batch([s[0] for s in samples], pad_id, max_len, truncate)
            rest = default_collate([tuple(s[1:]) for s in samples])
            return (ids, mask, *rest)
        return pad_batch(samples, pad_id, max_len, truncate)

    return collate


def mask_tokens(ids: Any, key: Any, *, mask_id: int, vocab_size: int, special_ids: Sequence[int],
                rate: float = 0.15, padding_mask: Any = None) -> tuple[Any, Any]:
    """BERT's masked-language-model corruption, jittable: ``(inputs, labels)``.

    Each position is chosen with probability ``rate``, never a special id (list the padding id
    and ``mask_id`` in ``special_ids``) nor a True position of ``padding_mask``. Of the chosen
    positions 80% become ``mask_id``, 10% a random token drawn from the non-special ids (unlike
    HF's collator, which can draw specials), 10% stay. ``labels`` hold the original id at chosen
    positions and -100 (cross_entropy's ignore_index) elsewhere. ``special_ids``, ``mask_id``,
    ``vocab_size`` and ``rate`` are static Python values.
    """
    import jax
    import jax.numpy as jnp

    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int | np.integer) \
            or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
    if not 0 <= mask_id < vocab_size:
        raise ValueError(f"mask_id {mask_id} is not an id of the vocabulary [0, {vocab_size})")
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be a probability in [0, 1], got {rate!r}")
    specials = sorted({int(s) for s in special_ids} | {int(mask_id)})
    allowed = np.setdiff1d(np.arange(vocab_size), specials)
    if allowed.size == 0:
        raise ValueError("every id in the vocabulary is special; nothing to draw random tokens "
                         "from")
    ids = jnp.asarray(ids)
    never = jnp.isin(ids, jnp.asarray(specials, dtype=ids.dtype))
    if padding_mask is not None:
        never = never | jnp.asarray(padding_mask, dtype=bool)
    # one uniform draw for all three decisions: a single threefry call compiles much faster
    # than split + uniform + randint
    choose, action, pick = jax.random.uniform(key, (3, *ids.shape))
    chosen = (choose < rate) & ~never
    slot = jnp.minimum((pick * allowed.size).astype(jnp.int32), allowed.size - 1)
    random_ids = jnp.asarray(allowed, dtype=ids.dtype)[slot]
    inputs = jnp.where(chosen & (action < 0.8), jnp.asarray(mask_id, ids.dtype), ids)
    inputs = jnp.where(chosen & (action >= 0.9), random_ids, inputs)
    labels = jnp.where(chosen, ids, jnp.asarray(-100, ids.dtype))
    return inputs, labels


class PretrainedTokenizer:
    """A Hugging Face ``tokenizers`` tokenizer (WordPiece, BPE, Unigram, ...) with funcdl's
    interface: a ``Vocab`` ordered by id, ``encode``/``decode``, and batches (``tok(texts)``)
    encoded the way transformers' fast tokenizers encode them, with both masks.

    ``pad_token``: the padding token (default: the one the tokenizer's own padding settings
    name, if any); padding needs one.
    """

    def __init__(self, tokenizer: Any, *, pad_token: str | None = None,
                 padding_side: str = "right"):
        self._tok = tokenizer
        itos = sorted(tokenizer.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
        if [i for _, i in itos] != list(range(len(itos))):
            raise ValueError("the tokenizer's ids are not 0, 1, ..., n-1; funcdl's Vocab needs "
                             "dense ids")
        self.vocab = Vocab([t for t, _ in itos])
        own = tokenizer.padding or {}
        self.pad_token = pad_token if pad_token is not None else own.get("pad_token")
        if self.pad_token is not None and self.pad_token not in self.vocab:
            raise ValueError(f"pad_token {self.pad_token!r} is not in the vocabulary")
        self.pad_id = None if self.pad_token is None else self.vocab[self.pad_token]
        self.pad_type_id = int(own.get("pad_type_id", 0))
        self.padding_side = own.get("direction", padding_side)

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str, pair: str | None = None, *,
               add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text`` (and ``pair``), with the tokenizer's special tokens."""
        return list(self._tok.encode(text, pair, add_special_tokens=add_special_tokens).ids)

    def encode_batch(self, texts: Sequence[str], *,
                     add_special_tokens: bool = True) -> list[list[int]]:
        return [list(e.ids) for e in self._tok.encode_batch(list(texts),
                                                            add_special_tokens=add_special_tokens)]

    def __call__(self, texts: str | Sequence[str], pairs: Sequence[str] | None = None, *,
                 padding: bool | str = True, max_length: int | None = None,
                 truncation: bool = False,
                 add_special_tokens: bool = True) -> dict[str, np.ndarray]:
        """A batch as transformers' ``tokenizer(texts, padding=..., truncation=...,
        max_length=...)`` gives it, as int32 numpy arrays ``input_ids``, ``attention_mask``
        (1 at tokens) and ``token_type_ids``, plus ``key_padding_mask`` (bool, True at padding:
        funcdl's layers' mask). ``padding``: True/"longest" (to the longest text),
        "max_length", or False (the texts must then encode to one length)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(f"got {len(texts)} texts but {len(pairs)} pairs")
        if padding not in (True, False, "longest", "max_length", "do_not_pad"):
            raise ValueError(f"padding must be True, False, 'longest' or 'max_length', got "
                             f"{padding!r}")
        pad = padding not in (False, "do_not_pad")
        if (truncation or padding == "max_length") and max_length is None:
            raise ValueError("truncation=True and padding='max_length' need max_length")
        if pad and self.pad_id is None:
            raise ValueError("this tokenizer has no padding token: pass "
                             "load_tokenizer(path, pad_token=...) or padding=False")
        saved = self._tok.padding, self._tok.truncation
        try:
            if pad:
                self._tok.enable_padding(
                    direction=self.padding_side, pad_id=self.pad_id, pad_type_id=self.pad_type_id,
                    pad_token=self.pad_token,
                    length=max_length if padding == "max_length" else None)
            else:
                self._tok.no_padding()
            if truncation:
                self._tok.enable_truncation(max_length)
            else:
                self._tok.no_truncation()
            inputs = list(texts) if pairs is None else list(zip(texts, pairs))
            encodings = self._tok.encode_batch(inputs, add_special_tokens=add_special_tokens)
        finally:
            _restore(self._tok, *saved)
        if len({len(e.ids) for e in encodings}) > 1:
            raise ValueError("the texts encode to different lengths: pass padding=True")
        out = {name: np.array([getattr(e, field) for e in encodings], dtype=np.int32)
               for name, field in (("input_ids", "ids"), ("attention_mask", "attention_mask"),
                                   ("token_type_ids", "type_ids"))}
        out["key_padding_mask"] = out["attention_mask"] == 0
        return out

    def tokenize(self, text: str) -> list[str]:
        return list(self._tok.encode(text, add_special_tokens=False).tokens)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int:
        return self.vocab[token]

    def id_to_token(self, index: int) -> str:
        return self.vocab.lookup_token(index)

    def save(self, path: str | os.PathLike) -> None:
        self._tok.save(os.fspath(path))

    @classmethod
    def load(cls, path: str | os.PathLike, **kwargs: Any) -> PretrainedTokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(os.fspath(path)), **kwargs)


def _restore(tok: Any, padding: dict | None, truncation: dict | None) -> None:
    if padding is None:
        tok.no_padding()
    else:
        tok.enable_padding(**padding)
    if truncation is None:
        tok.no_truncation()
    else:
        tok.enable_truncation(**truncation)


class BPETokenizer(PretrainedTokenizer):
    """A byte-level BPE tokenizer (Hugging Face ``tokenizers``) with a funcdl ``Vocab``.

    ``decode(encode(text)) == text`` for any text: byte-level BPE has no unknown characters.
    """


def load_tokenizer(path: str | os.PathLike, *, pad_token: str | None = None
                   ) -> PretrainedTokenizer:
    """A Hugging Face ``tokenizer.json`` (or a directory holding one, as ``save_pretrained``
    writes it) as a ``PretrainedTokenizer``. The padding token is ``pad_token``, else the one in
    the file's padding settings, else the ``pad_token`` of a ``tokenizer_config.json`` beside it.
    """
    path = os.fspath(path)
    config = None
    if os.path.isdir(path):
        config = os.path.join(path, "tokenizer_config.json")
        path = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no tokenizer.json at {path}")
    config = config or os.path.join(os.path.dirname(path), "tokenizer_config.json")
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(path)
    except Exception as err:  # tokenizers' parse errors do not say which file
        raise ValueError(f"{path}: not a tokenizers tokenizer.json ({err})") from err
    if pad_token is None and tok.padding is None and os.path.isfile(config):
        with open(config, encoding="utf-8") as f:
            named = json.load(f).get("pad_token")
        pad_token = named.get("content") if isinstance(named, dict) else named
    return PretrainedTokenizer(tok, pad_token=pad_token)


def train_bpe(texts: Iterable[str], vocab_size: int,
              specials: Sequence[str] = ("<pad>", "<unk>", "<mask>"), *, min_frequency: int = 2,
              lowercase: bool = False) -> BPETokenizer:
    """Train a byte-level BPE tokenizer on ``texts``, offline; ``specials`` get ids 0, 1, ...

    ``vocab_size`` counts the specials and the 256 byte symbols, so it must exceed both.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    base = 256 + len(specials)
    if vocab_size <= base:
        raise ValueError(f"vocab_size must exceed {base} (256 byte symbols + {len(specials)} "
                         f"specials), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(specials), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return BPETokenizer(tok)


def train_wordpiece(texts: Iterable[str], vocab_size: int,
                    specials: Sequence[str] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"), *,
                    lowercase: bool = True) -> PretrainedTokenizer:
    """Train a BERT-style WordPiece tokenizer on ``texts``, offline: BERT's normaliser and
    pre-tokenizer, ``[CLS] a [SEP]`` and ``[CLS] a [SEP] b [SEP]`` (token types 0, then 1).
    ``specials`` get ids 0, 1, ... and must hold ``[UNK]``, ``[CLS]`` and ``[SEP]``; the first is
    the padding token. ``save`` it as a ``tokenizer.json`` that transformers reads too."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    missing = [t for t in ("[UNK]", "[CLS]", "[SEP]") if t not in specials]
    if missing:
        raise ValueError(f"specials must include {missing}")
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=list(specials), show_progress=False))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok.decoder = decoders.WordPiece()
    return PretrainedTokenizer(tok, pad_token=specials[0])
