"""What a stage will cost, for `--dry-run`: disk from measured sizes, time from measured rates.

Every figure here was measured on this project's development machine (2 CPU cores, no GPU) by the
command named beside it. Every stage costs at least its start-up (STARTUP_S, measured on a tiny
plan); a stage whose work has no measured rate (BigBiGAN: no machine here reaches TF Hub) says
"at least" its start-up instead of a guess. Shapes between the measured ones are scaled, and say so.
The GPU rates come from `make bench-gpu`, which no session with a GPU has run yet.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

# bytes per sample of a 128 x 128 set, per encoding (python benchmarks/shard_io.py --n 2000, its
# DUTS-TR rows: photos stand in for BigBiGAN's images). A generated set adds about 0.6 KB to these: its
# z (120 float32 that do not compress; the benchmark's are zeros) and meta. The default encoding is delta.
BYTES_PER_SAMPLE_128 = {"delta": 23_996, "npy": 44_729, "png": 30_154, "webp": 20_376, "jpg": 8_609}
# U-Net parameters at width 64 (segmodel.unet.UNet(width=64)); float32 weights; they scale with width^2
UNET_PARAMS_64 = 17_263_042
MACHINE = "2-core CPU, no GPU"  # the class of machine every rate below was measured on
# rates on the 2-core CPU: (amount per second, what, the command that measured it). A key is
# (stage kind, GAN) or (stage kind, GAN, variant) where the variant changes the rate (see _variant)
CPU_RATES = {
    ("generate", "toy"): (234.0, "samples", "python benchmarks/gen_synth.py --quick"),
    # --max-fg auto keeps most draws; with the paper's size bound 0.5 most face draws are rejected
    ("generate", "dcgan-faces", "max-fg auto"): (
        10_000 / 43.6, "samples", "gen-synth --gan dcgan-faces --latents prior --max-fg auto --n 10000: 43.6 s"),
    ("generate", "dcgan-faces"): (
        10_000 / 842, "samples", "gen-synth --gan dcgan-faces --latents prior --direction <rank's winner> "
                                 "--n 10000: 14 min 2 s, most draws rejected by the size filter"),
    ("discover", "toy"): (1 / 0.15, "steps", "python benchmarks/discover_toy.py (0.14-0.16 s per step)"),
    ("discover", "dcgan-faces"): (1 / 1.55, "steps", "find-direction discover --gan dcgan-faces --steps 6000: "
                                                     "1.3-1.9 s per step"),
    # one fit = one candidate under one sign, RANK_FIT's steps on RANK_FIT's latents
    ("rank", "dcgan-faces"): (200 / 245, "fits", "find-direction rank --gan dcgan-faces over 100 discovered "
                                                 "directions, both signs: 4 min 5 s (100 axes: about 7 min)"),
    # one unit = one latent through one Adam step (steps x batch)
    ("optimize", "dcgan-faces"): (300 * 32 / 44, "latent-steps", "find-direction optimize --gan dcgan-faces "
                                                                  "(300 steps, batch 32): 44 s"),
}
RANK_FIT = (200, 32)  # (steps, samples) of one fit in the rank rate: find-direction rank's defaults
# s/step of train-unet on the 2-core CPU at (width, size, batch); other shapes are scaled from the
# nearest of these by width^2 x size^2 x batch (the U-Net's convolutions)
TRAIN_S_PER_STEP = {
    (16, 128, 8): (2.06, "python benchmarks/train_step.py --widths 16,64 --batches 8 --steps 3"),
    (64, 128, 8): (11.95, "python benchmarks/train_step.py --widths 16,64 --batches 8 --steps 3"),
    (16, 128, 95): (9.24, "python benchmarks/train_step.py (docs/MEASURED.md, Training step)"),
    (16, 64, 16): (797 / 2000, "train-unet --width 16 --size 64 --batch-size 16 --steps 2000: 13 min 17 s, "
                               "validation included, cores shared (an upper bound)"),
    (8, 64, 16): (941 / 3000, "train-unet --width 8 --size 64 --batch-size 16 --steps 3000 --cpu-threads 1: "
                              "15 min 41 s"),
    (8, 128, 16): (851 / 900, "train-unet --width 8 --batch-size 16 --steps 900 --cpu-threads 1 (DUTS): 14 min 11 s"),
}
# s/image of eval-seg on the 2-core CPU at (model width, input size), decoding and scoring included
EVAL_S_PER_IMAGE = {
    (16, 64): (24 / 2000, "eval-seg of a width-16 64 px U-Net on a 1,000-sample held-out shard and "
                          "1,000 ECSSD photos: 24 s"),
    (64, 128): (1 / 0.7, "python benchmarks/segment.py --quick: width 64, torch, 0.7 images/s"),
}
# images each named benchmark scores (docs/TOOLS.md, "Datasets")
DATASET_IMAGES = {"ecssd": 1000, "duts-te": 5019, "dut-omron": 5168, "cub": 1000, "flowers": 1020,
                  "imagenet-wsol": 10_000, "cub-wsol": 5794, "openimages-wsol": 5000}
# start-up of one stage, whatever its size: the tiny table2-ebigbigan plan (python -m experiments
# run table2-ebigbigan --tiny) spent 8 s in a 48-sample toy generate stage (TensorFlow's import,
# the GAN's build), 3-10 s per 3-step train stage and 2-4 s per 8-image evaluate stage
STARTUP_S = {"generate": 8.0, "discover": 8.0, "rank": 8.0, "optimize": 8.0, "import": 3.0, "train": 3.0,
             "evaluate": 2.0}


@dataclass(frozen=True)
class Estimate:
    disk_bytes: int | None  # None: nothing worth counting
    seconds: float | None  # None: not measured yet
    basis: str  # where the numbers come from
    at_least: bool = False  # only the start-up is known: the time is a lower bound

    def describe(self) -> str:
        disk = "-" if self.disk_bytes is None else human_bytes(self.disk_bytes)
        if self.seconds is None:
            time = "not measured yet"
        else:
            time = ("at least " if self.at_least else "") + human_seconds(self.seconds)
        return f"disk {disk}, time {time} ({self.basis})"


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def human_seconds(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def estimate(kind: str, opts: dict, *, gpu: bool, context: dict | None = None) -> Estimate:
    """The cost of one stage with options `opts` (the recipe's keys over the tool's defaults) on a
    GPU machine or the CPU. `context` carries what the stage's own options do not say: for rank
    `candidates` (how many), for evaluate `width` and `size` of the model and `shard_images` (the
    held-out samples of the set it scores)."""
    context = context or {}
    gan = opts.get("gan") or "bigbigan"
    if kind == "generate":
        n, size = int(opts.get("n") or 1000), int(opts.get("image_size") or 128)
        per = BYTES_PER_SAMPLE_128.get(opts.get("encoding", "delta"), BYTES_PER_SAMPLE_128["delta"]) * (size / 128) ** 2
        time = _rated(kind, gan, n, gpu, _variant(kind, opts))
        return Estimate(int(n * per), time.seconds, f"{per / 1000:.1f} KB/sample at {size} px; {time.basis}",
                        time.at_least)
    if kind == "train":
        width = int(opts.get("width") or 64)
        weights = 4 * UNET_PARAMS_64 * (width / 64) ** 2
        keep = int(opts.get("keep_checkpoints", 1)) or 12
        # the newest keeps its resume state (Adam: 2x the weights), the best adds one more
        disk = weights * (keep + 1) + 2 * weights
        time = _train_time(opts, gpu)
        return Estimate(int(disk), time.seconds, f"{human_bytes(weights)} per checkpoint at width {width}; {time.basis}")
    if kind == "discover":
        return _rated(kind, gan, int(opts.get("steps") or 100_000), gpu)
    if kind == "rank":
        steps, samples = int(opts.get("steps") or RANK_FIT[0]), int(opts.get("samples") or RANK_FIT[1])
        fits = context.get("candidates")
        if fits is None:
            return Estimate(None, None, "the number of candidates is known once they exist")
        fits *= 2 if opts.get("both_signs", True) else 1
        return _rated(kind, gan, fits * steps * samples / (RANK_FIT[0] * RANK_FIT[1]), gpu)
    if kind == "optimize":
        return _rated(kind, gan, int(opts.get("steps") or 300) * int(opts.get("batch") or 32), gpu)
    if kind == "evaluate":
        return _eval_time(opts, context, gpu)
    return Estimate(None, STARTUP_S.get(kind, 2.0), f"start-up only, {MACHINE}", at_least=True)


def _variant(kind: str, opts: dict) -> str | None:
    if kind == "generate" and str(opts.get("max_fg")) == "auto":
        return "max-fg auto"
    return None


def _rated(kind: str, gan: str, amount: float, gpu: bool, variant: str | None = None) -> Estimate:
    """amount / the measured rate, plus the stage's start-up; with no rate, the start-up alone as a
    lower bound (a GAN no machine here has run is not guessed at)."""
    floor = STARTUP_S.get(kind, 2.0)
    if gpu:
        return Estimate(None, None, "GPU rate: make bench-gpu")
    found = CPU_RATES.get((kind, gan, variant)) or CPU_RATES.get((kind, gan))
    if found is None:
        return Estimate(None, floor, f"start-up only: no {kind} rate measured for {gan} on a {MACHINE}",
                        at_least=True)
    per_s, what, source = found
    return Estimate(None, floor + amount / per_s,
                    f"{per_s:.3g} {what}/s + {floor:.0f} s start-up, {MACHINE}: {source}")


def _nearest(table: dict, shape: tuple) -> tuple[tuple, float]:
    """The measured shape closest to `shape` in log scale, and the cost factor from it to `shape`
    (width^2 x size^2 [x batch]: the U-Net's convolutions)."""
    def distance(k):
        return sum(abs(math.log(a / b)) for a, b in zip(k, shape))

    best = min(table, key=distance)
    factor = (shape[0] / best[0]) ** 2 * (shape[1] / best[1]) ** 2
    if len(shape) > 2:
        factor *= shape[2] / best[2]
    return best, factor


def _train_time(opts: dict, gpu: bool) -> Estimate:
    if gpu:
        return Estimate(None, None, "GPU steps/s: make bench-gpu")
    shape = (int(opts.get("width") or 64), int(opts.get("size") or 128), int(opts.get("batch") or 95))
    steps = int(opts.get("steps") or 12_000)
    best, factor = _nearest(TRAIN_S_PER_STEP, shape)
    per_step, source = TRAIN_S_PER_STEP[best]
    per_step *= factor
    how = "measured" if factor == 1 else f"scaled from width {best[0]}, {best[1]} px, batch {best[2]}"
    return Estimate(None, STARTUP_S["train"] + steps * per_step,
                    f"{per_step:.3g} s/step ({how}) + start-up, {MACHINE}: {source}")


def _eval_time(opts: dict, context: dict, gpu: bool) -> Estimate:
    datasets = opts.get("datasets") or []
    limit = opts.get("limit")
    images, unknown = 0, []
    for spec in datasets:
        if spec.startswith("shards:"):
            count = context.get("shard_images")
        elif spec.startswith("folder:"):
            count = _folder_images(spec[len("folder:"):])
        else:
            count = DATASET_IMAGES.get(spec)
        if count is None:
            unknown.append(spec)
            continue
        images += min(count, int(limit)) if limit else count
    if gpu:
        return Estimate(None, None, "GPU rate: make bench-gpu")
    width = int(context.get("width") or 64)
    size = opts.get("input_size")
    size = int(size) if size not in (None, "native") else int(context.get("size") or 128)
    best, factor = _nearest(EVAL_S_PER_IMAGE, (width, size))
    per_image, source = EVAL_S_PER_IMAGE[best]
    per_image *= factor
    how = "measured" if factor == 1 else f"scaled from width {best[0]} at {best[1]} px"
    missing = f"; not counted: {', '.join(unknown)}" if unknown else ""
    return Estimate(None, STARTUP_S["evaluate"] + images * per_image,
                    f"{images} images at {per_image:.3g} s/image ({how}) + start-up, {MACHINE}: {source}{missing}",
                    at_least=bool(unknown))


def _folder_images(path: str) -> int | None:
    images = Path(path).expanduser() / "images"
    if not images.is_dir():
        return None
    return sum(1 for p in images.iterdir() if p.is_file() and not p.name.startswith("."))
