"""The input sizing of the benchmarks (docs/RULES.md, "Inference protocols"): how an image reaches
the model, and how its probability map and ground truth reach the metrics. One object, `Sizing`,
does every step, so eval-seg, the trainer's benchmark validation and `segment` size alike.

A sizing is a kind at a size S, named `{kind}{S}`:

- ``crop`` (CUB, Flowers; table 1 of the paper, as the prior works): centre crop to a square,
  resize to S x S; the ground truth gets the same crop and resize, metrics run at S x S.
- ``short`` (saliency and localisation sets; tables 2-3): resize so the short side is S, keeping
  the aspect ratio; the probability map is resized back to the ground truth's size.

A dataset's sizing is its kind at the paper's size, CROP128 or SHORT128: that fixes the size the
metrics run at. A model may be fed at another size (`sizing.at(S)`: its training size,
segmodel.checkpoint); its map is then restored to the dataset's evaluation size, so the numbers of
one dataset are measured on the same pixels whatever the input size.

The ground truth leaves here as it was read, only sized (`prepare_gt`): binarising it is the
evaluation protocols' step (scoring.binarize_gt: the paper's >= 128, the saliency toolkits' > 128),
taken once, there. (The evaluation protocols, `paper` and `sod-toolkit`, are another thing than a
sizing: scoring.protocols.)

numpy + OpenCV only; the maps come back as floats, quantised to 8 bits by the caller
(core.maps.probability_to_uint8).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import cv2
import numpy as np

from .io import DatasetError

__all__ = ["KINDS", "PAPER_SIZE", "INPUT_SIZE", "Sizing", "CROP128", "SHORT128", "center_crop", "restore_map"]

KINDS = ("crop", "short")
PAPER_SIZE = 128  # pixels: the paper's U-Net input (BigBiGAN samples are 128x128)
INPUT_SIZE = PAPER_SIZE  # the name callers knew it by


def center_crop(a: np.ndarray) -> np.ndarray:
    """The central square of side min(H, W) (the extra pixel of an odd margin goes to the end)."""
    h, w = a.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return a[top:top + s, left:left + s]


def _resize(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if a.shape[:2] == hw:
        return a
    # area averaging when shrinking (antialiased, like PIL's resize), bilinear when growing
    shrink = hw[0] * hw[1] < a.shape[0] * a.shape[1]
    return cv2.resize(a, (hw[1], hw[0]), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def restore_map(prob: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """float probability map [h, w] in [0, 1] -> float32 [H, W] at the ground truth's size
    (bilinear). The caller quantises it to 8 bits afterwards (v = round(255 p),
    core.maps.probability_to_uint8), so the metrics' integer thresholds see the values a saved
    8-bit PNG would carry, and the resize works on the float map, not on 8-bit levels."""
    prob = np.asarray(prob, dtype=np.float32)
    if prob.shape != tuple(hw):
        prob = cv2.resize(prob, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)
    return prob


@dataclass(frozen=True)
class Sizing:
    """`kind` (crop or short) at `size` S pixels; `name` spells it: short128, crop64."""

    kind: str
    size: int

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DatasetError(f"unknown sizing {self.kind!r}; choose from {', '.join(KINDS)}")
        if int(self.size) < 1:
            raise DatasetError(f"an input size must be >= 1 pixel, got {self.size}")
        object.__setattr__(self, "size", int(self.size))

    @classmethod
    def parse(cls, name: str) -> Sizing:
        """The sizing a name spells: "short128" -> Sizing("short", 128), "crop64" -> Sizing("crop", 64)."""
        m = re.fullmatch(r"(crop|short)([1-9][0-9]*)", name) if isinstance(name, str) else None
        if m is None:
            raise DatasetError(f"unknown sizing {name!r}; expected crop or short followed by a size in "
                               f"pixels, e.g. {CROP128.name}, {SHORT128.name}")
        return cls(m[1], int(m[2]))

    @property
    def name(self) -> str:
        return f"{self.kind}{self.size}"

    def __str__(self) -> str:
        return self.name

    def at(self, size: int | None) -> Sizing:
        """This kind at `size` (None keeps this one): CROP128.at(64) is crop64."""
        return self if size is None else Sizing(self.kind, size)

    def input_shape(self, shape: tuple[int, ...]) -> tuple[int, int]:
        """(height, width) of the model input for an image of `shape`."""
        if self.kind == "crop":
            return self.size, self.size
        h, w = shape[:2]
        s = min(h, w)
        # round half up, so 300x400 -> 128x171 on every platform
        return (self.size if h == s else int(h * self.size / s + 0.5),
                self.size if w == s else int(w * self.size / s + 0.5))

    def prepare_image(self, image: np.ndarray) -> np.ndarray:
        """uint8 RGB model input (crop: S x S of the centre square; short: short side S)."""
        if self.kind == "crop":
            image = center_crop(image)
        return _resize(image, self.input_shape(image.shape))

    def prepare_gt(self, gt: np.ndarray) -> np.ndarray:
        """The ground truth at the size metrics run at, not binarised (call it on the dataset's
        sizing): crop crops and resizes it to S x S like the image (a bool mask as 0/255 levels);
        short keeps it as it is."""
        if self.kind == "crop":
            if gt.dtype == bool:
                gt = gt.astype(np.uint8) * 255
            return _resize(center_crop(gt), (self.size, self.size))
        return gt

    def eval_shape(self, gt: np.ndarray | None, image_shape: tuple[int, ...] | None = None) -> tuple[int, int]:
        """(height, width) the metrics run at: the prepared ground truth's (`gt`); for box-only
        sets, which have no mask to say so, crop's square, else the image's (`image_shape`)."""
        if gt is not None:
            return tuple(gt.shape[:2])
        return (self.size, self.size) if self.kind == "crop" else tuple(image_shape[:2])

    def eval_image(self, image: np.ndarray) -> np.ndarray:
        """The image as the metrics see it (the figures show it beside its maps): crop's square."""
        return self.prepare_image(image) if self.kind == "crop" else image

    def full_size_map(self, prob: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
        """float32 [H, W]: a model's map at the size of the image it was prepared from. short:
        restore_map. crop: the map covers the centre square, so it is restored to that square and
        the rest is 0 (no prediction there)."""
        if self.kind == "short":
            return restore_map(prob, hw)
        out = np.zeros(hw, np.float32)
        square = center_crop(out)  # a view: filling it fills the square in place
        square[...] = restore_map(prob, square.shape)
        return out

    def saved_map(self, pred: np.ndarray, raw_shape: tuple[int, int],
                  eval_shape: tuple[int, int]) -> tuple[np.ndarray, bool]:
        """A saved uint8 map at the evaluation size; returns (map, whether it had to be resized).

        Under crop a map at the original image size gets the ground truth's crop and resize
        (that is where such a map lives). Any other size mismatch is resized bilinearly.
        """
        if pred.shape == tuple(eval_shape):
            return pred, False
        if self.kind == "crop" and pred.shape == tuple(raw_shape):
            return self.prepare_gt(pred), False
        return cv2.resize(pred, (eval_shape[1], eval_shape[0]), interpolation=cv2.INTER_LINEAR), True


CROP128 = Sizing("crop", PAPER_SIZE)  # CUB, Flowers
SHORT128 = Sizing("short", PAPER_SIZE)  # every other set
