"""examples/speech_ctc.py (seed 004's pipeline) learns in its --smoke run: the phoneme error rate
of both decoders on held-out utterances falls far below the trivial baseline's. Seed 0's smoke run
reaches about 17% (greedy and beam) against a baseline of 111%; a model left on CTC's all-blank
plateau scores 100%."""

from __future__ import annotations

import json


def test_speech_ctc_smoke_run_learns(example, tmp_path):
    out = example("speech_ctc", "--smoke")
    result = json.loads((tmp_path / "speech_ctc" / "result.json").read_text())
    assert result["baseline_per"] > 0.9
    assert result["greedy_per"] < 0.35 and result["beam_per"] < 0.35, result
    assert "phoneme error rate, beam search" in out and "ref  " in out
