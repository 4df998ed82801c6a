"""Weakly-supervised object localisation metrics of Choe et al. 2020 ("Evaluating WSOL right",
clovaai/wsolevaluation): MaxBoxAcc, MaxBoxAccV2 and PxAP, as streaming accumulators.

Conventions follow that code's ``evaluation.py``/``inference.py`` (re-implemented, not copied):

- A score map (any real-valued [h, w] map, e.g. a foreground probability) is resized to
  224 x 224 (``cv2.resize``, bicubic) and then min-max normalised to [0, 1]; a constant map
  becomes all zeros. (A NaN map raises here; the reference silently zeroed it.)
- Boxes at a CAM threshold ``t``: ``u = uint8(trunc(map * 255))``; foreground is
  ``u > int(t * max(u))`` (``cv2.THRESH_BINARY``); contours from ``cv2.findContours(RETR_TREE,
  CHAIN_APPROX_SIMPLE)``; a box per contour ``(x, y, x + w, y + h)`` from ``cv2.boundingRect``,
  with ``x1, y1`` clipped to ``W - 1, H - 1``. MaxBoxAcc keeps the contour of largest
  ``cv2.contourArea`` (the first one on ties); the v2 variant keeps every contour
  (``multi_contour_eval``). No contour gives the box ``(0, 0, 0, 0)``.
- Box IoU with inclusive ``+1`` pixel areas; a non-positive union gives IoU 0. Ground-truth
  boxes ``(x0, y0, x1, y1)`` in the original image's pixels are scaled to 224 with ``int()``
  truncation. An image is correct at ``t`` when the best IoU between its predicted box(es) and
  any ground-truth box is ``>= iou / 100``.
- Counts are per CAM threshold over the dataset; accuracy is maximised over thresholds for each
  IoU threshold; MaxBoxAcc uses IoU 50, MaxBoxAccV2 averages the maxima over IoU 30/50/70.
- PxAP: score histograms at ground-truth foreground / background pixels (ignore pixels
  dropped), bins ``[t_0, t_1), ..., [t_last, 1), [1, 2), [2, 3]``, summed over the dataset;
  precision/recall at ``score >= edge`` for descending edges; AP = sum of
  ``precision[i] * (recall[i] - recall[i-1])`` over the points with a non-empty prediction.

All results are fractions in [0, 1] (the reference prints them x 100). CAM thresholds default
to ``np.arange(0, 1, 0.01)`` as the reference's command line. ``contour_boxes`` is the box rule
alone: `segment --boxes` writes the box of each mask's largest component with it.
"""
from __future__ import annotations

import cv2
import numpy as np

from .metrics import MetricError

RESIZE_LENGTH = 224


def default_cam_thresholds() -> np.ndarray:
    return np.arange(0, 1, 0.01)


# --------------------------------------------------------------------------- score maps


def normalize_scoremap(score_map: np.ndarray) -> np.ndarray:
    """Min-max normalise to [0, 1] (float32); a constant map gives zeros."""
    score_map = np.asarray(score_map, dtype=np.float32)
    if score_map.ndim != 2 or score_map.size == 0:
        raise MetricError(f"score map must be a non-empty 2-D array, got shape {list(score_map.shape)}")
    if not np.isfinite(score_map).all():
        raise MetricError("score map holds NaN or inf values; fix the model output before scoring")
    lo, hi = score_map.min(), score_map.max()
    if lo == hi:
        return np.zeros_like(score_map)
    out = score_map - lo
    out /= out.max()  # as the reference: the maximum becomes exactly 1.0
    return out


def prepare_scoremap(score_map: np.ndarray, resize: int | None = RESIZE_LENGTH) -> np.ndarray:
    """Resize (bicubic) to ``resize`` x ``resize``, then min-max normalise (reference order)."""
    score_map = np.asarray(score_map, dtype=np.float32)
    if score_map.ndim != 2:
        raise MetricError(f"score map must be 2-D [H, W], got shape {list(score_map.shape)}")
    if resize is not None and score_map.shape != (resize, resize):
        score_map = cv2.resize(score_map, (resize, resize), interpolation=cv2.INTER_CUBIC)
    return normalize_scoremap(score_map)


def resize_mask(mask: np.ndarray, resize: int | None = RESIZE_LENGTH) -> np.ndarray:
    """Nearest-neighbour resize of a bool mask (the reference's INTER_NEAREST)."""
    mask = np.asarray(mask)
    if mask.dtype != bool:
        raise MetricError(
            f"mask must be bool, got {mask.dtype}; binarise it first (scoring.binarize_gt)"
        )
    if resize is None or mask.shape == (resize, resize):
        return mask
    return cv2.resize(mask.astype(np.uint8), (resize, resize), interpolation=cv2.INTER_NEAREST).astype(bool)


# --------------------------------------------------------------------------- boxes


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


def check_boxes(boxes) -> np.ndarray:
    """int64 [K, 4] boxes (x0, y0, x1, y1) with x0 <= x1, y0 <= y1; one-line error otherwise."""
    arr = np.asarray(boxes)
    if arr.ndim == 1 and arr.size == 4:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4 or arr.shape[0] == 0:
        raise MetricError(f"boxes must be [K, 4] (x0, y0, x1, y1) with K >= 1, got shape {list(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.integer) and not np.array_equal(arr, np.floor(arr)):
        raise MetricError("box coordinates must be whole pixels (x0, y0, x1, y1)")
    arr = arr.astype(np.int64)
    if (arr[:, 2] < arr[:, 0]).any() or (arr[:, 3] < arr[:, 1]).any():
        raise MetricError(f"boxes must satisfy x0 <= x1 and y0 <= y1, got {arr.tolist()}")
    return arr


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU [A, B] of x0y0x1y1 boxes with inclusive (+1) pixel areas; degenerate unions give 0."""
    a = np.asarray(a, dtype=np.int64)[:, None, :]
    b = np.asarray(b, dtype=np.int64)[None, :, :]
    iw = np.maximum(0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1)
    ih = np.maximum(0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    union = area_a + area_b - inter
    out = np.zeros(union.shape, dtype=np.float64)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def resize_boxes(boxes, image_size: tuple[int, int], new_size: tuple[int, int]) -> np.ndarray:
    """Scale boxes from ``image_size`` (w, h) to ``new_size`` (w, h), truncating like ``int()``."""
    boxes = check_boxes(boxes).astype(np.float64)
    (w, h), (nw, nh) = map(float, image_size), map(float, new_size)
    scale = np.array([nw, nh, nw, nh])
    size = np.array([w, h, w, h])
    return np.trunc(boxes * scale / size).astype(np.int64)


def boxes_from_scoremap(
    scoremap: np.ndarray, cam_thresholds, *, multi_contour: bool = False
) -> list[np.ndarray]:
    """Boxes (int64 [n_t, 4]) at each CAM threshold of a normalised [0, 1] map (see module doc)."""
    scoremap = np.asarray(scoremap)
    if scoremap.ndim != 2 or scoremap.size == 0:
        raise MetricError(f"score map must be a non-empty 2-D array, got shape {list(scoremap.shape)}")
    if not (scoremap.min() >= 0.0 and scoremap.max() <= 1.0):
        raise MetricError("score map must be normalised to [0, 1] (use prepare_scoremap)")
    image = (scoremap * 255).astype(np.uint8)  # truncation, as the reference
    peak = int(image.max())
    cache: dict[int, np.ndarray] = {}  # many CAM thresholds share an integer level
    out = []
    for t in cam_thresholds:
        level = int(t * peak)
        if level not in cache:
            cache[level] = contour_boxes(image, level, multi_contour=multi_contour)
        out.append(cache[level])
    return out


# --------------------------------------------------------------------------- metrics


class MaxBoxAcc:
    """MaxBoxAcc (Choe et al. 2020): box accuracy per CAM threshold over the dataset, maximised.

    ``update(score_map, gt_boxes, image_size=None)``: ``gt_boxes`` [K, 4] (x0, y0, x1, y1) in the
    pixels of an image of ``image_size`` = (width, height); ``None`` means the boxes are in the
    score map's own pixels. ``compute()`` returns a flat dict (JSON-ready keys): ``NAME`` (the
    mean over the IoU thresholds of each one's maximum over CAM thresholds), and per IoU
    threshold ``I``: ``NAME_iouI`` (its maximum), ``NAME_best_threshold_iouI`` (the first CAM
    threshold reaching it), ``NAME_curve_iouI`` (accuracy per CAM threshold); plus
    ``cam_thresholds``. ``NAME`` is ``max_box_acc`` or ``max_box_acc_v2``.
    """

    name = "max_box_acc"

    def __init__(
        self,
        iou_thresholds=(50,),
        cam_thresholds=None,
        *,
        multi_contour: bool = False,
        resize: int | None = RESIZE_LENGTH,
    ) -> None:
        self.iou_thresholds = tuple(int(i) for i in iou_thresholds)
        if not self.iou_thresholds or not all(0 < i <= 100 for i in self.iou_thresholds):
            raise ValueError(f"IoU thresholds are percentages in (0, 100], got {iou_thresholds}")
        if cam_thresholds is None:
            cam_thresholds = default_cam_thresholds()
        self.cam_thresholds = np.asarray(cam_thresholds, dtype=np.float64)
        self.multi_contour = multi_contour
        self.resize = resize
        self.n_images = 0
        self._correct = {i: np.zeros(len(self.cam_thresholds), dtype=np.int64) for i in self.iou_thresholds}

    def update(self, score_map: np.ndarray, gt_boxes, image_size: tuple[int, int] | None = None) -> None:
        score_map = np.asarray(score_map)
        h, w = score_map.shape[:2] if score_map.ndim == 2 else (0, 0)
        scoremap = prepare_scoremap(score_map, self.resize)
        size = (scoremap.shape[1], scoremap.shape[0])
        gt = resize_boxes(gt_boxes, image_size or (w, h), size)
        boxes = boxes_from_scoremap(scoremap, self.cam_thresholds, multi_contour=self.multi_contour)
        counts = [len(b) for b in boxes]
        best_per_box = box_iou(np.concatenate(boxes), gt).max(axis=1)
        # best IoU per CAM threshold = max over that threshold's boxes
        best = np.maximum.reduceat(best_per_box, np.cumsum([0] + counts[:-1]))
        for iou in self.iou_thresholds:
            self._correct[iou] += best >= iou / 100
        self.n_images += 1

    def compute(self) -> dict:
        if self.n_images == 0:
            raise MetricError(f"{type(self).__name__}.compute() before any update(): no images were scored")
        out: dict = {}
        maxima = []
        for iou, correct in self._correct.items():
            curve = correct / self.n_images
            best = int(np.argmax(curve))  # first threshold reaching the maximum
            maxima.append(curve[best])
            out[f"{self.name}_iou{iou}"] = float(curve[best])
            out[f"{self.name}_best_threshold_iou{iou}"] = float(self.cam_thresholds[best])
            out[f"{self.name}_curve_iou{iou}"] = curve
        out[self.name] = float(np.mean(maxima))
        out["cam_thresholds"] = self.cam_thresholds
        return out


class MaxBoxAccV2(MaxBoxAcc):
    """MaxBoxAccV2: IoU 30/50/70 averaged, boxes of all contours (``multi_contour_eval``)."""

    name = "max_box_acc_v2"

    def __init__(self, iou_thresholds=(30, 50, 70), cam_thresholds=None, *, resize=RESIZE_LENGTH) -> None:
        super().__init__(iou_thresholds, cam_thresholds, multi_contour=True, resize=resize)


class PxAP:
    """Pixel average precision (Choe et al. 2020, OpenImages): histograms summed over the dataset.

    ``update(score_map, gt_mask, ignore=None)``: bool masks of any common size (resized with
    nearest neighbour to ``resize``); ``ignore`` pixels outside the foreground are left out.
    ``compute()`` returns ``pxap`` and the ``precision_curve``/``recall_curve`` points (descending
    score thresholds ``score_edges``).
    """

    name = "pxap"

    def __init__(self, cam_thresholds=None, *, resize: int | None = RESIZE_LENGTH) -> None:
        thresholds = np.asarray(default_cam_thresholds() if cam_thresholds is None else cam_thresholds, float)
        # bins [t_0, t_1), ..., [t_last, 1), [1, 2), [2, 3]: a score of exactly 1 has its own bin
        self.edges = np.append(thresholds, [1.0, 2.0, 3.0])
        if not (np.diff(self.edges) > 0).all() or thresholds[0] < 0:
            raise ValueError("CAM thresholds must increase within [0, 1)")
        self.resize = resize
        self.n_images = 0
        self._fg_hist = np.zeros(len(self.edges) - 1, dtype=np.int64)
        self._bg_hist = np.zeros(len(self.edges) - 1, dtype=np.int64)

    def update(self, score_map: np.ndarray, gt_mask: np.ndarray, ignore: np.ndarray | None = None) -> None:
        scoremap = prepare_scoremap(score_map, self.resize)
        gt = resize_mask(gt_mask, self.resize)
        if gt.shape != scoremap.shape:
            raise MetricError(
                f"score map {list(np.shape(score_map))} and mask {list(np.shape(gt_mask))} differ in "
                "shape; pass resize=224 (default) or masks of the map's size"
            )
        counted = np.ones_like(gt)
        if ignore is not None:
            ign = resize_mask(ignore, self.resize)
            if ign.shape != gt.shape:
                raise MetricError(
                    f"ignore mask {list(np.shape(ignore))} and mask {list(np.shape(gt_mask))} differ in shape"
                )
            counted = ~(ign & ~gt)  # the reference: ignore box region minus the foreground
        self._fg_hist += np.histogram(scoremap[gt], bins=self.edges)[0]
        self._bg_hist += np.histogram(scoremap[~gt & counted], bins=self.edges)[0]
        self.n_images += 1

    def compute(self) -> dict:
        if self.n_images == 0:
            raise MetricError("PxAP.compute() before any update(): no images were scored")
        tp = np.cumsum(self._fg_hist[::-1])  # score >= 2, >= 1, >= t_last, ..., >= t_0
        fp = np.cumsum(self._bg_hist[::-1])
        if tp[-1] == 0:
            raise MetricError("PxAP: no ground-truth foreground pixel in the evaluation set")
        if (tp + fp)[-1] == 0:
            raise MetricError("PxAP: no predicted pixel in the evaluation set")
        predicted = tp + fp
        precision = np.full(len(tp), np.nan)
        np.divide(tp, predicted, out=precision, where=predicted > 0)
        recall = tp / tp[-1]
        valid = predicted[1:] > 0
        ap = float((precision[1:] * np.diff(recall))[valid].sum())
        return {
            self.name: ap,
            "precision_curve": precision,
            "recall_curve": recall,
            "score_edges": self.edges[::-1][1:],
        }


WSOL_METRICS = {"max_box_acc": MaxBoxAcc, "max_box_acc_v2": MaxBoxAccV2, "pxap": PxAP}
