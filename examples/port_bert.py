"""Port a BERT from Hugging Face transformers to funcdl, fine-tune it, and hand it back.

Everything is built here, offline: a WordPiece tokenizer trained on the bundled Python
documentation (``funcdl.data.text.train_wordpiece``, saved as ``tokenizer.json`` and read back
with ``load_tokenizer``, which pads and masks batches as transformers does), and a small
``BertForSequenceClassification`` created in transformers from a config (random weights, no
download). Then:

1. ``funcdl.layers.from_transformers`` ports it; the logits on a padded batch with both token
   types equal transformers' (the max difference is printed).
2. The port is fine-tuned with ``funcdl.train.fit`` on a task made from the same documentation:
   is a sentence as written, or are its words shuffled? Twice from the same start, gradients by
   ``jax.grad`` and by ``funcdl.tape``: the two fine-tuned models differ by float rounding.
3. ``save_transformers`` writes ``config.json`` and ``model.safetensors``; transformers'
   ``from_pretrained`` loads them and gives funcdl's logits again.

    python examples/port_bert.py            # ~2 minutes on 2 CPU cores
    python examples/port_bert.py --smoke    # tiny sizes and no dropout, for the tests
"""

from __future__ import annotations

import sys

import jax
import numpy as np
from _common import parser, positive_int, stopwatch
from flax import nnx

from funcdl import layers, optim, tape
from funcdl.check import max_abs_diff
from funcdl.data.datasets import python_docs_corpus
from funcdl.data.text import load_tokenizer, train_wordpiece
from funcdl.train import fit


def shuffled_or_not(sentences: list[str], seed: int) -> tuple[list[str], np.ndarray]:
    """Each sentence as written (label 1) or with its words shuffled (label 0), half and half."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(len(sentences)) % 2).astype(np.int32)
    texts = []
    for text, keep in zip(sentences, labels):
        words = text.split()
        if not keep:
            while len(words) > 1 and words == text.split():
                words = list(rng.permutation(words))
        texts.append(" ".join(words))
    return texts, labels


def batches(enc: dict, labels: np.ndarray, size: int) -> list[tuple]:
    """Fixed-size ``(ids, attention_mask, token_type_ids, labels)`` batches (the tail dropped)."""
    arrays = (enc["input_ids"], enc["attention_mask"], enc["token_type_ids"], labels)
    return [tuple(a[i:i + size] for a in arrays) for i in range(0, len(labels) - size + 1, size)]


def loss_fn(model, batch):
    ids, mask, types, labels = batch
    return tape.cross_entropy(model(ids, mask, types).logits, labels)


@nnx.jit
def predict(model, ids, mask, types):
    return model(ids, mask, types).logits


def accuracy(model, data: list[tuple]) -> float:
    model.eval()
    hits = [np.argmax(np.asarray(predict(model, *b[:3])), axis=-1) == b[3] for b in data]
    model.train()
    return float(np.mean(np.concatenate(hits)))


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n\n")[0], "port_bert")
    p.add_argument("--sentences", type=positive_int, default=2048)  # the docs hold about 2,000
    p.add_argument("--epochs", type=positive_int, default=8)
    p.add_argument("--hidden", type=positive_int, default=128)
    p.add_argument("--layers", type=positive_int, default=2)
    p.add_argument("--max-len", type=positive_int, default=32)
    args = p.parse_args(argv)
    if args.smoke:
        args.sentences, args.epochs, args.hidden, args.layers, args.max_len = 256, 1, 32, 1, 16
    args.out.mkdir(parents=True, exist_ok=True)
    import torch
    import transformers

    torch.manual_seed(args.seed)
    sentences = python_docs_corpus()
    train_wordpiece(sentences, 600 if args.smoke else 2000).save(args.out / "tokenizer.json")
    tok = load_tokenizer(args.out / "tokenizer.json", pad_token="[PAD]")
    print(f"tokenizer: WordPiece, {len(tok)} tokens, saved to {args.out / 'tokenizer.json'}")

    # 1. transformers -> funcdl
    config = transformers.BertConfig(
        vocab_size=len(tok), hidden_size=args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=4, intermediate_size=4 * args.hidden,
        max_position_embeddings=args.max_len, pad_token_id=tok.pad_id, num_labels=2,
        # XLA:CPU compiles dropout's random bits slowly: the smoke run trains without it
        hidden_dropout_prob=0.0 if args.smoke else 0.1,
        attention_probs_dropout_prob=0.0 if args.smoke else 0.1)
    hf = transformers.BertForSequenceClassification(config).eval()
    bert = layers.from_transformers(hf)
    n = sum(x.size for x in jax.tree.leaves(nnx.state(bert, nnx.Param)))
    print(f"BertForSequenceClassification: {args.layers} layers, hidden {args.hidden}, "
          f"{n:,} parameters")
    texts, labels = shuffled_or_not(sentences[:args.sentences], args.seed)
    enc = tok(texts, padding="max_length", truncation=True, max_length=args.max_len)
    size = 32
    probe = tok(texts[:size], sentences[size:2 * size], padding="max_length", truncation=True,
                max_length=args.max_len)  # pairs: both token types, and padding
    probe = (probe["input_ids"], probe["attention_mask"], probe["token_type_ids"])
    with torch.no_grad():
        want = hf(*(torch.from_numpy(a.astype(np.int64)) for a in probe)).logits.numpy()
    bert.eval()
    print(f"1. ported: max |logits - transformers'| = "
          f"{np.abs(np.asarray(predict(bert, *probe)) - want).max():.2e} on a padded batch of "
          f"sentence pairs")

    # 2. fine-tune in funcdl, by both engines from the same start
    data = batches(enc, labels, size)
    split = len(data) * 3 // 4
    train, test = data[:split], data[split:]
    print(f"2. fine-tuning on {len(train) * size} sentences (shuffled or not), "
          f"{len(test) * size} held out; chance 50%")
    runs = {}
    for grad in ("jax", "tape"):
        model = layers.from_transformers(hf)
        model.train()
        with stopwatch() as elapsed:
            history = fit(model, optim.adamw(3e-4), train, loss_fn,
                          epochs=args.epochs, grad=grad, seed=args.seed, progress=False)
        runs[grad] = model
        print(f"   grad={grad:4}: train loss {history['train_loss'][0]:.3f} -> "
              f"{history['train_loss'][-1]:.3f}, held-out accuracy "
              f"{accuracy(model, test):.1%} ({elapsed():.0f} s)")
    params = {g: nnx.state(m, nnx.Param) for g, m in runs.items()}
    print(f"   max |parameter difference| between the two engines' models: "
          f"{max_abs_diff(params['jax'], params['tape']):.2e}")

    # 3. funcdl -> transformers
    model = runs["jax"]
    model.eval()
    path = layers.save_transformers(model, args.out / "bert")
    tok.save(path / "tokenizer.json")
    back = transformers.BertForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        theirs = back(*(torch.from_numpy(a.astype(np.int64)) for a in probe)).logits.numpy()
    print(f"3. saved to {path}; transformers' from_pretrained: max |logits - funcdl's| = "
          f"{np.abs(theirs - np.asarray(predict(model, *probe))).max():.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
