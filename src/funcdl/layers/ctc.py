"""Decoding CTC outputs into label sequences: `ctc_greedy_decode` (best path) and
`CTCBeamDecoder` (prefix beam search, ctcdecode's interface, without a language model).

Decoding runs on the host in numpy and Python: it is not differentiated, and its loop is over the
beam's prefixes, which change size as it goes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from funcdl.tape.tensor import constant

__all__ = ["ctc_greedy_decode", "CTCBeamDecoder"]

_NEG = -math.inf


def _host(x: Any) -> np.ndarray:
    return np.asarray(constant(x))


def _lengths(lengths: Any, batch: int, frames: int) -> np.ndarray:
    if lengths is None:
        return np.full(batch, frames)
    lengths = _host(lengths).astype(int).reshape(-1)
    if lengths.shape != (batch,):
        raise ValueError(f"lengths must hold one length per sequence ({batch}), got shape "
                         f"{lengths.shape}")
    if (lengths < 0).any() or (lengths > frames).any():
        raise ValueError(f"lengths must be in [0, {frames}], got {lengths.tolist()}")
    return lengths


def ctc_greedy_decode(log_probs: Any, lengths: Any = None, blank: int = 0) -> list[list[int]]:
    """Best-path decoding of batch-first ``log_probs`` (B, T, C) (probabilities work too: only
    the argmax matters): per sequence, the most likely label of each of its first ``lengths``
    frames, repeats merged, blanks dropped."""
    scores = _host(log_probs)
    if scores.ndim != 3:
        raise ValueError(f"ctc_greedy_decode expects (B, T, C) scores, got shape {scores.shape}")
    if not 0 <= blank < scores.shape[2]:
        raise ValueError(f"blank must be in label range [0, {scores.shape[2]}), got {blank}")
    best = scores.argmax(-1)
    out = []
    for row, n in zip(best, _lengths(lengths, *scores.shape[:2])):
        path = row[:n]
        keep = np.ones(len(path), bool)
        keep[1:] = path[1:] != path[:-1]
        out.append([int(c) for c in path[keep] if c != blank])
    return out


def _logaddexp(a: float, b: float) -> float:
    if a == _NEG:
        return b
    if b == _NEG:
        return a
    m = max(a, b)
    return m + math.log1p(math.exp(-abs(a - b)))


class CTCBeamDecoder:
    """Prefix beam search with ctcdecode's interface: ``decoder.decode(probs, seq_lens)`` on
    batch-first (B, T, C) probabilities (log probabilities with ``log_probs_input=True``).

    Returns numpy arrays ``(beam_results (B, W, T), beam_scores (B, W), timesteps (B, W, T),
    out_lens (B, W))``: beam ``j`` of item ``i`` is ``beam_results[i, j, :out_lens[i, j]]``,
    best first; its score is -log p(labels | input) summed over every alignment the search kept
    (exact when the beam holds every prefix), inf for an unused beam slot; ``timesteps`` gives
    the frame at which each label was emitted on the beam's most likely path to it. Per frame
    only the ``cutoff_top_n`` most likely labels, and those within ``cutoff_prob`` of the total
    probability, extend the beams. No language model: ``model_path`` must stay None.
    ``num_processes`` is accepted for ctcdecode's signature; decoding runs in this process.
    """

    def __init__(self, labels: Sequence[str], model_path: str | None = None, alpha: float = 0,
                 beta: float = 0, cutoff_top_n: int = 40, cutoff_prob: float = 1.0,
                 beam_width: int = 100, num_processes: int = 4, blank_id: int = 0,
                 log_probs_input: bool = False):
        if model_path is not None:
            raise NotImplementedError("CTCBeamDecoder: language models (model_path, alpha, "
                                      "beta) are not supported; decode without one")
        if beam_width < 1 or cutoff_top_n < 1:
            raise ValueError(f"beam_width and cutoff_top_n must be >= 1, got {beam_width} and "
                             f"{cutoff_top_n}")
        if not 0 <= blank_id < len(labels):
            raise ValueError(f"blank_id must index labels (0..{len(labels) - 1}), got "
                             f"{blank_id}")
        self.labels, self.beam_width, self.blank_id = list(labels), beam_width, blank_id
        self.cutoff_top_n, self.cutoff_prob = cutoff_top_n, cutoff_prob
        self.log_probs_input, self.num_processes = log_probs_input, num_processes

    def decode(self, probs: Any, seq_lens: Any = None) -> tuple[np.ndarray, ...]:
        scores = _host(probs).astype(np.float64)
        if scores.ndim != 3 or scores.shape[2] != len(self.labels):
            raise ValueError(f"decode expects (B, T, {len(self.labels)}) scores (one per label), "
                             f"got shape {scores.shape}")
        logp = scores if self.log_probs_input else np.log(np.maximum(scores, 0.0))
        batch, frames, _ = scores.shape
        w = self.beam_width
        results = np.zeros((batch, w, frames), np.int32)
        steps = np.zeros((batch, w, frames), np.int32)
        beam_scores = np.full((batch, w), np.inf, np.float32)
        out_lens = np.zeros((batch, w), np.int32)
        for i, n in enumerate(_lengths(seq_lens, batch, frames)):
            for j, (prefix, times, score) in enumerate(self._search(logp[i, :n])):
                results[i, j, :len(prefix)] = prefix
                steps[i, j, :len(times)] = times
                beam_scores[i, j] = -score
                out_lens[i, j] = len(prefix)
        return results, beam_scores, steps, out_lens

    def _candidates(self, row: np.ndarray) -> list[int]:
        """The labels that may extend a beam at this frame (top n, within cutoff_prob)."""
        order = np.argsort(-row, kind="stable")[:self.cutoff_top_n]
        if self.cutoff_prob >= 1.0:
            return order.tolist()
        mass, keep = 0.0, []
        for c in order:
            keep.append(int(c))
            mass += math.exp(row[c])
            if mass >= self.cutoff_prob:
                break
        return keep

    def _search(self, logp: np.ndarray) -> list[tuple[tuple, tuple, float]]:
        """The best beams as (labels, timesteps, log probability), best first."""
        blank = self.blank_id
        # prefix -> [log p(ending in blank), log p(ending in its last label), timesteps]
        beams: dict[tuple, list] = {(): [0.0, _NEG, ()]}
        for t, row in enumerate(logp):
            nxt: dict[tuple, list] = {}
            candidates = self._candidates(row)
            for prefix, (pb, pnb, times) in beams.items():
                total = _logaddexp(pb, pnb)
                for c in candidates:
                    p = float(row[c])
                    if c == blank:
                        _extend(nxt, prefix, 0, total + p, times)
                    elif prefix and prefix[-1] == c:
                        _extend(nxt, prefix, 1, pnb + p, times)  # the same label, not separated
                        _extend(nxt, prefix + (c,), 1, pb + p, times + (t,))  # after a blank
                    else:
                        _extend(nxt, prefix + (c,), 1, total + p, times + (t,))
            ranked = sorted(nxt.items(), key=lambda kv: -_logaddexp(kv[1][0], kv[1][1]))
            beams = dict(ranked[:self.beam_width])
        ranked = list(beams.items())  # best first already (each step keeps them sorted)
        return [(prefix, times, _logaddexp(pb, pnb)) for prefix, (pb, pnb, times) in ranked]


def _extend(beams: dict, prefix: tuple, which: int, value: float, times: tuple) -> None:
    """Add probability ``value`` to ``prefix`` ending in a blank (``which`` 0) or in its last
    label (1); the likelier route to it names its timesteps."""
    entry = beams.setdefault(prefix, [_NEG, _NEG, times])
    if value > max(entry[0], entry[1]):
        entry[2] = times
    entry[which] = _logaddexp(entry[which], value)
