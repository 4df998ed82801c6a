"""What `segment` writes for one image, every file atomically (core.atomic: a temporary name, then a
rename), so a file that exists under its final name is whole:

- `<rel>.png`, the mask at the image's size: with `--threshold none` the 8-bit probability
  v = round(255 p) (segmodel.inference.probability_to_uint8, the quantisation eval-seg scores),
  else binary, 255 where v >= 255 T and 0 elsewhere (T = 0.5: v >= 128, the paper's IoU rule).
- `<rel>.overlay.jpg` (--overlay): the object in its own colours, the background dimmed, and the
  mask's edge (v >= 128) outlined white on black, which reads on a subject of any colour.
- `<rel>.cutout.png` (--cutout): the image as RGBA with the mask as its alpha (background transparent).
- the box (--boxes) of the mask's largest component, foreground v >= 128 of the written mask,
  drawn by the WSOL protocol's rule (scoring.wsol.contour_boxes).

What "done" means for resume is `DONE`, `segment.done.jsonl` in --out: a line per image, appended
after all its files are written, naming the input (its real path with size and mtime, or its URL),
the settings key (model sha256, rule, sizing, threshold) and each file's sha256. An image is done
when its line matches this run's input and settings and every file it asks for still has the
recorded bytes; a file that merely exists (an earlier run for another input with the same name,
an older version of this project, a hand edit) is never taken for done. A torn last line (a kill)
does not parse and is ignored; the journal is compacted, atomically, at the start of each run.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import cv2
import numpy as np

from core.atomic import atomic_write_bytes, atomic_write_text
from scoring.wsol import contour_boxes

__all__ = ["OutputPaths", "output_paths", "is_complete", "threshold_level", "mask_of", "overlay_jpeg",
           "cutout_png", "largest_box", "encode_png", "BOX_LEVEL", "DONE", "Journal", "file_sha256"]

DONE = "segment.done.jsonl"  # the journal of images done (module docstring)
_ROWS_PIXELS = 1 << 20  # the overlay's float arithmetic runs on bands of about this many pixels

BOX_LEVEL = 127  # boxes take foreground v > 127, i.e. v >= 128: p >= 0.5 on a probability mask
# a tint hides on subjects of its own colour (red on a red car); dimming what is not the object
# and a white line edged in black read on any colour, dark or light
OVERLAY_DIM = 0.35  # the background's brightness, as a fraction of its own
OUTLINE_INNER, OUTLINE_OUTER = (255, 255, 255), (0, 0, 0)
JPEG_QUALITY = 90
_PNG_END = b"\0\0\0\0IEND\xaeB`\x82"  # an empty IEND chunk and its CRC: every PNG ends so


@dataclass(frozen=True)
class OutputPaths:
    mask: Path
    overlay: Path | None
    cutout: Path | None

    def all(self) -> list[Path]:
        return [p for p in (self.mask, self.overlay, self.cutout) if p is not None]

    def named(self) -> dict[str, Path]:
        return {k: p for k, p in (("mask", self.mask), ("overlay", self.overlay), ("cutout", self.cutout))
                if p is not None}


def output_paths(out: Path, rel: PurePosixPath, overlay: bool, cutout: bool) -> OutputPaths:
    base = out.joinpath(*rel.parts)
    return OutputPaths(base.with_name(base.name + ".png"),
                       base.with_name(base.name + ".overlay.jpg") if overlay else None,
                       base.with_name(base.name + ".cutout.png") if cutout else None)


def is_complete(path: Path) -> bool:
    """Whether `path` is a whole PNG or JPEG: it ends with the format's end marker."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            if f.tell() < len(_PNG_END):
                return False
            f.seek(-len(_PNG_END), 2)
            tail = f.read()
    except OSError:
        return False
    return tail == _PNG_END if path.suffix == ".png" else tail.endswith(b"\xff\xd9")


def threshold_level(threshold: float) -> int:
    """The smallest 8-bit value v with v / 255 >= threshold (0.5 -> 128), computed so that a
    threshold of k / 255 gives exactly k despite the float product."""
    return math.ceil(round(255.0 * threshold, 6))


def mask_of(v: np.ndarray, threshold: float | None) -> np.ndarray:
    """The mask written for the 8-bit probability map `v`: itself (threshold None), else 0 / 255."""
    if threshold is None:
        return v
    return np.where(v >= threshold_level(threshold), np.uint8(255), np.uint8(0))


def encode_png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 array it is given
        raise RuntimeError("OpenCV could not encode a PNG")
    return buf.tobytes()


def overlay_jpeg(image_rgb: np.ndarray, mask: np.ndarray) -> bytes:
    """JPEG of the image with the background dimmed to OVERLAY_DIM (weighted by 1 - v / 255, so a
    probability mask fades) and the edge of v >= 128 outlined: a white line edged in black,
    both thicker on bigger images so the outline stays visible when the picture is shrunk."""
    a = mask.astype(np.float32)[..., None] / np.float32(255.0)
    shown = image_rgb.astype(np.float32) * (OVERLAY_DIM + (1.0 - OVERLAY_DIM) * a)
    bgr = cv2.cvtColor(np.clip(np.rint(shown), 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
    contours, _ = cv2.findContours((mask > BOX_LEVEL).astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    t = max(1, round(min(mask.shape[:2]) / 250))
    cv2.drawContours(bgr, contours, -1, OUTLINE_OUTER[::-1], 3 * t, cv2.LINE_8)
    cv2.drawContours(bgr, contours, -1, OUTLINE_INNER[::-1], t, cv2.LINE_8)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:  # pragma: no cover
        raise RuntimeError("OpenCV could not encode a JPEG")
    return buf.tobytes()


def cutout_png(image_rgb: np.ndarray, mask: np.ndarray) -> bytes:
    """RGBA PNG: the image, its alpha the mask (0 = transparent background)."""
    return encode_png(np.dstack([cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), mask]))


def largest_box(mask: np.ndarray) -> list[int] | None:
    """[x0, y0, x1, y1] of the largest component of v >= 128 (the WSOL rule: x1 = x0 + width,
    clipped to the image), or None when the mask has no foreground."""
    if not (mask > BOX_LEVEL).any():
        return None
    return [int(c) for c in contour_boxes(mask, BOX_LEVEL)[0]]


def write_outputs(paths: OutputPaths, image_rgb: np.ndarray, mask: np.ndarray) -> dict[str, str]:
    """Every requested file of one image, the mask last; returns each file's sha256 by kind, for
    the journal. No fsync per file (a thousand of them would dominate the run): a killed process
    leaves at most a temporary name and no journal line, so a resumed run writes it again."""
    written = {}
    for kind, path, make in (("overlay", paths.overlay, overlay_jpeg), ("cutout", paths.cutout, cutout_png)):
        if path is not None:
            data = make(image_rgb, mask)
            atomic_write_bytes(path, data, fsync=False)
            written[kind] = hashlib.sha256(data).hexdigest()
            del data
    data = encode_png(mask)
    atomic_write_bytes(paths.mask, data, fsync=False)
    written["mask"] = hashlib.sha256(data).hexdigest()
    return written


def file_sha256(path: Path) -> str | None:
    """The sha256 of a regular file, None when it cannot be read."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            if not os.path.isfile(path):
                return None
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


class Journal:
    """segment.done.jsonl (module docstring): entries by mask path relative to --out, the last
    line of a path winning."""

    def __init__(self, out: Path, fresh: bool = False):
        self.path = out / DONE
        self.entries: dict[str, dict] = {}
        if not fresh:
            self._load()
        self._file = None

    def _load(self) -> None:
        try:
            if not self.path.is_file():
                return
            with open(self.path, "rb") as f:
                lines = f.read().splitlines()
        except OSError:
            return
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line torn by a kill
            if isinstance(entry, dict) and isinstance(entry.get("mask"), str):
                self.entries[entry["mask"]] = entry

    def start(self) -> None:
        """Rewrite the journal compacted (atomically), then open it for appending."""
        atomic_write_text(self.path, "".join(json.dumps(e, sort_keys=True, ensure_ascii=False) + "\n"
                                             for e in self.entries.values()), fsync=False)
        self._file = open(self.path, "a", encoding="utf-8")

    def add(self, entry: dict) -> None:
        self.entries[entry["mask"]] = entry
        # one write of one line, flushed: a kill leaves whole lines and at most one torn one
        self._file.write(json.dumps(entry, sort_keys=True, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
