"""Boxes of the contours of a binarised map, as the WSOL protocol draws them (Choe et al. 2020,
clovaai/wsolevaluation; docs/RULES.md, "WSOL metrics"). evaluator.wsol scores them at every CAM
threshold; `segment --boxes` writes the box of each mask's largest component with the same rule.

numpy + OpenCV only.
"""
from __future__ import annotations

import cv2
import numpy as np

__all__ = ["contour_boxes"]


def contour_boxes(image: np.ndarray, level: int, *, multi_contour: bool = False) -> np.ndarray:
    """int64 [K, 4] boxes (x0, y0, x1, y1) of the contours of the foreground `image > level`
    (`image`: uint8 [H, W]); contours from cv2.findContours(RETR_TREE, CHAIN_APPROX_SIMPLE).

    The box of the largest contour (cv2.contourArea; the first one on ties), or with
    `multi_contour` one box per contour. As the reference, x1 = x0 + w and y1 = y0 + h from
    cv2.boundingRect, clipped to W - 1 and H - 1. No contour gives the one box (0, 0, 0, 0).
    """
    height, width = image.shape[:2]
    binary = np.where(image > level, np.uint8(255), np.uint8(0))
    # [-2]: contours in both the OpenCV 3 (3 values) and 4 (2 values) return layouts
    contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
    if len(contours) == 0:
        return np.zeros((1, 4), dtype=np.int64)
    if not multi_contour:
        contours = [max(contours, key=cv2.contourArea)]  # first of the largest, as the reference
    boxes = []
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        boxes.append([x, y, min(x + w, width - 1), min(y + h, height - 1)])
    return np.asarray(boxes, dtype=np.int64)
