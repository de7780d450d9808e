"""examples/speech_ctc.py (seed 004's pipeline) learns in its --smoke run: the phoneme error rate
of both decoders on held-out utterances falls far below the trivial baseline's. Seed 0's smoke run
reaches about 17% (greedy and beam) against a baseline of 111%; a model left on CTC's all-blank
plateau scores 100%."""

from __future__ import annotations

import importlib
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_speech_ctc_smoke_run_learns(monkeypatch, capsys, tmp_path):
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    module = importlib.import_module("speech_ctc")
    assert module.main(["--smoke", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["baseline_per"] > 0.9
    assert result["greedy_per"] < 0.35 and result["beam_per"] < 0.35, result
    assert "phoneme error rate, beam search" in out and "ref  " in out
