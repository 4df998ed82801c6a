"""train-unet: one-line errors for each bad input, --resume through the CLI, and a 2-process
torchrun run on the CPU (gloo) that finishes and writes one checkpoint from rank 0 only."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from trainer.cli import main
from trainer.toy import write_disc_set

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
FAST = ["--size", "32", "--width", "4", "--batch-size", "4", "--steps", "2", "--val-every", "0", "--val-samples", "8",
        "--workers", "0", "--shuffle-buffer", "8", "--ckpt-every", "2", "--log-every", "1", "--cpu-threads", "1",
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


def _one_line_error(res, lines, *needles, code: int = 1):
    assert res.exit_code == code, res.output
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
    args[args.index("--workers") + 1] = workers
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
    _one_line_error(res, lines, "--size 30", "multiple of 16")


@pytest.mark.parametrize("flag, value, says", [
    ("--lr", "nan", "--lr nan (must be a finite number > 0)"),
    ("--lr", "inf", "--lr inf (must be a finite number > 0)"),
    ("--lr-gamma", "-0.5", "--lr-gamma -0.5 (must be a finite number > 0)"),
    ("--seed", "-1", "--seed -1 (must be in 0..2**63-1)"),
    ("--lr-milestones", "0", "--lr-milestones (0,) (steps must be >= 1)"),
    ("--workers", "-2", "--workers -2 (must be >= 0)"),
    ("--weight-decay", "-1e-5", "--weight-decay -1e-05 (must be a finite number >= 0)"),
])
def test_bad_numbers_named_by_flag_before_anything_is_written(sets, tmp_path, flag, value, says):
    out = tmp_path / "r"
    res, lines = _run(["--shards", str(sets["a"]), "--out", str(out), *FAST, flag, value])
    _one_line_error(res, lines, says)
    assert not out.exists()


def test_unknown_eval_dataset_and_missing_data_root_refused_before_step_1(sets, tmp_path, monkeypatch):
    monkeypatch.delenv("BGW_DATA_ROOT", raising=False)
    out = tmp_path / "r"
    res, lines = _run(["--shards", str(sets["a"]), "--out", str(out), *FAST, "--eval-dataset", "nosuch"])
    _one_line_error(res, lines, "--eval-dataset nosuch: unknown dataset 'nosuch'", code=2)  # a name not in the list
    res, lines = _run(["--shards", str(sets["a"]), "--out", str(out), *FAST, "--eval-dataset", "ecssd"])
    _one_line_error(res, lines, "--eval-dataset ecssd: dataset 'ecssd' needs a data root: pass --data-root DIR")
    res, lines = _run(["--shards", str(sets["a"]), "--out", str(out), *FAST, "--eval-dataset", "ecssd",
                       "--data-root", str(tmp_path / "nowhere")])
    _one_line_error(res, lines, "--eval-dataset ecssd: data root", "is not a folder")
    # nothing was trained or written: no step ran, no config.json
    assert not (out / "config.json").exists() and not (out / "checkpoints").exists()


def test_eval_dataset_images_over_max_image_pixels_are_skipped(sets, tmp_path):
    """--max-image-pixels reaches the benchmark validation: a 40 x 30 image (1200 pixels) is
    scored under the default limit and skipped under 1000, which leaves nothing to score."""
    import cv2

    data = tmp_path / "bench"
    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True)
    cv2.imwrite(str(data / "images" / "a.png"), np.full((30, 40, 3), 90, np.uint8))
    mask = np.zeros((30, 40), np.uint8)
    mask[10:20, 10:30] = 255
    cv2.imwrite(str(data / "masks" / "a.png"), mask)
    args = ["--shards", str(sets["a"]), *FAST, "--eval-dataset", f"folder:{data}"]
    res, _ = _run([*args, "--out", str(tmp_path / "ok")])
    assert res.exit_code == 0, res.output
    rows = [json.loads(ln) for ln in (tmp_path / "ok" / "metrics.jsonl").read_text().splitlines()]
    assert [r["eval_accuracy"] for r in rows if r["kind"] == "val"] and "eval_iou" in rows[-1]
    res, lines = _run([*args, "--out", str(tmp_path / "skip"), "--max-image-pixels", "1000"])
    _one_line_error(res, lines, f"--eval-dataset folder:{data}: none of its 1 test images could be read",
                    "40x30 = 1200 pixels, over the limit of 1000")


def test_bad_shard_urls_refused_before_step_1(sets, tmp_path):
    out = tmp_path / "r"
    res, lines = _run(["--shards", "http://127.0.0.1:9/none-000000.tar.zst", "--out", str(out), *FAST])
    _one_line_error(res, lines, "corrupt shard http://127.0.0.1:9/none-000000.tar.zst", "cannot open")
    assert not (out / "config.json").exists()


def test_a_tampered_shard_stops_training_with_one_line_naming_it(sets, tmp_path):
    from test_integrity import tamper

    folder = tmp_path / "set"
    write_disc_set(folder, "discs", n_train=32, n_val=8, size=32, shard_size=8, seed=0, encoding="npy")
    tamper(folder / "discs-000001.tar.zst")
    for workers in ("0", "1"):
        args = list(FAST)
        args[args.index("--workers") + 1] = workers
        args[args.index("--steps") + 1] = "16"  # 64 samples: every 8-sample train shard is read to its end
        res, lines = _run(["--shards", str(folder / "discs.json"), "--out", str(tmp_path / f"r{workers}"), *args])
        _one_line_error(res, lines, f"corrupt shard {folder / 'discs-000001.tar.zst'}: sha256 differs from its "
                                    "manifest record")
        assert "done:" not in res.output


def test_a_failed_start_does_not_block_the_rerun(sets, tmp_path):
    out = tmp_path / "run"
    args = list(FAST)
    args[args.index("--steps") + 1] = "12"
    args[args.index("--ckpt-every") + 1] = "12"
    res, lines = _run(["--shards", str(sets["bad"]), "--out", str(out), *args])  # fails before its checkpoint
    _one_line_error(res, lines, "corrupt shard", sets["victim"].name)
    assert (out / "config.json").exists() and not (out / "checkpoints" / "last.json").exists()
    res, lines = _run(["--out", str(out), "--resume"])
    _one_line_error(res, lines, "holds no checkpoint", "the same command without --resume")
    res, _ = _run(["--shards", str(sets["a"]), "--out", str(out), *FAST])
    assert res.exit_code == 0, res.output
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2]  # the failed start's rows are gone


def test_a_second_run_on_the_same_folder_fails_at_once(sets, tmp_path):
    import socket

    from shardset.lock import FileLock

    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from shardset.lock import FileLock; "
                               f"l = FileLock({str(out / 'train.lock')!r}); print('ready', flush=True); "
                               "sys.stdin.read()"], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        res, lines = _run(["--shards", str(sets["a"]), "--out", str(out), *FAST])
        _one_line_error(res, lines, f"--out {out} is in use: pid {holder.pid} on host {socket.gethostname()}",
                        "wait for that run to finish, or choose another --out")
    finally:
        holder.stdin.close()
        holder.wait(30)
    assert not (out / "config.json").exists()
    with FileLock(out / "train.lock"):  # released when the holder ended
        pass


def test_no_progress_frames_when_stderr_is_not_a_terminal(sets, tmp_path):
    res, _ = _run(["--shards", str(sets["a"]), "--out", str(tmp_path / "r"), *FAST])
    assert res.exit_code == 0, res.output
    assert "\r" not in res.output and "train-unet:" not in res.output


def test_allow_incomplete_flag(tmp_path):
    from shardset import ShardSetWriter
    from trainer.toy import disc_samples

    with ShardSetWriter(tmp_path / "set", "inc", shard_size=8, params={}, seed=0) as w:
        for k in range(2):
            w.write_shard(k, disc_samples(8, 32, seed=k), split="train" if k == 0 else "val")
        w.finalize(planned={"shards": 3})
    base = ["--shards", str(tmp_path / "set" / "inc.json"), *FAST]
    res, lines = _run(base + ["--out", str(tmp_path / "r")])
    _one_line_error(res, lines, "is an incomplete set", "2 of 3 planned shards", "--allow-incomplete")
    res, _ = _run(base + ["--out", str(tmp_path / "r2"), "--allow-incomplete"])
    assert res.exit_code == 0, res.output


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
    _, _, state = __import__("trainer.checkpoint", fromlist=["x"]).load_run_state(out, with_state=True)
    assert state["data"]["world"] == 2


def test_weight_decay_reaches_adam_and_the_run_config(sets, tmp_path):
    import torch

    from trainer.config import TrainConfig
    from trainer.train import Placement, Start, build_learner

    place = Placement(rank=0, local_rank=0, world=1, use_cuda=False, device=torch.device("cpu"))
    learner = build_learner(TrainConfig(width=4, weight_decay=1e-5), place, Start())
    assert learner.optimizer.param_groups[0]["weight_decay"] == 1e-5
    assert build_learner(TrainConfig(width=4), place, Start()).optimizer.param_groups[0]["weight_decay"] == 0.0
    out = tmp_path / "wd"
    res, _ = _run(["--shards", str(sets["a"]), "--out", str(out), *FAST, "--weight-decay", "1e-5"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "config.json").read_text())["weight_decay"] == 1e-5
    # a resume may not change it: the loss sequence would not continue the killed run's
    res, lines = _run(["--out", str(out), "--resume", "--steps", "4", "--weight-decay", "0"])
    assert res.exit_code != 0 and "weight_decay" in res.output
