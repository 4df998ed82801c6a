"""Import a labelled folder (images/<id>.jpg|png, masks/<id>.png) as a shard set.

Images are resized so the short side is `size` and center-cropped to size x size; masks get the
same geometry and are binarised at >= 128 (DUTS masks have soft edges). Files are read by
`core.images.read_user_image`: one over `max_pixels` (from its header, before decoding),
truncated, corrupt or unreadable is skipped with a warning and counted per shard in the
manifest's `rejected` counts (`too_large_image`, `truncated_image`, `unreadable_image`, and
`..._mask` likewise). Shard contents depend only on
the sorted ids, `val_fraction` and `seed`, so an interrupted import resumes where it stopped.
"""
from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from .format import DEFAULT_ENCODING, ShardSetError
from core.images import DEFAULT_MAX_PIXELS, Skip, read_user_image
from .writer import ShardSetWriter

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MASK_THRESHOLD = 128


def resize_center_crop(arr: np.ndarray, size: int) -> np.ndarray:
    """Resize so the short side is `size` (aspect kept), then center-crop to size x size."""
    h, w = arr.shape[:2]
    scale = size / min(h, w)
    if scale != 1.0:
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        # INTER_AREA averages when shrinking (no aliasing); INTER_LINEAR when enlarging
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        arr = cv2.resize(arr, (nw, nh), interpolation=interp)
        h, w = nh, nw
    top, left = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(arr[top : top + size, left : left + size])


def prepare_pair(image_rgb: np.ndarray, mask_gray: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 [size, size, 3], {0,1} uint8 [size, size]) from a full-size image and 8-bit mask."""
    image = resize_center_crop(image_rgb, size)
    mask = (resize_center_crop(mask_gray, size) >= MASK_THRESHOLD).astype(np.uint8)
    return image, mask


def find_pairs(images_dir: Path, masks_dir: Path) -> tuple[list[tuple[str, Path, Path]], int, int]:
    """Sorted (id, image path, mask path) pairs, and the counts of unpaired images and masks."""
    images = {}
    for p in images_dir.iterdir():
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            if p.stem in images:
                raise ShardSetError(f"{images_dir} holds two images with id {p.stem!r}; keep one")
            images[p.stem] = p
    masks = {p.stem: p for p in masks_dir.iterdir() if p.suffix.lower() == ".png" and p.is_file()}
    ids = sorted(images.keys() & masks.keys())
    return [(i, images[i], masks[i]) for i in ids], len(images.keys() - masks.keys()), len(masks.keys() - images.keys())


def folder_fingerprint(pairs: list[tuple[str, Path, Path]]) -> str:
    """sha256 over ids and file sizes: cheap, and changes when files are added, removed or replaced."""
    h = hashlib.sha256()
    for i, ip, mp in pairs:
        h.update(f"{i}\t{ip.name}\t{ip.stat().st_size}\t{mp.stat().st_size}\n".encode())
    return h.hexdigest()


def load_pair(image_path: Path, mask_path: Path, size: int,
              max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, np.ndarray] | str:
    """Prepared (image, mask), or the rejection key when the pair is skipped (the reason is
    logged as a warning naming the file)."""
    img = read_user_image(image_path, cv2.IMREAD_COLOR, max_pixels=max_pixels)
    mask = None if isinstance(img, Skip) else read_user_image(mask_path, cv2.IMREAD_GRAYSCALE, max_pixels=max_pixels)
    if isinstance(img, Skip) or isinstance(mask, Skip):
        skip, what = (img, "image") if isinstance(img, Skip) else (mask, "mask")
        log.warning("skipping %s: %s", image_path.stem, skip.reason)
        return f"{skip.kind}_{what}"
    if mask.shape != img.shape[:2]:
        log.warning("skipping %s: mask %s is %dx%d, its image %dx%d", image_path.stem, mask_path,
                    mask.shape[1], mask.shape[0], img.shape[1], img.shape[0])
        return "size_mismatch"
    return prepare_pair(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), mask, size)


def plan_shards(n: int, shard_size: int, val_fraction: float, seed: int) -> list[tuple[str, list[int]]]:
    """[(split, pair indices)] per shard: train shards first, then val; val picked by `seed`."""
    n_val = int(round(val_fraction * n))
    val = set(np.random.default_rng(seed).permutation(n)[:n_val].tolist())
    train_idx = [i for i in range(n) if i not in val]
    val_idx = sorted(val)
    plan = []
    for split, idx in (("train", train_idx), ("val", val_idx)):
        plan += [(split, idx[s : s + shard_size]) for s in range(0, len(idx), shard_size)]
    return plan


# Per-process state of import workers (set by _init_worker).
_WORKER: dict = {}


def _init_worker(writer_kwargs: dict, pairs: list, size: int, max_pixels: int,
                 writer: ShardSetWriter | None = None) -> None:
    # a pool worker joins the set (a shared lock, same params); in-process, the parent's writer serves
    _WORKER.update(writer=writer or ShardSetWriter(**writer_kwargs, mode="resume"), pairs=pairs, size=size,
                   max_pixels=max_pixels)


def _import_shard(index: int, split: str, idx: list[int]) -> int:
    writer, pairs, size = _WORKER["writer"], _WORKER["pairs"], _WORKER["size"]
    samples, rejected = [], {}
    for i in idx:
        sid, ip, mp = pairs[i]
        got = load_pair(ip, mp, size, _WORKER["max_pixels"])
        if isinstance(got, str):
            rejected[got] = rejected.get(got, 0) + 1
            continue
        image, mask = got
        samples.append({"image": image, "mask": mask,
                        "meta": {"source_id": sid, "source_index": i, "fg_fraction": round(float(mask.mean()), 6),
                                 "stream": "import"}})
    if not samples:
        log.warning("shard %d: every file was unreadable; writing it empty", index)
    writer.write_shard(index, samples, split=split, stats={"drawn": len(idx), "rejected": rejected})
    return len(samples)


@dataclass(frozen=True)
class ImportConfig:
    """The settings of an import, and their defaults (`shardset import`'s options are its fields)."""

    size: int = 128  # short side resized to this, then centre-cropped to size x size
    shard_size: int = 1000  # samples per shard
    val_fraction: float = 0.0  # share of pairs in validation shards (picked by the seed)
    encoding: str = DEFAULT_ENCODING  # image encoding inside the shards
    seed: int = 0  # seed of the train/val split
    mode: str = "new"  # new | resume | overwrite (ShardSetWriter's modes)
    num_workers: int = field(default=1, metadata={"flag": "--workers"})  # local processes writing shards
    max_pixels: int = field(default=DEFAULT_MAX_PIXELS, metadata={"flag": "--max-image-pixels"})


_DEF = ImportConfig()


def import_folder(images: str | os.PathLike, masks: str | os.PathLike, out: str | os.PathLike, name: str, *,
                  size: int = _DEF.size, shard_size: int = _DEF.shard_size, val_fraction: float = _DEF.val_fraction,
                  encoding: str = _DEF.encoding, seed: int = _DEF.seed, mode: str = _DEF.mode,
                  num_workers: int = _DEF.num_workers, max_pixels: int = _DEF.max_pixels,
                  progress: Callable[[int], None] | None = None) -> dict:
    """Import the folder pair as set `name` in `out`; returns the final manifest."""
    images_dir, masks_dir = Path(images), Path(masks)
    for d, what in ((images_dir, "images"), (masks_dir, "masks")):
        if not d.is_dir():
            raise ShardSetError(f"{what} folder {d} does not exist")
    if not isinstance(size, int) or size < 8:
        raise ShardSetError(f"size must be an int >= 8, got {size!r}")
    if not isinstance(shard_size, int) or shard_size < 1:
        raise ShardSetError(f"shard_size must be an int >= 1, got {shard_size!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ShardSetError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if not isinstance(max_pixels, int) or max_pixels < 1:
        raise ShardSetError(f"max_pixels must be an int >= 1, got {max_pixels!r}")
    pairs, lone_images, lone_masks = find_pairs(images_dir, masks_dir)
    if not pairs:
        raise ShardSetError(f"no image/mask pairs: {images_dir} and {masks_dir} share no <id> (images <id>.jpg|png, "
                         f"masks <id>.png)")
    params = {
        "source": "import",
        "images": str(images_dir.resolve()),
        "masks": str(masks_dir.resolve()),
        "size": size,
        "resize": "short side to size, center crop",
        "mask_threshold": MASK_THRESHOLD,
        "val_fraction": val_fraction,
        "pairs": len(pairs),
        "unpaired_images": lone_images,
        "unpaired_masks": lone_masks,
        "dataset_fingerprint": folder_fingerprint(pairs),
        "max_image_pixels": max_pixels,  # decides which pairs are skipped, so it is part of the set
    }
    plan = plan_shards(len(pairs), shard_size, val_fraction, seed)
    planned = {"shards": len(plan), "pairs": len(pairs)}
    writer_kwargs = dict(out_dir=out, name=name, encoding=encoding, shard_size=shard_size, params=params, seed=seed,
                         planned=planned)
    with ShardSetWriter(**writer_kwargs, mode=mode) as writer:
        done = writer.completed()
        todo = [(k, split, idx) for k, (split, idx) in enumerate(plan) if k not in done]
        if progress:
            progress(sum(r["samples"] for r in done.values()))
        log.info("importing %d pairs into %d shards (%d already done)", len(pairs), len(plan), len(plan) - len(todo))
        try:
            if num_workers <= 1:
                _init_worker(writer_kwargs, pairs, size, max_pixels, writer)
                for k, split, idx in todo:
                    n = _import_shard(k, split, idx)
                    if progress:
                        progress(n)
            else:
                writer.share()  # the pool's workers join with shared locks; other writers stay out
                with ProcessPoolExecutor(num_workers, initializer=_init_worker,
                                         initargs=(writer_kwargs, pairs, size, max_pixels)) as ex:
                    futures = [ex.submit(_import_shard, k, split, idx) for k, split, idx in todo]
                    for fut in futures:
                        n = fut.result()
                        if progress:
                            progress(n)
        finally:
            _WORKER.clear()
        return writer.finalize(planned=planned)
