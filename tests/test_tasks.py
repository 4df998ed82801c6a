"""scoring.tasks: one accumulator per kind of ground truth, each fed `update(pred, truth)` and
giving {evaluation protocol: numbers}; the same numbers as the metrics fed directly."""
from __future__ import annotations

import numpy as np
import pytest

from core.registry import UnknownNameError

from scoring import SegmentationMetrics, TASKS, Truth, get_task
from scoring.metrics import MetricError
from scoring.wsol import MaxBoxAcc, PxAP


def _map() -> np.ndarray:
    pred = np.zeros((40, 50), np.uint8)
    pred[5:25, 10:30] = 200
    pred[30:35, 40:45] = 90
    return pred


def test_every_dataset_task_has_its_class():
    assert sorted(TASKS) == ["boxes", "mask", "pxap"]
    assert all(TASKS[name].name == name for name in TASKS)


def test_mask_scores_are_each_protocol_fed_the_mask_as_read():
    gt = np.zeros((40, 50), np.uint8)
    gt[5:25, 10:28] = 128  # exactly 128: foreground for `paper` (>= 128), background for `sod-toolkit` (> 128)
    gt[6:24, 11:27] = 255
    task = get_task("mask")
    task.update(_map(), Truth(mask=gt))
    out = task.compute()
    assert list(out) == ["paper", "sod-toolkit"]
    for name, strict in (("paper", gt >= 128), ("sod-toolkit", gt > 128)):
        ref = SegmentationMetrics(protocol=name)
        ref.update(_map(), strict)
        assert out[name]["max_f"] == ref.compute()["max_f"]


def test_box_and_pixel_scores_equal_the_wsol_metrics():
    task = get_task("boxes")
    task.update(_map(), Truth(boxes=[(10, 5, 29, 24)]))
    ref = MaxBoxAcc()
    ref.update(_map().astype(np.float32) / 255, np.array([(10, 5, 29, 24)]), (50, 40))
    out = task.compute()["wsol"]
    assert out["max_box_acc"] == ref.compute()["max_box_acc"] == 1.0 and "max_box_acc_v2" in out

    mask = np.zeros((40, 50), np.uint8)
    mask[5:25, 10:30] = 255
    task = get_task("pxap")
    task.update(_map(), Truth(mask=mask))
    ref = PxAP()
    ref.update(_map().astype(np.float32) / 255, mask >= 128)
    assert task.compute()["wsol"]["pxap"] == ref.compute()["pxap"]


def test_bad_requests_are_one_line():
    with pytest.raises(MetricError, match="no ground-truth box"):
        get_task("boxes").update(_map(), Truth(boxes=()))
    with pytest.raises(UnknownNameError, match="unknown evaluation task 'mask2' \\(did you mean mask"):
        get_task("mask2")
