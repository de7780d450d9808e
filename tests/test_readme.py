"""The README cannot rot: its quick-start test command is what CI runs; its Python blocks run."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README, flags=re.S | re.M)


def test_quick_start_is_two_commands_and_ci_runs_the_second():
    commands = [line for line in _blocks("bash")[0].splitlines() if line.strip()]
    assert len(commands) == 2, commands
    assert "pytest" in commands[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci.splitlines(), "CI must run the README's test command verbatim"


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_python_block_runs(index: int, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks that write files write them here, never into the repo
    exec(compile(_blocks("python")[index], f"README.md python block {index}", "exec"), {})


def test_source_excerpts_are_the_source():
    """A ``py`` block naming a file in its first line is a verbatim excerpt of that file."""
    for block in _blocks("py"):
        first, _, body = block.partition("\n")
        path = ROOT / first.removeprefix("# ").strip()
        assert body.strip() in path.read_text(), f"README excerpt of {path} is out of date"
