"""Evaluation protocols: how a prediction map and its ground truth are prepared before the
metrics' ``update()``, and which metrics (with which threshold conventions) they report; and
``SegmentationMetrics``, several metrics fed under one protocol (the trainer's validation and
eval-seg's mask scores).

The metric classes in ``scoring.metrics`` are the only implementation of each metric; a
protocol is a pure ``prepare(pred, gt) -> (map, gt bool)`` plus a choice of metrics. Two exist,
and every eval-seg run reports both (docs/RULES.md, "Metrics and the two evaluation protocols"):

- ``paper``: the authors' reference code. Maps as they are (8-bit, prob = v / 255), ground
  truth at >= 128. maxFβ over 255 thresholds ``v > k`` (P = R = 1 for empty masks), IoU and
  accuracy at prob >= 0.5; MAE, S- and E-measure.
- ``sod-toolkit``: the saliency toolkits the rest of the field reports with (the MATLAB code,
  and pysodmetrics' defaults, which mimic it). Every map min-max normalised per image as
  MATLAB's ``mapminmax(im2double(map))``, ground truth at > 128. maxFβ, mean and adaptive Fβ
  over 256 thresholds ``v >= m`` (P = R = 0 for empty masks), S-measure, E-measure (mean, max,
  adaptive), MAE and weighted Fβ, equal to pysodmetrics' defaults.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import numpy as np

from core.registry import Registry

from .metrics import METRICS, ImageStats, ScoreMap, binarize_gt, get_metric, image_stats, prediction_to_uint8

__all__ = ["Protocol", "PROTOCOLS", "DEFAULT_METRICS", "get_protocol", "protocol_names", "prepare_paper",
           "prepare_sod_toolkit", "SegmentationMetrics"]

DEFAULT_METRICS = ("max_f", "iou", "accuracy", "mae", "s_measure", "e_measure")  # the paper protocol's


@dataclass(frozen=True)
class Protocol:
    name: str
    prepare: Callable[[np.ndarray, np.ndarray], tuple]  # (pred, gt) -> (map for the metrics, gt bool)
    metrics: tuple[str, ...]  # scoring.metrics names it reports
    options: Mapping[str, dict] = field(default_factory=dict)  # metric keyword arguments: its conventions
    about: str = ""  # one line: what it is and whose numbers it is comparable with


def prepare_paper(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The map as it is (uint8, or float in [0, 1] quantised as an 8-bit PNG would store it);
    the ground truth at >= 128."""
    return pred, binarize_gt(gt)


def prepare_sod_toolkit(pred: np.ndarray, gt: np.ndarray) -> tuple[ScoreMap, np.ndarray]:
    """``mapminmax(im2double(map))`` of the 8-bit map and the ground truth at > 128, written
    with pysodmetrics' own operations (``utils.prepare_data``) so the floats are bit-identical:
    a constant map stays at v / 255 (not normalised), and its threshold curves see the levels
    ``uint8(p * 255)`` (truncated, as pysodmetrics' histograms do)."""
    p = prediction_to_uint8(pred) / 255  # a float map is first what its 8-bit PNG would hold
    if p.max() != p.min():
        p = (p - p.min()) / (p.max() - p.min())
    return ScoreMap(levels=(p * 255).astype(np.uint8), prob=p), binarize_gt(gt, strict=True)


PROTOCOLS: Registry[Protocol] = Registry("evaluation protocol")
for _p in (
        Protocol(
            "paper", prepare_paper, DEFAULT_METRICS,
            about="the paper's reference code: maps as they are, ground truth >= 128; comparable with "
                  "the paper's tables and the GAN-based unsupervised segmentation papers that copy them",
        ),
        Protocol(
            "sod-toolkit", prepare_sod_toolkit, ("max_f", "mae", "s_measure", "e_measure", "weighted_f"),
            options={"max_f": {"lowest_level": 0, "empty_score": 0.0}},
            about="the saliency toolkits (MATLAB, pysodmetrics): maps min-max normalised per image, ground "
                  "truth > 128; comparable with salient-object-detection papers' tables",
        ),
):
    PROTOCOLS.register(_p.name, _p)


def protocol_names() -> list[str]:
    return list(PROTOCOLS)


def get_protocol(name: str) -> Protocol:
    return PROTOCOLS.get(name)


class SegmentationMetrics:
    """Several metrics under one evaluation protocol, fed from ONE validation + histogram pass
    per image.

    ``protocol`` names a ``PROTOCOLS`` entry (``paper``, ``sod-toolkit``): it prepares each
    (map, ground truth) pair, picks the metrics (``names=None``) and their threshold conventions
    (``kwargs_by_name`` override them per metric). ``update`` takes the map (uint8 or float in
    [0, 1]) and the ground truth as bool or as read (an 8-bit mask, a label map), which the
    protocol binarises. ``compute()`` merges the metrics' dicts (their keys are distinct) and adds
    ``n_images``.
    """

    def __init__(self, names: Iterable[str] | None = None, protocol: str = "paper", **kwargs_by_name: dict) -> None:
        self.protocol = get_protocol(protocol)
        names = list(self.protocol.metrics if names is None else names)
        if not names:
            raise ValueError(f"no metrics selected; choose from {sorted(METRICS)}")
        self.metrics = {name: get_metric(name, **{**self.protocol.options.get(name, {}),
                                                  **kwargs_by_name.get(name, {})}) for name in names}
        self.n_images = 0

    def update(self, pred: np.ndarray, gt: np.ndarray) -> ImageStats:
        """Score one image; returns its ``ImageStats`` for callers that want more."""
        stats = image_stats(*self.protocol.prepare(pred, gt))
        for metric in self.metrics.values():
            metric.update_stats(stats)
        self.n_images += 1
        return stats

    def compute(self) -> dict:
        out: dict = {"n_images": self.n_images}
        for metric in self.metrics.values():
            out.update(metric.compute())
        return out
