"""The issue's whole chain on the toy GAN: gen-synth shards -> train-unet on the CPU -> the U-Net
segments the held-out toy shards (IoU >= 0.8), and eval-seg scores the same checkpoint."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("tensorflow_hub")
pytest.importorskip("torch")

from generator.config import GenConfig  # noqa: E402
from generator.pipeline import run  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.train import train  # noqa: E402


@pytest.mark.slow
def test_toy_shards_train_a_unet_that_segments_the_val_part(tmp_path):
    shards = tmp_path / "shards"
    run(GenConfig(gan="toy", latents="prior", n=600, shard_size=100, val_shards=1, seed=3, name="toy",
                  out=str(shards), batch_size=50).resolved())
    manifest = json.loads((shards / "toy.json").read_text())
    assert manifest["totals"]["samples"] == 600

    out = tmp_path / "run"
    # 800 steps: with the default (bimodal) histogram rule the toy's sets keep its weakly lit draws
    # too, whose G(z) shows the object less clearly than the well-lit draws the stricter paper rule
    # keeps; 240 steps were enough for those (val IoU 0.93) but reach 0.38 here, 600 reach 0.79,
    # 800 reach 0.87 (measured on this set)
    summary = train(TrainConfig(shards=(str(shards / "toy.json"),), out=str(out), size=64, width=8, batch=16,
                                steps=800, lr=3e-3, lr_milestones=(600,), val_every=400, val_samples=100,
                                ckpt_every=800, num_workers=0, shuffle_buffer=200, device="cpu", cpu_threads=1))
    assert summary["val"]["val_iou"] >= 0.8, summary["val"]

    from click.testing import CliRunner

    from evaluator.cli import main as eval_seg

    res = CliRunner().invoke(eval_seg, ["--ckpt", str(out), "--dataset", f"shards:{shards / 'toy.json'}",
                                        "--out", str(tmp_path / "eval"), "--limit", "50"])
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    (entry,) = results["datasets"].values()
    # eval-seg feeds this U-Net at its training size, 64 px, as the trainer's validation does (IoU
    # measured 0.82 here, the trainer's own 0.82; fed at the paper's 128 px, --input-size 128: 0.59)
    assert entry["input_size"] == 64 and entry["protocol"] == "short64"
    assert entry["summary"]["iou"]["mean"] >= 0.75
