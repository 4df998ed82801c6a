"""What a gen-synth run loads before it renders: the model, the direction, the latent table (the
dataset's embeddings), the class set of a class-conditional model and the manifest's parameters.
Every failure is one GenerationError line."""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from core.errors import UserError, first_line
from core.registry import UnknownNameError
from gans.directions import PUBLISHED_DIRECTIONS
from gans.loader import resample_record

from .config import (MAX_FG_AUTO, MAX_SHARDS, SHIPPED_DIRECTIONS, GenConfig, GenerationError, OptionForModelError,
                     make_plan, name_slug)
from .latents import DRAW_BLOCK, LatentStream
from .views import Shifts, render_views

log = logging.getLogger(__name__)


@dataclass
class Inputs:
    """Everything loaded before rendering: model, direction, latent table, manifest params."""

    gan: object
    direction: np.ndarray  # float32 unit [D]
    direction_sha256: str
    embeddings: np.ndarray | None  # float32 [N, D] or None for the prior
    params: dict
    size_bound: float | None = None  # the measured bound of `max_fg auto`, else None
    class_set: np.ndarray | None = None  # int64 [K]: the classes drawn; None for an unconditional model

    def stream(self, cfg: GenConfig, shard: int, *, shifted_images: float | None = None) -> LatentStream:
        """Shard `shard`'s latent stream: z, then (a conditional model) the classes, then (with
        shifted images) each draw's choice of stored image; `shifted_images` overrides the run's."""
        return LatentStream(cfg.seed, shard, int(self.direction.size), embeddings=self.embeddings,
                            alpha=cfg.alpha if self.embeddings is not None else 0.0, class_set=self.class_set,
                            shifted_images=cfg.shifted_images if shifted_images is None else shifted_images,
                            truncation=cfg.truncation)


_GANS: dict[tuple, object] = {}  # loaded models of this process: (spec, cache_dir, truncation) -> Gan


def cached_gan(spec: str, cache_dir: str | None = None, truncation: float = 1.0):
    """gans.loader.load_gan, memoised per process (several runs in one process share a model)."""
    from gans import loader as gan_mod

    key = (spec, cache_dir, float(truncation))
    if key not in _GANS:
        _GANS[key] = gan_mod.load_gan(spec, cache_dir=cache_dir, truncation=truncation)
    return _GANS[key]


def _load_gan(cfg: GenConfig):
    from gans.loader import NoTruncationError

    try:
        gan = cached_gan(cfg.gan, cfg.cache_dir, 1.0 if cfg.truncation is None else cfg.truncation)
        cfg.check_truncation_input(cfg.gan, gan.has_truncation)  # --truncation 1 on a module without the input
        return gan
    except NoTruncationError as exc:  # an option this model cannot take: a usage error, as --classes
        raise OptionForModelError(f"--truncation {cfg.truncation}: {first_line(exc)}") from None
    except (GenerationError, UnknownNameError):  # a name not in a list stays a usage error (exit 2)
        raise
    except (UserError, OSError) as exc:  # GanLoadError, a cache folder that cannot be written
        raise GenerationError(first_line(exc)) from None


def require_direction(cfg: GenConfig) -> None:
    """Fail before the model loads when a run has no direction to use (embedding needs none); a
    misspelt --gan is named as such first, not taken for a model without a direction."""
    from gans.loader import check_gan_spec

    check_gan_spec(cfg.gan)
    if cfg.direction is None and cfg.gan not in (*SHIPPED_DIRECTIONS, *PUBLISHED_DIRECTIONS):
        raise GenerationError(f"model {cfg.gan!r} ships no segmenting direction: pass --direction FILE (.npy or .pth, "
                              f"one float per latent dimension; the paper's h_bg, or one from find-direction)")


def _direction(cfg: GenConfig, latent_dim: int) -> tuple[np.ndarray, str, str]:
    """(unit direction, sha256, description) for the run."""
    from gans.directions import DirectionError, as_unit_vector, load_direction, published_direction_path

    if cfg.direction is None and cfg.gan in PUBLISHED_DIRECTIONS:
        try:
            path = published_direction_path(cfg.gan, cfg.cache_dir)
            vec, digest = load_direction(path, dim=latent_dim)
        except DirectionError as exc:
            raise GenerationError(first_line(exc)) from None
        return vec, digest, f"{cfg.gan}:published:{path.name}"
    if cfg.direction is None:
        if cfg.gan not in SHIPPED_DIRECTIONS:
            raise GenerationError(
                f"model {cfg.gan!r} ships no segmenting direction: pass --direction FILE (.npy or .pth, "
                f"[{latent_dim}] floats; find one with find-direction)")
        from gans.toy import toy_direction

        vec = as_unit_vector(toy_direction(), name="toy direction", dim=latent_dim)
        return vec, hashlib.sha256(vec.astype("<f4").tobytes()).hexdigest(), "toy:shipped"
    try:
        vec, digest = load_direction(cfg.direction, dim=latent_dim)
    except DirectionError as exc:
        raise GenerationError(first_line(exc)) from None
    return vec, digest, Path(cfg.direction).name


def train_images(cfg: GenConfig) -> tuple[str, list[Path], Path]:
    """(dataset name, sorted train image paths, their root) of ``cfg.dataset``.

    ``folder:PATH`` takes the images in PATH/images when that folder exists, else those in PATH
    itself (any folder of images; no masks needed). Named datasets come from
    benchdata.datasets under ``data_root``."""
    from benchdata.io import IMAGE_EXTS

    from . import embed

    spec = cfg.dataset
    if spec.startswith("folder:"):
        folder = Path(spec[len("folder:"):]).expanduser()
        if not folder.is_dir():
            raise GenerationError(f"--dataset {spec}: {folder} is not a folder; pass folder:PATH to a folder of images")
        images = folder / "images" if (folder / "images").is_dir() else folder
        paths = sorted(p for p in images.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
        if not paths:
            raise GenerationError(f"--dataset {spec}: no images ({', '.join(IMAGE_EXTS)}) in {images}; "
                                  f"point folder:PATH at a folder of images")
        return name_slug(folder.resolve().name or "folder"), paths, images
    name, paths, root = embed.dataset_train_images(spec, cfg.data_root)
    return name, paths, Path(root) if root is not None else Path(os.path.commonpath([str(p.parent) for p in paths]))


def dataset_fingerprint(paths: list[Path], root: Path) -> str:
    """sha256 over the sorted (relative path, size) list of the train images."""
    from .embed import file_list_of

    h = hashlib.sha256()
    for rel, size in file_list_of(paths, root):
        h.update(f"{rel}\0{size}\n".encode())
    return h.hexdigest()


def _listing(cfg: GenConfig) -> tuple[str, list[Path], Path] | None:
    """The dataset's train images (before any model loads, so a bad --dataset fails fast)."""
    if not cfg.dataset:
        return None
    try:
        return train_images(cfg)
    except (GenerationError, UnknownNameError):  # a name not in a list stays a usage error (exit 2)
        raise
    except (UserError, OSError) as exc:  # DatasetError, EmbeddingError, an unreadable folder
        raise GenerationError(first_line(exc)) from None


def _dataset(cfg: GenConfig, gan, listing, progress: Callable[[int], object] | None = None
             ) -> tuple[np.ndarray | None, dict | None, dict | None]:
    """(embedding table or None, dataset facts, embeddings facts) for the manifest."""
    if listing is None:
        return None, None, None
    from . import embed

    name, paths, root = listing
    facts = {"spec": cfg.dataset, "name": name, "train_images": len(paths),
             "fingerprint": dataset_fingerprint(paths, root)}
    if cfg.latents != "embeddings":
        return None, facts, None
    if not gan.has_encoder:
        raise GenerationError(f"{cfg.gan} has no 'encode' signature, so latents 'embeddings' cannot be made: "
                              f"pass --latents prior (z ~ N(0, I))")
    try:
        table, info = embed.load_or_compute_embeddings(gan, paths, dataset_name=name, root=root,
                                                       cache_dir=cfg.cache_dir, progress=progress,
                                                       max_pixels=cfg.max_image_pixels)
    except (UserError, OSError) as exc:  # e.g. no image readable (EmbeddingError): one line
        raise GenerationError(first_line(exc)) from None
    facts["skipped"] = int(info.get("skipped", 0))
    return np.asarray(table, np.float32), facts, dict(info["embeddings"])


AUTO_BOUND_SAMPLES = 256  # draws whose masks set the `max_fg auto` bound
AUTO_BOUND_STREAM = MAX_SHARDS  # their latent stream: a shard index that no set uses


def auto_size_bound(inputs: Inputs, cfg: GenConfig) -> dict:
    """The size bound of `--max-fg auto` (masking.rules.size_bound) over the masks of
    AUTO_BOUND_SAMPLES draws from the run's own latent source (stream AUTO_BOUND_STREAM of its seed,
    with their classes for a conditional model), made as the run makes them (mask rule and its pair,
    image size, shift, connected components), before any filter. A function of the params and the
    seed, so a resumed or distributed run finds the same."""
    import dataclasses as dc

    from masking.rules import SIZE_BOUND_QUANTILE, process_batch, size_bound

    lat = inputs.stream(cfg, AUTO_BOUND_STREAM, shifted_images=0.0).take(AUTO_BOUND_SAMPLES)
    unfiltered = dc.replace(cfg.filter_config(), size_filter=False, histogram_rule=None)
    shifts = Shifts.of(unfiltered.mask_rule, cfg.shift)
    fractions = []
    for lo in range(0, len(lat), cfg.batch_size):
        views = render_views(inputs.gan, lat[lo:lo + cfg.batch_size], inputs.direction, shifts, cfg.image_size)
        fractions.append(process_batch(views.a, views.b, unfiltered).fg_fraction)
    frac = np.concatenate(fractions)
    bound = size_bound(frac)
    log.info("--max-fg auto: masks of %d draws have median foreground %.3f; bound %.3f", len(frac),
             float(np.median(frac)), bound)
    return {"value": bound, "rule": f"max(0.5, quantile {SIZE_BOUND_QUANTILE} of the foreground fractions)",
            "samples": int(len(frac)), "stream": f"seed {cfg.seed}, shard index {AUTO_BOUND_STREAM}",
            "median_fg": float(np.median(frac))}


def load_inputs(cfg: GenConfig) -> Inputs:
    """Load the model, the direction and the latent table; build the manifest params."""
    listing = _listing(cfg)
    gan = _load_gan(cfg)
    dim = int(gan.latent_dim)
    num_classes = getattr(gan, "num_classes", None)
    class_set = cfg.class_set(cfg.gan, num_classes)  # before the direction and embeddings: a usage error
    direction, digest, direction_src = _direction(cfg, dim)
    embeddings, dataset_facts, emb_facts = _dataset(cfg, gan, listing)
    if embeddings is not None and (embeddings.ndim != 2 or embeddings.shape[1] != dim or len(embeddings) == 0):
        raise GenerationError(f"embeddings of {cfg.dataset} have shape {embeddings.shape}, expected [N, {dim}]; "
                              f"recompute them with gen-synth embed --dataset {cfg.dataset}")
    inputs = Inputs(gan, direction, digest, embeddings, {}, class_set=class_set)
    plan = make_plan(cfg)
    auto = None
    if cfg.max_fg == MAX_FG_AUTO:
        auto = auto_size_bound(inputs, cfg)
        cfg = dataclasses.replace(cfg, max_fg=auto["value"])
        inputs.size_bound = auto["value"]
    inputs.params = {
        "generator": {"spec": cfg.gan, "handle": str(gan.handle), "fingerprint": str(gan.fingerprint),
                      "latent_dim": dim, "image_size": int(gan.image_size), "encoder": bool(gan.has_encoder),
                      **_conditioning(gan)},
        "direction": {"source": direction_src, "sha256": digest, "shift": float(cfg.shift), **_pair(cfg)},
        "latents": {"source": cfg.latents, "alpha": float(cfg.alpha) if cfg.latents == "embeddings" else None,
                    "draw_block": DRAW_BLOCK, **_truncation(cfg), **_classes(cfg, class_set, num_classes)},
        "dataset": dataset_facts,
        "embeddings": emb_facts,
        "filters": {"preset": cfg.preset, **dataclasses.asdict(cfg.filter_config()),
                    **({"max_fg_auto": auto} if auto else {})},
        "n": cfg.n,
        "shard_size": cfg.shard_size,
        "num_shards": plan.num_shards,
        "val_shards": plan.num_val,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "image": {"range": "[-1,1] -> round((x + 1) * 127.5)", "encoding": cfg.encoding,
                  "size": cfg.image_size, "resample": resample_record(gan.image_size, cfg.image_size)["method"],
                  **_shifted_images(cfg)},
    }
    return inputs


# The params below appear only where a run uses what they describe, so the params (and --resume's
# comparison) of every set made without them stay what they were.

def _conditioning(gan) -> dict:
    """A class-conditional model's class count and the truncation it is fed."""
    num_classes = getattr(gan, "num_classes", None)
    truncation = float(getattr(gan, "truncation", 1.0))
    if not num_classes and truncation == 1.0:
        return {}
    return {"num_classes": int(num_classes) if num_classes else None, "truncation": truncation}


def _pair(cfg: GenConfig) -> dict:
    """The mask rule's pair of latent shifts (a, b), when it is not the paper's (0, r)."""
    shifts = Shifts.of(cfg.filter_config().mask_rule, cfg.shift)
    return {} if shifts.pair == (0.0, float(cfg.shift)) else {"pair_shifts": list(shifts.pair)}


def _truncation(cfg: GenConfig) -> dict:
    """--truncation: BigGAN's truncated prior (gans.truncation)."""
    if cfg.truncation is None:
        return {}
    from gans.truncation import truncation_record

    return {"truncation": truncation_record(cfg.truncation)}


def _classes(cfg: GenConfig, class_set: np.ndarray | None, num_classes: int | None) -> dict:
    """How a conditional run draws its classes: gans.classes' record with the spec it was given."""
    if class_set is None:
        return {}
    from gans.classes import class_set_record

    spec = "all" if cfg.classes is None else str(cfg.classes)
    return {"classes": {"spec": spec, **class_set_record(spec, class_set, int(num_classes)),
                        "order": "drawn after each block's z"}}


def _shifted_images(cfg: GenConfig) -> dict:
    """--shifted-images: which samples store the pair's second render instead of G(z)."""
    if cfg.shifted_images <= 0:
        return {}
    b = Shifts.of(cfg.filter_config().mask_rule, cfg.shift).pair[1]
    return {"shifted": {"fraction": float(cfg.shifted_images), "latent_shift": b,
                        "rule": "per draw, u ~ U[0, 1) after z and its class; the image is G(z + b h) when "
                                "u < fraction, else G(z)"}}


def embed_dataset(config: GenConfig, progress: Callable[[int], object] | None = None) -> dict:
    """Compute (or find cached) the embeddings of ``config.dataset`` with ``config.gan``.

    ``progress(k)`` is called with the images handled after each encoder batch. Returns
    {"dataset": facts, "embeddings": facts} as they go into a manifest."""
    cfg = dataclasses.replace(config, latents="embeddings").resolved()
    if not cfg.dataset:
        raise GenerationError("embed needs a dataset: pass --dataset NAME (cub, flowers, imagenet, ...) or folder:PATH")
    listing = _listing(cfg)
    gan = _load_gan(cfg)
    _, facts, emb = _dataset(cfg, gan, listing, progress)
    return {"dataset": facts, "embeddings": emb}


def count_train_images(config: GenConfig) -> int:
    """Number of train images of ``config.dataset`` (for a progress bar's total)."""
    return len(_listing(config.resolved())[1])
