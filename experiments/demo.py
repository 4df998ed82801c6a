"""`make demo`: the whole pipeline on the built-in stand-in GAN, on a CPU, in minutes.

gen-synth (toy GAN, embeddings of a folder of images this demo draws itself) -> train-unet (a short
CPU run) -> eval-seg (the set's held-out part, and ../shared/data/ecssd when present) -> segment (a
few ECSSD photos, or the demo's own drawings without the data, with --overlay; a contact sheet of
the overlays goes into the pictures). It prints the results table and names the folders that hold
the masks and every picture. Finished steps are skipped on a re-run.

The toy GAN is a test fixture, not a real generative model: its numbers show that the plumbing works,
not what BigBiGAN achieves. The same commands with `--gan bigbigan` run the paper's method."""
from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from pathlib import Path

import click
import cv2
import numpy as np

from core.errors import UserError
from experiments.demo_data import make_image_folder
from experiments.runner import SHARED_DATA, StageError, invoke

OUT = Path(os.environ.get("BGW_DEMO_OUT", "demo-out"))
# sized to finish in under 10 minutes on 2 CPU cores (see README, "make demo")
N_SAMPLES = int(os.environ.get("BGW_DEMO_N", 3000))
STEPS = int(os.environ.get("BGW_DEMO_STEPS", 300))
BATCH = int(os.environ.get("BGW_DEMO_BATCH", 16))
WIDTH = int(os.environ.get("BGW_DEMO_WIDTH", 8))
SIZE = int(os.environ.get("BGW_DEMO_SIZE", 64))  # training resolution: 64 px keeps the CPU run short
N_SEGMENT = 6  # photos `segment` shows the model on: one contact sheet of overlays


def _step(title: str, marker: Path, stage: str, args: list[str]) -> None:
    click.secho(f"\n== {title}", bold=True)
    if marker.exists():
        click.echo(f"   done already ({marker.parent}); delete it to redo")
        return
    click.echo("   $ " + {"generate": "gen-synth", "train": "train-unet", "evaluate": "eval-seg"}[stage] + " " + " ".join(args))
    t0 = time.monotonic()
    invoke(stage, args)
    marker.write_text(f"{time.monotonic() - t0:.1f} s\n")
    click.echo(f"   took {time.monotonic() - t0:.0f} s")


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    click.secho(
        "This demo runs on the project's TOY GAN, a procedural stand-in (a test fixture) with BigBiGAN's\n"
        "interface. Its numbers show the pipeline working end to end, not the paper's results. With the\n"
        "real weights: gen-synth --gan bigbigan --dataset cub --alpha 0.2 --n 1e6 (see README).",
        fg="yellow",
    )
    t0 = time.monotonic()
    pictures = OUT / "pictures"
    pictures.mkdir(parents=True, exist_ok=True)
    data = make_image_folder(OUT / "data", n=200)
    shards = OUT / "shards"
    manifest = shards / "demo.json"
    try:
        _step("1/4 generate synthetic pairs with the toy GAN", shards / "DONE", "generate", [
            "--gan", "toy", "--dataset", f"folder:{data}", "--alpha", "0.2", "--n", str(N_SAMPLES),
            "--shard-size", "500", "--val-shards", "1", "--seed", "0", "--out", str(shards), "--name", "demo",
            "--preview",
        ])
        run = OUT / "run"
        _step("2/4 train the U-Net on the shards (CPU)", run / "DONE", "train", [
            "--shards", str(manifest), "--out", str(run), "--steps", str(STEPS), "--batch-size", str(BATCH),
            "--width", str(WIDTH), "--size", str(SIZE), "--lr", "3e-3", "--lr-milestones", str(STEPS * 3 // 4),
            "--val-every", str(max(STEPS // 3, 1)), "--ckpt-every", str(max(STEPS // 3, 1)), "--workers", "1",
            # torch's thread count changes the float sums of training: pinned, the demo's numbers do not hang
            # on the machine's core count (1 core and 2 cores gave ECSSD IoU 0.337 and 0.338 unpinned)
            "--cpu-threads", "2", "--seed", "0",
        ] + (["--resume"] if run.exists() and not (run / "DONE").exists() else []))
        # inside the run folder, where export-model looks for this checkpoint's scores (the card quotes them)
        evaluation = run / "eval"
        datasets = ["--dataset", f"shards:{manifest}"]
        if (SHARED_DATA / "ecssd" / "images").is_dir():
            datasets += ["--dataset", f"folder:{SHARED_DATA / 'ecssd'}"]
        _step("3/4 evaluate", evaluation / "DONE", "evaluate",
              ["--ckpt", str(run), "--out", str(evaluation)] + datasets)
        masks = _segment_step(run, OUT / "segment", pictures / "segment-overlays.png", data)
    except (StageError, UserError) as exc:
        click.secho(f"demo failed: {exc}", fg="red", err=True)
        return 1
    for src in [*shards.glob("*.png"), *(OUT / "run").glob("val-grid.png"), *evaluation.glob("*.png")]:
        shutil.copy2(src, pictures / f"{src.parent.name}-{src.name}")
    results_md = evaluation / "results.md"
    if results_md.exists():
        click.echo("\n" + results_md.read_text())
    click.secho(f"\nDone in {time.monotonic() - t0:.0f} s. Masks and overlays of `segment`: {masks.resolve()}\n"
                f"Pictures: {pictures.resolve()}", fg="green")
    return 0


def _segment_step(run: Path, out: Path, sheet: Path, data: Path) -> Path:
    """4/4: `segment` on a few photos with --overlay, and a contact sheet of the overlays. ECSSD's
    first photos when ../shared/data is present, else the demo's own drawings."""
    from segmenter.cli import main as segment

    ecssd = SHARED_DATA / "ecssd" / "images"
    folder = ecssd if ecssd.is_dir() else data / "images"
    photos = sorted(folder.glob("*.jpg"))[:N_SEGMENT]
    args = ["--ckpt", str(run), *map(str, photos), "--out", str(out), "--overlay"]
    click.secho("\n== 4/4 segment photos with the trained U-Net", bold=True)
    click.echo(f"   $ segment --ckpt {run} {folder}/{{{photos[0].stem}..{photos[-1].stem}}}.jpg --out {out} --overlay")
    segment.main(args, standalone_mode=False)  # resumable: done photos are skipped
    overlays = [out / f"{p.stem}.overlay.jpg" for p in photos]
    _contact_sheet(overlays, sheet)
    click.echo(f"   overlays: {sheet}")
    return out


def _contact_sheet(paths: list[Path], dest: Path, height: int = 200, columns: int = 3, gap: int = 6) -> None:
    """The pictures at one height, `columns` a row, on white."""
    tiles = []
    for p in paths:
        im = cv2.imread(str(p))
        tiles.append(cv2.resize(im, (round(im.shape[1] * height / im.shape[0]), height),
                                interpolation=cv2.INTER_AREA))
    rows = [tiles[i:i + columns] for i in range(0, len(tiles), columns)]
    width = max(sum(t.shape[1] for t in r) + gap * (len(r) + 1) for r in rows)
    sheet = np.full((len(rows) * (height + gap) + gap, width, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        x = gap
        for t in row:
            y = gap + r * (height + gap)
            sheet[y:y + height, x:x + t.shape[1]] = t
            x += t.shape[1] + gap
    cv2.imwrite(str(dest), sheet)


if __name__ == "__main__":
    sys.exit(main())
