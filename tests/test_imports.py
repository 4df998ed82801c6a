"""The shard set is the whole contract: a team that only trains installs no TensorFlow.

These tests prove it two ways: importing every trainer/shardset module leaves TensorFlow out of
sys.modules, and the declared dependencies of a trainer-only install name no TensorFlow."""
from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _modules(package: str) -> list[str]:
    pkg_dir = REPO / package
    return [package] + [f"{package}.{m.name}" for m in pkgutil.iter_modules([str(pkg_dir)])]


def _frameworks_after_importing(package: str) -> list[str]:
    """Which of torch and tensorflow are in sys.modules after importing every module of `package`
    in a fresh interpreter."""
    code = (
        "import importlib, json, sys\n"
        f"for m in {_modules(package)!r}:\n"
        "    importlib.import_module(m)\n"
        "print(json.dumps(sorted(k for k in ('torch', 'tensorflow') if k in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("package", ["shardset", "trainer", "evaluator"])
def test_package_never_imports_tensorflow(package):
    assert "tensorflow" not in _frameworks_after_importing(package), f"{package} imported tensorflow"


def test_shardset_imports_neither_framework():
    assert _frameworks_after_importing("shardset") == []


def test_generator_imports_no_torch():
    """A `[gen]` install has no torch: the generator reads .pth files with generator.torchfile."""
    assert "torch" not in _frameworks_after_importing("generator")


def _closure(extras: list[str]) -> list[str]:
    """Requirement strings a `pip install .[extras]` asks for, following self-references."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    name = project["name"]
    reqs, todo, seen = list(project["dependencies"]), list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for req in project["optional-dependencies"][extra]:
            if req.startswith(f"{name}["):
                todo += req[len(name) + 1 : req.index("]")].split(",")
            else:
                reqs.append(req)
    return reqs


def test_trainer_only_install_pulls_no_tensorflow():
    reqs = _closure(["train", "eval"])
    assert any(r.startswith("torch") for r in reqs)
    assert not [r for r in reqs if "tensorflow" in r.lower() or r.lower().startswith("tf-")]
    # and the generator extra really does carry it, so the check above can fail
    assert any(r.startswith("tensorflow") for r in _closure(["gen"]))

