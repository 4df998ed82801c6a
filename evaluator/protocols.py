"""Evaluation protocols: how a prediction map and its ground truth are prepared before the
metrics' ``update()``, and which metrics (with which threshold conventions) they report.

The metric classes in ``evaluator.metrics`` are the only implementation of each metric; a
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

import difflib
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from .metrics import DEFAULT_METRICS, ScoreMap, binarize_gt, prediction_to_uint8

__all__ = ["Protocol", "PROTOCOLS", "get_protocol", "protocol_names", "prepare_paper", "prepare_sod_toolkit"]


@dataclass(frozen=True)
class Protocol:
    name: str
    prepare: Callable[[np.ndarray, np.ndarray], tuple]  # (pred, gt) -> (map for the metrics, gt bool)
    metrics: tuple[str, ...]  # evaluator.metrics names it reports
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


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
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
    )
}


def protocol_names() -> list[str]:
    return list(PROTOCOLS)


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        close = difflib.get_close_matches(name, PROTOCOLS, n=2) or list(PROTOCOLS)
        raise ValueError(f"unknown evaluation protocol {name!r}; choose from {close}")
    return PROTOCOLS[name]
