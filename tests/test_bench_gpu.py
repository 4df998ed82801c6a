"""benchmarks/bench_gpu.py (`make bench-gpu`): its arithmetic, and its tiny CPU form end to end, so
that the command a GPU session runs once keeps working on machines without one."""
from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_gpu.py"

# every row of the CPU form, in the order it prints them (TrainConfig's default of 2 loader
# workers and the CPU form's 1 give two loader rows)
CPU_ROWS = [
    "loader, 1 worker",
    "loader, 2 workers",
    "train-unet fp32",
    "train-unet bf16",
    "train-unet bf16 channels-last",
    "train-unet bf16 channels-last --compile",
    "train-unet DDP 2 CPU processes (gloo)",
    "eval-seg",
    "gen-synth toy: render",
    "gen-synth toy: host",
    "find-direction discover",
]
TF_ROWS = {"gen-synth toy: render", "gen-synth toy: host", "find-direction discover"}


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_rate_after_warmup_is_the_harmonic_mean_of_the_intervals_after_it(bench):
    rows = [{"step": 10, "kind": "train", "samples_per_s": 5.0},  # warm-up interval: left out
            {"step": 20, "kind": "train", "samples_per_s": 100.0},
            {"step": 20, "kind": "val", "val_iou": 0.5},
            {"step": 30, "kind": "train", "samples_per_s": 300.0}]
    # 10 steps at 100/s and 10 at 300/s of equal batches: 2 intervals in 1/100 + 1/300 units of time
    assert bench.rate_after_warmup(rows, warm=10) == pytest.approx(150.0)
    assert bench.rate_after_warmup(rows, warm=20) == pytest.approx(300.0)
    with pytest.raises(ValueError):
        bench.rate_after_warmup(rows, warm=30)


def test_bottleneck_is_the_accelerator_only_when_the_renderer_was_busy(bench):
    assert bench.bottleneck(render_busy_s=9.0, wall_s=10.0) == "accelerator"
    assert bench.bottleneck(render_busy_s=8.0, wall_s=10.0) == "accelerator"
    assert bench.bottleneck(render_busy_s=5.0, wall_s=10.0) == "host"


def test_verdicts_compare_the_loader_with_the_fastest_train_row(bench):
    rows = [bench.row("train-unet fp32", "train-fp32", "", 10.0, "steps/s", samples_per_s=950.0),
            bench.row("train-unet bf16", "train-bf16", "", 20.0, "steps/s", samples_per_s=1900.0),
            bench.row("loader, 2 workers", "loader-2", "", 1000.0, "samples/s"),
            bench.row("loader, 8 workers", "loader-8", "", 3800.0, "samples/s")]
    assert bench.verdicts(rows) == [
        "loader, 2 workers: 1,000 samples/s against 1,900 eaten by train-unet bf16: does NOT keep up (0.53x)",
        "loader, 8 workers: 3,800 samples/s against 1,900 eaten by train-unet bf16: keeps up (2.00x)",
    ]


def test_durations_and_sizes_print_in_readable_units(bench):
    assert [bench.fmt_duration(s) for s in (45, 600, 7 * 3600, None)] == ["45 s", "10.0 min", "7.0 h", "-"]
    assert [bench.fmt_bytes(n) for n in (512, 41135, 69 * 2 ** 20, None)] == ["512 B", "40.2 KiB", "69.0 MiB", "-"]


def test_the_cpu_form_shares_a_process_per_framework_and_the_gpu_form_none(bench):
    parts = ["loader-1", "train-fp32", "ddp", "eval", "gen", "discover"]
    assert bench.groups(parts, bench.cpu_tiny_form()) == [["loader-1", "train-fp32", "ddp", "eval"],
                                                          ["gen", "discover"]]
    assert bench.groups(parts, bench.gpu_form(16)) == [[p] for p in parts]
    assert bench.groups(["eval"], bench.cpu_tiny_form()) == [["eval"]]


def test_a_part_that_raises_costs_its_own_rows_only(bench, tmp_path, monkeypatch):
    def broken(form, work, workers):
        raise OSError("disk on fire\nsecond line")

    monkeypatch.setitem(bench.PART_FUNCS, "loader", broken)
    monkeypatch.setitem(bench.PART_FUNCS, "eval", lambda form, work, ecssd: [bench.row("eval-seg", "eval", "", 2.0,
                                                                                        "images/s")])
    out = tmp_path / "rows.json"
    bench.run_in_child(["loader-2", "eval"], bench.cpu_tiny_form(), tmp_path, None, out)
    rows = json.loads(out.read_text())
    assert [(r["row"], r["status"], r["value"]) for r in rows] == [("loader, 2 workers", "failed", None),
                                                                   ("eval-seg", "ok", 2.0)]
    assert rows[0]["note"] == "OSError: disk on fire"


def test_a_spent_budget_starts_no_process_and_says_so(bench, tmp_path):
    rows = bench.run_group(["gen", "discover"], bench.gpu_form(16), tmp_path, None, deadline=float("-inf"))  # long past
    assert [(r["row"], r["status"]) for r in rows] == [("gen-synth toy: render", "skipped"),
                                                       ("gen-synth toy: host", "skipped"),
                                                       ("find-direction discover", "skipped")]
    assert all(r["note"] == "not run: the 450 s budget was spent" for r in rows)
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_cpu_form_gives_every_row_a_positive_number(tmp_path):
    out = tmp_path / "bench-gpu.json"
    # the timeout guards against a hang only: speed is the benchmark's business, not the test's
    done = subprocess.run([sys.executable, str(SCRIPT), "--cpu-tiny", "--json", str(out), "--work", str(tmp_path / "w")],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert json.loads(done.stdout.strip().splitlines()[-1]) == result
    assert result["form"] == "cpu-tiny"
    env = result["environment"]
    assert env["device"] == "cpu" and env["gpu"] is None and env["torch"]
    assert [r["row"] for r in result["rows"]] == CPU_ROWS
    tf_installed = importlib.util.find_spec("tensorflow") is not None
    for r in result["rows"]:
        if r["row"] in TF_ROWS and not tf_installed:
            assert r["status"] == "skipped" and "TensorFlow" in r["note"], r
            continue
        assert r["status"] == "ok", r
        assert math.isfinite(r["value"]) and r["value"] > 0, r
        assert r["device"].lower() == "cpu", r
        assert r["row"] in done.stdout  # the table has a line for it
    by_row = {r["row"]: r for r in result["rows"]}
    for label in CPU_ROWS[2:7]:
        r = by_row[label]
        assert r["unit"] == "steps/s"
        assert r["projection_s"] == pytest.approx(12000 / r["value"])
        assert r["samples_per_s"] == pytest.approx(r["value"] * result["settings"]["batch"])
    assert by_row["train-unet fp32"]["checkpoint_bytes"]["weights"] > 0
    assert by_row["train-unet fp32"]["checkpoint_bytes"]["state"] > 0
    assert by_row["eval-seg"]["images"] == result["settings"]["eval_limit"]
    if tf_installed:
        assert by_row["gen-synth toy: host"]["bytes_per_sample"] > 0
        assert by_row["gen-synth toy: render"]["bottleneck"] in ("accelerator", "host")
    assert any("keeps up" in v or "does NOT keep up" in v for v in result["verdicts"])
