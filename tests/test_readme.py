"""The README cannot drift from the tools: its quick-start block runs exactly as printed, and the
numbers it quotes for `make demo` are the numbers a fresh demo gives."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
BIN = Path(sys.executable).parent  # the tools of the environment running the tests


def _between(marker: str) -> str:
    m = re.search(rf"<!-- {marker}:.*?-->\n(.*?)<!-- /{marker} -->", README, re.S)
    assert m, f"README has no <!-- {marker} --> block"
    return m.group(1)


def quick_start_commands() -> list[str]:
    block = _between("quick-start")
    code = re.search(r"```bash\n(.*?)```", block, re.S).group(1)
    return [line for line in code.splitlines() if line.strip() and not line.lstrip().startswith("#")]


@pytest.fixture(scope="module")
def toy_cache(tmp_path_factory):
    from gans import toy

    cache = tmp_path_factory.getbasetemp() / "bgw-cache"
    toy.ensure_toy_module(cache)
    return cache


def _env(cache: Path) -> dict:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "BGW_CACHE_DIR": str(cache),
            "CUDA_VISIBLE_DEVICES": ""}


def test_the_quick_start_runs_as_printed(tmp_path, toy_cache):
    from experiments.demo_data import make_image_folder

    drawn = make_image_folder(tmp_path / "drawn", n=3)
    shutil.copytree(drawn / "images", tmp_path / "my-photos")
    commands = quick_start_commands()
    assert [shlex.split(c)[0] for c in commands] == ["gen-synth", "train-unet", "eval-seg", "segment", "export-model",
                                                     "segment"]
    for command in commands:
        res = subprocess.run(shlex.split(command), cwd=tmp_path, env=_env(toy_cache), capture_output=True, text=True,
                             timeout=900)
        assert res.returncode == 0, f"{command}\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    qs = tmp_path / "qs"
    # every file the text after the block names is there
    for name in ("shards/toy-preview.png", "run/val-grid.png", "run/eval/results.json", "model/toy.onnx",
                 "model/MODEL.md"):
        assert (qs / name).is_file(), name
    assert len(list((qs / "masks").glob("*.png"))) == 3 and len(list((qs / "masks").glob("*.overlay.jpg"))) == 3
    assert len(list((qs / "masks-onnx").glob("*.png"))) == 3
    assert "No eval-seg results.json" not in (qs / "model" / "MODEL.md").read_text()  # the card found the scores


def _quoted_demo_numbers() -> dict[str, float]:
    text = " ".join(_between("demo-numbers").split())
    held, photos = re.search(r"held-out toy shard at (.*?), and all 1,000 ECSSD photos at (.*?) \(", text).groups()

    def parse(s: str) -> dict[str, float]:
        return {k: float(v) for k, v in re.findall(r"(maxFβ|IoU|accuracy) ([0-9.]+)", s)}

    return {**{f"shards {k}": v for k, v in parse(held).items()}, **{f"ecssd {k}": v for k, v in parse(photos).items()}}


@pytest.mark.slow
def test_the_readme_quotes_the_numbers_of_a_fresh_demo(tmp_path, toy_cache):
    quoted = _quoted_demo_numbers()
    assert len(quoted) == 6, quoted
    out = tmp_path / "demo"
    res = subprocess.run([sys.executable, "-m", "experiments.demo"], cwd=REPO, capture_output=True, text=True,
                         env={**_env(tmp_path / "cache"), "BGW_DEMO_OUT": str(out)}, timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads((out / "run" / "eval" / "results.json").read_text())
    got = {}
    for name, ds in results["datasets"].items():
        key = "shards" if name.startswith("shards:") else name
        summary = ds["protocols"]["paper"]["summary"]
        for metric, field in (("maxFβ", "max_f"), ("IoU", "iou"), ("accuracy", "accuracy")):
            got[f"{key} {metric}"] = round(summary[field]["mean"] if isinstance(summary[field], dict)
                                           else summary[field], 3)
    if "ecssd maxFβ" not in got:  # without ../shared/data the demo scores its own shard only
        quoted = {k: v for k, v in quoted.items() if k.startswith("shards")}
    assert {k: got[k] for k in quoted} == quoted
