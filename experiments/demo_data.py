"""A folder of procedurally drawn photos with object masks (`images/<id>.jpg`, `masks/<id>.png`).

The demo and the recipes' tiny forms need a dataset to embed and to score on, and no download may
be assumed. Each image is one object (an ellipse or a polygon, its own colour and texture) on a
textured background, so the saliency ground truth is exact. The layout is the `folder:PATH` one the
evaluator and the generator read, so nothing special-cases it."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np


def _texture(rng: np.random.Generator, h: int, w: int, base: np.ndarray, amp: float) -> np.ndarray:
    """Smooth colour noise around `base`: low-frequency noise upsampled, so it looks like a surface."""
    coarse = rng.normal(0.0, 1.0, size=(max(2, h // 16), max(2, w // 16), 3)).astype(np.float32)
    smooth = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    fine = rng.normal(0.0, 0.25, size=(h, w, 3)).astype(np.float32)
    return np.clip(base[None, None, :] + amp * (smooth + fine), 0, 255)


def draw_sample(rng: np.random.Generator, height: int = 160, width: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """One (RGB uint8 [H, W, 3], mask uint8 [H, W] in {0, 255}) pair."""
    bg_colour = rng.uniform(30, 225, size=3).astype(np.float32)
    fg_colour = rng.uniform(30, 225, size=3).astype(np.float32)
    # keep the object distinguishable from its background, as salient objects are
    while np.abs(fg_colour - bg_colour).sum() < 150:
        fg_colour = rng.uniform(30, 225, size=3).astype(np.float32)
    image = _texture(rng, height, width, bg_colour, 18.0)
    mask = np.zeros((height, width), np.uint8)
    cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
    ry, rx = rng.uniform(0.12, 0.3) * height, rng.uniform(0.12, 0.3) * width
    if rng.random() < 0.5:
        cv2.ellipse(mask, (int(cx), int(cy)), (int(rx), int(ry)), float(rng.uniform(0, 180)), 0, 360, 255, -1)
    else:
        k = int(rng.integers(3, 8))
        angles = np.sort(rng.uniform(0, 2 * np.pi, size=k))
        radii = rng.uniform(0.6, 1.0, size=k)
        pts = np.stack([cx + rx * radii * np.cos(angles), cy + ry * radii * np.sin(angles)], 1)
        cv2.fillPoly(mask, [pts.astype(np.int32)], 255)
    fg = _texture(rng, height, width, fg_colour, 12.0)
    image = np.where(mask[..., None] > 0, fg, image)
    return image.astype(np.uint8), mask


def make_image_folder(root: str | os.PathLike, n: int = 200, *, seed: int = 0) -> Path:
    """Write `n` pairs under root/images and root/masks (skipped when already complete)."""
    root = Path(root)
    images, masks = root / "images", root / "masks"
    if images.is_dir() and len(list(images.glob("*.jpg"))) == n and len(list(masks.glob("*.png"))) == n:
        return root
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        rgb, mask = draw_sample(rng)
        stem = f"{i:05d}"
        # written under temporary names first: a killed run leaves no pair that looks complete
        for path, ok in (
            (images / f"{stem}.jpg", cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])),
            (masks / f"{stem}.png", cv2.imencode(".png", mask)),
        ):
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(ok[1].tobytes())
            os.replace(tmp, path)
    return root
