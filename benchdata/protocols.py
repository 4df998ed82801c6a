"""The inference protocols of the benchmarks (docs/RULES.md, "Inference protocols"): how an image
reaches the model and how its probability map and ground truth reach the metrics.

- ``crop128`` (CUB, Flowers; table 1 of the paper, as the prior works): centre crop to a square,
  resize to 128x128; the ground truth gets the same crop and resize, metrics run at 128x128.
- ``short128`` (saliency and localisation sets; tables 2-3): resize so the short side is 128,
  keeping the aspect ratio; the probability map is resized back to the ground truth's size.

Ground truth is foreground at >= 0.5 of its range (`gt_foreground`: >= 128 for 8-bit, >= 32768
for 16-bit); a uint8 map whose values are all in {0, 1} is read as a label map (1 = foreground).
(The evaluation protocols, `paper` and `sod-toolkit`, binarise it their own way: evaluator.protocols.)

numpy + OpenCV only; the maps come back as floats, quantised to 8 bits by the caller
(segmodel.inference.probability_to_uint8).
"""
from __future__ import annotations

import cv2
import numpy as np

from .io import DatasetError

__all__ = ["PROTOCOLS", "INPUT_SIZE", "gt_foreground", "center_crop", "input_size", "prepare_image",
           "prepare_gt", "restore_map", "eval_gt"]

PROTOCOLS = ("crop128", "short128")
INPUT_SIZE = 128  # pixels: the U-Net's training resolution (BigBiGAN samples are 128x128)


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
    h, w = shape[:2]
    if protocol == "crop128":
        return INPUT_SIZE, INPUT_SIZE
    if protocol == "short128":
        s = min(h, w)
        # round half up, so 300x400 -> 128x171 on every platform
        return (INPUT_SIZE if h == s else int(h * INPUT_SIZE / s + 0.5),
                INPUT_SIZE if w == s else int(w * INPUT_SIZE / s + 0.5))
    raise DatasetError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")


def _resize(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if a.shape[:2] == hw:
        return a
    # area averaging when shrinking (antialiased, like PIL's resize), bilinear when growing
    shrink = hw[0] * hw[1] < a.shape[0] * a.shape[1]
    return cv2.resize(a, (hw[1], hw[0]), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def prepare_image(image: np.ndarray, protocol: str) -> np.ndarray:
    """uint8 RGB model input for `protocol` (128x128, or short side 128)."""
    if protocol == "crop128":
        image = center_crop(image)
    return _resize(image, input_size(image.shape, protocol))


def prepare_gt(gt: np.ndarray, protocol: str) -> np.ndarray:
    """The ground truth at the size metrics run at: crop128 crops and resizes it to 128x128 like
    the image (then binarise); short128 keeps the original size."""
    if protocol == "crop128":
        if gt.dtype == bool:
            gt = gt.astype(np.uint8) * 255
        return _resize(center_crop(gt), (INPUT_SIZE, INPUT_SIZE))
    if protocol == "short128":
        return gt
    raise DatasetError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")


def restore_map(prob: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """float probability map [h, w] in [0, 1] -> float32 [H, W] at the ground truth's size
    (bilinear). The caller quantises it to 8 bits afterwards (v = round(255 p),
    segmodel.inference.probability_to_uint8), so the metrics' integer thresholds see the values a
    saved 8-bit PNG would carry, and the resize works on the float map, not on 8-bit levels."""
    prob = np.asarray(prob, dtype=np.float32)
    if prob.shape != tuple(hw):
        prob = cv2.resize(prob, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)
    return prob


def eval_gt(raw: np.ndarray | None, protocol: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(foreground bool, gt_map) of a raw ground truth at the size the metrics run at: `gt_map`
    keeps an 8-bit grayscale mask's values for the evaluation protocols that binarise it their
    own way; label maps and 16-bit masks pass as the bool. (None, None) for box-only sets."""
    if raw is None:
        return None, None
    mask = prepare_gt(raw, protocol)
    gt = gt_foreground(mask)
    return gt, mask if mask.dtype == np.uint8 and mask.max(initial=0) > 1 else gt
