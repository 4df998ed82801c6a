"""The preview picture of a run (the paper's figures 2 and 7), drawn with cv2.

Top: accepted samples, each as the mask rule's pair and the mask over the stored image, e.g.
G(z) | G(z + r h) | mask over G(z), two samples to a row. Below: one labelled strip per filter of
samples it rejected, each as the stored image with its mask drawn over it. ``PreviewCollector``
keeps the first few examples of each kind as batches stream past, so a run pays nothing for the
preview beyond a few copies.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

TILE = 128  # pixels per tile side (BigBiGAN's output size)
LABEL_H = 22  # pixels of the label band above each section
PAIRS_PER_ROW = 2  # accepted samples side by side: 2 x 3 tiles
_FG_BGR = (60, 220, 60)  # mask tint (green)
_CONTOUR_BGR = (0, 0, 255)  # mask outline (red)
_BAND_BGR = (32, 32, 32)
_TEXT_BGR = (240, 240, 240)

FILTER_LABELS = {
    "size": "rejected by the size filter (foreground fraction > max)",
    "histogram": "rejected by the histogram filter (x' not contrastive enough, by --histogram-rule)",
}


def signed_to_uint8(x: np.ndarray) -> np.ndarray:
    """Images in [-1, 1] (float) -> uint8 by round((x + 1) * 127.5), clipped; the shard rule."""
    return np.clip(np.rint((np.asarray(x, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


class PreviewCollector:
    """Collects up to ``rows`` accepted and ``per_reason`` rejected examples per filter."""

    def __init__(self, rows: int = 8, per_reason: int = 6, reasons: tuple[str, ...] = ("size", "histogram"),
                 pair_label: str = "G(z) | G(z + r h)"):
        self.rows = rows
        self.per_reason = per_reason
        self.pair_label = pair_label  # what the first two tiles of an accepted row show
        # (pair image 1, pair image 2, mask, stored image) uint8
        self.accepted: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self.rejected: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {r: [] for r in reasons}  # (image, mask)

    @property
    def full(self) -> bool:
        return len(self.accepted) >= self.rows and all(len(v) >= self.per_reason for v in self.rejected.values())

    def add(self, x: np.ndarray, x_shift: np.ndarray, masks: np.ndarray, reasons: list[str | None],
            images: np.ndarray | None = None) -> None:
        """Offer a batch: the mask rule's pair x, x' [N, H, W, 3] in [-1, 1], masks [N, H, W] {0, 1},
        reason per sample, and the images the samples store (None: x)."""
        images = x if images is None else images
        for i, reason in enumerate(reasons):
            if reason is None:
                if len(self.accepted) < self.rows:
                    self.accepted.append((signed_to_uint8(x[i]), signed_to_uint8(x_shift[i]),
                                          np.asarray(masks[i], np.uint8), signed_to_uint8(images[i])))
            else:
                bucket = self.rejected.setdefault(reason, [])
                if len(bucket) < self.per_reason:
                    bucket.append((signed_to_uint8(images[i]), np.asarray(masks[i], np.uint8)))


def _tile(rgb: np.ndarray) -> np.ndarray:
    bgr = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
    if bgr.shape[:2] != (TILE, TILE):
        bgr = cv2.resize(bgr, (TILE, TILE), interpolation=cv2.INTER_AREA)
    return bgr


def overlay(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """BGR tile: the image, foreground tinted, mask outline drawn."""
    img = _tile(rgb)
    m = mask.astype(np.uint8)
    if m.shape != (TILE, TILE):
        m = cv2.resize(m, (TILE, TILE), interpolation=cv2.INTER_NEAREST)
    tint = np.empty_like(img)
    tint[:] = _FG_BGR
    blended = cv2.addWeighted(img, 0.55, tint, 0.45, 0.0)
    out = np.where(m[..., None] > 0, blended, img)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, _CONTOUR_BGR, 1)
    return out


def label_band(width: int, text: str) -> np.ndarray:
    """A dark band `width` pixels wide with `text` in light gray (the same in BGR and RGB)."""
    band = np.empty((LABEL_H, width, 3), np.uint8)
    band[:] = _BAND_BGR
    cv2.putText(band, text, (6, LABEL_H - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45, _TEXT_BGR, 1, cv2.LINE_AA)
    return band


def render_preview(collector: PreviewCollector) -> np.ndarray:
    """The preview picture, BGR uint8 [H, W, 3]."""
    width = PAIRS_PER_ROW * 3 * TILE
    blank = np.zeros((TILE, TILE, 3), np.uint8)
    parts = [label_band(width, f"accepted: {collector.pair_label} | mask  ({len(collector.accepted)} shown)")]
    triplets = [[_tile(x), _tile(xs), overlay(image, m)] for x, xs, m, image in collector.accepted]
    for r in range(0, len(triplets), PAIRS_PER_ROW):
        row = [t for trip in triplets[r:r + PAIRS_PER_ROW] for t in trip]
        row += [blank] * (PAIRS_PER_ROW * 3 - len(row))
        parts.append(np.concatenate(row, axis=1))
    per_row = width // TILE
    if not any(collector.rejected.values()):  # one line for "nothing rejected", not a "(none)" band per filter
        parts.append(label_band(width, "rejected: none (no filter rejected a sample while the preview was collected)"))
        return np.concatenate(parts, axis=0)
    for reason, examples in collector.rejected.items():
        label = FILTER_LABELS.get(reason, f"rejected by {reason}")
        if not examples:  # a filter that is off, or rejected nothing: its band says so, no empty row
            parts.append(label_band(width, f"{label}  (none)"))
            continue
        parts.append(label_band(width, f"{label}  ({len(examples)} shown)"))
        tiles = [overlay(x, m) for x, m in examples]
        for r in range(0, len(tiles), per_row):
            row = tiles[r:r + per_row]
            row += [blank] * (per_row - len(row))
            parts.append(np.concatenate(row, axis=1))
    return np.concatenate(parts, axis=0)


def write_preview(path: str | os.PathLike, collector: PreviewCollector) -> Path:
    """Render and write the preview PNG atomically (temp name, then rename)."""
    path = Path(path)
    ok, buf = cv2.imencode(".png", render_preview(collector))
    if not ok:
        raise OSError(f"{path}: cv2 could not encode the preview")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(buf.tobytes())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
