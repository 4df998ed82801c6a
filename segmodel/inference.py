"""How images reach the U-Net and how its logits become a foreground probability and an 8-bit map
(docs/RULES.md, "Inference protocols").

- `normalize_images`: uint8 NHWC RGB -> float32 NCHW in [-1, 1], the range the model trains on;
  `normalize_images_numpy` is the same arithmetic in numpy (bit for bit) for runtimes without torch.
- `foreground_probability(logits, rule)`: `softmax` (default: softmax over the two logits, channel
  1, what the cross-entropy loss fits) or `sigmoid1` (sigmoid of the foreground logit alone, the
  authors' reference code, `postprocessing.SegmentationInference`; the paper's tables come from it).
- `probability_to_uint8`: v = round(255 p), round half to even, p clipped to [0, 1] (core.maps, so
  the scoring package, which sits beside segmodel, quantises with it too). Every map the tools score
  or save goes through it (the trainer's validation, eval-seg's checkpoint path, float maps handed
  to the metrics), so `--ckpt` and `--pred-dir` evaluations of one model agree.

torch is imported inside the two functions that need it.
"""
from __future__ import annotations

import math

import numpy as np

from core.maps import probability_to_uint8
from core.registry import Registry

__all__ = ["FG_PROB", "DEFAULT_INPUT_SIZE", "whole_size", "foreground_probability", "normalize_images",
           "normalize_images_numpy", "probability_to_uint8"]

# The paper's training size, pixels: what a model that records no training size is taken to have
# learnt at (segmodel.checkpoint.input_size_of, segmodel.runtime.OnnxBackend).
DEFAULT_INPUT_SIZE = 128


def whole_size(value) -> int | None:
    """A recorded size (a number, or its digits in metadata strings) as an int; None when it is no
    whole number >= 1. Here, below both readers of recorded sizes (segmodel.checkpoint's sidecars,
    segmodel.runtime's ONNX metadata), so neither imports the other for it."""
    if isinstance(value, bool):
        return None
    try:
        size = float(value)
    except (TypeError, ValueError):
        return None
    return int(size) if math.isfinite(size) and size == int(size) and size >= 1 else None

# The rules that turn the U-Net's two logits into the foreground probability (name -> what it is);
# `FG_PROB.get(rule)` is the one check of a rule's name (core.registry's one line, exit 2).
FG_PROB: Registry[str] = Registry("foreground-probability rule")
FG_PROB.register("softmax", "softmax over the two logits, channel 1: what the cross-entropy loss fits")
FG_PROB.register("sigmoid1", "sigmoid of the foreground logit alone, as the authors' reference code "
                             "(postprocessing.SegmentationInference)")


def normalize_images(images_u8):
    """uint8 NHWC RGB torch tensor -> float32 NCHW in [-1, 1].

    The permuted view of an NHWC tensor is already channels-last in memory, so doing this on
    the device after a uint8 copy moves 4x fewer bytes than shipping floats and needs no
    layout conversion.
    """
    return images_u8.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def normalize_images_numpy(images_u8: np.ndarray) -> np.ndarray:
    """uint8 NHWC RGB numpy array -> contiguous float32 NCHW in [-1, 1]: `normalize_images`'s
    float32 division by 127.5 then subtraction of 1, so an exported model (onnxruntime, no torch)
    sees the very inputs the PyTorch path gives the U-Net."""
    x = np.ascontiguousarray(np.asarray(images_u8, dtype=np.uint8).transpose(0, 3, 1, 2), dtype=np.float32)
    x /= np.float32(127.5)
    x -= np.float32(1.0)
    return x


def foreground_probability(logits, rule: str = "softmax"):
    """Foreground probability [N, H, W] (float32 torch) from logits [N, 2, H, W] by the FG_PROB rule."""
    import torch

    if rule == "softmax":
        return torch.softmax(logits.float(), dim=1)[:, 1]
    if rule == "sigmoid1":
        return torch.sigmoid(logits.float()[:, 1])
    FG_PROB.get(rule)  # raises: an unknown rule's one line
    raise AssertionError(f"FG_PROB names {rule!r}, which foreground_probability does not implement")
