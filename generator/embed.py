"""The embeddings cache: E(I) for a dataset's train images, computed once per dataset and model.

Images are prepared as the reference code does for BigBiGAN's encoder: RGB, short side resized
to 256 (cv2 INTER_AREA when shrinking; INTER_LINEAR when enlarging, since INTER_AREA degrades to
nearest-neighbour there), centre crop 256x256, scaled to [-1, 1]. The encoder's `z_sample` is
stored. Unreadable images are skipped and counted, never fatal.

The cache file is `<cache_dir>/embeddings/<dataset>-<key>.npy` (float32 [N, D], no pickle) with a
JSON sidecar `<...>.json` written last as the commit marker. `key` is a sha256 over the sorted
relative file list with sizes and the GAN's fingerprint, so a changed dataset or model never
reuses stale latents, while moving the dataset folder keeps the cache valid. Rows follow the
sorted file order, so a cache built anywhere gives the same Z.

`load_or_compute_embeddings(gan, "ecssd" | "folder:PATH" | [paths], ...)` returns (Z, info);
info["embeddings"]["sha256"] (the .npy's sha256) is the fingerprint that goes into manifests.

This module needs no TensorFlow itself: it calls `gan.encode`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from core.errors import UserError
from core.hashing import sha256_file

log = logging.getLogger(__name__)

ENCODE_SIZE = 256
CACHE_FORMAT = "bgw-embeddings"
CACHE_VERSION = 1


class EmbeddingError(UserError, ValueError):
    """A dataset's images cannot be embedded (none listed, none readable); one line with the fix."""


def read_encoder_input(path: str | os.PathLike, size: int = ENCODE_SIZE,
                       max_pixels: int | None = None) -> np.ndarray | None:
    """Read an image as float32 [size,size,3] RGB in [-1, 1] (short side -> size, centre crop).

    Returns None when the file is skipped: over `max_pixels` pixels (from its header, before
    decoding; None = core.images.DEFAULT_MAX_PIXELS, 64 MP; logged with its size), truncated,
    corrupt or unreadable. The reading policy is core.images.read_user_image's.
    """
    from core.images import DEFAULT_MAX_PIXELS, Skip, read_user_image

    # grayscale and RGBA come back as 3-channel BGR
    bgr = read_user_image(path, cv2.IMREAD_COLOR, max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
    if isinstance(bgr, Skip):
        if bgr.kind == "too_large":  # the caller's own warning would call it unreadable
            log.warning("%s", bgr.reason)
        return None
    if bgr.ndim != 3 or min(bgr.shape[:2]) < 1:
        return None
    return _resize_crop(bgr[..., ::-1], size)


def _resize_crop(rgb: np.ndarray, size: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    img = cv2.resize(np.ascontiguousarray(rgb), (nw, nh), interpolation=interp)
    top, left = (nh - size) // 2, (nw - size) // 2
    img = img[top:top + size, left:left + size]
    return img.astype(np.float32) / 127.5 - 1.0


def encode_images(gan, paths: Sequence[str | os.PathLike], *, batch_size: int = 32,
                  progress: Callable[[int], object] | None = None,
                  threads: int = 4, max_pixels: int | None = None) -> tuple[np.ndarray, list[int], int]:
    """Encode images with `gan.encode` (z_sample).

    Returns (Z float32 [N_ok, D], ok_indices into `paths`, skipped_count). `progress(n)` is
    called with the number of images handled after each batch (a tqdm's `update` fits).
    Decoding runs on a small thread pool (cv2 releases the GIL) one batch ahead of encoding.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    paths = list(paths)
    size = getattr(gan, "encode_size", None) or ENCODE_SIZE  # the encoder's input side
    batches = [range(i, min(i + batch_size, len(paths))) for i in range(0, len(paths), batch_size)]
    zs: list[np.ndarray] = []
    ok: list[int] = []
    skipped = 0
    # one thread prefetches the next batch while the GAN encodes this one; it fans the decoding
    # out to a separate pool (a single shared pool could deadlock with threads=1)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool, ThreadPoolExecutor(max_workers=1) as ahead:
        def load(batch):
            return list(pool.map(lambda i: read_encoder_input(paths[i], size, max_pixels), batch))

        pending = ahead.submit(load, batches[0]) if batches else None
        for b, batch in enumerate(batches):
            images = pending.result()
            pending = ahead.submit(load, batches[b + 1]) if b + 1 < len(batches) else None
            good = [(i, im) for i, im in zip(batch, images) if im is not None]
            for i, im in zip(batch, images):
                if im is None:
                    skipped += 1
                    # name the first few; a folder of thousands of broken files must not flood the log
                    (log.warning if skipped <= 5 else log.debug)("skipping image %s (unreadable, truncated or "
                                                                 "over the pixel limit)", paths[i])
            if good:
                zs.append(np.asarray(gan.encode(np.stack([im for _, im in good])), dtype=np.float32))
                ok.extend(i for i, _ in good)
            if progress is not None:
                progress(len(batch))
    dim = int(getattr(gan, "latent_dim", 0))
    z = np.concatenate(zs) if zs else np.zeros((0, dim), np.float32)
    return z, ok, skipped


def file_list_of(paths: Sequence[str | os.PathLike], root: str | os.PathLike | None = None) -> list[tuple[str, int]]:
    """Sorted (relative posix path, size in bytes) pairs; relative to `root` (default: the common folder).

    A missing file gets size -1 (it will be skipped as unreadable, and the key still records it).
    """
    paths = [Path(p).absolute() for p in paths]
    if root is None:
        root = Path(os.path.commonpath([str(p.parent) for p in paths])) if paths else Path(".")
    root = Path(root).absolute()
    out = []
    for p in paths:
        try:
            size = p.stat().st_size
        except OSError:
            size = -1
        out.append((p.relative_to(root).as_posix(), size))
    return sorted(out)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")[:60] or "dataset"


def embeddings_key(file_list: Sequence[tuple[str, int]], gan_fingerprint: str,
                   max_pixels: int | None = None) -> str:
    """sha256 over the sorted (relative path, size) list, the GAN fingerprint and, when it is not
    the default, the pixel limit (it decides which images are skipped)."""
    from core.images import DEFAULT_MAX_PIXELS

    h = hashlib.sha256()
    h.update(f"{CACHE_FORMAT}/{CACHE_VERSION}\0{gan_fingerprint}\0".encode())
    if max_pixels not in (None, DEFAULT_MAX_PIXELS):
        h.update(f"max_pixels={int(max_pixels)}\0".encode())
    for rel, size in sorted((str(r), int(s)) for r, s in file_list):
        h.update(f"{rel}\0{size}\n".encode())
    return h.hexdigest()


def embeddings_cache_path(cache_dir: str | os.PathLike, dataset_name: str,
                          file_list: Sequence[tuple[str, int]], gan_fingerprint: str,
                          max_pixels: int | None = None) -> Path:
    """`<cache_dir>/embeddings/<dataset>-<key[:20]>.npy`; the sidecar is the same name with .json."""
    key = embeddings_key(file_list, gan_fingerprint, max_pixels)
    return Path(cache_dir) / "embeddings" / f"{_safe_name(dataset_name)}-{key[:20]}.npy"


def read_cached_embeddings(npy: Path, key: str) -> tuple[np.ndarray, str] | None:
    """(Z, sha256 of the .npy) when the cache entry is complete and matches `key`, else None."""
    sidecar = npy.with_suffix(".json")
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None
    if meta.get("format") != CACHE_FORMAT or meta.get("key") != key or not npy.is_file():
        return None
    digest = sha256_file(npy)
    if digest != meta.get("npy_sha256"):
        log.warning("embeddings cache %s does not match its sidecar; recomputing", npy)
        return None
    z = np.load(npy, allow_pickle=False)
    if z.dtype != np.float32 or z.ndim != 2:
        return None
    return z, digest


def dataset_train_images(spec: str, data_root: str | os.PathLike | None = None) -> tuple[str, list[Path], Path | None]:
    """(name, train image paths, root) of a dataset spec, via benchdata.datasets (no TF, no torch)."""
    from benchdata.datasets import get_dataset

    ds = get_dataset(spec, root=data_root)
    paths = ds.train_images()
    if not paths:
        raise EmbeddingError(f"dataset {spec!r} lists no training images under {ds.root}; check --data-root")
    return ds.name, paths, ds.root


def load_or_compute_embeddings(gan, source: str | Sequence[str | os.PathLike], *,
                               cache_dir: str | os.PathLike | None = None,
                               dataset_name: str | None = None,
                               data_root: str | os.PathLike | None = None,
                               root: str | os.PathLike | None = None,
                               batch_size: int = 32,
                               progress: Callable[[int], object] | None = None,
                               max_pixels: int | None = None) -> tuple[np.ndarray, dict]:
    """Z float32 [N_ok, D] for a dataset's train images (rows in sorted relative-path order), cached.

    `source` is a dataset spec (`ecssd`, `folder:PATH`, ... resolved by benchdata.datasets under
    `data_root`) or a list of image paths (then `dataset_name` names the cache entry; `root`
    makes the relative names, default their common folder). `cache_dir` defaults to
    `$BGW_CACHE_DIR` or ~/.cache/bgw-seg.

    Returns (Z, info). info["embeddings"]["sha256"] is the fingerprint of the .npy file; info
    holds no absolute paths, so manifests agree across machines:
    `{"name", "train_images", "skipped", "embeddings": {"sha256", "key", "count", "dim", "gan_fingerprint"}}`.
    On a miss, encodes every image (skipping unreadable ones) and writes the .npy, then the
    JSON sidecar, each atomically (temp name, then os.replace). Raises EmbeddingError when no image
    at all could be read.
    """
    if isinstance(source, str):
        name, paths, ds_root = dataset_train_images(source, data_root)
        dataset_name = dataset_name or name
        root = root if root is not None else ds_root
    else:
        paths = list(source)
        if not dataset_name:
            raise ValueError("dataset_name is required when source is a list of paths")
    if not paths:
        raise ValueError(f"no images given for {dataset_name}")
    if cache_dir is None:
        from gans.toy import default_cache_dir

        cache_dir = default_cache_dir()
    if root is None:
        root = Path(os.path.commonpath([str(Path(p).absolute().parent) for p in paths]))
    root = Path(root).absolute()
    files = file_list_of(paths, root)
    key = embeddings_key(files, gan.fingerprint, max_pixels)
    npy = embeddings_cache_path(cache_dir, dataset_name, files, gan.fingerprint, max_pixels)

    def info(z: np.ndarray, digest: str, skipped: int) -> dict:
        return {"name": dataset_name, "train_images": len(files), "skipped": int(skipped),
                "embeddings": {"sha256": digest, "key": key, "count": int(z.shape[0]),
                               "dim": int(z.shape[1]), "gan_fingerprint": gan.fingerprint}}

    hit = read_cached_embeddings(npy, key)
    if hit is not None:
        log.info("embeddings cache hit: %s (%d latents)", npy, len(hit[0]))
        return hit[0], info(hit[0], hit[1], len(files) - len(hit[0]))
    log.info("embeddings cache miss: encoding %d images of %s into %s", len(files), dataset_name, npy)
    ordered = [root / rel for rel, _ in files]
    z, ok, skipped = encode_images(gan, ordered, batch_size=batch_size, progress=progress, max_pixels=max_pixels)
    if len(ok) == 0:
        raise EmbeddingError(f"none of the {len(files)} images of {dataset_name} under {root} could be read")
    npy.parent.mkdir(parents=True, exist_ok=True)
    tmp = npy.with_name(f"{npy.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(z, dtype=np.float32), allow_pickle=False)
    os.replace(tmp, npy)
    digest = sha256_file(npy)
    ok_set = set(ok)
    meta = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "dataset": dataset_name,
        "key": key,
        "gan": {"handle": getattr(gan, "handle", None), "fingerprint": gan.fingerprint},
        "shape": list(z.shape),
        "npy_sha256": digest,
        "files": [rel for i, (rel, _) in enumerate(files) if i in ok_set],  # row order
        "skipped": [rel for i, (rel, _) in enumerate(files) if i not in ok_set],
    }
    sidecar = npy.with_suffix(".json")
    tmp = sidecar.with_name(f"{sidecar.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, sidecar)  # written last: its presence marks a complete entry
    if skipped:
        log.warning("%d of %d images of %s were skipped (unreadable, truncated or over the pixel limit)",
                    skipped, len(files), dataset_name)
    return z, info(z, digest, skipped)
