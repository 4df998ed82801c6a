"""gen-synth's settings: `GenConfig` (every setting, checked in one place, `GenConfig.check`, when
it is resolved) and the shard plan (`make_plan`: shard sizes and the train/val split).

Split: the last ``num_val`` shards are the validation split (``val_shards``, or
ceil(val_fraction x shards), always leaving one training shard).
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

from core.cli import USAGE_EXIT_CODE
from core.errors import UserError, first_line
from core.images import DEFAULT_MAX_PIXELS
from core.registry import UnknownNameError
from gans.loader import DEFAULT_GAN, MIN_IMAGE_SIZE
from masking.rules import PRESETS, FilterConfig
from shardset.format import DEFAULT_ENCODING

from .latents import LATENT_SOURCES

# Datasets whose latents use alpha = 0.2 by default (paper, section 3.2); imagenet uses 0.
SMALL_DATASETS = ("cub", "flowers", "duts", "ecssd", "dut-omron")
DATASET_PRESETS = {"flowers": "flowers"}  # filter preset per dataset (paper: Flowers uses `mean`)
MAX_FG_AUTO = "auto"  # GenConfig.max_fg value: the size bound follows the direction's masks (inputs.auto_size_bound)
MAX_SHARDS = 1_000_000  # shard indices are 6 digits
GIVE_UP_EMPTY = 2000  # draws of one shard with nothing accepted: the filters reject everything
# models whose segmenting direction ships with this project (the toy's, by construction); a
# direction found for any other GAN is a file (--direction), e.g. `find-direction rank`'s winner
SHIPPED_DIRECTIONS = ("toy",)


class GenerationError(UserError):
    """A run cannot start or continue; the message is one line naming the cause and the fix."""


class OptionForModelError(GenerationError):
    """An option the loaded model cannot take (--classes for an unconditional GAN, a class it does
    not have): a usage error, found once the model has loaded."""

    exit_code = USAGE_EXIT_CODE


@dataclass(frozen=True)
class GenConfig:
    """Every setting of a gen-synth run. ``None`` means "derived" (see ``resolved``)."""

    # -- model
    gan: str = DEFAULT_GAN  # "bigbigan", "toy", "dcgan-faces", a local SavedModel folder or a TF-Hub handle
    direction: str | None = None  # .npy/.pth file of h_bg [latent_dim]; None = the model's shipped one
    shift: float = 5.0  # r: latent units moved along the unit direction, x' = G(z + r h)
    # class-conditional GANs (BigGAN): the classes drawn, one per sample, uniform over the set:
    # "all", or indices and ranges "1,5,10-19" (gans.classes); None = all. An error for other GANs.
    classes: str | None = None
    # BigGAN's truncation trick (gans.truncation): z = T x, x ~ N(0, I) truncated to [-2, 2], the module
    # fed T; None = untruncated z ~ N(0, I), fed 1.0. Prior latents and a module with that input only.
    truncation: float | None = None
    cache_dir: str | None = None  # model and embeddings cache folder; None = $BGW_CACHE_DIR or ~/.cache/bgw-seg
    # -- latents
    latents: str | None = None  # "prior" | "embeddings"; None = embeddings when a dataset is given
    alpha: float | None = None  # noise scale of z = E(I) + alpha xi; None = 0.2 (0 for imagenet)
    dataset: str | None = None  # cub, flowers, imagenet, duts, ecssd, dut-omron, folder:PATH
    data_root: str | None = None  # folder of the named datasets; None = $BGW_DATA_ROOT
    # -- size and split
    n: int = 1000  # accepted samples in the whole set (the last shard may be short)
    shard_size: int = 1000  # accepted samples per shard
    val_fraction: float = 0.01  # share of shards held out as validation (rounded up), when val_shards is None
    val_shards: int | None = None  # number of validation shards (the last ones); overrides val_fraction
    seed: int = 0  # with the shard index, fixes every draw
    # -- output
    out: str | None = None  # folder of the set (gen-synth requires it: nothing is written into the current folder unasked)
    name: str | None = None  # set name; None = from the dataset (or the model for the prior)
    encoding: str = DEFAULT_ENCODING  # image encoding in the shards: delta (default) | npy | png | webp | jpg
    image_size: int = 128  # side of the set's images in pixels; G(z) of another size is resampled to it
    max_image_pixels: int = DEFAULT_MAX_PIXELS  # dataset images larger than this are skipped (read from the header)
    preview: str | bool | None = None  # path of a preview PNG to write; True = OUT/NAME-preview.png; None = none
    # share of samples whose stored image is the mask pair's second render G(z + b h) instead of
    # G(z), drawn per sample (Voynov & Babenko's shifted_img_prob, 0.1); 0 = always G(z)
    shifted_images: float = 0.0
    # -- masks and filters (None = the preset's value)
    preset: str | None = None  # key of masking.rules.PRESETS; None = the dataset's ("flowers") or "default"
    mask_rule: str | None = None  # "lighting" | "mean"
    connectivity: int | None = None  # 4 (paper) | 8 (reference code)
    components_filter: bool | None = None  # drop components < 0.2 x the largest; False = keep every component
    size_filter: bool | None = None  # reject masks with foreground fraction > max_fg
    # the size filter's bound: None = the preset's (the paper's 0.5); a fraction in (0, 1]; "auto" =
    # masks.size_bound of this direction's own masks, measured when the run starts (inputs.auto_size_bound)
    max_fg: float | str | None = None
    histogram_rule: str | None = None  # "paper" | "bimodal"
    histogram_filter: bool | None = None  # False = no histogram filter (--no-histogram-filter); None = on
    # -- execution
    batch_size: int = 64  # pairs per accelerator call
    nodes: int = 1  # N: the shards are split over N independent processes (machines, array jobs)
    node_index: int = 0  # I in 0..N-1: this process renders the shards k with k % N == I
    resume: bool = False  # keep verified complete shards of an existing set with the same params
    queue_depth: int = 2  # rendered batches waiting for the host thread (memory bound)
    write_threads: int = 0  # threads encoding + writing full shards in parallel; 0 = min(4, CPU cores)
    max_draws_per_sample: int = 200  # give up on a shard after this many draws per sample needed
    # set by resolved(): every derived setting is filled in and the whole config was validated
    is_resolved: bool = dataclasses.field(default=False, repr=False, compare=False)

    def resolved(self) -> "GenConfig":
        """A copy with every derived (None) setting filled in and checked (`check`). Raises
        GenerationError (one line naming the value and the fix)."""
        if self.is_resolved:
            return self
        dataset_name = _dataset_name(self.dataset)
        latents = self.latents or ("embeddings" if self.dataset else "prior")
        alpha = self.alpha
        if alpha is None:
            alpha = 0.0 if dataset_name == "imagenet" else 0.2
        preset = self.preset or DATASET_PRESETS.get(dataset_name, "default")
        name = self.name or _default_name(self)
        write_threads = self.write_threads or min(4, os.cpu_count() or 1)
        preview = (str(Path(self.out) / f"{name}-preview.png") if self.out else None) if self.preview is True \
            else self.preview or None
        cfg = dataclasses.replace(self, latents=latents, alpha=float(alpha), preset=preset, name=name,
                                  write_threads=write_threads, preview=preview)
        cfg.check()
        return dataclasses.replace(cfg, is_resolved=True)

    def filter_config(self) -> FilterConfig:
        """The FilterConfig: the preset with this config's overrides."""
        base = PRESETS.get(self.preset or "default")
        over = {}
        if self.mask_rule is not None:
            over["mask_rule"] = self.mask_rule
        if self.connectivity is not None:
            over["connectivity"] = self.connectivity
        if self.components_filter is False:
            over["min_component_ratio"] = 0.0
        if self.size_filter is not None:
            over["size_filter"] = self.size_filter
        if self.max_fg is not None and self.max_fg != MAX_FG_AUTO:
            over["max_fg_fraction"] = float(self.max_fg)
        if self.histogram_filter is False:
            over["histogram_rule"] = None  # masking's spelling of "no histogram filter"
        elif self.histogram_rule is not None:
            over["histogram_rule"] = self.histogram_rule
        return dataclasses.replace(base, **over)

    def check(self) -> None:
        """Reject a bad config before anything loads: the one place gen-synth's settings are
        checked (`resolved` calls it). Raises GenerationError naming the value and the fix."""
        from shardset.format import ENCODINGS, NAME_RE

        def bad(msg: str):
            raise GenerationError(msg)

        for field, value in (("n", self.n), ("shard_size", self.shard_size), ("batch_size", self.batch_size),
                             ("image_size", self.image_size), ("max_image_pixels", self.max_image_pixels),
                             ("nodes", self.nodes), ("queue_depth", self.queue_depth),
                             ("write_threads", self.write_threads),
                             ("max_draws_per_sample", self.max_draws_per_sample)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                bad(f"{field} must be a positive integer, got {value!r}")
        if self.image_size < MIN_IMAGE_SIZE:
            bad(f"image_size must be at least {MIN_IMAGE_SIZE} pixels, got {self.image_size}")
        if math.ceil(self.n / self.shard_size) > MAX_SHARDS:
            bad(f"n={self.n} with shard_size={self.shard_size} needs over {MAX_SHARDS} shards; raise the shard size")
        if not 0 <= self.node_index < self.nodes:
            bad(f"node_index must be in 0..{self.nodes - 1}, got {self.node_index}")
        if not isinstance(self.seed, int) or self.seed < 0:
            bad(f"seed must be an integer >= 0, got {self.seed!r}")
        if not math.isfinite(self.shift):
            bad(f"shift must be a finite number, got {self.shift!r}")
        if isinstance(self.shifted_images, bool) or not isinstance(self.shifted_images, (int, float)) \
                or not 0.0 <= self.shifted_images <= 1.0:
            bad(f"shifted_images must be a fraction in [0, 1] (e.g. 0.1), got {self.shifted_images!r}")
        if self.truncation is not None:
            from gans.truncation import TruncationError, check_truncation

            try:
                check_truncation(self.truncation)
            except TruncationError as exc:
                bad(str(exc))
            if self.latents == "embeddings":
                bad("truncation applies to prior latents (z ~ N(0, I)), not to embeddings: pass --latents prior "
                    "or drop --truncation")
        if self.classes is not None and not str(self.classes).strip():
            bad("classes is empty: pass --classes all, or class indices and ranges such as 1,5,10-19")
        if self.latents not in LATENT_SOURCES:
            bad(f"latents {self.latents!r} is unknown; choose from {', '.join(LATENT_SOURCES)}")
        if self.latents == "embeddings" and not self.dataset:
            bad("latents 'embeddings' need a dataset: pass --dataset NAME (or --latents prior)")
        if self.alpha is None or not math.isfinite(self.alpha) or self.alpha < 0:
            bad(f"alpha must be a finite number >= 0, got {self.alpha!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            bad(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
        if self.val_shards is not None:
            shards = math.ceil(self.n / self.shard_size)
            if self.val_shards < 0 or (self.val_shards > 0 and self.val_shards >= shards):
                bad(f"val_shards={self.val_shards} must leave a training shard: the set has {shards} shard(s)")
        if self.encoding not in ENCODINGS:
            bad(f"encoding {self.encoding!r} is unknown; choose from {', '.join(ENCODINGS)}")
        if not self.name or not NAME_RE.fullmatch(self.name):
            bad(f"set name {self.name!r} is invalid: use 1-64 characters from [A-Za-z0-9_-]")
        if self.max_fg is not None and self.max_fg != MAX_FG_AUTO:
            try:
                bound = float(self.max_fg)
            except (TypeError, ValueError):
                bound = math.nan
            if not 0.0 < bound <= 1.0:
                bad(f"max_fg must be 'auto' or a fraction in (0, 1], got {self.max_fg!r}")
        if self.histogram_filter is False and self.histogram_rule is not None:
            bad(f"histogram_rule {self.histogram_rule!r} and no histogram filter (--no-histogram-filter) "
                f"contradict each other; pass one")
        try:
            filters = self.filter_config()
        except (UnknownNameError, ValueError) as exc:  # a preset or rule of no registry, a bad fraction
            bad(str(exc))
        if self.max_fg is not None and filters.size_filter is False:
            bad(f"max_fg {self.max_fg!r} bounds the size filter, which is off (--no-size-filter or the preset); "
                f"drop one of the two")


    def check_truncation_input(self, model: str, has_truncation: bool) -> None:
        """--truncation needs a module that takes it (BigGAN's): the check that needs the loaded model."""
        if self.truncation is not None and not has_truncation:
            raise OptionForModelError(f"--truncation {self.truncation}: {model} takes no truncation input (BigGAN's "
                                      f"modules do); drop --truncation")

    def class_set(self, model: str, num_classes: int | None):
        """The classes this run draws from (int64 [K]), or None for an unconditional model: the
        check of `classes` that needs the loaded model's class count (`num_classes`, None when
        it takes no class). Raises OptionForModelError (a usage error) naming the fix."""
        from gans.classes import ClassSpecError, class_set_of

        try:
            return class_set_of(self.classes, num_classes, model)
        except ClassSpecError as exc:
            raise OptionForModelError(f"--classes {self.classes}: {first_line(exc)}") from None


def _dataset_name(spec: str | None) -> str | None:
    if spec is None:
        return None
    return "folder" if spec.startswith("folder:") else spec


def name_slug(text: str) -> str:
    """A valid set name made of `text`: characters outside [A-Za-z0-9_-] become "-", at most 64."""
    out = "".join(c if c.isalnum() or c in "_-" else "-" for c in text).strip("-")
    return (out or "set")[:64]


def _default_name(cfg: GenConfig) -> str:
    if cfg.dataset:
        if cfg.dataset.startswith("folder:"):
            return name_slug(Path(cfg.dataset[len("folder:"):]).expanduser().resolve().name or "folder")
        return name_slug(cfg.dataset)
    gan = cfg.gan if cfg.gan in ("bigbigan", *SHIPPED_DIRECTIONS) else Path(cfg.gan.rstrip("/")).name
    return name_slug(f"{gan}-prior")


# --------------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class Plan:
    """Shard sizes and the train/val split of a set."""

    sizes: tuple[int, ...]  # accepted samples per shard
    num_val: int  # the last num_val shards are validation

    @property
    def num_shards(self) -> int:
        return len(self.sizes)

    def split(self, index: int) -> str:
        return "val" if index >= self.num_shards - self.num_val else "train"

    def shards_of(self, node_index: int, nodes: int) -> list[int]:
        return [k for k in range(self.num_shards) if k % nodes == node_index]

    def planned(self, n: int) -> dict:
        """The `planned` block of the manifest."""
        return {"samples": n, "shards": self.num_shards, "val_shards": self.num_val}


def make_plan(cfg: GenConfig) -> Plan:
    full, rest = divmod(cfg.n, cfg.shard_size)
    sizes = (cfg.shard_size,) * full + ((rest,) if rest else ())
    if cfg.val_shards is not None:
        num_val = cfg.val_shards
    else:
        num_val = math.ceil(cfg.val_fraction * len(sizes))
    # At least one training shard: a set that is all validation trains nothing.
    num_val = max(0, min(num_val, len(sizes) - 1))
    return Plan(sizes, num_val)
