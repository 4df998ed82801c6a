"""A generator-only install has no torch and still runs the default BigBiGAN path.

`pip install '.[gen]'` goes into a fresh virtual environment (once per session; about two minutes
with a warm pip cache, marked slow). In it, with no torch importable, `gen-synth --gan bigbigan`
loads the TF1 Hub-format stand-in from the hub cache and reads the published-format direction
`bg_direction.pth` (written by torch in THIS process) through gans.torchfile."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

from gans import toy
from tf1_hub_standin import build_tf1_hub_module, place_under_handle

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.tf]


@pytest.fixture(scope="module")
def gen_venv(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gen-venv")
    venv.create(root, with_pip=True)
    python = root / "bin" / "python"
    # install from a copy: setuptools writes build/ into the folder it builds from
    src = tmp_path_factory.mktemp("src") / "bgw-seg"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".venv", ".git", "runs", "build", "shards", "demo-out",
                                                             "__pycache__", ".pytest_cache", ".hypothesis", "*.egg-info"))
    res = subprocess.run([str(python), "-m", "pip", "install", "-q", f"{src}[gen]"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return root


def _run(venv_root: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    full_env.pop("PYTHONPATH", None)  # only what the install put into the venv
    return subprocess.run([str(venv_root / "bin" / args[0]), *args[1:]], capture_output=True, text=True,
                          env=full_env, cwd=venv_root)


def test_gen_extra_installs_no_torch(gen_venv):
    res = _run(gen_venv, "python", "-c", "import importlib.util; print(importlib.util.find_spec('torch'))")
    assert res.returncode == 0 and res.stdout.strip() == "None", res.stdout + res.stderr


def test_gen_synth_reads_the_published_pth_without_torch(gen_venv, tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("tensorflow")
    hub = tmp_path / "hub"
    place_under_handle(build_tf1_hub_module(tmp_path / "built"), hub)
    cache = tmp_path / "cache"
    (cache / "directions").mkdir(parents=True)
    torch.save(torch.from_numpy(toy.toy_direction()), cache / "directions" / "bigbigan-bg_direction.pth")
    env = {"TFHUB_CACHE_DIR": str(hub), "BGW_CACHE_DIR": str(cache)}
    res = _run(gen_venv, "gen-synth", "--gan", "bigbigan", "--latents", "prior", "--n", "20", "--shard-size", "10",
               "--val-shards", "1", "--out", str(tmp_path / "out"), "--name", "nt", env=env)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    m = json.loads((tmp_path / "out" / "nt.json").read_text())
    assert m["complete"] and m["params"]["direction"]["source"] == "bigbigan:published:bigbigan-bg_direction.pth"
    # and a .pth that carries anything but tensors is refused there too, in one line
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"h": Payload()}, tmp_path / "evil.pth")
    res = _run(gen_venv, "gen-synth", "--gan", "bigbigan", "--latents", "prior", "--n", "10",
               "--direction", str(tmp_path / "evil.pth"), "--out", str(tmp_path / "out2"), env=env)
    lines = [line for line in res.stderr.splitlines() if line.startswith("Error")]
    assert res.returncode != 0 and len(lines) == 1 and "refuses to load 'posix.system'" in lines[0], res.stderr
    assert not (tmp_path / "pwned").exists()
