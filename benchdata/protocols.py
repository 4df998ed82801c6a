"""The inference protocols of the benchmarks (docs/RULES.md, "Inference protocols"): how an image
reaches the model and how its probability map and ground truth reach the metrics.

A protocol is a kind of sizing at a size S, named `{kind}{S}`:

- ``crop`` (CUB, Flowers; table 1 of the paper, as the prior works): centre crop to a square,
  resize to S x S; the ground truth gets the same crop and resize, metrics run at S x S.
- ``short`` (saliency and localisation sets; tables 2-3): resize so the short side is S, keeping
  the aspect ratio; the probability map is resized back to the ground truth's size.

A dataset's protocol is its kind at the paper's size, `crop128` or `short128` (PROTOCOLS): that
fixes the size the metrics run at. A model may be fed at another size (`at_size(protocol, S)`:
its training size, segmodel.checkpoint); its map is then restored to the dataset's evaluation
size, so the numbers of one dataset are measured on the same pixels whatever the input size.

Ground truth is foreground at >= 0.5 of its range (`gt_foreground`: >= 128 for 8-bit, >= 32768
for 16-bit); a uint8 map whose values are all in {0, 1} is read as a label map (1 = foreground).
(The evaluation protocols, `paper` and `sod-toolkit`, binarise it their own way: evaluator.protocols.)

numpy + OpenCV only; the maps come back as floats, quantised to 8 bits by the caller
(segmodel.inference.probability_to_uint8).
"""
from __future__ import annotations

import functools
import re

import cv2
import numpy as np

from .io import DatasetError

__all__ = ["KINDS", "PAPER_SIZE", "PROTOCOLS", "INPUT_SIZE", "parse_protocol", "protocol_name", "at_size",
           "gt_foreground", "center_crop", "input_size", "eval_shape", "prepare_image", "prepare_gt",
           "restore_map", "full_size_map", "eval_gt"]

KINDS = ("crop", "short")
PAPER_SIZE = 128  # pixels: the paper's U-Net input (BigBiGAN samples are 128x128)
INPUT_SIZE = PAPER_SIZE  # the name callers knew it by
PROTOCOLS = tuple(f"{kind}{PAPER_SIZE}" for kind in KINDS)  # ("crop128", "short128"): the datasets' protocols


@functools.lru_cache(maxsize=64)
def parse_protocol(protocol: str) -> tuple[str, int]:
    """(kind, size) of a protocol name: "short128" -> ("short", 128), "crop64" -> ("crop", 64)."""
    m = re.fullmatch(r"(crop|short)([1-9][0-9]*)", protocol) if isinstance(protocol, str) else None
    if m is None:
        raise DatasetError(f"unknown protocol {protocol!r}; expected crop or short followed by a size in "
                           f"pixels, e.g. {', '.join(PROTOCOLS)}")
    return m[1], int(m[2])


def protocol_name(kind: str, size: int) -> str:
    """The name of `kind` at `size`: ("short", 64) -> "short64" (the paper's sizes read crop128 / short128)."""
    if kind not in KINDS:
        raise DatasetError(f"unknown sizing {kind!r}; choose from {', '.join(KINDS)}")
    if int(size) < 1:
        raise DatasetError(f"an input size must be >= 1 pixel, got {size}")
    return f"{kind}{int(size)}"


def at_size(protocol: str, size: int | None) -> str:
    """`protocol`'s kind at `size` (None keeps its own): at_size("crop128", 64) -> "crop64"."""
    return protocol if size is None else protocol_name(parse_protocol(protocol)[0], size)


def gt_foreground(gt: np.ndarray) -> np.ndarray:
    """bool [H, W]: foreground where the map is >= half its range.

    8-bit: >= 128; 16-bit: >= 32768; bool passes through. A uint8 map whose values all lie in
    {0, 1} is a label map, where 1 is foreground (such masks exist in the wild; reading them at
    >= 128 would make every image empty).
    """
    if gt.dtype == bool:
        return gt
    if gt.dtype == np.uint8:
        if gt.max(initial=0) <= 1:
            return gt == 1
        return gt >= 128
    if gt.dtype == np.uint16:
        return gt >= 32768
    if np.issubdtype(gt.dtype, np.floating):
        return gt >= 0.5
    raise DatasetError(f"ground truth of dtype {gt.dtype} is not supported")


def center_crop(a: np.ndarray) -> np.ndarray:
    """The central square of side min(H, W) (the extra pixel of an odd margin goes to the end)."""
    h, w = a.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return a[top:top + s, left:left + s]


def input_size(shape: tuple[int, ...], protocol: str) -> tuple[int, int]:
    """(height, width) of the model input for an image of `shape` under `protocol`."""
    kind, size = parse_protocol(protocol)
    if kind == "crop":
        return size, size
    h, w = shape[:2]
    s = min(h, w)
    # round half up, so 300x400 -> 128x171 on every platform
    return (size if h == s else int(h * size / s + 0.5), size if w == s else int(w * size / s + 0.5))


def eval_shape(image_shape: tuple[int, ...], protocol: str) -> tuple[int, int]:
    """(height, width) the metrics run at for an image of `image_shape` under a dataset's
    `protocol` when it has no mask to say so (box-only sets): crop's square, else the image's."""
    kind, size = parse_protocol(protocol)
    return (size, size) if kind == "crop" else tuple(image_shape[:2])


def _resize(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if a.shape[:2] == hw:
        return a
    # area averaging when shrinking (antialiased, like PIL's resize), bilinear when growing
    shrink = hw[0] * hw[1] < a.shape[0] * a.shape[1]
    return cv2.resize(a, (hw[1], hw[0]), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def prepare_image(image: np.ndarray, protocol: str) -> np.ndarray:
    """uint8 RGB model input for `protocol` (crop: S x S of the centre square; short: short side S)."""
    if parse_protocol(protocol)[0] == "crop":
        image = center_crop(image)
    return _resize(image, input_size(image.shape, protocol))


def prepare_gt(gt: np.ndarray, protocol: str) -> np.ndarray:
    """The ground truth at the size metrics run at (pass the dataset's protocol): crop crops and
    resizes it to S x S like the image (then binarise); short keeps the original size."""
    kind, size = parse_protocol(protocol)
    if kind == "crop":
        if gt.dtype == bool:
            gt = gt.astype(np.uint8) * 255
        return _resize(center_crop(gt), (size, size))
    return gt


def restore_map(prob: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """float probability map [h, w] in [0, 1] -> float32 [H, W] at the ground truth's size
    (bilinear). The caller quantises it to 8 bits afterwards (v = round(255 p),
    segmodel.inference.probability_to_uint8), so the metrics' integer thresholds see the values a
    saved 8-bit PNG would carry, and the resize works on the float map, not on 8-bit levels."""
    prob = np.asarray(prob, dtype=np.float32)
    if prob.shape != tuple(hw):
        prob = cv2.resize(prob, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)
    return prob


def full_size_map(prob: np.ndarray, hw: tuple[int, int], protocol: str) -> np.ndarray:
    """float32 [H, W]: a model's map at the size of the image it was prepared from. short:
    restore_map. crop: the map covers the centre square, so it is restored to that square and the
    rest is 0 (no prediction there)."""
    if parse_protocol(protocol)[0] == "short":
        return restore_map(prob, hw)
    out = np.zeros(hw, np.float32)
    square = center_crop(out)  # a view: filling it fills the square in place
    square[...] = restore_map(prob, square.shape)
    return out


def eval_gt(raw: np.ndarray | None, protocol: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(foreground bool, gt_map) of a raw ground truth at the size the metrics run at: `gt_map`
    keeps an 8-bit grayscale mask's values for the evaluation protocols that binarise it their
    own way; label maps and 16-bit masks pass as the bool. (None, None) for box-only sets."""
    if raw is None:
        return None, None
    mask = prepare_gt(raw, protocol)
    gt = gt_foreground(mask)
    return gt, mask if mask.dtype == np.uint8 and mask.max(initial=0) > 1 else gt
