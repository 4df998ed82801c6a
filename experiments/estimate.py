"""What a stage will cost, for `--dry-run`: disk from measured sizes, time from measured rates.

Every figure here was measured on this project's development machine (2 CPU cores, no GPU) by the
command named beside it; a stage with no measured rate says "not measured yet" instead of a guess.
The GPU rates come from `make bench-gpu`, which no session with a GPU has run yet.
"""
from __future__ import annotations

from dataclasses import dataclass

# bytes per sample of a 128 x 128 set, per encoding (python benchmarks/shard_io.py --n 2000, DUTS-TR)
BYTES_PER_SAMPLE_128 = {"npy": 41_135, "png": 30_024, "webp": 20_256, "jpg": 8_543}
# U-Net parameters at width 64 (segmodel.unet.UNet(width=64)); float32 weights; they scale with width^2
UNET_PARAMS_64 = 17_263_042
# rates on the 2-core CPU: (per second, what, the command that measured it)
CPU_RATES = {
    ("generate", "toy"): (234.0, "samples", "python benchmarks/gen_synth.py --quick"),
    ("discover", "toy"): (1 / 0.15, "steps", "python benchmarks/discover_toy.py (0.14-0.16 s per step)"),
    ("discover", "dcgan-faces"): (1 / 1.55, "steps", "find-direction discover --gan dcgan-faces (README)"),
}


@dataclass(frozen=True)
class Estimate:
    disk_bytes: int | None  # None: nothing worth counting
    seconds: float | None  # None: not measured yet
    basis: str  # where the numbers come from

    def describe(self) -> str:
        disk = "-" if self.disk_bytes is None else human_bytes(self.disk_bytes)
        time = "not measured yet" if self.seconds is None else human_seconds(self.seconds)
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


def estimate(kind: str, opts: dict, *, gpu: bool) -> Estimate:
    """The cost of one stage with options `opts` (the recipe's keys) on a GPU machine or the CPU."""
    if kind == "generate":
        n, size = int(opts.get("n", 1000)), int(opts.get("image_size", 128))
        per = BYTES_PER_SAMPLE_128.get(opts.get("encoding", "npy"), BYTES_PER_SAMPLE_128["npy"]) * (size / 128) ** 2
        seconds, basis = _rate(kind, opts.get("gan", "bigbigan"), n, gpu)
        return Estimate(int(n * per), seconds, f"{per / 1000:.1f} KB/sample at {size} px; {basis}")
    if kind == "train":
        width = int(opts.get("width", 64))
        weights = 4 * UNET_PARAMS_64 * (width / 64) ** 2
        keep = int(opts.get("keep_checkpoints", 1)) or 12
        # the newest keeps its resume state (Adam: 2x the weights), the best adds one more
        disk = weights * (keep + 1) + 2 * weights
        return Estimate(int(disk), None, f"{human_bytes(weights)} per checkpoint at width {width}; "
                                         f"GPU steps/s: make bench-gpu")
    if kind == "discover":
        steps = int(opts.get("steps", 100_000))
        seconds, basis = _rate(kind, opts.get("gan", "bigbigan"), steps, gpu)
        return Estimate(None, seconds, basis)
    return Estimate(None, None, "small")


def _rate(kind: str, gan: str, amount: int, gpu: bool) -> tuple[float | None, str]:
    if gpu:
        return None, "GPU rate: make bench-gpu"
    found = CPU_RATES.get((kind, gan))
    if found is None:
        return None, f"no CPU rate measured for {gan}"
    per_s, what, source = found
    return amount / per_s, f"{per_s:.2f} {what}/s on 2 CPU cores ({source})"
