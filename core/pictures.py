"""Diagnostic pictures that read without the docs: tiles in a white-padded grid, with a title,
column names and row names drawn inside the picture. Shared by the finder (ranking.png, the
effect pictures, optimize.png) and the trainer (val-grid.png), which may not import each other.

numpy + OpenCV only (cv2 draws the text; no font files, no Pillow).
"""
from __future__ import annotations

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX
DARK = (20, 20, 20)
BAND_H = 24  # one line of text at scale 0.5 with room above and below


def image_grid(rows: list[list[np.ndarray]], pad: int = 2) -> np.ndarray:
    """A white-padded grid of equally sized uint8 RGB (or gray) tiles, rows top to bottom."""
    tiles = [[t if t.ndim == 3 else np.repeat(t[..., None], 3, axis=2) for t in row] for row in rows]
    h, w = tiles[0][0].shape[:2]
    n_cols = max(len(r) for r in tiles)
    out = np.full((len(tiles) * (h + pad) + pad, n_cols * (w + pad) + pad, 3), 255, np.uint8)
    for r, row in enumerate(tiles):
        for c, t in enumerate(row):
            y0, x0 = pad + r * (h + pad), pad + c * (w + pad)
            out[y0:y0 + h, x0:x0 + w] = t
    return out


def labelled_grid(rows: list[list[np.ndarray]], names: list[str], title: str = "", pad: int = 2,
                  min_tile: int = 96, columns: list[str] | None = None, label_w: int = 160) -> np.ndarray:
    """`image_grid` with each row's name in a left column `label_w` px wide (cycled when there are
    more rows than names; no column when `names` is empty), a title band on top and, with
    `columns`, a band naming each column above it. Tiles smaller than `min_tile` are enlarged by
    an integer factor (nearest neighbour) so that the text stays legible beside them."""
    side = rows[0][0].shape[0]
    k = max(1, -(-min_tile // side))
    if k > 1:
        rows = [[np.repeat(np.repeat(t, k, axis=0), k, axis=1) for t in row] for row in rows]
    grid = image_grid(rows, pad)
    h, w = rows[0][0].shape[:2]
    label_w = label_w if names else 0
    title_h = BAND_H if title else 0
    cols_h = BAND_H if columns else 0
    top = title_h + cols_h
    out = np.full((grid.shape[0] + top, grid.shape[1] + label_w, 3), 255, np.uint8)
    out[top:, label_w:] = grid
    if title:
        cv2.putText(out, title, (6, 17), FONT, 0.5, DARK, 1, cv2.LINE_AA)
    for c, name in enumerate(columns or []):
        (tw, _), _ = cv2.getTextSize(name, FONT, 0.45, 1)
        x = label_w + pad + c * (w + pad) + max(0, (w - tw) // 2)
        cv2.putText(out, name, (x, title_h + 17), FONT, 0.45, DARK, 1, cv2.LINE_AA)
    for r in range(len(rows) if names else 0):
        y = top + pad + r * (h + pad) + h // 2 + 5
        cv2.putText(out, names[r % len(names)], (6, y), FONT, 0.45, DARK, 1, cv2.LINE_AA)
    return out
