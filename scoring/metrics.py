"""Saliency / segmentation metrics as streaming accumulators (pure numpy).

Every metric has ``update(pred, gt)`` (one image) and ``compute() -> dict`` (the dataset).
``scoring.protocols.SegmentationMetrics`` bundles several of them, prepares each pair with an
evaluation protocol (``paper`` or ``sod-toolkit``) and computes the per-image confusion
histograms ONCE per image for all of them. The classes here are the only implementation of each
metric; a protocol only prepares the inputs and picks the thresholds' conventions.

Inputs (validated, never normalised silently; a mismatch raises a one-line ``MetricError``):

- ``pred``: ``uint8 [H, W]``, value ``v`` in 0..255 meaning probability ``v / 255`` (the
  canonical path: 8-bit PNG predictions are exactly this), or a float ``[H, W]`` array in
  [0, 1], which is first quantised to 8 bits by ``core.maps.probability_to_uint8``
  (``round(255 p)``, round half to even), i.e. exactly what saving it as an 8-bit PNG would
  store, so ``--ckpt`` and ``--pred-dir`` evaluations of the same maps give the same numbers. Or a ``ScoreMap(levels, prob)``: a map
  a protocol prepared (``sod-toolkit``'s min-max normalised map), whose thresholds compare the
  8-bit ``levels`` and whose pixel-wise metrics (MAE, S-measure, weighted F, adaptive
  thresholds) use the exact float ``prob``. At least one pixel.
- ``gt``: ``bool [H, W]`` of the same shape. A ground truth as read (8-bit, a {0, 1} label map,
  16-bit, float) becomes one by ``binarize_gt``, the one binarisation of the project, which the
  evaluation protocols apply (>= 128, or >= 0.5 for floats; ``strict=True``: > 128, > 0.5).

Conventions (docs/RULES.md, "Metrics and the two evaluation protocols"):

- maxF (``MaxFMeasure``, beta2 = 0.3): curve over thresholds ``v >= m``, m = 1..255 (the
  paper's ``prob > k/255`` for k = 0..254 is the exact integer test ``v > k``, k = m - 1).
  Per image and threshold: precision (1 when the prediction is empty), recall (1 when the
  ground truth is empty), F (0 where P + R = 0). F is averaged over images per threshold
  (per-image aggregation), then maximised over thresholds. Curves are returned ascending in
  threshold. ``lowest_level=0, empty_score=0`` give pysodmetrics' ``Fmeasure`` exactly: 256
  thresholds (m = 0 marks every pixel) and precision 0 for an empty prediction, recall 0 for
  an empty ground truth (so F differs only where both are empty: paper 1, toolkit 0).
  ``adaptive_f``: F at ``prob >= min(2 * mean(prob), 1)`` per image, averaged.
- ``IoU`` and ``Accuracy`` at prob >= 0.5, i.e. ``v >= 128``, per image, averaged over images;
  IoU is 1 when prediction and ground truth are both empty (pysodmetrics: 0).
- ``MAE``: mean |prob - gt| per image, averaged over images (exact integer sums for 8-bit maps).
- ``SMeasure`` (alpha 0.5) and ``EMeasure`` follow pysodmetrics' ``Smeasure``/``Emeasure``.
  The E-measure curve uses pysodmetrics' 256 thresholds ``v >= m``, m = 0..255 (ascending here),
  so ``e_max``/``e_mean`` are the field's numbers. Adaptive thresholds ``2 * mean`` are applied
  with exact integer arithmetic on 8-bit maps (pysodmetrics compares floats; they can differ at
  exact ties) and as pysodmetrics' float comparison on a ``ScoreMap``.
  One deliberate difference, so the measure stays in [0, 1] on any input: the field divides the
  alignment sum of N pixels by N - 1, so a perfect map scores N / (N - 1) (1.00006 on 128 x 128)
  and a 1 x 1 image 4.5e15; each image's value is capped at 1 here.
- ``WeightedFMeasure`` (beta2 = 1): Margolin et al. 2014 as pysodmetrics' ``WeightedFmeasure``
  (0 for an empty ground truth); needs scipy.

Every metric stays in [0, 1] on any input of at least one pixel (tests/test_metrics.py checks it
with hypothesis on tiny, constant, empty and full maps and masks).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable, NamedTuple

import cv2
import numpy as np

from core.errors import UserError
from core.maps import probability_to_uint8
from core.registry import Registry


class MetricError(UserError, ValueError):
    """A map or mask the metrics cannot score (wrong shape, dtype or range, no pixels), or a
    metric asked for a result before any image was scored; one line naming what was given."""


# pysodmetrics' (and MATLAB's) epsilon in the S- and E-measure formulas.
EPS = np.spacing(1)
N_LEVELS = 256  # 8-bit prediction levels
N_F_THRESHOLDS = 255  # maxF thresholds k = 0..254 (v > k)
HALF_LEVEL = 128  # prob >= 0.5  <=>  v >= 128
_LEVELS = np.arange(N_LEVELS, dtype=np.int64)


# --------------------------------------------------------------------------- inputs


def _describe(a: np.ndarray) -> str:
    return f"{a.dtype}{list(a.shape)}"


def prediction_to_uint8(pred: np.ndarray) -> np.ndarray:
    """Return the 8-bit prediction ``v`` (prob = v / 255) of a uint8 or float [0, 1] map: the map
    is checked here, quantised by core.maps.probability_to_uint8."""
    pred = np.asarray(pred)
    if pred.ndim != 2:
        raise MetricError(f"prediction must be 2-D [H, W], got {_describe(pred)}")
    if pred.dtype == np.uint8:
        return pred
    if not np.issubdtype(pred.dtype, np.floating):
        raise MetricError(
            f"prediction must be uint8 (0..255) or float in [0, 1], got {_describe(pred)}; "
            "convert it explicitly (e.g. mask.astype(np.uint8) * 255)"
        )
    lo, hi = (float(pred.min()), float(pred.max())) if pred.size else (0.0, 0.0)
    if not (0.0 <= lo and hi <= 1.0):  # also catches NaN (comparisons are False)
        raise MetricError(
            f"float prediction must lie in [0, 1], got {_describe(pred)} with range "
            f"[{lo}, {hi}]; apply a sigmoid/softmax or rescale before scoring"
        )
    return probability_to_uint8(pred)


def binarize_gt(mask: np.ndarray, *, strict: bool = False) -> np.ndarray:
    """bool foreground of a ground truth as read: the one binarisation of this project (eval-seg,
    the trainer's validation, PxAP's masks and ignore regions all take it).

    bool passes; uint8 is ``>= 128``, and float in [0, 1] ``>= 0.5``; ``strict=True`` (the SOD
    toolkits' rule) makes them ``> 128`` and ``> 0.5``. A uint8 map whose values all lie in
    {0, 1} is a label map, 1 = foreground: such masks exist in the wild and shard sets store
    theirs so, and reading them at 128 would make every image empty. uint16 is ``>= 32768``
    under either rule (the toolkits read 8-bit files; eval-seg has always read 16-bit masks so).
    """
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return mask
    if mask.dtype == np.uint8:
        if mask.max(initial=0) <= 1:
            return mask == 1
        return mask > HALF_LEVEL if strict else mask >= HALF_LEVEL
    if mask.dtype == np.uint16:
        return mask >= 32768
    if np.issubdtype(mask.dtype, np.floating):
        lo, hi = (float(mask.min()), float(mask.max())) if mask.size else (0.0, 0.0)
        if not (0.0 <= lo and hi <= 1.0):
            raise MetricError(f"float ground truth must lie in [0, 1], got range [{lo}, {hi}]")
        return mask > 0.5 if strict else mask >= 0.5
    raise MetricError(f"ground truth must be bool, uint8 or float (or a uint16 16-bit mask), got {_describe(mask)}")


class ScoreMap(NamedTuple):
    """A prediction a protocol prepared with its exact float values kept (see the module doc)."""

    levels: np.ndarray  # uint8 [H, W]: what the threshold curves compare
    prob: np.ndarray  # float64 [H, W] in [0, 1]: what the pixel-wise metrics use


def check_pair(pred: np.ndarray | ScoreMap, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Validate one (prediction, ground truth) pair; return ``(v uint8, gt bool, prob)`` where
    ``prob`` is a ``ScoreMap``'s float map and None for a plain map (its prob is v / 255)."""
    gt = np.asarray(gt)
    if gt.dtype != bool:
        raise MetricError(
            f"ground truth must be bool, got {_describe(gt)}; use scoring.binarize_gt"
        )
    prob = None
    if isinstance(pred, ScoreMap):
        pred, prob = np.asarray(pred.levels), np.asarray(pred.prob, dtype=np.float64)
        if pred.dtype != np.uint8 or prob.shape != pred.shape:
            raise MetricError(f"a ScoreMap holds uint8 levels and a float map of one shape, got "
                             f"{_describe(pred)} and {_describe(prob)}")
        if prob.size and not (0.0 <= prob.min() and prob.max() <= 1.0):
            raise MetricError(f"a ScoreMap's prob must lie in [0, 1], got [{prob.min()}, {prob.max()}]")
    pred_shape = np.shape(pred)
    if pred_shape != gt.shape:
        raise MetricError(
            f"prediction {getattr(pred, 'dtype', type(pred).__name__)}{list(pred_shape)} and ground "
            f"truth {_describe(gt)} differ in shape; resize the prediction to the ground truth first"
        )
    if gt.size == 0:
        raise MetricError(f"prediction and ground truth {_describe(gt)} have no pixels; nothing to score")
    return prediction_to_uint8(pred), gt, prob


# --------------------------------------------------------------------------- per-image counts


@dataclass(frozen=True)
class ImageStats:
    """Confusion histograms of one image: ``hist_fg[v]`` / ``hist_bg[v]`` count the pixels of
    8-bit value ``v`` inside / outside the ground truth. Every threshold's TP/FP follows."""

    v: np.ndarray  # uint8 [H, W]
    gt: np.ndarray  # bool [H, W]
    hist_fg: np.ndarray  # int64 [256]
    hist_bg: np.ndarray  # int64 [256]
    exact: np.ndarray | None = None  # a ScoreMap's float map; None: the map is v / 255 exactly

    @property
    def n_fg(self) -> int:
        return int(self.hist_fg.sum())

    @property
    def n_bg(self) -> int:
        return int(self.hist_bg.sum())

    @property
    def n(self) -> int:
        return int(self.v.size)

    @cached_property
    def prob(self) -> np.ndarray:
        """float64 probability map (only the pixel-wise metrics need it): v / 255, or the
        ScoreMap's float map."""
        return self.v / 255.0 if self.exact is None else self.exact

    def positives_above(self) -> tuple[np.ndarray, np.ndarray]:
        """``(tp, fp)`` int64 [256]: pixels with ``v > k`` for k = 0..255 (k = 255 gives 0)."""
        tp = self.n_fg - np.cumsum(self.hist_fg)
        fp = self.n_bg - np.cumsum(self.hist_bg)
        return tp, fp

    def positives_at_least(self) -> tuple[np.ndarray, np.ndarray]:
        """``(tp, fp)`` int64 [256]: pixels with ``v >= m`` for m = 0..255 (m = 0 takes all)."""
        tp, fp = self.positives_above()
        return np.concatenate(([self.n_fg], tp[:-1])), np.concatenate(([self.n_bg], fp[:-1]))

    def adaptive_positives(self) -> tuple[int, int]:
        """``(tp, fp)`` at the adaptive threshold ``prob >= min(2 * mean(prob), 1)``."""
        if self.exact is not None:  # pysodmetrics' own float comparison, bit for bit
            above = self.exact >= min(2 * self.exact.mean(), 1)
            tp = int(np.count_nonzero(above & self.gt))
            return tp, int(np.count_nonzero(above)) - tp
        # v/255 >= 2 * S / (255 N)  <=>  v * N >= 2 S (exact integers), capped at v >= 255
        s = int(self.hist_fg @ _LEVELS + self.hist_bg @ _LEVELS)
        m = min(-(-2 * s // self.n), N_LEVELS - 1)
        tp, fp = self.positives_at_least()
        return int(tp[m]), int(fp[m])


def image_stats(pred: np.ndarray | ScoreMap, gt: np.ndarray) -> ImageStats:
    """Validate a pair and build its histograms with one ``bincount`` over (gt, v) codes."""
    v, gt, exact = check_pair(pred, gt)
    # code = 256 * gt + v in uint16, one bincount: the cheapest pass found (measured on a
    # 300x400 map: 0.18 ms, vs 0.60 ms for boolean indexing + bincount, 5.0 ms for np.histogram).
    code = v.astype(np.uint16) | (gt.view(np.uint8).astype(np.uint16) << 8)
    hist = np.bincount(code.ravel(), minlength=2 * N_LEVELS).astype(np.int64)
    return ImageStats(v=v, gt=gt, hist_fg=hist[N_LEVELS:], hist_bg=hist[:N_LEVELS], exact=exact)


def _divide(num, den, *, where_zero: float) -> np.ndarray:
    """num / den as float64, ``where_zero`` where den == 0 (0/0 defined in one place)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, where_zero, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def precision_recall_f(tp, fp, n_fg: int, beta2: float, empty_score: float = 1.0):
    """Per-threshold precision, recall and F. ``empty_score`` is the precision of an empty
    prediction and the recall of an empty ground truth: 1 in the paper protocol (docs/RULES.md,
    "Metrics and the two evaluation protocols"), 0 in pysodmetrics."""
    tp = np.asarray(tp)
    precision = _divide(tp, tp + fp, where_zero=empty_score)
    recall = _divide(tp, np.full_like(tp, n_fg), where_zero=empty_score)
    f = _divide((1.0 + beta2) * precision * recall, beta2 * precision + recall, where_zero=0.0)
    return precision, recall, f


# --------------------------------------------------------------------------- registry

METRICS: Registry[type["Metric"]] = Registry("metric")


def register_metric(name: str) -> Callable[[type], type]:
    """Class decorator adding a metric to ``METRICS`` under ``name`` (duplicates raise)."""

    def deco(cls):
        cls.name = name
        return METRICS.register(name, cls)

    return deco


def get_metric(name: str, **kwargs) -> "Metric":
    """Instantiate a registered metric; an unknown name is core.registry's one-line error."""
    return METRICS.get(name)(**kwargs)


class Metric:
    """Streaming metric: ``update(pred, gt)`` per image, ``compute()`` at the end."""

    name = "metric"

    def __init__(self) -> None:
        self.n_images = 0

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        self.update_stats(image_stats(pred, gt))

    def update_stats(self, stats: ImageStats) -> None:
        """Accumulate one image from precomputed stats (used by ``SegmentationMetrics``)."""
        self._update(stats)
        self.n_images += 1

    def _update(self, stats: ImageStats) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def compute(self) -> dict:
        if self.n_images == 0:
            raise MetricError(f"{type(self).__name__}.compute() before any update(): no images were scored")
        return self._compute()

    def _compute(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError


class _PerImageScalar(Metric):
    """A scalar per image, averaged over images (the per-image values are kept: figures
    pick best/median/worst images by them)."""

    def __init__(self) -> None:
        super().__init__()
        self._values: list[float] = []

    def _update(self, stats: ImageStats) -> None:
        self._values.append(float(self._score(stats)))

    def _score(self, stats: ImageStats) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def _compute(self) -> dict:
        values = np.asarray(self._values, dtype=np.float64)
        return {self.name: float(values.mean()), f"{self.name}_per_image": values}


# --------------------------------------------------------------------------- metrics


@register_metric("max_f")
class MaxFMeasure(Metric):
    """maxF_beta: per-image F at thresholds v >= m, averaged over images, maximised; and the
    adaptive F (per image at ``prob >= min(2 * mean, 1)``, averaged).

    ``lowest_level`` is the lowest m: 1 for the paper (255 thresholds, k = m - 1 in ``v > k``),
    0 for the SOD toolkits (m = 0 marks every pixel). ``empty_score``: see
    ``precision_recall_f``. ``compute()`` returns ``max_f``, ``mean_f`` (mean of the curve),
    ``adaptive_f``, ``best_threshold`` (the ``k`` of the maximum: foreground is ``v > k``, i.e.
    prob > k/255), ``thresholds`` (every such ``k``: ``arange(255)`` for the paper), and the
    ascending curves ``f_curve``, ``precision_curve``, ``recall_curve`` (per-threshold means
    over images).
    """

    def __init__(self, beta2: float = 0.3, lowest_level: int = 1, empty_score: float = 1.0) -> None:
        super().__init__()
        if lowest_level not in (0, 1):
            raise ValueError(f"lowest_level must be 0 (256 thresholds) or 1 (255), got {lowest_level}")
        self.beta2 = float(beta2)
        self.lowest_level = int(lowest_level)
        self.empty_score = float(empty_score)
        n = N_LEVELS - self.lowest_level
        self._sum_p = np.zeros(n)
        self._sum_r = np.zeros(n)
        self._sum_f = np.zeros(n)
        self._sum_adaptive = 0.0

    def _update(self, stats: ImageStats) -> None:
        tp, fp = stats.positives_at_least()
        lo = self.lowest_level
        p, r, f = precision_recall_f(tp[lo:], fp[lo:], stats.n_fg, self.beta2, self.empty_score)
        self._sum_p += p
        self._sum_r += r
        self._sum_f += f
        tp, fp = stats.adaptive_positives()
        self._sum_adaptive += float(precision_recall_f(tp, fp, stats.n_fg, self.beta2, self.empty_score)[2])

    def _compute(self) -> dict:
        f = self._sum_f / self.n_images
        best = int(np.argmax(f))
        thresholds = np.arange(self.lowest_level - 1, N_F_THRESHOLDS)
        return {
            "max_f": float(f[best]),
            "mean_f": float(f.mean()),
            "adaptive_f": self._sum_adaptive / self.n_images,
            "best_threshold": int(thresholds[best]),
            "thresholds": thresholds,
            "f_curve": f,
            "precision_curve": self._sum_p / self.n_images,
            "recall_curve": self._sum_r / self.n_images,
        }


def _confusion_at_half(stats: ImageStats) -> tuple[int, int, int, int]:
    """(tp, fp, fn, tn) at prob >= 0.5, i.e. v >= 128 (= v > 127)."""
    tp_all, fp_all = stats.positives_above()
    tp, fp = int(tp_all[HALF_LEVEL - 1]), int(fp_all[HALF_LEVEL - 1])
    return tp, fp, stats.n_fg - tp, stats.n_bg - fp


@register_metric("iou")
class IoU(_PerImageScalar):
    """Per-image IoU at v >= 128, averaged; 1 when prediction and ground truth are both empty."""

    def _score(self, stats: ImageStats) -> float:
        tp, fp, fn, _ = _confusion_at_half(stats)
        union = tp + fp + fn
        return tp / union if union else 1.0


@register_metric("accuracy")
class Accuracy(_PerImageScalar):
    """Per-image pixel accuracy at v >= 128, averaged over images."""

    def _score(self, stats: ImageStats) -> float:
        tp, _, _, tn = _confusion_at_half(stats)
        return (tp + tn) / stats.n


@register_metric("mae")
class MAE(_PerImageScalar):
    """Per-image mean |prob - gt|, averaged over images; integer sums from the histograms for
    8-bit maps, pysodmetrics' float mean for a ScoreMap."""

    def _score(self, stats: ImageStats) -> float:
        if stats.exact is not None:
            return float(np.mean(np.abs(stats.exact - stats.gt)))
        # sum over fg of (255 - v) plus sum over bg of v, all exact in int64.
        err = 255 * stats.n_fg - int(stats.hist_fg @ _LEVELS) + int(stats.hist_bg @ _LEVELS)
        return err / (255.0 * stats.n)


@register_metric("s_measure")
class SMeasure(_PerImageScalar):
    """S-measure (Fan et al. 2017) as pysodmetrics' ``Smeasure``: alpha * object + (1 - alpha) *
    region. One deliberate difference: an empty quadrant (foreground centroid on the last
    row/column) scores 0 with weight 0, where pysodmetrics yields NaN."""

    def __init__(self, alpha: float = 0.5) -> None:
        super().__init__()
        self.alpha = float(alpha)

    def _score(self, stats: ImageStats) -> float:
        pred, gt = stats.prob, stats.gt
        y = stats.n_fg / stats.n
        if y == 0:
            return 1.0 - float(pred.mean())
        if y == 1:
            return float(pred.mean())
        score = self.alpha * _s_object(pred, gt, y) + (1.0 - self.alpha) * _s_region(pred, gt)
        return max(0.0, float(score))


def _object_score(x: np.ndarray) -> float:
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if x.size > 1 else 0.0
    return 2.0 * mean / (mean * mean + 1.0 + std + EPS)


def _s_object(pred: np.ndarray, gt: np.ndarray, fg_fraction: float) -> float:
    fg = _object_score(pred[gt]) * fg_fraction
    bg = _object_score(1.0 - pred[~gt]) * (1.0 - fg_fraction)
    return fg + bg


def _s_region(pred: np.ndarray, gt: np.ndarray) -> float:
    h, w = gt.shape
    area = h * w
    cy, cx = np.argwhere(gt).mean(axis=0).round()
    # +1 as in the MATLAB original (1:X includes X): rows [0, cy) form the top blocks.
    cy, cx = int(cy) + 1, int(cx) + 1
    w_lt = cx * cy / area
    w_rt = cy * (w - cx) / area
    w_lb = (h - cy) * cx / area
    w_rb = 1.0 - w_lt - w_rt - w_lb
    gtf = gt.astype(np.float64)
    blocks = (
        (slice(0, cy), slice(0, cx), w_lt),
        (slice(0, cy), slice(cx, w), w_rt),
        (slice(cy, h), slice(0, cx), w_lb),
        (slice(cy, h), slice(cx, w), w_rb),
    )
    return sum(_ssim(pred[r, c], gtf[r, c]) * wt for r, c, wt in blocks)


def _ssim(pred: np.ndarray, gt: np.ndarray) -> float:
    n = pred.size
    if n == 0:
        return 0.0  # weight is 0 too (see SMeasure)
    x, y = pred.mean(), gt.mean()
    dx, dy = pred - x, gt - y
    sigma_x = float((dx * dx).sum()) / (n - 1 + EPS)
    sigma_y = float((dy * dy).sum()) / (n - 1 + EPS)
    sigma_xy = float((dx * dy).sum()) / (n - 1 + EPS)
    alpha = 4.0 * x * y * sigma_xy
    beta = (x * x + y * y) * (sigma_x + sigma_y)
    if alpha != 0:
        return float(alpha / (beta + EPS))
    return 1.0 if beta == 0 else 0.0


@register_metric("e_measure")
class EMeasure(Metric):
    """E-measure (Fan et al. 2018) as pysodmetrics' ``Emeasure``.

    Curve over the 256 thresholds ``v >= m`` (m = 0..255, ascending), averaged over images;
    ``compute()`` returns ``e_max``, ``e_mean`` (mean of the curve), ``e_adaptive`` (per image
    at ``prob >= min(2 * mean(prob), 1)``, averaged), ``e_curve`` and ``e_thresholds``.
    """

    def __init__(self) -> None:
        super().__init__()
        self._sum_curve = np.zeros(N_LEVELS)
        self._adaptive: list[float] = []

    def _update(self, stats: ImageStats) -> None:
        tp, fp = stats.positives_at_least()
        self._sum_curve += _enhanced_alignment(tp, fp, stats.n_fg, stats.n)
        tp, fp = stats.adaptive_positives()
        self._adaptive.append(float(_enhanced_alignment(tp, fp, stats.n_fg, stats.n)))

    def _compute(self) -> dict:
        curve = self._sum_curve / self.n_images
        return {
            "e_max": float(curve.max()),
            "e_mean": float(curve.mean()),
            "e_adaptive": float(np.mean(self._adaptive)),
            "e_thresholds": np.arange(N_LEVELS),
            "e_curve": curve,
        }


def _enhanced_alignment(tp, fp, n_fg: int, n: int):
    """Sum of the enhanced alignment matrix / (N - 1), capped at 1 (see the module doc), from
    counts (vectorised over thresholds)."""
    tp = np.asarray(tp, dtype=np.float64)
    fp = np.asarray(fp, dtype=np.float64)
    pred_fg = tp + fp
    pred_bg = n - pred_fg
    if n_fg == 0:
        total = pred_bg
    elif n_fg == n:
        total = pred_fg
    else:
        fn = n_fg - tp
        tn = pred_bg - fn
        mean_pred = pred_fg / n
        mean_gt = n_fg / n
        total = 0.0
        # (region count, demeaned prediction value, demeaned gt value) for TP, FP, FN, TN
        for count, a, b in (
            (tp, 1.0 - mean_pred, 1.0 - mean_gt),
            (fp, 1.0 - mean_pred, 0.0 - mean_gt),
            (fn, 0.0 - mean_pred, 1.0 - mean_gt),
            (tn, 0.0 - mean_pred, 0.0 - mean_gt),
        ):
            align = 2.0 * (a * b) / (a * a + b * b + EPS)
            total = total + (align + 1.0) ** 2 / 4.0 * count
    return np.minimum(total / (n - 1 + EPS), 1.0)


@register_metric("weighted_f")
class WeightedFMeasure(_PerImageScalar):
    """Weighted F (Margolin et al. 2014) as pysodmetrics' ``WeightedFmeasure`` (the MATLAB
    original line by line): errors at background pixels are taken at their nearest foreground
    pixel, smoothed by a 7 x 7 Gaussian (sigma 5) and weighted by the distance to the object.
    beta2 = 1 as there; 0 for an empty ground truth. Needs scipy (the distance transform with
    nearest-pixel indices, whose ties cv2 breaks differently)."""

    def __init__(self, beta2: float = 1.0) -> None:
        super().__init__()
        try:
            from scipy import ndimage
        except ImportError as e:
            raise MetricError(f"weighted_f needs scipy ({e}); pip install 'bgw-seg[eval]'") from e
        self._ndimage = ndimage
        self.beta2 = float(beta2)
        self._kernel = _gaussian_kernel(7, 5.0)

    def _score(self, stats: ImageStats) -> float:
        gt = stats.gt
        if not stats.n_fg:
            return 0.0
        ndi = self._ndimage
        dist, idx = ndi.distance_transform_edt(~gt, return_indices=True)
        err = np.abs(stats.prob - gt)
        err_t = err.copy()
        err_t[~gt] = err_t[idx[0][~gt], idx[1][~gt]]  # background: the error at the nearest object pixel
        # MATLAB's imfilter with zero padding; the kernel is symmetric, so cv2's correlation is
        # the convolution (equal to scipy.ndimage.convolve here, 6x faster on a 300 x 400 map)
        err_a = cv2.filter2D(err_t, -1, self._kernel, borderType=cv2.BORDER_CONSTANT)
        min_e = np.where(gt & (err_a < err), err_a, err)
        weight = np.where(~gt, 2 - np.exp(np.log(0.5) / 5 * dist), 1.0)
        err_w = min_e * weight
        tp_w = stats.n_fg - np.sum(err_w[gt])
        fp_w = np.sum(err_w[~gt])
        recall = 1 - np.mean(err_w[gt])
        precision = tp_w / (tp_w + fp_w + EPS)
        return float((1 + self.beta2) * recall * precision / (recall + self.beta2 * precision + EPS))


def _gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    """MATLAB's fspecial('gaussian', size, sigma)."""
    r = (size - 1) / 2
    y, x = np.ogrid[-r:r + 1, -r:r + 1]
    h = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    h[h < np.finfo(h.dtype).eps * h.max()] = 0
    return h / h.sum()
