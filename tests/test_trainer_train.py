"""trainer.train: a short CPU run learns the disc set; --resume continues bit for bit; NaN stops
the run keeping the last good checkpoint; run-folder and resume refusals."""
from __future__ import annotations

import json

import pytest
import torch

from segmodel.checkpoint import load_for_inference
from trainer.config import TrainConfig
from trainer.train import ResumeError, RunExistsError, TrainingDiverged, train
from trainer.toy import write_disc_set

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def discs(tmp_path_factory):
    root = tmp_path_factory.mktemp("discs")
    return write_disc_set(root, "discs", n_train=256, n_val=64, size=32, shard_size=64, seed=0)


def _cfg(discs, out, **kw):
    base = dict(shards=(str(discs),), size=32, width=4, batch=4, steps=8, lr=1e-2, lr_milestones=(6,),
                num_workers=0, shuffle_buffer=32, round_samples=64, val_every=0, val_samples=16,
                log_every=1, ckpt_every=4, out=str(out), device="cpu", cpu_threads=1)
    base.update(kw)
    return TrainConfig(**base)


def _rows(out, kind="train"):
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def test_short_cpu_run_reaches_good_iou_on_the_val_part(discs, tmp_path):
    out = tmp_path / "run"
    cfg = _cfg(discs, out, width=8, batch=16, steps=70, lr_milestones=(50,), val_every=35, val_samples=64,
               log_every=10, ckpt_every=35, eval_dataset=f"shards:{discs}", eval_samples=8)
    summary = train(cfg)
    val = _rows(out, "val")
    assert [r["step"] for r in val] == [35, 70]
    # the optional real-benchmark pass ran through the evaluator (here on the set's val part)
    assert all(0.0 <= r["eval_iou"] <= 1.0 and 0.0 <= r["eval_max_f"] <= 1.0 for r in val)
    assert val[-1]["val_iou"] >= 0.8, val
    assert summary["val"]["val_iou"] == val[-1]["val_iou"]
    # the loss went down and lr followed the schedule
    train_rows = _rows(out)
    assert train_rows[-1]["loss"] < 0.5 * train_rows[0]["loss"]
    assert train_rows[4]["lr"] == pytest.approx(1e-2) and train_rows[-1]["lr"] == pytest.approx(2e-3)
    # run folder: config, tensorboard events, checkpoints that load for inference
    assert json.loads((out / "config.json").read_text())["width"] == 8
    assert list((out / "tb").glob("events.out.tfevents.*"))
    # the newest image | mask | prediction grid as a picture: 4 rows of 3 tiles of the 32 px val
    # images enlarged 4 times, 2 px apart, under a title band and a band of column names
    import cv2

    grid = cv2.imread(str(out / "val-grid.png"))
    assert grid is not None and grid.shape == (24 + 24 + 4 * 130 + 2, 3 * 130 + 2, 3)
    assert (grid[:48] < 128).any()  # the step and the column names are drawn
    model, meta = load_for_inference(out)
    assert meta["step"] == 70 and meta["model"]["width"] == 8 and meta["shardset"]["name"] == "discs"
    assert meta["val"]["val_iou"] == val[-1]["val_iou"]
    # the reloaded model reproduces the validation IoU
    from shardset.select import select_shards
    from trainer.data import load_val_samples
    from trainer.validate import validate
    import contextlib

    v = load_val_samples(select_shards([str(discs)]).val_urls, 32, 64)
    res, _ = validate(model, v, torch.device("cpu"), contextlib.nullcontext)
    assert res["iou"] == pytest.approx(val[-1]["val_iou"], abs=1e-12)


def test_resume_continues_exactly(discs, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    kw = dict(num_workers=2, round_samples=12)  # rounds of 3 batches per worker: resume crosses one
    train(_cfg(discs, full, **kw))
    # a run killed after step 6 whose newest checkpoint is step 4: its log runs past the checkpoint
    train(_cfg(discs, cut, steps=4, **kw))
    with open(cut / "metrics.jsonl", "a") as f:
        for step in (5, 6):
            f.write(json.dumps({"step": step, "kind": "train", "loss": -1.0, "lr": 0.0}) + "\n")
    train(_cfg(discs, cut, **kw), resume=True)
    a, b = _rows(full), _rows(cut)
    assert [r["step"] for r in b] == list(range(1, 9))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]  # bit for bit (JSON floats round-trip)
    assert [r["lr"] for r in a] == [r["lr"] for r in b]
    wa, _ = load_for_inference(full)
    wb, _ = load_for_inference(cut)
    for (k, x), y in zip(wa.state_dict().items(), wb.state_dict().values()):
        assert torch.equal(x, y), k


def test_output_folder_with_a_run_refused(discs, tmp_path):
    out = tmp_path / "run"
    train(_cfg(discs, out, steps=2, ckpt_every=2))
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    with pytest.raises(RunExistsError, match="already holds a run.*--resume"):
        train(_cfg(discs, out, steps=2))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before
    with pytest.raises(ResumeError, match="cannot change width"):
        train(_cfg(discs, out, steps=4, width=8), resume=True)
    with pytest.raises(ResumeError, match="already at step 2 of 2"):
        train(_cfg(discs, out, steps=2), resume=True)
    with pytest.raises(ResumeError, match="holds no checkpoint"):
        train(_cfg(discs, tmp_path / "empty"), resume=True)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(discs, tmp_path, monkeypatch):
    real = torch.nn.functional.cross_entropy
    calls = {"n": 0}

    def poisoned(*a, **k):
        calls["n"] += 1
        loss = real(*a, **k)
        return loss * float("nan") if calls["n"] >= 5 else loss

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", poisoned)
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"loss became nan at or before step 6.*step-000004\.json is kept"):
        train(_cfg(discs, out, steps=8, ckpt_every=2, log_every=4, keep_checkpoints=0))
    # keep_checkpoints=0 keeps every checkpoint, so step 2 is still there beside the last good one
    assert sorted(p.name for p in (out / "checkpoints").glob("*.json")) == [
        "last.json", "step-000002.json", "step-000004.json"]
    _, meta = load_for_inference(out)
    assert meta["step"] == 4


def test_checkpoint_scores_in_eval_seg(discs, tmp_path):
    from click.testing import CliRunner

    from evaluator.cli import main as eval_main

    out = tmp_path / "run"
    train(_cfg(discs, out, steps=2, ckpt_every=2))
    res = CliRunner().invoke(eval_main, ["--ckpt", str(out), "--dataset", f"shards:{discs}", "--limit", "4",
                                         "--device", "cpu", "--out", str(tmp_path / "eval")])
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert "step-000002" in json.dumps(results) or "run@2" in json.dumps(results)


def test_tensorboard_logging_never_imports_tensorflow(tmp_path):
    # tensorboard imports TensorFlow whenever it is installed; the trainer must not pull it in
    import subprocess
    import sys

    code = ("import sys\nfrom trainer.train import _summary_writer\n"
            f"w = _summary_writer(__import__('pathlib').Path({str(tmp_path)!r}), None)\n"
            "w.add_scalar('a', 1.0, 1)\nimport numpy as np\nw.add_image('g', np.zeros((3, 4, 4), np.uint8), 1)\n"
            "w.close()\nprint('TF' if 'tensorflow' in sys.modules else 'noTF')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "noTF"
    assert list(tmp_path.glob("events.out.tfevents.*"))
