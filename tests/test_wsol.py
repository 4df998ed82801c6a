"""scoring.wsol: MaxBoxAcc / MaxBoxAccV2 / PxAP on hand-made maps, boxes and masks with
exact expected values, plus the reference procedure re-run threshold by threshold."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from scoring.wsol import (
    MaxBoxAcc,
    MaxBoxAccV2,
    PxAP,
    box_iou,
    boxes_from_scoremap,
    prepare_scoremap,
    resize_boxes,
)


def _map(shape, *blocks):
    """Zeros with rectangular blocks (y0, y1, x0, x1 inclusive, value)."""
    m = np.zeros(shape, np.float32)
    for y0, y1, x0, x1, value in blocks:
        m[y0 : y1 + 1, x0 : x1 + 1] = value
    return m


def test_box_iou_inclusive_areas():
    # [0,0,1,1] is 2x2 = 4 px; [1,1,2,2] is 4 px; overlap 1 px -> 1 / (4 + 4 - 1) = 1/7
    np.testing.assert_allclose(box_iou([[0, 0, 1, 1]], [[1, 1, 2, 2], [0, 0, 1, 1], [5, 5, 6, 6]]), [[1 / 7, 1.0, 0.0]])
    # a single-pixel box has area 1, so (0,0,0,0) matches itself with IoU 1
    assert box_iou([[0, 0, 0, 0]], [[0, 0, 0, 0]])[0, 0] == 1.0


def test_resize_boxes_truncates():
    # 10 x 10 image -> 224: x * 22.4 truncated: 3 -> 67 (67.2), 2 -> 44 (44.8), 7 -> 156 (156.8), 5 -> 112
    np.testing.assert_array_equal(resize_boxes([3, 2, 7, 5], (10, 10), (224, 224)), [[67, 44, 156, 112]])
    # non-square: (w, h) = (20, 10): x * 11.2, y * 22.4
    np.testing.assert_array_equal(resize_boxes([[10, 5, 19, 9]], (20, 10), (224, 224)), [[112, 112, 212, 201]])


def test_box_of_a_block_has_the_reference_off_by_one():
    # block rows 2..5, cols 3..7 -> boundingRect x 3, y 2, w 5, h 4 -> box (3, 2, 3 + 5, 2 + 4)
    m = _map((10, 10), (2, 5, 3, 7, 1.0))
    boxes = boxes_from_scoremap(m, [0.0, 0.5, 0.99])
    for b in boxes:
        np.testing.assert_array_equal(b, [[3, 2, 8, 6]])
    # x1, y1 are clipped to W - 1, H - 1 when the block touches the border
    m = _map((10, 10), (5, 9, 6, 9, 1.0))
    np.testing.assert_array_equal(boxes_from_scoremap(m, [0.5])[0], [[6, 5, 9, 9]])


def test_max_box_acc_single_block():
    # gt (3, 2, 7, 5): the tight box of the block. Predicted (3, 2, 8, 6): 6 x 5 = 30 px,
    # gt 5 x 4 = 20 px, overlap 20 -> IoU 20 / 30 = 2/3 >= 0.5 at every threshold.
    acc = MaxBoxAcc(resize=None)
    acc.update(_map((10, 10), (2, 5, 3, 7, 1.0)), [[3, 2, 7, 5]])
    r = acc.compute()
    assert r["max_box_acc"] == 1.0
    np.testing.assert_array_equal(r["max_box_acc_curve_iou50"], np.ones(100))
    # at IoU 70 the same box fails (2/3 < 0.7) at every threshold
    acc70 = MaxBoxAcc(iou_thresholds=(70,), resize=None)
    acc70.update(_map((10, 10), (2, 5, 3, 7, 1.0)), [[3, 2, 7, 5]])
    assert acc70.compute()["max_box_acc"] == 0.0


def test_max_over_thresholds_is_taken_over_the_dataset():
    # Big weak blob (0.4) and small strong blob (1.0). u8(0.4) = int(102.0) = 102.
    # t <= 0.39: level int(t * 255) <= 99 -> both blobs; the largest contour is the big blob.
    # t >= 0.40: level >= 102 -> only the strong blob.
    big, small = (1, 8, 1, 8, 0.4), (12, 15, 12, 15, 1.0)
    m = _map((20, 20), big, small)
    acc = MaxBoxAcc(resize=None)
    acc.update(m, [[1, 1, 9, 9]])  # image 1: the big blob's box -> correct for t = 0.00..0.39
    acc.update(m, [[12, 12, 16, 16]])  # image 2: the small blob's box -> correct for t = 0.40..0.99
    r = acc.compute()
    np.testing.assert_array_equal(r["max_box_acc_curve_iou50"], np.full(100, 0.5))
    assert r["max_box_acc"] == 0.5  # not 1.0: no per-image best threshold
    assert r["max_box_acc_best_threshold_iou50"] == 0.0


def test_v2_uses_all_contours_and_averages_iou_30_50_70():
    # Equal blobs A (8 x 8 at 1..8) and B (4 x 4 at 12..15). gt = B's tight box (12,12,15,15):
    # predicted B box (12,12,16,16) is 5 x 5 = 25 px, overlap 16 -> IoU 16/25 = 0.64
    # (correct at 30 and 50, not 70). The largest contour alone is A: IoU 0.
    m = _map((20, 20), (1, 8, 1, 8, 1.0), (12, 15, 12, 15, 1.0))
    v1 = MaxBoxAcc(iou_thresholds=(30, 50, 70), resize=None)
    v2 = MaxBoxAccV2(resize=None)
    for metric in (v1, v2):
        metric.update(m, [[12, 12, 15, 15]])
    assert v1.compute()["max_box_acc"] == 0.0
    r = v2.compute()
    assert [r[f"max_box_acc_v2_iou{i}"] for i in (30, 50, 70)] == [1.0, 1.0, 0.0]
    assert r["max_box_acc_v2"] == pytest.approx(2 / 3, abs=1e-15)


def test_constant_map_gives_the_zero_box():
    # constant -> normalised to zeros -> no contour -> box (0,0,0,0): IoU 1/100 with (0,0,9,9)
    acc = MaxBoxAcc(resize=None)
    acc.update(np.full((10, 10), 0.7), [[0, 0, 9, 9]])
    assert acc.compute()["max_box_acc"] == 0.0
    assert boxes_from_scoremap(np.zeros((10, 10)), [0.5])[0].tolist() == [[0, 0, 0, 0]]


def test_resize_path_scales_gt_boxes_and_map():
    # 40 x 20 (w x h) map, block rows 5..14, cols 10..29. At 224 x 224 the block spans
    # [56, 168) in both axes (x * 5.6, y * 11.2); at t = 0.5 the bicubic map's box is its
    # boundingRect (56, 56, 56 + 112, 56 + 112). The gt box (10, 5, 29, 14) scales by truncation
    # to (56, 56, int(162.4), int(156.8)) = (56, 56, 162, 156): inclusive areas 107 x 101 = 10807
    # (inside the predicted box) and 113 x 113 = 12769 -> best IoU 10807 / 12769 = 0.846.
    m = _map((20, 40), (5, 14, 10, 29, 1.0))
    prepared = prepare_scoremap(m)
    assert prepared.shape == (224, 224) and prepared.min() == 0.0 and prepared.max() == 1.0
    np.testing.assert_array_equal(boxes_from_scoremap(prepared, [0.5])[0], [[56, 56, 168, 168]])
    np.testing.assert_array_equal(resize_boxes([10, 5, 29, 14], (40, 20), (224, 224)), [[56, 56, 162, 156]])
    acc = MaxBoxAcc(iou_thresholds=(50, 80, 90))
    acc.update(m, [[10, 5, 29, 14]])
    r = acc.compute()
    assert [r[f"max_box_acc_iou{i}"] for i in (50, 80, 90)] == [1.0, 1.0, 0.0]
    # The same object as a gt box in a 400 x 200 image (image_size): (100, 50, 299, 149) scales to
    # (56, 56, int(167.44), int(166.88)) = (56, 56, 167, 166): 112 x 111 = 12432 px inside the
    # predicted box -> IoU 12432 / 12769 = 0.974, now correct at 90 too.
    np.testing.assert_array_equal(resize_boxes([100, 50, 299, 149], (400, 200), (224, 224)), [[56, 56, 167, 166]])
    acc = MaxBoxAcc(iou_thresholds=(80, 90, 98))
    acc.update(m, [[100, 50, 299, 149]], image_size=(400, 200))
    r = acc.compute()
    assert [r[f"max_box_acc_iou{i}"] for i in (80, 90, 98)] == [1.0, 1.0, 0.0]


def _reference_procedure(scoremap, gt_boxes, thresholds, multi):
    """The reference steps written out per threshold with no caching (for the cross-check)."""
    image = np.expand_dims((scoremap * 255).astype(np.uint8), 2)
    h, w = scoremap.shape
    best = []
    for t in thresholds:
        _, binary = cv2.threshold(image, int(t * np.max(image)), 255, cv2.THRESH_BINARY)
        contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
        if not contours:
            boxes = [[0, 0, 0, 0]]
        else:
            contours = contours if multi else [max(contours, key=cv2.contourArea)]
            boxes = []
            for c in contours:
                x, y, bw, bh = cv2.boundingRect(c)
                boxes.append([x, y, min(x + bw, w - 1), min(y + bh, h - 1)])
        best.append(box_iou(np.array(boxes), np.array(gt_boxes)).max())
    return np.array(best)


@pytest.mark.parametrize("multi", [False, True])
def test_matches_the_reference_procedure_on_random_maps(multi):
    rng = np.random.default_rng(0)
    thresholds = np.arange(0, 1, 0.01)
    for _ in range(5):
        raw = cv2.GaussianBlur(rng.random((224, 224)).astype(np.float32), (0, 0), 8)
        scoremap = prepare_scoremap(raw)
        gt = [[40, 60, 150, 200], [10, 10, 60, 50]]
        ours = np.array([box_iou(b, gt).max() for b in boxes_from_scoremap(scoremap, thresholds, multi_contour=multi)])
        np.testing.assert_array_equal(ours, _reference_procedure(scoremap, gt, thresholds, multi))


def test_pxap_hand_computed():
    # scores (already min 0, max 1): fg {1.0, 0.3}, bg {0.6, 0.0}; thresholds 0, .25, .5, .75
    # bins [0,.25) [.25,.5) [.5,.75) [.75,1) [1,2) [2,3]; points >= 2, 1, .75, .5, .25, 0:
    # tp 0 1 1 1 2 2, fp 0 0 0 1 1 2 -> precision nan 1 1 1/2 2/3 1/2, recall 0 .5 .5 .5 1 1
    # AP = 1 * .5 + 1 * 0 + 1/2 * 0 + 2/3 * .5 + 1/2 * 0 = 5/6
    scores = np.array([[1.0, 0.6], [0.3, 0.0]])
    gt = np.array([[True, False], [True, False]])
    ap = PxAP(np.arange(0, 1, 0.25), resize=None)
    ap.update(scores, gt)
    r = ap.compute()
    assert r["pxap"] == pytest.approx(5 / 6, abs=1e-15)
    np.testing.assert_allclose(r["recall_curve"], [0, 0.5, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(r["precision_curve"][1:], [1, 1, 0.5, 2 / 3, 0.5])
    np.testing.assert_allclose(r["score_edges"], [2, 1, 0.75, 0.5, 0.25, 0])


def test_pxap_ignore_region_and_dataset_sums():
    # The 2 x 2 case plus a column [1.0 (background), 0.0 (background)].
    scores = np.array([[1.0, 0.6, 1.0], [0.3, 0.0, 0.0]])
    gt = np.array([[True, False, False], [True, False, False]])
    ignore = np.array([[False, False, True], [False, False, False]])
    thresholds = np.arange(0, 1, 0.25)
    # Ignored 1.0: fp 0 0 0 1 1 3 (the extra 0.0 only counts at >= 0, where recall stays 1)
    # -> AP = 1 * .5 + 2/3 * .5 = 5/6, as without the column.
    ignored = PxAP(thresholds, resize=None)
    ignored.update(scores, gt, ignore=ignore)
    assert ignored.compute()["pxap"] == pytest.approx(5 / 6, abs=1e-15)
    # Counted: fp 0 1 1 2 2 4 -> precision nan 1/2 1/2 1/3 1/2 1/3 -> AP = 1/2 * .5 + 1/2 * .5 = 1/2
    counted = PxAP(thresholds, resize=None)
    counted.update(scores, gt)
    assert counted.compute()["pxap"] == pytest.approx(0.5, abs=1e-15)
    # Both images in one dataset: histograms are summed, not APs averaged.
    # tp 0 2 2 2 4 4, fp 0 1 1 3 3 6 -> precision nan 2/3 2/3 2/5 4/7 2/5, recall 0 .5 .5 .5 1 1
    # -> AP = 2/3 * .5 + 4/7 * .5 = 13/21 (the mean of 5/6 and 1/2 would be 2/3)
    both = PxAP(thresholds, resize=None)
    both.update(scores[:, :2], gt[:, :2])
    both.update(scores, gt)
    assert both.compute()["pxap"] == pytest.approx(13 / 21, abs=1e-15)


def test_errors():
    with pytest.raises(ValueError, match="NaN"):
        MaxBoxAcc().update(np.full((4, 4), np.nan), [[0, 0, 1, 1]])
    with pytest.raises(ValueError, match=r"\[K, 4\]"):
        MaxBoxAcc().update(np.zeros((4, 4)), [[0, 0, 1]])
    with pytest.raises(ValueError, match="x0 <= x1"):
        MaxBoxAcc().update(np.zeros((4, 4)), [[3, 0, 1, 1]])
    with pytest.raises(ValueError, match="no images"):
        MaxBoxAcc().compute()
    with pytest.raises(ValueError, match="bool"):
        PxAP().update(np.zeros((4, 4)), np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="differ in shape"):
        PxAP(resize=None).update(np.zeros((4, 4)), np.zeros((4, 5), bool))
    empty = PxAP(resize=None)
    empty.update(np.arange(4.0).reshape(2, 2), np.zeros((2, 2), bool))
    with pytest.raises(ValueError, match="no ground-truth foreground"):
        empty.compute()
