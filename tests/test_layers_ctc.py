"""CTC decoders: best path by hand; prefix beam search against an independent reference, the
probability of every label sequence summed over every alignment by enumeration (and torch's
ctc_loss for the same sequences), on inputs small enough that the beam holds every prefix."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from funcdl import layers as L

RNG = np.random.default_rng(0)
LABELS = ["_", "a", "b"]


def log_probs(batch: int, frames: int, classes: int = 3) -> np.ndarray:
    x = RNG.normal(size=(batch, frames, classes)) * 1.5
    return (x - np.log(np.exp(x).sum(-1, keepdims=True))).astype(np.float32)


def collapse(path, blank=0):
    out = [c for i, c in enumerate(path) if c != blank and (i == 0 or path[i - 1] != c)]
    return tuple(out)


def sequence_probabilities(lp: np.ndarray) -> dict[tuple, float]:
    """p(labels) for every label sequence: the sum over all C**T frame paths collapsing to it."""
    probs: dict[tuple, float] = {}
    for path in itertools.product(range(lp.shape[1]), repeat=lp.shape[0]):
        p = float(np.exp(sum(lp[t, c] for t, c in enumerate(path))))
        key = collapse(path)
        probs[key] = probs.get(key, 0.0) + p
    return probs


def test_greedy_decoding_by_hand():
    best = np.array([[0, 1, 1, 0, 1, 2, 2, 0], [2, 2, 2, 0, 0, 0, 0, 0]])
    scores = np.eye(3)[best]  # one-hot "probabilities": only the argmax matters
    assert L.ctc_greedy_decode(scores, [8, 2]) == [[1, 1, 2], [2]]
    assert L.ctc_greedy_decode(scores, [3, 8], blank=2) == [[0, 1], [0]]
    with pytest.raises(ValueError, match="blank must be in label range"):
        L.ctc_greedy_decode(scores, None, blank=3)


def test_beam_search_is_exact_when_the_beam_holds_every_prefix():
    lp = log_probs(2, 5)
    decoder = L.CTCBeamDecoder(LABELS, beam_width=1000, log_probs_input=True)
    results, scores, timesteps, lens = decoder.decode(lp, [5, 4])
    for i, n in enumerate([5, 4]):
        exact = sequence_probabilities(lp[i, :n])
        ranked = sorted(exact.items(), key=lambda kv: -kv[1])
        found = [(tuple(results[i, j, :lens[i, j]]), float(np.exp(-scores[i, j])))
                 for j in range(len(ranked))]
        assert [f[0] for f in found] == [r[0] for r in ranked]  # every sequence, best first
        np.testing.assert_allclose([f[1] for f in found], [r[1] for r in ranked], rtol=1e-5)
        labels, _ = found[1]  # and torch's ctc_loss gives the same probability
        nll = torch.nn.functional.ctc_loss(
            torch.tensor(lp[i, :n, None]), torch.tensor([labels]), torch.tensor([n]),
            torch.tensor([len(labels)]), reduction="sum")
        assert np.isclose(float(nll), scores[i, 1], rtol=1e-5)
        for j in range(3):  # a label is emitted at a frame where its path is likely, in order
            t = timesteps[i, j, :lens[i, j]]
            assert (np.diff(t) > 0).all() and (t < n).all()
    assert np.isinf(scores[1, len(sequence_probabilities(lp[1, :4])):]).all()


def test_probabilities_input_narrow_beams_and_cutoffs():
    lp = log_probs(1, 6)
    wide = L.CTCBeamDecoder(LABELS, beam_width=50, log_probs_input=True).decode(lp)
    probs = L.CTCBeamDecoder(LABELS, beam_width=50).decode(np.exp(lp))
    np.testing.assert_array_equal(wide[0][0, :5], probs[0][0, :5])
    np.testing.assert_allclose(wide[1][0, :5], probs[1][0, :5], rtol=1e-5)
    narrow = L.CTCBeamDecoder(LABELS, beam_width=2, cutoff_top_n=2, log_probs_input=True)
    results, scores, _, lens = narrow.decode(lp)
    assert results.shape == (1, 2, 6) and np.isfinite(scores).all()
    assert scores[0, 0] >= wide[1][0, 0]  # a narrower search never finds a likelier beam


def test_decoder_refuses_what_it_cannot_do():
    with pytest.raises(NotImplementedError, match="language models"):
        L.CTCBeamDecoder(LABELS, model_path="lm.arpa")
    with pytest.raises(ValueError, match="blank_id must index labels"):
        L.CTCBeamDecoder(LABELS, blank_id=3)
    with pytest.raises(ValueError, match=r"decode expects \(B, T, 3\) scores"):
        L.CTCBeamDecoder(LABELS).decode(np.zeros((1, 4, 4)))
