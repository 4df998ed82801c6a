"""train-unet: one-line errors for each bad input, --resume through the CLI, and a 2-process
torchrun run on the CPU (gloo) that finishes and writes one checkpoint from rank 0 only."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from trainer.cli import main
from trainer.toy import write_disc_set

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
FAST = ["--size", "32", "--width", "4", "--batch", "4", "--steps", "2", "--val-every", "0", "--val-samples", "8",
        "--num-workers", "0", "--shuffle-buffer", "8", "--ckpt-every", "2", "--log-every", "1", "--cpu-threads", "1",
        "--device", "cpu", "--lr-milestones", "1"]


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    a = write_disc_set(root / "a", "discs", n_train=32, n_val=8, size=32, shard_size=8, seed=0)
    w = write_disc_set(root / "w", "wsets", n_train=8, n_val=0, size=32, shard_size=8, encoding="webp")
    bad = root / "bad"
    shutil.copytree(root / "a", bad)
    victim = bad / "discs-000001.tar.zst"
    victim.write_bytes(victim.read_bytes()[:300])  # truncated: the first shard stays readable
    return {"a": a, "webp": w, "bad": bad / "discs.json", "victim": victim, "root": root}


def _run(args):
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    lines = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    return res, lines


def _one_line_error(res, lines, *needles):
    assert res.exit_code == 1, res.output
    assert len(lines) == 1, res.output
    assert "Traceback" not in res.output
    for n in needles:
        assert n in lines[0], lines[0]


def test_cli_trains_and_resumes(sets, tmp_path):
    out = tmp_path / "run"
    res, _ = _run(["--shards", str(sets["a"]), "--out", str(out), *FAST])
    assert res.exit_code == 0, res.output
    assert "done: step 2" in res.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["width"] == 4 and cfg["lr_milestones"] == [1] and cfg["shards"] == [str(sets["a"])]
    # --resume keeps the run's settings; only --steps given here changes
    res, _ = _run(["--out", str(out), "--resume", "--steps", "4"])
    assert res.exit_code == 0, res.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["steps"] == 4 and cfg["width"] == 4 and cfg["batch"] == 4
    assert json.loads((out / "checkpoints" / "last.json").read_text())["step"] == 4
    # --config: another run's settings as the base, flags override
    other = tmp_path / "other"
    res, _ = _run(["--config", str(out / "config.json"), "--out", str(other), "--steps", "1"])
    assert res.exit_code == 0, res.output
    cfg = json.loads((other / "config.json").read_text())
    assert cfg["steps"] == 1 and cfg["width"] == 4 and cfg["out"] == str(other)
    bad = tmp_path / "bad.json"
    bad.write_text('{"widht": 3}')
    res, lines = _run(["--config", str(bad), "--out", str(tmp_path / "x")])
    _one_line_error(res, lines, "unknown config fields ['widht']")


def test_no_shard_matched(sets, tmp_path):
    res, lines = _run(["--shards", str(sets["root"] / "nope-*.tar.zst"), "--out", str(tmp_path / "r"), *FAST])
    _one_line_error(res, lines, "no shard matched", "nope-*")


def test_mixed_sets(sets, tmp_path):
    res, lines = _run(["--shards", str(sets["a"]), "--shards", str(sets["webp"]), "--out", str(tmp_path / "r"), *FAST])
    _one_line_error(res, lines, "encoding", "mixed shard sets")


@pytest.mark.parametrize("workers", ["0", "1"])
def test_corrupt_shard_named(sets, tmp_path, workers):
    args = list(FAST)
    args[args.index("--num-workers") + 1] = workers
    args[args.index("--steps") + 1] = "12"
    res, lines = _run(["--shards", str(sets["bad"]), "--out", str(tmp_path / "r"), *args])
    _one_line_error(res, lines, "corrupt shard", sets["victim"].name)


def test_existing_run_refused_then_wrong_architecture_refused(sets, tmp_path):
    out = tmp_path / "run"
    assert _run(["--shards", str(sets["a"]), "--out", str(out), *FAST])[0].exit_code == 0
    res, lines = _run(["--shards", str(sets["a"]), "--out", str(out), *FAST])
    _one_line_error(res, lines, "already holds a run", "--resume")
    sidecar = out / "checkpoints" / "step-000002.json"
    meta = json.loads(sidecar.read_text())
    meta["model"]["arch"] = "deeplabv3"
    sidecar.write_text(json.dumps(meta))
    res, lines = _run(["--shards", str(sets["a"]), "--out", str(out), "--resume", "--steps", "4"])
    _one_line_error(res, lines, "deeplabv3", "not 'unet'")


def test_tampered_checkpoint_refused_on_resume(sets, tmp_path):
    out = tmp_path / "run"
    assert _run(["--shards", str(sets["a"]), "--out", str(out), *FAST])[0].exit_code == 0
    w = out / "checkpoints" / "step-000002.safetensors"
    w.write_bytes(w.read_bytes()[:-1] + b"\0")
    res, lines = _run(["--shards", str(sets["a"]), "--out", str(out), "--resume", "--steps", "4"])
    _one_line_error(res, lines, "sha256", "step-000002.safetensors")


def test_bad_flag_values(sets, tmp_path):
    res, _ = _run(["--out", str(tmp_path / "r"), *FAST])
    assert res.exit_code == 2 and "missing --shards" in res.output
    res, lines = _run(["--shards", str(sets["a"]), "--out", str(tmp_path / "r"), *FAST, "--lr-milestones", "8k"])
    assert res.exit_code == 2 and "'8k' is not a comma-separated list" in res.output
    res, lines = _run(["--shards", str(sets["a"]), "--out", str(tmp_path / "r"), *FAST, "--size", "30"])
    _one_line_error(res, lines, "size=30", "multiple of 16")


def test_torchrun_two_cpu_processes(sets, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2",
           "-m", "trainer.cli", "--shards", str(sets["a"]), "--out", str(out), *FAST]
    cmd[cmd.index("--steps") + 1] = "3"
    cmd[cmd.index("--ckpt-every") + 1] = "3"
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ck = out / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == ["last.json", "step-000003.json", "step-000003.safetensors",
                                                    "step-000003.state.pt"]
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3]  # rank 0 alone logs
    _, _, state = __import__("trainer.checkpoint", fromlist=["x"]).load_checkpoint(out, with_state=True)
    assert state["data"]["world"] == 2
