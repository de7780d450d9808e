"""examples/port_bert.py --smoke: the port, both engines' fine-tuning and the way back agree with
transformers (the numbers it prints are checked here; accuracy is not, on 6 smoke steps).

Its --help is checked with every example's in test_examples.py.
"""

from __future__ import annotations

import re

import pytest


@pytest.mark.slow  # fit compiles a training step per engine
def test_port_bert_round_trips_through_transformers(example, tmp_path):
    out = example("port_bert", "--smoke")

    def number(pattern: str) -> float:
        return float(re.search(pattern + r" ([-+.e\d]+)", out).group(1))

    assert number(r"1\. ported: max \|logits - transformers'\| =") < 1e-5
    assert number(r"between the two engines' models:") < 1e-4
    assert number(r"from_pretrained: max \|logits - funcdl's\| =") < 1e-5
    assert re.search(r"grad=jax : train loss [\d.]+ -> [\d.]+, held-out accuracy", out)
    assert re.search(r"grad=tape: train loss [\d.]+ -> [\d.]+, held-out accuracy", out)
    saved = tmp_path / "port_bert" / "bert"
    assert {p.name for p in saved.iterdir()} == {"config.json", "model.safetensors",
                                                 "tokenizer.json"}
