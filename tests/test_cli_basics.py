"""What every installed tool does from the shell: --version, and click's shell completion
(`_GEN_SYNTH_COMPLETE=bash_source gen-synth` prints the script to source)."""
from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from core.version import package_version

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# every console script the package declares (gen-synth, find-direction, train-unet, eval-seg, shardset, ...)
TOOLS = sorted(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"])


def _run(argv: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, env={**os.environ, **env})


def test_the_five_tools_are_declared():
    assert {"gen-synth", "find-direction", "train-unet", "eval-seg", "shardset"} <= set(TOOLS)


def _tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} is not installed in {BIN} (pip install -e .)")
    return str(path)


def _complete_var(tool: str) -> str:
    return f"_{tool.replace('-', '_').upper()}_COMPLETE"


@pytest.mark.parametrize("tool", TOOLS)
def test_version(tool):
    res = _run([_tool(tool), "--version"])
    assert res.returncode == 0 and res.stdout == f"{tool} (bgw-seg) {package_version()}\n"


def test_experiments_version():
    res = _run([sys.executable, "-m", "experiments", "--version"])
    assert res.returncode == 0 and res.stdout == f"python -m experiments (bgw-seg) {package_version()}\n"


@pytest.mark.parametrize("tool", TOOLS)
def test_completion_scripts(tool):
    fn = f"_{tool.replace('-', '_')}_completion"
    expected = {"bash": f"complete -o nosort -F {fn} {tool}", "zsh": f"#compdef {tool}",
                "fish": f"complete --no-files --command {tool}"}
    for shell, line in expected.items():
        res = _run([_tool(tool)], **{_complete_var(tool): f"{shell}_source"})
        assert res.returncode == 0 and line in res.stdout, (shell, res.stdout[-500:], res.stderr[-500:])


def _bash_complete(tool: str, words: str) -> list[str]:
    """What bash completion offers for the command line `words` (the last word being typed)."""
    res = _run([_tool(tool)], **{_complete_var(tool): "bash_complete", "COMP_WORDS": words,
                                 "COMP_CWORD": str(len(words.split(" ")) - 1)})
    assert res.returncode == 0, res.stderr
    return res.stdout.split()


def test_completion_offers_commands_and_options():
    assert _bash_complete("shardset", "shardset ex") == ["plain,export"]
    assert _bash_complete("shardset", "shardset export --pl") == ["plain,--plain-tar"]
    assert _bash_complete("shardset", "shardset verify --js") == ["plain,--json"]
    assert "plain,--shard-size" in _bash_complete("gen-synth", "gen-synth --sha")
    assert _bash_complete("gen-synth", "gen-synth --encoding n") == ["plain,npy"]
