"""A tiny trained U-Net for the segmenter's tests: gen-synth on the toy GAN (64 samples, the last of
two shards held out), then four steps of train-unet at width 4 and 32 pixels, as
tests/test_end_to_end.py does at full scale. Its masks are poor; what the tests check (one inference
path, parity, provenance, resume) holds for any weights. Built once per session (tiny_run caches it)."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest


@functools.lru_cache(maxsize=None)
def tiny_run(root: Path) -> Path:
    """The run folder of a four-step width-4 U-Net trained on toy-GAN shards, under `root`."""
    from generator.config import GenConfig
    from generator.pipeline import run
    from trainer.config import TrainConfig
    from trainer.train import train

    shards = root / "shards"
    run(GenConfig(gan="toy", latents="prior", n=64, shard_size=32, val_shards=1, seed=5, name="toy",
                  out=str(shards), batch_size=32).resolved())
    out = root / "run"
    train(TrainConfig(shards=(str(shards / "toy.json"),), out=str(out), size=32, width=4, batch=4, steps=4,
                      lr=3e-3, lr_milestones=(3,), val_every=0, val_samples=8, ckpt_every=4, num_workers=0,
                      shuffle_buffer=8, device="cpu", cpu_threads=1))
    return out


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    """tiny_run's folder, shared by the session's segmenter tests (import this fixture by name)."""
    pytest.importorskip("tensorflow_hub")  # gen-synth's toy GAN
    pytest.importorskip("torch")
    return tiny_run(tmp_path_factory.getbasetemp() / "segmenter-tiny-run")


def one_line_error(res, *needles) -> str:
    """The one `Error: ...` line of a failed click invocation, holding every needle; no traceback."""
    assert res.exit_code != 0, res.output
    err = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(err) == 1 and "Traceback" not in res.output, res.output
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


def write_images(folder: Path, sizes: list[tuple[int, int]], seed: int = 0) -> list[Path]:
    """PNG photos-to-be of the given (height, width): a bright disc on noise, one per size."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i, (h, w) in enumerate(sizes):
        img = rng.integers(0, 100, (h, w, 3), dtype=np.uint8)
        yy, xx = np.mgrid[0:h, 0:w]
        img[(yy - h / 2) ** 2 + (xx - w / 3) ** 2 <= (min(h, w) / 4) ** 2] = (230, 200, 40)
        path = folder / f"img{i:02d}.png"
        cv2.imwrite(str(path), img)
        paths.append(path)
    return paths
