"""trainer.validate: the fallback metrics on hand-made maps, and agreement with evaluator.metrics."""
from __future__ import annotations

import numpy as np
import pytest

from trainer.validate import LocalMetrics, Scorer, f_curve, grid_image, iou_at_half, to_u8


def test_f_curve_hand_made():
    v = np.array([[0, 100], [200, 255]], np.uint8)
    gt = np.array([[False, False], [True, True]])
    f = f_curve(v, gt, beta2=0.3)
    assert f.shape == (255,)
    # k < 100: pred {100, 200, 255}: P = 2/3, R = 1 -> F = 1.3 * 2/3 / (0.3 * 2/3 + 1)
    assert f[0] == pytest.approx(1.3 * (2 / 3) / (0.3 * (2 / 3) + 1))
    assert f[99] == f[0]
    # 100 <= k < 200: pred {200, 255}: P = R = 1
    assert f[100] == 1.0 and f[199] == 1.0
    # 200 <= k < 255: pred {255}: P = 1, R = 1/2 -> F = 1.3 * 0.5 / (0.3 + 0.5)
    assert f[200] == pytest.approx(1.3 * 0.5 / 0.8) and f[254] == f[200]


def test_empty_conventions():
    empty_gt = np.zeros((2, 2), bool)
    # empty prediction on empty ground truth: P = 1 (empty pred), R = 1 (empty gt) -> F = 1, IoU = 1
    assert f_curve(np.zeros((2, 2), np.uint8), empty_gt)[0] == 1.0
    assert iou_at_half(np.zeros((2, 2), np.uint8), empty_gt) == 1.0
    # any prediction on empty gt: P = 0, R = 1 -> F = 0 at thresholds below it
    assert f_curve(np.full((2, 2), 200, np.uint8), empty_gt)[0] == 0.0


def test_iou_threshold_is_v_at_least_128():
    gt = np.array([[True, True]])
    assert iou_at_half(np.array([[128, 127]], np.uint8), gt) == 0.5


def test_to_u8_rounds():
    np.testing.assert_array_equal(to_u8(np.array([0.0, 0.5, 1.0, 1.2, -0.1])), [0, 128, 255, 255, 0])


def test_local_metrics_agree_with_evaluator_metrics():
    metrics = pytest.importorskip("evaluator.metrics")
    rng = np.random.default_rng(0)
    local, ev_f, ev_i = LocalMetrics(), metrics.MaxFMeasure(), metrics.IoU()
    for _ in range(6):
        gt = rng.random((20, 24)) < 0.3
        v = np.clip(gt * 150 + rng.integers(0, 120, gt.shape), 0, 255).astype(np.uint8)
        local.update(v, gt)
        ev_f.update(v, gt)
        ev_i.update(v, gt)
    res = local.compute()
    assert res["max_f"] == pytest.approx(ev_f.compute()["max_f"], abs=1e-12)
    assert res["iou"] == pytest.approx(ev_i.compute()["iou"], abs=1e-12)
    s = Scorer()
    assert s.external is not None


def test_grid_image_layout():
    val = {"image": np.full((2, 4, 4, 3), 7, np.uint8), "mask": np.ones((2, 4, 4), np.uint8)}
    g = grid_image(val, np.zeros((2, 4, 4)), n=2)
    assert g.shape == (3, 8, 12)
    assert (g[:, :, :4] == 7).all() and (g[:, :, 4:8] == 255).all() and (g[:, :, 8:] == 0).all()
