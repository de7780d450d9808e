"""The seed's speech pipeline: a bidirectional LSTM trained with CTC to recognise phonemes.

The training-pipeline notes (seed 004) set up a phoneme recogniser: 13 features per frame, a
phoneme output layer, ``CTCLoss(blank=0, reduction='mean', zero_infinity=True)``, SGD with
momentum 0.9 and weight decay 1e-5, ``ReduceLROnPlateau(mode='min', factor=0.1, patience=5,
min_lr=1e-9)``, a GradScaler, and ``CTCBeamDecoder(labels=PHONEMES, blank_id=0,
log_probs_input=True)``. This is that pipeline with funcdl's pieces, on generated speech.

The data (generated here, reproducibly from --seed; nothing is downloaded): each utterance is a
random phoneme sequence (no phoneme twice in a row) rendered as MFCC-like frames. Every phoneme has
a spectral template, a 13-dim vector that moves from an onset to an offset value over the phoneme;
vowels last longer than consonants, and each phoneme's duration is random. Each utterance gets a
speaker (a vocal-tract scale, a channel offset and a speaking rate), neighbouring frames blur into
each other (coarticulation), frame noise is added, silence pads both ends, and the features are
normalised per utterance (CMVN), as a real front end does.

The model: BiLSTM(13 -> hidden, 2 layers) -> Linear -> log_softmax over blank + phonemes. After
training, held-out utterances are decoded greedily (best path) and by prefix beam search, and their
phoneme error rate (PER: edits / reference phonemes) is compared with a trivial baseline (the most
common phoneme, repeated as many times as a typical utterance has phonemes).

    python examples/speech_ctc.py            # about 2 minutes on 2 (shared) CPU cores
    python examples/speech_ctc.py --smoke    # seconds: a small run for the tests
"""

from __future__ import annotations

import json
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import parser, positive_float, positive_int, stopwatch
from flax import nnx

from funcdl import optim, tape
from funcdl.data import ArrayDataset, DataLoader, error_rate
from funcdl.layers import LSTM, CTCBeamDecoder, Linear, ctc_greedy_decode
from funcdl.train import fit

PHONEMES = ["<blank>", "AA", "AE", "AH", "EH", "IH", "IY", "UW", "ER", "B", "D", "G", "K", "P",
            "T", "M", "N", "L", "R", "S", "Z", "SH", "F", "V"]
VOWELS = 8  # PHONEMES[1:9] are vowels: longer, steadier
FEATURES = 13


class Utterances(NamedTuple):
    frames: np.ndarray  # (N, T, 13) float32, zero past each utterance's end
    frame_lengths: np.ndarray  # (N,) int32
    labels: np.ndarray  # (N, S) int32 phoneme ids (1..), zero-padded
    label_lengths: np.ndarray  # (N,) int32


def phoneme_templates(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Onset and offset spectra per phoneme, (P, 13) each (row 0, silence, is quiet)."""
    rng = np.random.default_rng(seed)
    centre = rng.normal(0.0, 1.0, (len(PHONEMES), FEATURES))
    glide = rng.normal(0.0, 0.5, (len(PHONEMES), FEATURES))
    glide[1:1 + VOWELS] *= 0.4  # vowels are steadier than consonants
    centre[0], glide[0] = 0.0, 0.0
    return centre - glide, centre + glide


def render(phonemes: list[int], templates: tuple[np.ndarray, np.ndarray],
           rng: np.random.Generator, noise: float) -> np.ndarray:
    """The frames of one utterance: silence, each phoneme's glide, silence; one speaker."""
    onset, offset = templates
    rate = rng.uniform(0.8, 1.25)  # speaking rate
    scale = rng.uniform(0.85, 1.15)  # vocal tract
    channel = rng.normal(0.0, 0.3, FEATURES)
    pieces = [np.zeros((rng.integers(2, 6), FEATURES))]
    for p in phonemes:
        low, high = (4, 9) if p <= VOWELS else (2, 5)
        n = max(2, int(round(rng.integers(low, high + 1) * rate)))
        w = np.linspace(0.0, 1.0, n)[:, None]
        pieces.append((1 - w) * onset[p] + w * offset[p])
    pieces.append(np.zeros((rng.integers(2, 6), FEATURES)))
    x = np.concatenate(pieces) * scale + channel
    x[1:-1] = 0.25 * x[:-2] + 0.5 * x[1:-1] + 0.25 * x[2:]  # coarticulation
    x += rng.normal(0.0, noise, x.shape)
    return (x - x.mean(0)) / (x.std(0) + 1e-5)  # CMVN


def make_utterances(n: int, seed: int, templates: tuple[np.ndarray, np.ndarray], *,
                    min_phonemes: int = 4, max_phonemes: int = 10,
                    noise: float = 0.5) -> Utterances:
    """``n`` utterances of ``min_phonemes..max_phonemes`` phonemes, padded to one length."""
    rng = np.random.default_rng(seed)
    seqs, xs = [], []
    for _ in range(n):
        k = rng.integers(min_phonemes, max_phonemes + 1)
        seq = [int(rng.integers(1, len(PHONEMES)))]
        while len(seq) < k:
            p = int(rng.integers(1, len(PHONEMES) - 1))
            seq.append(p + (p >= seq[-1]))  # any phoneme but the previous one
        seqs.append(seq)
        xs.append(render(seq, templates, rng, noise))
    frames = max(len(x) for x in xs)
    out = np.zeros((n, frames, FEATURES), np.float32)
    labels = np.zeros((n, max_phonemes), np.int32)
    for i, (x, seq) in enumerate(zip(xs, seqs)):
        out[i, :len(x)] = x
        labels[i, :len(seq)] = seq
    return Utterances(out, np.array([len(x) for x in xs], np.int32), labels,
                      np.array([len(s) for s in seqs], np.int32))


class Recogniser(nnx.Module):
    """BiLSTM -> Linear -> log_softmax: per-frame log probabilities over blank + phonemes."""

    def __init__(self, hidden: int, layers: int, *, rngs: nnx.Rngs):
        self.lstm = LSTM(FEATURES, hidden, layers, bidirectional=True, rngs=rngs)
        self.out = Linear(2 * hidden, len(PHONEMES), rngs=rngs)

    def __call__(self, frames, lengths):
        h, _ = self.lstm(frames, lengths=lengths)
        return tape.log_softmax(self.out(h), -1)  # (B, T, C)


def loss_fn(model: Recogniser, batch):
    """The seed's criterion: CTCLoss(blank=0, reduction='mean', zero_infinity=True)."""
    frames, frame_lengths, labels, label_lengths = batch
    log_probs = tape.transpose(model(frames, frame_lengths), 0, 1)  # (T, B, C), torch's layout
    return tape.ctc_loss(log_probs, labels, frame_lengths, label_lengths, blank=0,
                         reduction="mean", zero_infinity=True)


@nnx.jit
def _log_probs(model: Recogniser, frames, lengths):
    return model(frames, lengths)


def decode(model: Recogniser, data: Utterances, beam_width: int) -> tuple[list, list]:
    """Greedy and beam-search phoneme sequences of every utterance."""
    model.eval()
    lp = np.asarray(_log_probs(model, jnp.asarray(data.frames), jnp.asarray(data.frame_lengths)))
    model.train()
    greedy = ctc_greedy_decode(lp, data.frame_lengths, blank=0)
    decoder = CTCBeamDecoder(labels=PHONEMES, blank_id=0, beam_width=beam_width,
                             cutoff_top_n=8, log_probs_input=True)
    beams, _, _, lens = decoder.decode(lp, data.frame_lengths)
    beam = [beams[i, 0, :lens[i, 0]].tolist() for i in range(len(lp))]
    return greedy, beam


def references(data: Utterances) -> list[list[int]]:
    return [row[:n].tolist() for row, n in zip(data.labels, data.label_lengths)]


def baseline(train: Utterances, test: Utterances) -> float:
    """PER of the trivial recogniser: the commonest phoneme, median-utterance-length times."""
    counts = np.bincount(np.concatenate(references(train)), minlength=len(PHONEMES))
    guess = [int(counts.argmax())] * int(np.median(train.label_lengths))
    refs = references(test)
    return error_rate(refs, [guess] * len(refs))


def default_precision() -> str:
    """fp16 with loss scaling (the GradScaler) on a GPU, bf16 on a TPU, fp32 on a CPU (whose
    16-bit arithmetic is emulated, slower than float32)."""
    return {"gpu": "fp16", "tpu": "bf16"}.get(jax.default_backend(), "fp32")


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n\n")[0], "speech_ctc")
    p.add_argument("--train-size", type=positive_int, default=2000)
    p.add_argument("--test-size", type=positive_int, default=200)
    p.add_argument("--epochs", type=positive_int, default=8)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--hidden", type=positive_int, default=64, help="LSTM units per direction")
    p.add_argument("--layers", type=positive_int, default=2)
    p.add_argument("--lr", type=positive_float, default=0.6,
                   help="SGD learning rate (default 0.6: with the seed's 0.01 the model stays "
                        "on CTC's all-blank plateau for the whole budget)")
    p.add_argument("--clip", type=positive_float, default=2.0,
                   help="clip the gradient norm to this (torch's clip_grad_norm_), which lets "
                        "the large lr through the first steps")
    p.add_argument("--beam-width", type=positive_int, default=16)
    p.add_argument("--grad", choices=["jax", "tape"], default="jax",
                   help="which autodiff engine computes the gradients")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default=None,
                   help="compute precision (default: fp16 on GPU, bf16 on TPU, fp32 on CPU)")
    args = p.parse_args(argv)
    short = {}
    if args.smoke:  # shorter utterances and a smaller model: seconds, and it still learns
        args.train_size, args.test_size, args.epochs, args.hidden, args.layers = 384, 64, 4, 48, 1
        short = dict(min_phonemes=3, max_phonemes=6)
    precision = args.precision or default_precision()

    templates = phoneme_templates(args.seed)
    train = make_utterances(args.train_size, args.seed + 1, templates, **short)
    test = make_utterances(args.test_size, args.seed + 2, templates, **short)
    print(f"{args.train_size} train / {args.test_size} held-out utterances, "
          f"{len(PHONEMES) - 1} phonemes, {train.frames.shape[1]} frames max "
          f"(mean {train.frame_lengths.mean():.0f}), {FEATURES} features per frame")
    model = Recogniser(args.hidden, args.layers, rngs=nnx.Rngs(args.seed))
    loader = DataLoader(ArrayDataset(*train), batch_size=args.batch_size, shuffle=True,
                        seed=args.seed, drop_last=True)
    held_out = [tuple(np.asarray(a) for a in test)]
    plateau = optim.ReduceLROnPlateau(mode="min", factor=0.1, patience=5, min_lr=1e-9)
    optimizer = optax.chain(optim.clip_grad_norm(args.clip),
                            optim.sgd(args.lr, momentum=0.9, weight_decay=1e-5))
    with stopwatch() as elapsed:
        history = fit(model, optimizer, loader, loss_fn, epochs=args.epochs,
                      eval_loader=held_out, scheduler=plateau, grad=args.grad, seed=args.seed,
                      precision=precision, progress=not args.smoke,
                      log_dir=None if args.smoke else args.out)
    greedy, beam = decode(model, test, args.beam_width)
    refs = references(test)
    result = {"greedy_per": error_rate(refs, greedy), "beam_per": error_rate(refs, beam),
              "baseline_per": baseline(train, test), "seconds": elapsed(),
              "eval_loss": float(history["eval_loss"][-1]), "precision": precision}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "result.json").write_text(json.dumps(result, indent=2))
    print(f"trained {args.epochs} epochs in {result['seconds']:.0f} s (grad={args.grad!r}, "
          f"{precision}); held-out CTC loss {result['eval_loss']:.3f}")
    print(f"phoneme error rate, greedy decoding:      {result['greedy_per']:.1%}")
    print(f"phoneme error rate, beam search ({args.beam_width:>3}):   {result['beam_per']:.1%}")
    print(f"phoneme error rate, trivial baseline:     {result['baseline_per']:.1%}")
    for i in range(3):
        print(f"  ref  {' '.join(PHONEMES[p] for p in refs[i])}\n"
              f"  beam {' '.join(PHONEMES[p] for p in beam[i])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
