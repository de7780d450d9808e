"""examples/softmax_jacobian.py: seed 004's per-sample Jacobian loop, the Jacobians built at once
and the tape's rule give torch's gradient; the Jacobian it prints is jax.jacrev's."""

from __future__ import annotations

import importlib
import json
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def example(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    return importlib.import_module("softmax_jacobian")


def test_the_seeds_class_and_the_jacobians_are_softmaxs(example):
    z = np.random.default_rng(0).normal(size=(3, 5))
    a = example.Softmax().forward(z)
    np.testing.assert_allclose(a, torch.softmax(torch.from_numpy(z), 1).numpy(), rtol=1e-12)
    want = jax.vmap(jax.jacrev(lambda v: jax.nn.softmax(v)))(jnp.asarray(z, jnp.float32))
    np.testing.assert_allclose(example.jacobians(a), want, atol=1e-6)
    g = np.random.default_rng(1).normal(size=(3, 5))
    zt = torch.tensor(z, requires_grad=True)
    torch.softmax(zt, 1).backward(torch.from_numpy(g))
    for ours in (example.by_seed(z, g), example.by_jacobians(z, g),
                 np.asarray(example.by_tape(jnp.asarray(z, jnp.float32),
                                            jnp.asarray(g, jnp.float32)))):
        np.testing.assert_allclose(ours, zt.grad.numpy(), atol=1e-6)


def test_smoke_run_prints_the_comparison_and_writes_it(example, capsys, tmp_path):
    assert example.main(["--smoke", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "symmetric: True" in out
    jg = re.search(r"J g = (\[.*\])", out).group(1)
    assert f"a * (g - sum(a g)) = {jg}" in out  # the rule's numbers are J g's
    report = json.loads((tmp_path / "softmax_jacobian.json").read_text())
    assert (report["samples"], report["classes"]) == (32, 16)
    assert set(report["ways"]) == {"seed's Jacobian loop (numpy)", "all Jacobians at once (numpy)",
                                   "tape rule, eager", "tape rule, jax.jit", "jax.vjp, jax.jit"}
    assert max(w["max_abs_diff"] for w in report["ways"].values()) < 1e-6
    assert report["torch_max_abs_diff"] < 1e-6
    assert all(w["ms"] > 0 for w in report["ways"].values())
