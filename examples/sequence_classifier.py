"""The course notebook's TransformerClassifier on random token sequences with a key-padding mask.

The setting of the course's notebook on sequence masking: a vocabulary of q = 8 tokens and
sequences of up to 2**8 = 256 tokens. Each sequence has a random length; its tokens are
drawn at random except that one token, the sequence's class, is three times as likely as each
other one. The task: name that token.

Padding is adversarial: the positions past a sequence's end are filled with one repeated *wrong*
token rather than a neutral pad id, so only the ``key_padding_mask`` (True = padding, PyTorch's
convention) keeps them out of attention and out of the mean over positions. At the end the test
accuracy is printed twice: with the mask, and with the mask dropped, which shows what it does.

    python examples/sequence_classifier.py            # ~1 minute on 2 CPU cores
    python examples/sequence_classifier.py --smoke    # 1,024 sequences of up to 64, for the tests
"""

from __future__ import annotations

import sys
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from _common import parser, positive_float, positive_int, predict_batches, stopwatch
from flax import nnx

from funcdl import optim, tape
from funcdl.data import ArrayDataset, DataLoader
from funcdl.layers import TransformerClassifier
from funcdl.train import fit

Q = 8  # vocabulary size (the notebook's q)


class Sequences(NamedTuple):
    ids: np.ndarray  # (N, T) int32 tokens; padding positions hold a repeated wrong token
    padding: np.ndarray  # (N, T) bool, True past the end of the sequence
    labels: np.ndarray  # (N,) int32: the over-represented token


def make_sequences(n: int, max_len: int, seed: int, *, min_len: int | None = None,
                   boost: float = 3.0) -> Sequences:
    """``n`` random sequences of lengths in [min_len, max_len]; class ``c``'s token is ``boost``
    times as likely as each other token; the padding repeats a token other than ``c``."""
    rng = np.random.default_rng(seed)
    min_len = max_len // 4 if min_len is None else min_len
    labels = rng.integers(0, Q, n)
    probs = np.ones((n, Q))
    probs[np.arange(n), labels] = boost
    probs /= probs.sum(axis=1, keepdims=True)
    cdf = np.cumsum(probs, axis=1)
    ids = (rng.random((n, max_len, 1)) > cdf[:, None, :]).sum(axis=-1)  # inverse-CDF sampling
    lengths = rng.integers(min_len, max_len + 1, n)
    padding = np.arange(max_len)[None, :] >= lengths[:, None]
    wrong = (labels + rng.integers(1, Q, n)) % Q
    ids = np.where(padding, wrong[:, None], ids)
    return Sequences(ids.astype(np.int32), padding, labels.astype(np.int32))


def build_model(args, seed: int) -> TransformerClassifier:
    return TransformerClassifier(
        vocab_size=Q, num_classes=Q, embed_dim=args.dim, num_heads=args.heads,
        ff_dim=2 * args.dim, num_layers=args.layers, max_len=args.max_len, aggregation="mean",
        dropout=0.0, rngs=nnx.Rngs(seed))


def loss_fn(model: TransformerClassifier, batch) -> jnp.ndarray:
    """Cross-entropy of the classifier's logits; written with funcdl.tape so grad="tape" works."""
    ids, padding, labels = batch
    return tape.cross_entropy(model(ids, key_padding_mask=padding), labels)


@nnx.jit
def predict(model: TransformerClassifier, ids, padding):
    """Predicted classes with the key-padding mask, and without it (the mask forgotten)."""
    return jnp.stack([jnp.argmax(model(ids, key_padding_mask=padding), axis=-1),
                      jnp.argmax(model(ids), axis=-1)])


def accuracy(model, data: Sequences) -> tuple[float, float]:
    """Test accuracy with the mask and without it."""
    pred = predict_batches(lambda m, ids, pad: predict(m, ids, pad).T, model,
                           (data.ids, data.padding), batch_size=128)
    return tuple(float(np.mean(p == data.labels)) for p in pred.T)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n\n")[0], "sequence_classifier")
    p.add_argument("--train-size", type=positive_int, default=2048)
    p.add_argument("--test-size", type=positive_int, default=512)
    p.add_argument("--max-len", type=positive_int, default=2**8, help="sequence length (2**8)")
    p.add_argument("--epochs", type=positive_int, default=3)
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--dim", type=positive_int, default=32, help="embedding size")
    p.add_argument("--heads", type=positive_int, default=2)
    p.add_argument("--layers", type=positive_int, default=1)
    p.add_argument("--lr", type=positive_float, default=3e-3)
    p.add_argument("--grad", choices=["jax", "tape"], default="jax",
                   help="which autodiff engine computes the gradients")
    args = p.parse_args(argv)
    if args.smoke:  # small enough to compile fast, large enough to learn (~75% with the mask)
        args.train_size, args.test_size, args.max_len, args.epochs = 1024, 256, 64, 4
        args.batch_size, args.dim = 32, 16

    train = make_sequences(args.train_size, args.max_len, args.seed)
    test = make_sequences(args.test_size, args.max_len, args.seed + 1)
    print(f"{args.train_size} train / {args.test_size} test sequences of {args.max_len // 4}.."
          f"{args.max_len} tokens (vocabulary q={Q}), {train.padding.mean():.0%} padding; "
          f"chance accuracy {1 / Q:.1%}")
    model = build_model(args, args.seed)
    loader = DataLoader(ArrayDataset(*train), batch_size=args.batch_size, shuffle=True,
                        seed=args.seed, drop_last=True)
    with stopwatch() as elapsed:
        fit(model, optim.adamw(args.lr), loader, loss_fn, epochs=args.epochs, grad=args.grad,
            seed=args.seed, progress=not args.smoke)
    with_mask, without = accuracy(model, test)
    print(f"trained in {elapsed():.1f} s with grad={args.grad!r}")
    print(f"test accuracy with key_padding_mask:      {with_mask:.1%}")
    print(f"test accuracy if the mask is dropped:     {without:.1%}  (padding now leaks in)")
    print(f"chance:                                   {1 / Q:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
