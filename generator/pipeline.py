"""The gen-synth run: latents -> GAN pairs on the accelerator -> masks and filters -> shards.

``run(GenConfig(...))`` writes (its share of) a shard set. Shard k is filled from its own latent
stream (generator.latents): draws are rendered in batches, G(z) and G(z + r h) in one call, and
the first ``size_k`` accepted draws in stream order make the shard. So a shard's bytes depend on
(params, seed, k) only: not on the worker count, on which worker renders it, or on a crash and
resume in between (on a deterministic device; the batch size is a recorded parameter because a
float kernel may round differently per batch shape).

Overlap: the main thread renders batches on the accelerator (the TF call releases the GIL)
while a host thread runs masks + filters and builds the samples, and a small pool of threads
(``write_threads``) encodes and writes full shards (cv2 and zstd release the GIL too). A
bounded queue, at most MAX_OPEN_SHARDS shards filling and ``write_threads`` shards writing at
once keep memory flat whatever ``n`` is. The renderer moves on to the next shard as soon as the batches in flight are
expected to fill the current one (a running acceptance estimate) and comes back if they do not,
so about one partial batch per shard is rendered and dropped.

Split: the last ``num_val`` shards are the validation split (``val_shards``, or
ceil(val_fraction x shards), always leaving one training shard).

Workers: worker I of W renders shards k with k % W == I into the shared folder (the writer
locks the manifest); whichever worker completes the set last writes the final manifest, equal to
a single-worker run's except its creation time.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import queue
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from shardset.format import DEFAULT_ENCODING, sample_key

from .directions import PUBLISHED_DIRECTIONS
from .gan import MIN_IMAGE_SIZE, resample_record
from .latents import DRAW_BLOCK, LATENT_SOURCES, LatentStream
from .masks import PRESETS, REASONS, FilterConfig, UnknownRuleError, process_batch
from .preview import PreviewCollector, to_uint8, write_preview

log = logging.getLogger(__name__)

# Datasets whose latents use alpha = 0.2 by default (paper, section 3.3); imagenet uses 0.
SMALL_DATASETS = ("cub", "flowers", "duts", "ecssd", "dut-omron")
DATASET_PRESETS = {"flowers": "flowers"}  # filter preset per dataset (paper: Flowers uses `mean`)
NO_HISTOGRAM = "none"  # GenConfig.histogram_rule value that switches the histogram filter off
MAX_SHARDS = 1_000_000  # shard indices are 6 digits
GIVE_UP_EMPTY = 2000  # draws of one shard with nothing accepted: the filters reject everything
# models whose segmenting direction ships with this project (toy: by construction; dcgan-faces:
# rank's winner of the discovery run in README, "A real GAN")
SHIPPED_DIRECTIONS = ("toy", "dcgan-faces")


class GenerationError(Exception):
    """A run cannot start or continue; the message is one line naming the cause and the fix."""


@dataclass(frozen=True)
class GenConfig:
    """Every setting of a gen-synth run. ``None`` means "derived" (see ``resolved``)."""

    # -- model
    gan: str = "bigbigan"  # "bigbigan", "toy", "dcgan-faces", a local SavedModel folder or a TF-Hub handle
    direction: str | None = None  # .npy/.pth file of h_bg [latent_dim]; None = the model's shipped one
    shift: float = 5.0  # r: latent units moved along the unit direction, x' = G(z + r h)
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
    out: str = "shards"  # folder of the set
    name: str | None = None  # set name; None = from the dataset (or the model for the prior)
    encoding: str = DEFAULT_ENCODING  # image encoding in the shards: png | webp | jpg | npy (default: raw npy)
    image_size: int = 128  # side of the set's images in pixels; G(z) of another size is resampled to it
    preview: str | None = None  # path of a preview PNG to write; None = no preview
    # -- masks and filters (None = the preset's value)
    preset: str | None = None  # key of generator.masks.PRESETS; None = the dataset's ("flowers") or "default"
    mask_rule: str | None = None  # "lighting" | "mean"
    connectivity: int | None = None  # 4 (paper) | 8 (reference code)
    components_filter: bool | None = None  # drop components < 0.2 x the largest; False = keep every component
    size_filter: bool | None = None  # reject masks with foreground fraction > 0.5
    histogram_rule: str | None = None  # "paper" | "bimodal" | "none"
    # -- execution
    batch_size: int = 64  # pairs per accelerator call
    num_workers: int = 1  # W: this process renders shards k with k % W == worker_index
    worker_index: int = 0  # I in 0..W-1
    resume: bool = False  # keep verified complete shards of an existing set with the same params
    queue_depth: int = 2  # rendered batches waiting for the host thread (memory bound)
    write_threads: int = 0  # threads encoding + writing full shards in parallel; 0 = min(4, CPU cores)
    max_draws_per_sample: int = 200  # give up on a shard after this many draws per sample needed

    def resolved(self) -> "GenConfig":
        """A copy with every derived (None) setting filled in."""
        dataset_name = _dataset_name(self.dataset)
        latents = self.latents or ("embeddings" if self.dataset else "prior")
        alpha = self.alpha
        if alpha is None:
            alpha = 0.0 if dataset_name == "imagenet" else 0.2
        preset = self.preset or DATASET_PRESETS.get(dataset_name, "default")
        name = self.name or _default_name(self)
        write_threads = self.write_threads or min(4, os.cpu_count() or 1)
        return dataclasses.replace(self, latents=latents, alpha=float(alpha), preset=preset, name=name,
                                   write_threads=write_threads)

    def filter_config(self) -> FilterConfig:
        """The FilterConfig: the preset with this config's overrides."""
        base = PRESETS[self.preset or "default"]
        over = {}
        if self.mask_rule is not None:
            over["mask_rule"] = self.mask_rule
        if self.connectivity is not None:
            over["connectivity"] = self.connectivity
        if self.components_filter is False:
            over["min_component_ratio"] = 0.0
        if self.size_filter is not None:
            over["size_filter"] = self.size_filter
        if self.histogram_rule is not None:
            over["histogram_rule"] = None if self.histogram_rule == NO_HISTOGRAM else self.histogram_rule
        return dataclasses.replace(base, **over)


def _dataset_name(spec: str | None) -> str | None:
    if spec is None:
        return None
    return "folder" if spec.startswith("folder:") else spec


def _slug(text: str) -> str:
    out = "".join(c if c.isalnum() or c in "_-" else "-" for c in text).strip("-")
    return (out or "set")[:64]


def _default_name(cfg: GenConfig) -> str:
    if cfg.dataset:
        if cfg.dataset.startswith("folder:"):
            return _slug(Path(cfg.dataset[len("folder:"):]).expanduser().resolve().name or "folder")
        return _slug(cfg.dataset)
    gan = cfg.gan if cfg.gan in ("bigbigan", *SHIPPED_DIRECTIONS) else Path(cfg.gan.rstrip("/")).name
    return _slug(f"{gan}-prior")


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

    def shards_of(self, worker_index: int, num_workers: int) -> list[int]:
        return [k for k in range(self.num_shards) if k % num_workers == worker_index]

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


def validate(cfg: GenConfig) -> None:
    """Reject a bad config before anything loads; GenerationError names the value and the fix."""
    from shardset.format import ENCODINGS, NAME_RE

    def bad(msg: str):
        raise GenerationError(msg)

    for field, value in (("n", cfg.n), ("shard_size", cfg.shard_size), ("batch_size", cfg.batch_size),
                         ("image_size", cfg.image_size),
                         ("num_workers", cfg.num_workers), ("queue_depth", cfg.queue_depth),
                         ("write_threads", cfg.write_threads),
                         ("max_draws_per_sample", cfg.max_draws_per_sample)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            bad(f"{field} must be a positive integer, got {value!r}")
    if cfg.image_size < MIN_IMAGE_SIZE:
        bad(f"image_size must be at least {MIN_IMAGE_SIZE} pixels, got {cfg.image_size}")
    if math.ceil(cfg.n / cfg.shard_size) > MAX_SHARDS:
        bad(f"n={cfg.n} with shard_size={cfg.shard_size} needs over {MAX_SHARDS} shards; raise the shard size")
    if not 0 <= cfg.worker_index < cfg.num_workers:
        bad(f"worker_index must be in 0..{cfg.num_workers - 1}, got {cfg.worker_index}")
    if not isinstance(cfg.seed, int) or cfg.seed < 0:
        bad(f"seed must be an integer >= 0, got {cfg.seed!r}")
    if not math.isfinite(cfg.shift):
        bad(f"shift must be a finite number, got {cfg.shift!r}")
    if cfg.direction is None and cfg.gan not in (*SHIPPED_DIRECTIONS, *PUBLISHED_DIRECTIONS):
        bad(f"model {cfg.gan!r} ships no segmenting direction: pass --direction FILE (.npy or .pth, one float "
            f"per latent dimension; the paper's h_bg, or one from find-direction)")
    if cfg.latents not in LATENT_SOURCES:
        bad(f"latents {cfg.latents!r} is unknown; choose from {', '.join(LATENT_SOURCES)}")
    if cfg.latents == "embeddings" and not cfg.dataset:
        bad("latents 'embeddings' need a dataset: pass --dataset NAME (or --latents prior)")
    if cfg.alpha is None or not math.isfinite(cfg.alpha) or cfg.alpha < 0:
        bad(f"alpha must be a finite number >= 0, got {cfg.alpha!r}")
    if not 0.0 <= cfg.val_fraction < 1.0:
        bad(f"val_fraction must be in [0, 1), got {cfg.val_fraction!r}")
    if cfg.val_shards is not None:
        shards = math.ceil(cfg.n / cfg.shard_size)
        if cfg.val_shards < 0 or (cfg.val_shards > 0 and cfg.val_shards >= shards):
            bad(f"val_shards={cfg.val_shards} must leave a training shard: the set has {shards} shard(s)")
    if cfg.encoding not in ENCODINGS:
        bad(f"encoding {cfg.encoding!r} is unknown; choose from {', '.join(ENCODINGS)}")
    if not cfg.name or not NAME_RE.fullmatch(cfg.name):
        bad(f"set name {cfg.name!r} is invalid: use 1-64 characters from [A-Za-z0-9_-]")
    if cfg.preset not in PRESETS:
        bad(f"filter preset {cfg.preset!r} is unknown; choose from {', '.join(PRESETS)}")
    try:
        cfg.filter_config()
    except (UnknownRuleError, ValueError) as exc:
        bad(str(exc))


# --------------------------------------------------------------------------------- inputs


@dataclass
class Inputs:
    """Everything loaded before rendering: model, direction, latent table, manifest params."""

    gan: object
    direction: np.ndarray  # float32 unit [D]
    direction_sha256: str
    embeddings: np.ndarray | None  # float32 [N, D] or None for the prior
    params: dict


_GANS: dict[tuple, object] = {}  # loaded models of this process: (spec, cache_dir) -> Gan


def cached_gan(spec: str, cache_dir: str | None = None):
    """generator.gan.load_gan, memoised per process (several runs in one process share a model)."""
    from . import gan as gan_mod

    key = (spec, cache_dir)
    if key not in _GANS:
        _GANS[key] = gan_mod.load_gan(spec, cache_dir=cache_dir)
    return _GANS[key]


def _load_gan(cfg: GenConfig):
    try:
        return cached_gan(cfg.gan, cfg.cache_dir)
    except GenerationError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise GenerationError(_one_line(exc)) from None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _direction(cfg: GenConfig, latent_dim: int) -> tuple[np.ndarray, str, str]:
    """(unit direction, sha256, description) for the run."""
    from .directions import DirectionError, as_unit_vector, load_direction, published_direction_path

    if cfg.direction is None and cfg.gan in PUBLISHED_DIRECTIONS:
        try:
            path = published_direction_path(cfg.gan, cfg.cache_dir)
            vec, digest = load_direction(path, dim=latent_dim)
        except DirectionError as exc:
            raise GenerationError(_one_line(exc)) from None
        return vec, digest, f"{cfg.gan}:published:{path.name}"
    if cfg.direction is None:
        if cfg.gan not in SHIPPED_DIRECTIONS:
            raise GenerationError(
                f"model {cfg.gan!r} ships no segmenting direction: pass --direction FILE (.npy or .pth, "
                f"[{latent_dim}] floats; find one with find-direction)")
        if cfg.gan == "toy":
            from .toy import toy_direction

            vec = as_unit_vector(toy_direction(), name="toy direction", dim=latent_dim)
            return vec, hashlib.sha256(vec.astype("<f4").tobytes()).hexdigest(), "toy:shipped"
        from .dcgan import DcganError, default_direction_path

        try:
            path = default_direction_path()
            vec, digest = load_direction(path, dim=latent_dim)
        except (DcganError, DirectionError) as exc:
            raise GenerationError(_one_line(exc)) from None
        return vec, digest, f"{cfg.gan}:shipped:{path.name}"
    try:
        vec, digest = load_direction(cfg.direction, dim=latent_dim)
    except DirectionError as exc:
        raise GenerationError(_one_line(exc)) from None
    return vec, digest, Path(cfg.direction).name


def train_images(cfg: GenConfig) -> tuple[str, list[Path], Path]:
    """(dataset name, sorted train image paths, their root) of ``cfg.dataset``.

    ``folder:PATH`` takes the images in PATH/images when that folder exists, else those in PATH
    itself (any folder of images; no masks needed). Named datasets come from
    evaluator.datasets under ``data_root``."""
    from evaluator.datasets import IMAGE_EXTS

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
        return _slug(folder.resolve().name or "folder"), paths, images
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
    except GenerationError:
        raise
    except Exception as exc:  # DatasetError, ValueError, OSError: one line, never a traceback
        if isinstance(exc, (OSError, ValueError)) or type(exc).__name__.endswith("Error"):
            raise GenerationError(_one_line(exc)) from None
        raise


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
                                                       cache_dir=cfg.cache_dir, progress=progress)
    except (OSError, ValueError) as exc:  # e.g. no image readable: one line
        raise GenerationError(_one_line(exc)) from None
    facts["skipped"] = int(info.get("skipped", 0))
    return np.asarray(table, np.float32), facts, dict(info["embeddings"])


def load_inputs(cfg: GenConfig) -> Inputs:
    """Load the model, the direction and the latent table; build the manifest params."""
    listing = _listing(cfg)
    gan = _load_gan(cfg)
    dim = int(gan.latent_dim)
    direction, digest, direction_src = _direction(cfg, dim)
    embeddings, dataset_facts, emb_facts = _dataset(cfg, gan, listing)
    if embeddings is not None and (embeddings.ndim != 2 or embeddings.shape[1] != dim or len(embeddings) == 0):
        raise GenerationError(f"embeddings of {cfg.dataset} have shape {embeddings.shape}, expected [N, {dim}]; "
                              f"recompute them with gen-synth embed --dataset {cfg.dataset}")
    plan = make_plan(cfg)
    params = {
        "generator": {"spec": cfg.gan, "handle": str(gan.handle), "fingerprint": str(gan.fingerprint),
                      "latent_dim": dim, "image_size": int(gan.image_size), "encoder": bool(gan.has_encoder)},
        "direction": {"source": direction_src, "sha256": digest, "shift": float(cfg.shift)},
        "latents": {"source": cfg.latents, "alpha": float(cfg.alpha) if cfg.latents == "embeddings" else None,
                    "draw_block": DRAW_BLOCK},
        "dataset": dataset_facts,
        "embeddings": emb_facts,
        "filters": {"preset": cfg.preset, **dataclasses.asdict(cfg.filter_config())},
        "n": cfg.n,
        "shard_size": cfg.shard_size,
        "num_shards": plan.num_shards,
        "val_shards": plan.num_val,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "image": {"range": "[-1,1] -> round((x + 1) * 127.5)", "encoding": cfg.encoding,
                  "size": cfg.image_size, "resample": resample_record(gan.image_size, cfg.image_size)["method"]},
    }
    return Inputs(gan, direction, digest, embeddings, params)


def embed_dataset(config: GenConfig, progress: Callable[[int], object] | None = None) -> dict:
    """Compute (or find cached) the embeddings of ``config.dataset`` with ``config.gan``.

    ``progress(k)`` is called with the images handled after each encoder batch. Returns
    {"dataset": facts, "embeddings": facts} as they go into a manifest."""
    cfg = dataclasses.replace(config.resolved(), latents="embeddings")
    if not cfg.dataset:
        raise GenerationError("embed needs a dataset: pass --dataset NAME (cub, flowers, imagenet, ...) or folder:PATH")
    listing = _listing(cfg)
    gan = _load_gan(cfg)
    _, facts, emb = _dataset(cfg, gan, listing, progress)
    return {"dataset": facts, "embeddings": emb}


def count_train_images(config: GenConfig) -> int:
    """Number of train images of ``config.dataset`` (for a progress bar's total)."""
    return len(_listing(config.resolved())[1])


# --------------------------------------------------------------------------------- the host side


class _ShardFill:
    """Accepted samples and counts of one shard while it fills (host thread only)."""

    def __init__(self, index: int, target: int):
        self.index = index
        self.target = target
        self.samples: list[dict] = []
        self.drawn = 0  # draws used (up to the last accepted one)
        self.processed = 0  # draws the host has seen, including those past the shard's end
        self.rejected = {r: 0 for r in REASONS}

    @property
    def full(self) -> bool:
        return len(self.samples) >= self.target


def _sample(name: str, seed: int, shard: int, i: int, x, mask, z, source: int, draw: int, frac: float) -> dict:
    return {
        "__key__": sample_key(name, shard, i),
        "image": to_uint8(x),
        "mask": np.ascontiguousarray(mask, dtype=np.uint8),
        "z": np.ascontiguousarray(z, dtype=np.float32),
        "meta": {"source_index": int(source), "fg_fraction": float(frac), "stream": [seed, shard, int(draw)]},
    }


class _Host(threading.Thread):
    """Consumes rendered batches: masks + filters, fills shards, writes them.

    Several shards may be open at once (the renderer moves on to the next shard as soon as the
    batches in flight are expected to fill the current one); each shard's batches arrive in its
    stream order, so which draws a shard accepts never depends on that interleaving."""

    def __init__(self, cfg: GenConfig, plan: Plan, writer, filters: FilterConfig,
                 progress: Callable[[int, int], None] | None, collector: PreviewCollector | None):
        super().__init__(name="gen-synth-host", daemon=True)
        self.cfg, self.plan, self.writer, self.filters = cfg, plan, writer, filters
        self.progress, self.collector = progress, collector
        self.inbox: queue.Queue = queue.Queue(maxsize=cfg.queue_depth)
        self.filled: set[int] = set()  # shards with all their samples (read by the main thread)
        self.done: set[int] = set()  # shards written and recorded
        self.fills: dict[int, _ShardFill] = {}  # open shards (read by the main thread)
        self.accepted_total = 0  # over all shards: the renderer's acceptance estimate
        self.drawn_total = 0
        self.changed = threading.Event()  # set after every batch, so a waiting renderer wakes up
        self.error: BaseException | None = None
        self.stop = threading.Event()
        # PNG encoding costs ~1 ms per image; cv2 and zstd release the GIL, so full shards are
        # encoded and written on a small pool while this thread filters the next batches.
        self._pool = ThreadPoolExecutor(cfg.write_threads, thread_name_prefix="gen-synth-write") \
            if cfg.write_threads > 1 else None
        self._writing: dict[int, Future] = {}

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                item = self.inbox.get()
                if item is None:
                    break
                self._consume(*item)
                self.changed.set()
            if not self.stop.is_set():
                self._reap(wait_all=True)
        except BaseException as exc:  # handed to the main thread, which re-raises it
            self.error = exc
        finally:
            if self._pool is not None:  # no write may still run when the main thread cleans up
                self._pool.shutdown(wait=True, cancel_futures=True)
            self.changed.set()

    def _write(self, shard: int, fill: "_ShardFill") -> None:
        self.writer.write_shard(shard, fill.samples, split=self.plan.split(shard),
                                stats={"drawn": fill.drawn, "rejected": dict(fill.rejected)})
        self.done.add(shard)

    def _reap(self, *, wait_all: bool = False, limit: int | None = None) -> None:
        """Collect finished writes (re-raising their errors); block until at most `limit` remain,
        or until none remain with `wait_all`."""
        while self._writing:
            for shard, fut in list(self._writing.items()):
                if fut.done():
                    del self._writing[shard]
                    fut.result()
            if not self._writing or (not wait_all and (limit is None or len(self._writing) <= limit)):
                return
            wait(list(self._writing.values()), return_when=FIRST_COMPLETED)

    def _consume(self, shard: int, lat, x: np.ndarray, x_shift: np.ndarray) -> None:
        self._reap(limit=self.cfg.write_threads)
        if shard in self.filled:
            return  # a batch rendered past the shard's end
        fill = self.fills.get(shard)
        if fill is None:
            fill = self.fills[shard] = _ShardFill(shard, self.plan.sizes[shard])
        res = process_batch(x, x_shift, self.filters)
        if self.collector is not None and not self.collector.full:
            self.collector.add(x, x_shift, res.masks, res.reason)
        accepted = drawn = 0
        for j in range(len(lat)):
            if fill.full:
                break
            fill.drawn += 1
            drawn += 1
            if res.accepted[j]:
                fill.samples.append(_sample(self.cfg.name, self.cfg.seed, shard, len(fill.samples), x[j],
                                            res.masks[j], lat.z[j], lat.source_index[j], lat.draw_index[j],
                                            res.fg_fraction[j]))
                accepted += 1
            else:
                fill.rejected[res.reason[j]] += 1
        fill.processed += len(lat)
        self.accepted_total += accepted
        self.drawn_total += drawn
        if self.progress is not None:
            self.progress(accepted, drawn)
        if fill.full:
            self.filled.add(shard)
            del self.fills[shard]
            if self._pool is None:
                self._write(shard, fill)
            else:
                self._writing[shard] = self._pool.submit(self._write, shard, fill)
        elif fill.drawn >= self.cfg.max_draws_per_sample * fill.target or (
                fill.drawn >= GIVE_UP_EMPTY and not fill.samples):
            rejected = ", ".join(f"{k} {v}" for k, v in fill.rejected.items())
            raise GenerationError(
                f"shard {shard}: only {len(fill.samples)} of {fill.target} samples accepted in {fill.drawn} draws "
                f"(rejected: {rejected}); the filters reject nearly everything: check --direction/--shift or "
                f"relax the filters (--histogram-rule bimodal, --no-histogram-filter, --no-size-filter)")

    def acceptance(self) -> float:
        """Running acceptance estimate (optimistic before any evidence)."""
        return (self.accepted_total + 1) / (self.drawn_total + 1)

    def needs_more(self, shard: int, rendered: int) -> bool:
        """Whether shard may still need draws beyond the `rendered` ones sent so far."""
        if shard in self.filled:
            return False
        fill = self.fills.get(shard)
        have, processed = (len(fill.samples), fill.processed) if fill else (0, 0)
        expected = have + (rendered - processed) * self.acceptance()
        return expected < self.plan.sizes[shard]


MAX_OPEN_SHARDS = 3  # shards filling at once: bounds host memory (each holds <= shard_size samples)


def _render(inputs: Inputs, cfg: GenConfig, shards: list[int], host: _Host) -> None:
    """Main thread: render fixed-size batches of the shards' streams until the host has them all.

    Batch j of shard k is always draws [j B, (j + 1) B) of k's stream, whatever the timing. The
    next batch goes to the oldest open shard whose batches in flight may not fill it; when
    every open shard looks covered, a new shard opens; when none may open, wait for the host.
    So few batches are rendered past a shard's end (the waste is about one partial batch)."""
    pending = list(shards)
    streams: dict[int, LatentStream] = {}
    rendered: dict[int, int] = {}
    while True:
        if host.error is not None or not host.is_alive():
            return
        open_ = [k for k in streams if k not in host.filled]
        for k in [k for k in streams if k in host.filled]:
            del streams[k]
        shard = next((k for k in open_ if host.needs_more(k, rendered[k])), None)
        if shard is None and pending and len(open_) < MAX_OPEN_SHARDS:
            shard = pending.pop(0)
            streams[shard] = LatentStream(cfg.seed, shard, inputs.direction.size, embeddings=inputs.embeddings,
                                          alpha=cfg.alpha)
            rendered[shard] = 0
        if shard is None:
            if not open_ and not pending:
                return
            host.changed.wait(0.05)
            host.changed.clear()
            continue
        lat = streams[shard].take(cfg.batch_size)
        x, x_shift = inputs.gan.generate_pair(lat.z, inputs.direction, cfg.shift, cfg.image_size)
        rendered[shard] += len(lat)
        item = (shard, lat, np.asarray(x, np.float32), np.asarray(x_shift, np.float32))
        while True:  # put, but notice a host thread that died instead of blocking forever
            try:
                host.inbox.put(item, timeout=0.2)
                break
            except queue.Full:
                if host.error is not None or not host.is_alive():
                    return


def _preview_only(inputs: Inputs, cfg: GenConfig, filters: FilterConfig, collector: PreviewCollector) -> None:
    """Render a few batches of shard 0's stream for the preview when the run rendered nothing."""
    stream = LatentStream(cfg.seed, 0, inputs.direction.size, embeddings=inputs.embeddings, alpha=cfg.alpha)
    for _ in range(8):
        lat = stream.take(cfg.batch_size)
        x, x_shift = inputs.gan.generate_pair(lat.z, inputs.direction, cfg.shift, cfg.image_size)
        res = process_batch(x, x_shift, filters)
        collector.add(x, x_shift, res.masks, res.reason)
        if collector.full:
            return


# --------------------------------------------------------------------------------- the run


@dataclass
class RunResult:
    """What a run did: the set's manifest path, shards written now, and the manifest if complete."""

    manifest_path: Path
    written: list[int]
    skipped: list[int]  # complete shards kept from before (resume / other workers)
    complete: bool
    manifest: dict | None
    preview: Path | None


def worker_target(cfg: GenConfig) -> int:
    """Accepted samples this worker's shards hold (the progress bar's total)."""
    cfg = cfg.resolved()
    plan = make_plan(cfg)
    return sum(plan.sizes[k] for k in plan.shards_of(cfg.worker_index, cfg.num_workers))


def _open_writer(cfg: GenConfig, params: dict):
    from shardset import ShardSetExistsError, ShardSetWriter

    # Workers of a multi-worker run share one folder: each joins the set (same params) and
    # writes its own shard indices, so they open it in "resume" mode whatever started first.
    mode = "resume" if (cfg.resume or cfg.num_workers > 1) else "new"
    if cfg.num_workers == 1 and _holds_no_shards(cfg):
        mode = "overwrite"  # a set header from a run that wrote nothing (e.g. stopped by the filters)
    try:
        return ShardSetWriter(cfg.out, cfg.name, encoding=cfg.encoding, shard_size=cfg.shard_size,
                              params=params, seed=cfg.seed, mode=mode)
    except ShardSetExistsError:
        raise GenerationError(
            f"{Path(cfg.out) / cfg.name}.json exists: pass --resume to complete that set (same parameters), "
            f"or choose another --name or --out") from None
    except ValueError as exc:  # params differ from the existing set's
        raise GenerationError(f"{_one_line(exc)} (the set in {cfg.out} was made with other parameters; "
                              f"choose another --name or --out)") from None


def _holds_no_shards(cfg: GenConfig) -> bool:
    """True when OUT holds no shard file and no shard record of set NAME (nothing to keep)."""
    out = Path(cfg.out)
    if list(out.glob(f"{cfg.name}-[0-9][0-9][0-9][0-9][0-9][0-9].tar.zst")):
        return False
    return not list((out / f".{cfg.name}.records").glob("[0-9]*.json"))


def check_existing(cfg: GenConfig) -> None:
    """Fail fast, before the model loads, when a single-worker run would refuse an existing set."""
    cfg = cfg.resolved()
    if cfg.resume or cfg.num_workers > 1:
        return
    out = Path(cfg.out)
    if _holds_no_shards(cfg):
        return
    if (out / f"{cfg.name}.json").exists() or (out / f".{cfg.name}.records").exists():
        raise GenerationError(
            f"{out / cfg.name}.json exists: pass --resume to complete that set (same parameters), "
            f"or choose another --name or --out")


def run(config: GenConfig, progress: Callable[[int, int], None] | None = None) -> RunResult:
    """Generate this worker's shards of the set described by ``config``.

    ``progress(accepted, drawn)`` is called from the host thread after every batch with the
    samples accepted and draws used in it, and once at the start with the samples of shards
    already complete (drawn 0).
    """
    cfg = config.resolved()
    validate(cfg)
    check_existing(cfg)
    plan = make_plan(cfg)
    inputs = load_inputs(cfg)
    writer = _open_writer(cfg, inputs.params)
    try:  # the set's lock is released however the run ends, so a rerun in this process may take it
        return _run_locked(cfg, plan, inputs, writer, progress)
    finally:
        writer.close()


def _run_locked(cfg: GenConfig, plan: Plan, inputs: Inputs, writer, progress) -> RunResult:
    mine = plan.shards_of(cfg.worker_index, cfg.num_workers)
    completed = writer.completed()
    todo = [k for k in mine if k not in completed]
    skipped = [k for k in mine if k in completed]
    if skipped:
        log.info("keeping %d complete shard(s) of %s", len(skipped), writer.manifest_path)
    if progress is not None and skipped:
        progress(sum(plan.sizes[k] for k in skipped), 0)

    filters = cfg.filter_config()
    collector = PreviewCollector() if cfg.preview else None
    host = _Host(cfg, plan, writer, filters, progress, collector)
    host.start()
    rendered_all = False
    try:
        _render(inputs, cfg, todo, host)
        rendered_all = True
    finally:
        # Stop the host whatever happened; on success it drains the queue and the writes first.
        if rendered_all and host.error is None:
            _put_forever(host, None)
        else:
            host.stop.set()
            _drain(host.inbox)
            _put_forever(host, None)
        host.join()
    if host.error is not None:
        exc = host.error
        _remove_uncommitted(writer, cfg, todo)
        if isinstance(exc, OSError):
            raise exc
        if isinstance(exc, GenerationError):
            raise GenerationError(str(exc)) from None
        raise exc
    missing = [k for k in todo if k not in host.done]
    if missing:  # cannot happen unless the host died silently
        raise GenerationError(f"shards {missing[:5]} were not written; rerun with --resume")

    preview_path = None
    if collector is not None:
        if not collector.accepted:
            _preview_only(inputs, cfg, filters, collector)
        preview_path = write_preview(cfg.preview, collector)
        log.info("wrote preview %s", preview_path)

    done = writer.completed()
    complete = all(k in done for k in range(plan.num_shards))
    manifest = writer.finalize(planned=plan.planned(cfg.n)) if complete else None
    return RunResult(writer.manifest_path, sorted(host.done), skipped, complete, manifest, preview_path)


def _remove_uncommitted(writer, cfg: GenConfig, todo: list[int]) -> None:
    """After a failure (a full disk, say), delete this worker's shard files that have no record,
    so nothing that looks like a complete shard is left behind."""
    from shardset.format import shard_filename

    try:
        committed = writer.completed()
    except OSError:
        committed = {}
    for k in todo:
        if k not in committed:
            (Path(cfg.out) / shard_filename(cfg.name, k)).unlink(missing_ok=True)


def _drain(q: queue.Queue) -> None:
    try:
        while True:
            q.get_nowait()
    except queue.Empty:
        pass


def _put_forever(host: _Host, item) -> None:
    while host.is_alive():
        try:
            host.inbox.put(item, timeout=0.2)
            return
        except queue.Full:
            if host.stop.is_set():
                _drain(host.inbox)


# --------------------------------------------------------------------------------- Ray


def run_ray(config: GenConfig, address: str | None = None) -> RunResult:
    """Run the shards as Ray tasks (one GPU each where the cluster has GPUs) on the cluster at
    ``address`` (None or "auto": a local one). Ray is optional: ``pip install bgw-seg[dist]``."""
    try:
        import ray
    except ImportError:
        raise GenerationError("--ray needs Ray, which is not installed: pip install bgw-seg[dist]") from None
    cfg = config.resolved()
    validate(cfg)
    check_existing(cfg)
    plan = make_plan(cfg)
    ray.init(address=None if address in (None, "", "local") else address, ignore_reinit_error=True)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    cpus = int(ray.cluster_resources().get("CPU", 1))
    tasks = max(1, min(plan.num_shards, gpus or cpus))
    remote = ray.remote(num_gpus=1 if gpus else 0)(_ray_worker)
    # Every task joins the set as one of `tasks` workers; the last to finish finalizes it.
    results = ray.get([remote.remote(dataclasses.replace(cfg, num_workers=tasks, worker_index=i, preview=None,
                                                         resume=True))
                       for i in range(tasks)])
    done = [r for r in results if r.complete]
    last = done[-1] if done else results[-1]
    return RunResult(last.manifest_path, sorted(k for r in results for k in r.written),
                     sorted(k for r in results for k in r.skipped), bool(done), last.manifest, None)


def _ray_worker(cfg: GenConfig) -> RunResult:
    logging.basicConfig(level=logging.INFO)
    return run(cfg)
