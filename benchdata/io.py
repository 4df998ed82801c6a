"""Reading a benchmark's files: images and ground truth, through core.images' reader of user
images (the pixel limit checked from the header before decoding; a truncated, corrupt or missing
file is skipped, never half-read), and the error every dataset failure raises.

numpy + OpenCV only.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from core.errors import UserError
from core.images import DEFAULT_MAX_PIXELS, Skip, read_user_image

__all__ = ["DatasetError", "ImageSkipped", "IMAGE_EXTS", "read_image", "read_gt"]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class DatasetError(UserError):
    """A dataset could not be found or read; the message is one line with the fix."""


class ImageSkipped(DatasetError):
    """One image or ground-truth file is skipped (over the pixel limit, truncated, corrupt or
    missing); `.skip` holds the kind and the one-line reason."""

    def __init__(self, skip: Skip):
        super().__init__(skip.reason)
        self.skip = skip


def _read(path: Path | str, flags: int, max_pixels: int) -> np.ndarray:
    got = read_user_image(path, flags, max_pixels=max_pixels)
    if isinstance(got, Skip):
        raise ImageSkipped(got)
    return got


def read_image(path: Path | str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """uint8 RGB [H, W, 3]; gray images are replicated to three channels. ImageSkipped for a file
    over `max_pixels` pixels (from its header, before decoding), truncated, corrupt or missing."""
    return cv2.cvtColor(_read(path, cv2.IMREAD_COLOR, max_pixels), cv2.COLOR_BGR2RGB)


def read_gt(path: Path | str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Ground truth as stored (uint8 or uint16 [H, W]); colour files keep their first channel.
    ImageSkipped as read_image."""
    data = _read(path, cv2.IMREAD_UNCHANGED, max_pixels)
    if data.ndim == 3:
        # grayscale masks saved as RGB(A): the channels are equal; keep one (cv2 order is BGR)
        data = data[..., 2] if data.shape[2] >= 3 else data[..., 0]
    if data.dtype not in (np.uint8, np.uint16):
        raise DatasetError(f"ground truth {path} has dtype {data.dtype}; expected 8- or 16-bit")
    return data
