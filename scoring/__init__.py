"""scoring: how maps are scored, for every tool that scores (eval-seg, the trainer's validation,
the benchmarks). On the ground floor: numpy + OpenCV (weighted F: scipy), no framework; it imports
core and no other package of this project.

Modules, one job each, importing one another in this order only (no circle):

- metrics:   the streaming segmentation metrics (maxFβ, IoU, accuracy, MAE, S-, E-measure,
             weighted F), their inputs' checks, and binarize_gt, the one binarisation of a ground truth.
- wsol:      the localisation metrics of Choe et al. 2020 (MaxBoxAcc, MaxBoxAccV2, PxAP) and their
             box rule, contour_boxes.
- protocols: the evaluation protocols by name (paper, sod-toolkit): how maps and ground truth are
             prepared for the metrics and which metrics each reports; SegmentationMetrics, several
             metrics under one protocol.
- tasks:     one accumulator per kind of ground truth (mask, boxes, pxap): update(pred, truth) per
             image, compute() -> {evaluation protocol: numbers}. A new kind of evaluation is one class.
"""
from .metrics import METRICS, MetricError, ScoreMap, binarize_gt, get_metric, image_stats, prediction_to_uint8
from .protocols import DEFAULT_METRICS, PROTOCOLS, SegmentationMetrics, get_protocol, protocol_names
from .tasks import TASKS, Task, Truth, get_task

__all__ = ["METRICS", "MetricError", "ScoreMap", "binarize_gt", "get_metric", "image_stats", "prediction_to_uint8",
           "DEFAULT_METRICS", "PROTOCOLS", "SegmentationMetrics", "get_protocol", "protocol_names", "TASKS", "Task",
           "Truth", "get_task"]
