"""What a dataset's ground truth is scored by: one class per kind of ground truth (a Dataset's
`task`), each a streaming accumulator as every metric here is: `update(pred, truth)` per image,
`compute()` at the end, which gives {evaluation protocol: its numbers}.

- ``mask``: every evaluation protocol (scoring.protocols: paper, sod-toolkit) on the same maps,
  each binarising the mask its own way.
- ``boxes``: MaxBoxAcc and MaxBoxAccV2 (scoring.wsol), reported under ``wsol``.
- ``pxap``: PxAP (scoring.wsol) on masks with ignore regions, under ``wsol``.

`pred` is the uint8 map (v = round(255 p)) at the size of its ground truth. A new kind of
evaluation is one new class here, named as the task its datasets carry and listed in TASKS.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from core.registry import Registry

from .metrics import MetricError, binarize_gt
from .protocols import PROTOCOLS, SegmentationMetrics
from .wsol import MaxBoxAcc, MaxBoxAccV2, PxAP

__all__ = ["Truth", "Task", "TASKS", "get_task", "WSOL_ABOUT"]

WSOL_ABOUT = "Choe et al. 2020 (clovaai/wsolevaluation): maps min-max normalised and resized to 224"


class Truth(NamedTuple):
    """One image's ground truth, at the size of its map."""

    mask: np.ndarray | None = None  # as read and sized (8-bit, a label map, 16-bit or bool); binarize_gt where scored
    boxes: Sequence = ()  # [K, 4] (x0, y0, x1, y1), inclusive, in the map's pixels
    ignore: np.ndarray | None = None  # pixels PxAP leaves out, as read (binarised as a mask is)


class Task:
    """Streaming scores of one kind of ground truth: `update(pred, truth)` per image, `compute()`
    -> {evaluation protocol: its numbers}; `about` says, per protocol, what it is and whose
    numbers it compares with."""

    name = "task"
    about: dict[str, str] = {}

    def update(self, pred: np.ndarray, truth: Truth) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def compute(self) -> dict[str, dict]:  # pragma: no cover - abstract
        raise NotImplementedError


def get_task(name: str) -> Task:
    """A fresh accumulator for a dataset's task; an unknown name is core.registry's one-line error."""
    return TASKS.get(name)()


def _score_map(pred: np.ndarray) -> np.ndarray:
    """The WSOL metrics take real-valued maps: the 8-bit map as its probability."""
    return pred.astype(np.float32) / 255.0


class MaskScores(Task):
    """Every evaluation protocol on the same maps (the paper's first: the tables quote it)."""

    name = "mask"
    about = {key: protocol.about for key, protocol in PROTOCOLS.items()}

    def __init__(self) -> None:
        self.by_protocol = {name: SegmentationMetrics(protocol=name) for name in PROTOCOLS}

    def update(self, pred: np.ndarray, truth: Truth) -> None:
        for metrics in self.by_protocol.values():
            metrics.update(pred, truth.mask)  # each protocol binarises the mask its own way

    def compute(self) -> dict[str, dict]:
        return {name: metrics.compute() for name, metrics in self.by_protocol.items()}


class BoxScores(Task):
    """MaxBoxAcc and MaxBoxAccV2 fed together; the v2 entries other than its headline number get
    a `v2_` prefix so the two dicts merge without clashes."""

    name = "boxes"
    about = {"wsol": WSOL_ABOUT}

    def __init__(self) -> None:
        self.v1, self.v2 = MaxBoxAcc(), MaxBoxAccV2()

    def update(self, pred: np.ndarray, truth: Truth) -> None:
        if not len(truth.boxes):
            raise MetricError("an image of a box dataset has no ground-truth box; check localization.txt")
        score = _score_map(pred)
        size = (pred.shape[1], pred.shape[0])  # the boxes are in the map's pixels: no scaling
        self.v1.update(score, np.asarray(truth.boxes), size)
        self.v2.update(score, np.asarray(truth.boxes), size)

    def compute(self) -> dict[str, dict]:
        out = self.v1.compute()
        for k, v in self.v2.compute().items():
            out[k if k == self.v2.name else f"v2_{k}"] = v
        return {"wsol": out}


class PixelScores(Task):
    """PxAP over the dataset's masks, their ignore regions left out."""

    name = "pxap"
    about = {"wsol": WSOL_ABOUT}

    def __init__(self) -> None:
        self.pxap = PxAP()

    def update(self, pred: np.ndarray, truth: Truth) -> None:
        ignore = None if truth.ignore is None else binarize_gt(truth.ignore)
        self.pxap.update(_score_map(pred), binarize_gt(truth.mask), ignore)

    def compute(self) -> dict[str, dict]:
        return {"wsol": self.pxap.compute()}


TASKS: Registry[type[Task]] = Registry("evaluation task")
for _cls in (MaskScores, BoxScores, PixelScores):
    TASKS.register(_cls.name, _cls)
