"""`python -m experiments run --dry-run`: the plan checks its inputs (data root, each dataset's
layout, the GAN), gives every stage a time from measured rates, and says which seeds it covers."""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.estimate import CPU_RATES, EVAL_S_PER_IMAGE, MACHINE, STARTUP_S, TRAIN_S_PER_STEP, estimate

REPO = Path(__file__).resolve().parents[1]


def dry(tmp_path, *args, env=None):
    e = {k: v for k, v in os.environ.items() if k not in ("BGW_DATA_ROOT", "TFHUB_CACHE_DIR")}
    e.update({"TFHUB_CACHE_DIR": str(tmp_path / "hub"), **(env or {})})
    return subprocess.run([sys.executable, "-m", "experiments", "run", *args, "--dry-run",
                           "--work-dir", str(tmp_path / "work")], cwd=REPO, env=e, capture_output=True, text=True)


def problems(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.strip().startswith("problem:")]


def test_a_data_root_that_is_not_there_is_one_problem_after_the_plan(tmp_path):
    r = dry(tmp_path, "table2-ebigbigan", "--seeds", "0:1", "--data-root", str(tmp_path / "nowhere"))
    assert r.returncode == 1
    assert "total time of the stages to run" in r.stdout  # the plan is printed first
    assert problems(r.stdout) == [f"  problem: data root {tmp_path / 'nowhere'} is not a folder (--data-root or "
                                  "BGW_DATA_ROOT); the datasets imagenet, ecssd, duts-te, dut-omron are read from it"]
    assert r.stderr.strip().splitlines() == ["Error: 1 input is missing (the 'problem:' lines above); "
                                             "the plan cannot run as it stands"]
    # the paper's GAN: a hub handle, and whether a copy is cached says where it will come from
    assert "no cached copy at" in r.stdout and "downloaded on first use" in r.stdout


def test_each_dataset_missing_under_the_root_is_named_with_where_to_get_it(tmp_path):
    root = tmp_path / "data"
    (root / "ecssd" / "images").mkdir(parents=True)
    (root / "ecssd" / "ground_truth_mask").mkdir()
    r = dry(tmp_path, "table2-ebigbigan", "--seed", "0", "--data-root", str(root))
    assert r.returncode == 1
    found = problems(r.stdout)
    assert [re.match(r"  problem: dataset (\S+)", p).group(1) for p in found] == ["imagenet", "duts-te", "dut-omron"]
    assert all("get " in p for p in found)  # benchdata's own message: where the data comes from
    assert f"dataset ecssd: {root / 'ecssd'}" in r.stdout
    assert r.stdout.splitlines()[0] == "table2-ebigbigan: seed 0 (1 run; the recipe has 10)"


def test_no_data_root_at_all_names_the_datasets_that_need_one(tmp_path):
    r = dry(tmp_path, "table2-ebigbigan", "--seeds", "1")
    assert r.returncode == 1
    assert problems(r.stdout) == ["  problem: the datasets imagenet, ecssd, duts-te, dut-omron need a data root: "
                                  "pass --data-root DIR or set BGW_DATA_ROOT"]


def test_a_gan_that_is_nothing_known_is_a_problem_with_a_suggestion(tmp_path):
    r = dry(tmp_path, "extra-dcgan-faces-optimize", "--tiny", "--gan", "toyy")
    assert r.returncode == 1
    [p] = problems(r.stdout)
    assert "GAN 'toyy' is not a known name (did you mean toy?)" in p


def test_the_tiny_plan_has_a_time_for_every_stage_and_says_which_seeds(tmp_path):
    r = dry(tmp_path, "table2-ebigbigan", "--tiny", "--seeds", "2")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    # "--seeds 2" is the first two seeds, and the header says so
    assert lines[0] == "table2-ebigbigan: seeds 0-1 (2 runs; the recipe has 2)"
    costs = [line for line in lines if line.startswith("  disk ")]
    assert len(costs) >= 5 and not [c for c in costs if "not measured" in c or "time 0 s" in c]
    assert all(MACHINE in c for c in costs)
    total = re.search(r"total time of the stages to run: (\d+) s on a 2-core CPU, no GPU$", r.stdout, re.M)
    assert total and 10 <= int(total.group(1)) <= 90  # the tiny plan runs in about half a minute
    assert "GAN toy: built on first use" in r.stdout


def test_the_dcgan_stages_take_their_measured_times(tmp_path):
    r = dry(tmp_path, "extra-dcgan-faces-optimize")
    assert r.returncode == 0, r.stderr
    costs = [line for line in r.stdout.splitlines() if line.startswith("  disk ")]
    # optimize 44 s, generate 43.6 s, train 13 min 17 s, eval 24 s, each with its start-up
    assert [re.search(r"time ([^(]+) \(", c).group(1) for c in costs] == ["52 s", "52 s", "13 min", "26 s"]


def test_every_rate_names_its_command():
    for table in (CPU_RATES, TRAIN_S_PER_STEP, EVAL_S_PER_IMAGE):
        for key, entry in table.items():
            assert entry[0] > 0 and len(entry[-1]) > 10, key


@pytest.mark.parametrize("kind", sorted(STARTUP_S))
def test_no_stage_is_estimated_below_its_start_up(kind):
    opts = {"gan": "toy", "n": 1, "steps": 1, "batch": 1, "width": 4, "size": 32, "datasets": ["ecssd"], "limit": 1}
    cost = estimate(kind, opts, gpu=False, context={"candidates": 1, "width": 4, "size": 32})
    assert cost.seconds is None or cost.seconds >= STARTUP_S[kind]


@pytest.mark.parametrize("name, handle", [("bigbigan", "bigbigan-resnet50/1"), ("biggan", "biggan-128/2")])
def test_the_hub_models_are_named_by_their_handle_and_cache(tmp_path, monkeypatch, name, handle):
    from experiments.runner import check_gan

    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path))
    problem, line = check_gan(name)
    assert problem is None and f"https://tfhub.dev/deepmind/{handle}" in line and "no cached copy" in line
    (tmp_path / hashlib.sha1(f"https://tfhub.dev/deepmind/{handle}".encode()).hexdigest()).mkdir()
    assert "cached copy at" in check_gan(name)[1]
