"""Shared test settings: few hypothesis examples per property so the suite stays fast on 2 cores;
the ``example`` fixture that runs an example script in this process."""

import importlib
import os
import pathlib

import pytest
from hypothesis import HealthCheck, settings

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"

settings.register_profile(
    "ci",
    max_examples=int(os.environ.get("FUNCDL_HYPOTHESIS_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
settings.load_profile("ci")


@pytest.fixture
def example(monkeypatch, capsys, tmp_path):
    """``example(name, *argv) -> stdout`` of ``examples/name.py --out TMP/name ARGV``, run through
    its ``main(argv)`` in this process (importing JAX once); the exit status must be 0."""
    monkeypatch.syspath_prepend(str(EXAMPLES))

    def run(name: str, *argv: str) -> str:
        module = importlib.import_module(name)
        code = module.main(["--out", str(tmp_path / name), *argv])
        out = capsys.readouterr().out
        assert code == 0, out
        return out

    return run
