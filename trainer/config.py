"""TrainConfig: every knob of a training run, with the paper's defaults (paper sec. 3.4; docs/RULES.md,
"The U-Net and its training schedule").

One frozen dataclass is the single source of defaults; the CLI builds it from flags, the run
folder stores it as config.json, and checkpoints embed it.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError, first_line
from core.images import DEFAULT_MAX_PIXELS

PRECISIONS = ("fp32", "bf16", "fp16")


class ConfigError(UserError, ValueError):
    """A training setting out of range; the message names each bad flag and why."""

# Fields that decide what the run computes: a resumed run must keep them, or the loss
# sequence would not continue the killed one's.
RESULT_FIELDS = ("shards", "batch", "lr", "lr_milestones", "lr_gamma", "weight_decay", "size", "width",
                 "bilinear", "precision", "channels_last", "num_workers", "shuffle_buffer",
                 "seed", "round_samples", "val_samples")


@dataclass(frozen=True)
class TrainConfig:
    # --- data ---
    shards: tuple[str, ...] = ()          # shard-set specs (globs, brace ranges, manifests, folders, URLs)
    allow_incomplete: bool = False        # train on a set whose manifest says complete: false
    size: int = 128                       # training resolution, pixels (square); samples of another size are resized
    num_workers: int = dataclasses.field(  # DataLoader worker processes per rank (0 = read in the main process)
        default=2, metadata={"flag": "--workers"})
    shuffle_buffer: int = 1000            # sample shuffle buffer, samples per worker
    round_samples: int = 0                # samples per (rank, worker) stream round (0 = 4096); a resume re-reads at most one round
    val_samples: int = 512                # at most this many held-out ("val") samples per validation, samples
    # --- model ---
    width: int = 64                       # U-Net base width, channels (64 = paper: 64-128-256-512-512)
    bilinear: bool = True                 # bilinear x2 upsampling (paper/reference); False = transposed convs
    # --- optimisation (paper: Adam 1e-3, x0.2 at 8000, 12000 steps, batch 95) ---
    steps: int = 12000                    # optimizer steps, total
    batch: int = dataclasses.field(       # samples per optimizer step, summed over all ranks
        default=95, metadata={"flag": "--batch-size"})
    lr: float = 1e-3                      # Adam learning rate at step 0
    lr_milestones: tuple[int, ...] = (8000,)  # steps at which the learning rate is multiplied by lr_gamma
    lr_gamma: float = 0.2                 # learning-rate factor at each milestone
    # Adam's L2 penalty; 0 = the paper's. Voynov & Babenko's BigGAN saliency U-Net used 1e-5 (Table 4's first row)
    weight_decay: float = 0.0
    seed: int = 0                         # seeds model init and the whole data order
    # --- speed ---
    precision: str = "bf16"               # fp32 | bf16 | fp16 autocast; bf16/fp16 apply on CUDA only (CPU runs fp32)
    compile: bool = False                 # torch.compile the model (CUDA; minutes of warm-up)
    channels_last: bool = True            # NHWC memory format on CUDA (tensor-core friendly)
    device: str = "auto"                  # auto | cpu | cuda
    cpu_threads: int = 0                  # torch intra-op threads (0 = torch's default); 1 helps on busy shared CPUs
    # --- bookkeeping ---
    out: str = "runs/unet"                # run folder: config.json, metrics.jsonl, tb/, checkpoints/
    val_every: int = 500                  # validate every this many steps (0 = only at the end)
    log_every: int = 10                   # log loss/lr/samples-per-s every this many steps
    ckpt_every: int = 1000                # checkpoint every this many steps (and always at the end)
    keep_checkpoints: int = 1             # keep the newest N checkpoints and the best by validation IoU; 0 = all
    eval_dataset: str | None = None       # optional real benchmark (a benchdata dataset name) validated at val_every
    data_root: str | None = None          # folder of that benchmark (images/, masks/)
    eval_samples: int = 200               # at most this many real-benchmark images per validation
    max_image_pixels: int = DEFAULT_MAX_PIXELS  # benchmark images over this many pixels are skipped (from the header)

    def __post_init__(self):
        # tuples, not lists: the dataclass is frozen and hashable, and JSON round-trips give lists
        object.__setattr__(self, "shards", tuple(self.shards))
        object.__setattr__(self, "lr_milestones", tuple(int(m) for m in self.lr_milestones))
        problems = []

        def bad(name: str, why: str) -> None:  # named as the flag; config files use the field name
            problems.append(f"{flag_of(name)} {getattr(self, name)!r} ({why})")

        if self.precision not in PRECISIONS:
            bad("precision", f"choose one of {', '.join(PRECISIONS)}")
        if self.device not in ("auto", "cpu", "cuda"):
            bad("device", "choose auto, cpu or cuda")
        for name in ("steps", "batch", "size", "width", "log_every", "ckpt_every", "shuffle_buffer", "max_image_pixels"):
            if getattr(self, name) < 1:
                bad(name, "must be >= 1")
        for name in ("num_workers", "val_every", "round_samples", "val_samples", "eval_samples", "cpu_threads",
                     "keep_checkpoints"):
            if getattr(self, name) < 0:
                bad(name, "must be >= 0")
        if not 0 <= self.seed < 2 ** 63:
            bad("seed", "must be in 0..2**63-1")
        if self.size % 16:
            bad("size", "must be a multiple of 16: the U-Net halves it 4 times")
        for name in ("lr", "lr_gamma"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                bad(name, "must be a finite number > 0")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            bad("weight_decay", "must be a finite number >= 0")
        if list(self.lr_milestones) != sorted(self.lr_milestones):
            bad("lr_milestones", "must be increasing")
        elif self.lr_milestones and self.lr_milestones[0] < 1:
            bad("lr_milestones", "steps must be >= 1")
        if problems:
            raise ConfigError("bad training config: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict, source: str | Path | None = None) -> "TrainConfig":
        """The config of a dict of fields (a config.json); `source` names the file in errors."""
        where = f"{source}: " if source else ""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{where}unknown config fields {unknown}; known: {sorted(known)}")
        try:
            return cls(**d)
        except ConfigError as e:
            raise ConfigError(f"{where}{e}") from None
        except TypeError as e:  # a value of the wrong type, e.g. "steps": "many"
            raise ConfigError(f"{where}bad training config: {first_line(e)}") from None

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        try:
            d = json.loads(Path(path).read_text())
        except ValueError as e:
            raise ConfigError(f"{path}: not a JSON config ({first_line(e)})") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: holds {type(d).__name__}, not a JSON object of TrainConfig fields")
        return cls.from_dict(d, source=path)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


def config_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def flag_of(name: str) -> str:
    """The train-unet flag of a TrainConfig field: `--steps` for `steps`; a field whose flag is
    named otherwise says so in its metadata (`batch`: `--batch-size`, `num_workers`: `--workers`)."""
    return TrainConfig.__dataclass_fields__[name].metadata.get("flag", "--" + name.replace("_", "-"))


__all__ = ["TrainConfig", "ConfigError", "PRECISIONS", "RESULT_FIELDS", "config_fields", "flag_of"]
