"""BERT-style masked language modelling on the bundled Python documentation.

The slides' BERT data preparation, end to end: sentences from Python's own documentation
(``pydoc_data.topics``, shipped with CPython), torchtext's ``basic_english`` tokenizer, a vocabulary
with ``<pad>``, ``<unk>`` and ``<mask>`` specials, padding to a fixed length with a key-padding
mask, and BERT's masking (15% of the tokens: 80% ``<mask>``, 10% random, 10% unchanged), drawn
afresh for every batch. The model is a pre-LN Transformer encoder with BERT's MLM head, trained
by ``funcdl.train.fit`` with ``funcdl.optim.adamw`` on a warmup-cosine schedule (progress bar,
a checkpoint after every epoch, history and loss-curve PNG under ``--out``).

At the end: the masked-token accuracy on held-out sentences next to the most-frequent-token
baseline (always guessing the corpus's commonest token), both on the same positions shown to the
model as ``<mask>``; then the gradients of the trained model by ``funcdl.tape`` and by
``jax.grad``, compared. Ctrl-C stops cleanly with a checkpoint; ``--resume`` continues from it.

    python examples/mlm_pretrain.py            # ~3 minutes on 2 CPU cores
    python examples/mlm_pretrain.py --demo     # the compact run of ``funcdl demo`` (< 1 minute)
    python examples/mlm_pretrain.py --smoke    # 6 epochs of a 1-layer model, for the tests
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from _common import parser, positive_float, positive_int, stopwatch
from flax import nnx

from funcdl import optim, tape
from funcdl.check import compare_with_jax
from funcdl.cli import INTERRUPTED
from funcdl.data import DataLoader
from funcdl.data.datasets import python_docs_corpus
from funcdl.data.text import build_vocab, get_tokenizer, mask_tokens, pad_batch
from funcdl.layers import Embedding, MLMHead, PositionalEmbedding, TransformerEncoder
from funcdl.train import fit

SPECIALS = ("<pad>", "<unk>", "<mask>")
PAD, UNK, MASK = range(3)
IGNORE = -100  # cross_entropy's ignore_index: the label of every position that was not chosen

# vocab: tokens kept (the rest become <unk>); max_len: tokens per sentence after padding/cutting
PRESETS = {
    "default": dict(vocab=500, max_len=32, dim=64, heads=4, ff=256, layers=2, batch=32,
                    epochs=30, lr=5e-3, sentences=None),
    "demo": dict(vocab=500, max_len=32, dim=64, heads=4, ff=256, layers=2, batch=32,
                 epochs=12, lr=5e-3, sentences=None),
    # one layer, 6 epochs: compiles as fast as a toy and still beats the baseline (~13% vs ~8%)
    "smoke": dict(vocab=500, max_len=32, dim=64, heads=2, ff=128, layers=1, batch=32,
                  epochs=6, lr=5e-3, sentences=None),
}


# ----------------------------------------------------------------------------- data
@dataclasses.dataclass
class Corpus:
    train: list[np.ndarray]  # token ids of each training sentence
    test: list[np.ndarray]
    itos: list[str]  # the vocabulary, index -> token
    most_frequent: int  # id of the commonest non-special training token: the baseline's guess


def load_corpus(vocab_tokens: int, sentences: int | None, seed: int) -> Corpus:
    """Tokenize the documentation, build the vocabulary on the training part, numericalize."""
    texts = list(python_docs_corpus())
    rng = np.random.default_rng(seed)
    rng.shuffle(texts)
    if sentences is not None:
        texts = texts[:sentences]
    tokenize = get_tokenizer("basic_english")
    tokens = [tokenize(t) for t in texts]
    tokens = [t for t in tokens if len(t) >= 4]  # a sentence needs context to predict from
    n_test = max(len(tokens) // 10, 1)
    train_tokens, test_tokens = tokens[n_test:], tokens[:n_test]
    vocab = build_vocab(train_tokens, specials=SPECIALS, max_tokens=vocab_tokens)
    vocab.set_default_index(UNK)
    counts = collections.Counter(i for t in train_tokens for i in vocab(t))
    most_frequent = max((i for i in counts if i >= len(SPECIALS)), key=counts.__getitem__)
    return Corpus(
        train=[np.asarray(vocab(t), np.int32) for t in train_tokens],
        test=[np.asarray(vocab(t), np.int32) for t in test_tokens],
        itos=vocab.get_itos(), most_frequent=most_frequent)


class Sentences:
    """Map-style dataset of token-id sentences; batches are padded by ``collate``."""

    def __init__(self, sentences: list[np.ndarray]):
        self.sentences = sentences

    def __len__(self) -> int:
        return len(self.sentences)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.sentences[index]


# ----------------------------------------------------------------------------- model
class MaskedLanguageModel(nnx.Module):
    """Token + learned position embedding, a pre-LN encoder, and BERT's MLM head (dense,
    activation, LayerNorm, decoder to the vocabulary). ``mask_rngs`` draws the masking key of
    every batch, so the masking is part of the train state (checkpointed, resumed exactly)."""

    def __init__(self, vocab_size: int, max_len: int, dim: int, heads: int, ff: int, layers: int,
                 *, dropout: float = 0.0, seed: int = 0):
        rngs = nnx.Rngs(seed)
        self.vocab_size = vocab_size
        self.embedding = Embedding(vocab_size, dim, rngs=rngs)
        self.position = PositionalEmbedding(max_len, dim, rngs=rngs)
        self.encoder = TransformerEncoder(layers, dim, heads, ff, dropout=dropout, final_norm=True,
                                          rngs=rngs)
        # untied: a decoder tied to an N(0, 1) embedding starts with logits of std ~sqrt(dim)
        self.head = MLMHead(dim, vocab_size, rngs=rngs)
        self.mask_rngs = nnx.Rngs(masking=seed + 1)

    def __call__(self, ids, *, key_padding_mask=None):
        h = self.position(self.embedding(ids))
        return self.head(self.encoder(h, key_padding_mask=key_padding_mask))


def corrupt(ids, padding, key, vocab_size: int):
    """BERT masking of a padded batch: ``(inputs, labels)``, labels -100 where not chosen."""
    return mask_tokens(ids, key, mask_id=MASK, vocab_size=vocab_size,
                       special_ids=(PAD, UNK, MASK), padding_mask=padding)


def mlm_loss(model: MaskedLanguageModel, inputs, padding, labels):
    """Mean cross-entropy over the chosen positions (funcdl.tape functions: either engine)."""
    logits = model(inputs, key_padding_mask=padding)
    b, t, v = logits.shape
    return tape.cross_entropy(tape.reshape(logits, (b * t, v)), labels.reshape(-1),
                              ignore_index=IGNORE)


def loss_fn(model: MaskedLanguageModel, batch):
    ids, padding = batch
    inputs, labels = corrupt(ids, padding, model.mask_rngs.masking(), model.vocab_size)
    return mlm_loss(model, inputs, padding, labels)


# ----------------------------------------------------------------------------- evaluation
@nnx.jit
def _predict(model: MaskedLanguageModel, inputs, padding):
    return jnp.argmax(model(inputs, key_padding_mask=padding), axis=-1)


def evaluate(model: MaskedLanguageModel, corpus: Corpus, max_len: int, seed: int) -> dict:
    """Masked-token accuracy and the baseline's, on test positions shown as ``<mask>``."""
    ids, padding = pad_batch(corpus.test, PAD, max_len=max_len)
    inputs, labels = corrupt(ids, padding, jax.random.key(seed + 1000), model.vocab_size)
    inputs, labels = np.asarray(inputs), np.asarray(labels)
    model.eval()
    try:
        batch = 256
        pred = np.concatenate([np.asarray(_predict(model, inputs[i:i + batch],
                                                   padding[i:i + batch]))
                               for i in range(0, len(inputs), batch)])
    finally:
        model.train()
    shown = (labels != IGNORE) & (inputs == MASK)
    truth = labels[shown]
    return {
        "positions": int(shown.sum()),
        "accuracy": float(np.mean(pred[shown] == truth)),
        "baseline": float(np.mean(truth == corpus.most_frequent)),
        "baseline_token": corpus.itos[corpus.most_frequent],
    }


def tape_vs_jax(model: MaskedLanguageModel, corpus: Corpus, max_len: int, seed: int) -> dict:
    """Gradients of the trained model's MLM loss on one test batch: funcdl.tape vs jax.grad."""
    ids, padding = pad_batch(corpus.test[:32], PAD, max_len=max_len)
    inputs, labels = corrupt(ids, padding, jax.random.key(seed + 2000), model.vocab_size)
    model.eval()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    model.train()

    def loss(params, inputs, padding, labels):
        return mlm_loss(nnx.merge(graphdef, params, rest), inputs, padding, labels)

    c = compare_with_jax(loss, params, inputs, padding, labels, timed=True)
    return {"max_abs_diff": c.abs_diff, "max_abs_grad": c.scale, "jax_ms": c.jax_ms,
            "tape_ms": c.tape_ms, "leaves": c.leaves}


# ----------------------------------------------------------------------------- main
def last_checkpoint_step(ckpt: pathlib.Path) -> int:
    """The step of the newest checkpoint in ``ckpt`` (fit names each after its step); 0 if none."""
    steps = [int(p.name) for p in ckpt.iterdir() if p.name.isdigit()] if ckpt.is_dir() else []
    return max(steps, default=0)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n\n")[0], "mlm_pretrain")
    p.add_argument("--demo", action="store_true", help="the compact run of `funcdl demo`")
    p.add_argument("--epochs", type=positive_int, help="override the preset's epochs")
    p.add_argument("--lr", type=positive_float, help="override the preset's peak learning rate")
    p.add_argument("--resume", action="store_true",
                   help="continue from the last checkpoint in --out (after Ctrl-C)")
    p.add_argument("--resume-command", help=argparse.SUPPRESS)  # what `funcdl demo` prints
    args = p.parse_args(argv)
    preset = "smoke" if args.smoke else "demo" if args.demo else "default"
    cfg = dict(PRESETS[preset])
    cfg["epochs"] = args.epochs or cfg["epochs"]
    cfg["lr"] = args.lr or cfg["lr"]

    try:
        return train_and_report(args, cfg)
    except KeyboardInterrupt:  # Ctrl-C: fit has kept the checkpoint of the last finished epoch
        ckpt = args.out / "checkpoints"
        again = args.resume_command or (
            f"python examples/mlm_pretrain.py{' --demo' if args.demo else ''}"
            f"{' --smoke' if args.smoke else ''} --out {args.out} --resume")
        if last_checkpoint_step(ckpt):
            print(f"\ninterrupted: the last checkpoint (written after every epoch) is in {ckpt}; "
                  f"resume with: {again}", file=sys.stderr, flush=True)
        else:
            print(f"\ninterrupted before the first epoch ended, so there is no checkpoint yet; "
                  f"run again to start over, or later resume with: {again}", file=sys.stderr,
                  flush=True)
        return INTERRUPTED


def train_and_report(args: argparse.Namespace, cfg: dict) -> int:
    """Load the corpus, train (or resume), evaluate, compare the engines, print the result."""
    with stopwatch() as elapsed:
        corpus = load_corpus(cfg["vocab"], cfg["sentences"], args.seed)
    print(f"corpus: {len(corpus.train)} training and {len(corpus.test)} test sentences from "
          f"pydoc_data.topics, vocabulary of {len(corpus.itos)} tokens with "
          f"{', '.join(SPECIALS)}, padded to {cfg['max_len']} tokens ({elapsed():.1f} s)")

    model = MaskedLanguageModel(len(corpus.itos), cfg["max_len"], cfg["dim"], cfg["heads"],
                                cfg["ff"], cfg["layers"], seed=args.seed)
    loader = DataLoader(Sentences(corpus.train), batch_size=cfg["batch"], shuffle=True,
                        seed=args.seed, drop_last=True,
                        collate_fn=lambda seqs: pad_batch(seqs, PAD, max_len=cfg["max_len"]))
    total = cfg["epochs"] * len(loader)
    schedule = optim.warmup_cosine(cfg["lr"], warmup_steps=max(total // 10, 1), total_steps=total)
    print(f"model: {cfg['layers']} pre-LN encoder layers, dim {cfg['dim']}, {cfg['heads']} heads; "
          f"{cfg['epochs']} epochs x {len(loader)} batches of {cfg['batch']}, adamw with "
          f"warmup-cosine to {cfg['lr']:g}")
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt = args.out / "checkpoints"
    finished = args.resume and last_checkpoint_step(ckpt) >= total
    with stopwatch() as elapsed:
        history = fit(model, optim.adamw(schedule, weight_decay=0.01), loader, loss_fn,
                      epochs=cfg["epochs"], seed=args.seed, checkpoint_dir=ckpt,
                      resume=args.resume, progress=not args.smoke)
    train_s = elapsed()
    history.save(args.out)  # history.json, history.csv and the loss curve history.png

    result = evaluate(model, corpus, cfg["max_len"], args.seed)
    check = tape_vs_jax(model, corpus, cfg["max_len"], args.seed)
    (args.out / "result.json").write_text(json.dumps(
        {**result, **check, "train_s": None if finished else train_s}, indent=2))
    if finished:
        print(f"\nnothing left to train: the checkpoint in {ckpt} already holds all "
              f"{cfg['epochs']} epochs, so these are that run's results (to train again, delete "
              f"{ckpt} or pass another --out); outputs in {args.out}")
    else:
        print(f"\ntrained in {train_s:.0f} s; outputs in {args.out}")
    ours = f"masked-token accuracy ({result['positions']} held-out <mask> positions):"
    base = f"most-frequent-token baseline (always {result['baseline_token']!r}):"
    width = max(len(ours), len(base))
    print(f"{ours.ljust(width)} {result['accuracy']:6.1%}")
    print(f"{base.ljust(width)} {result['baseline']:6.1%}")
    print(f"tape vs jax.grad on the trained model ({check['leaves']} parameter arrays): "
          f"max |difference| {check['max_abs_diff']:.2e}, largest gradient "
          f"{check['max_abs_grad']:.2e}\n  (one jitted gradient: {check['tape_ms']:.1f} ms by the "
          f"tape, {check['jax_ms']:.1f} ms by jax.grad)")
    return 0



if __name__ == "__main__":
    sys.exit(main())
