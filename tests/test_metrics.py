"""scoring.metrics: hand-computed values, edge cases, a naive-loop property test and
agreement with pysodmetrics on the real ECSSD masks."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from core.registry import UnknownNameError
from scoring import SegmentationMetrics
from scoring.metrics import (
    EMeasure,
    IoU,
    MAE,
    Accuracy,
    MaxFMeasure,
    SMeasure,
    binarize_gt,
    get_metric,
    image_stats,
    prediction_to_uint8,
)

T, F = True, False
K = np.arange(255)


def _scores(pred, gt):
    m = SegmentationMetrics(("max_f", "iou", "accuracy", "mae"))
    m.update(np.asarray(pred, dtype=np.uint8), np.asarray(gt, dtype=bool))
    return m.compute()


# --------------------------------------------------------------------------- hand-computed


def test_hand_computed_mixed_image():
    # pred [[200, 50], [128, 0]], gt [[T, F], [T, F]]: n_fg = 2, n_bg = 2.
    r = _scores([[200, 50], [128, 0]], [[T, F], [T, F]])
    # k = 0..49:    fg = {200, 50, 128}: tp 2, fp 1 -> P 2/3, R 1, F = 1.3*(2/3)/(0.3*(2/3)+1) = 0.8667/1.2
    # k = 50..127:  fg = {200, 128}:     tp 2, fp 0 -> P 1, R 1, F 1
    # k = 128..199: fg = {200}:          tp 1       -> P 1, R 1/2, F = 1.3*0.5/(0.3+0.5) = 0.8125
    # k = 200..254: fg empty             -> P 1 (convention), R 0, F 0
    f_low = 1.3 * (2 / 3) / (0.3 * (2 / 3) + 1)
    expected_f = np.select([K < 50, K < 128, K < 200], [f_low, 1.0, 0.8125], 0.0)
    expected_p = np.select([K < 50], [2 / 3], 1.0)
    expected_r = np.select([K < 128, K < 200], [1.0, 0.5], 0.0)
    np.testing.assert_allclose(r["f_curve"], expected_f, rtol=0, atol=1e-15)
    np.testing.assert_allclose(r["precision_curve"], expected_p, rtol=0, atol=1e-15)
    np.testing.assert_allclose(r["recall_curve"], expected_r, rtol=0, atol=1e-15)
    assert r["max_f"] == 1.0 and r["best_threshold"] == 50  # first k reaching the max
    # 50 thresholds at f_low, 78 at 1, 72 at 0.8125, 55 at 0
    assert r["mean_f"] == pytest.approx((50 * f_low + 78 + 72 * 0.8125) / 255, abs=1e-15)
    # v >= 128 selects {200, 128} = gt: IoU 1, accuracy 1
    assert r["iou"] == 1.0 and r["accuracy"] == 1.0
    # |200/255 - 1| + |50/255| + |128/255 - 1| + |0| = (55 + 50 + 127 + 0) / 255 over 4 pixels
    assert r["mae"] == pytest.approx(232 / 1020, abs=1e-15)


def test_averaging_is_per_image_per_threshold():
    m = SegmentationMetrics(("max_f", "iou", "accuracy", "mae"))
    m.update(np.array([[200, 50], [128, 0]], np.uint8), np.array([[T, F], [T, F]]))  # as above
    m.update(np.zeros((2, 2), np.uint8), np.zeros((2, 2), bool))  # both empty: P = R = F = 1
    r = m.compute()
    f_low = 1.3 * (2 / 3) / (0.3 * (2 / 3) + 1)
    # per threshold: (F_image1 + 1) / 2
    expected_f = np.select([K < 50, K < 128, K < 200], [(f_low + 1) / 2, 1.0, (0.8125 + 1) / 2], 0.5)
    np.testing.assert_allclose(r["f_curve"], expected_f, rtol=0, atol=1e-15)
    assert r["max_f"] == 1.0 and r["best_threshold"] == 50
    assert r["iou"] == 1.0  # both images 1 (second: both empty)
    assert r["accuracy"] == 1.0
    assert r["mae"] == pytest.approx((232 / 1020 + 0) / 2, abs=1e-15)
    np.testing.assert_array_equal(r["iou_per_image"], [1.0, 1.0])
    assert r["n_images"] == 2


def test_empty_gt_nonempty_prediction():
    # pred [[255, 0]], gt empty: every k has fg = {255}: tp 0, fp 1 -> P 0, R 1 (empty gt), F 0
    r = _scores([[255, 0]], [[F, F]])
    np.testing.assert_array_equal(r["f_curve"], np.zeros(255))
    np.testing.assert_array_equal(r["precision_curve"], np.zeros(255))
    np.testing.assert_array_equal(r["recall_curve"], np.ones(255))
    assert r["iou"] == 0.0  # tp 0, union 1
    assert r["accuracy"] == 0.5  # the 0 pixel is a true negative
    assert r["mae"] == 0.5  # (1 + 0) / 2


def test_empty_prediction_nonempty_gt():
    # pred all 0: fg empty at every k -> P 1, R 0, F 0; IoU 0 (fn 1), accuracy 1/2
    r = _scores([[0, 0]], [[T, F]])
    np.testing.assert_array_equal(r["f_curve"], np.zeros(255))
    np.testing.assert_array_equal(r["precision_curve"], np.ones(255))
    np.testing.assert_array_equal(r["recall_curve"], np.zeros(255))
    assert r["max_f"] == 0.0 and r["best_threshold"] == 0
    assert r["iou"] == 0.0 and r["accuracy"] == 0.5 and r["mae"] == 0.5


def test_constant_prediction():
    # pred constant 128, gt [[T, F]]
    # k = 0..127: fg = both pixels: tp 1, fp 1 -> P 1/2, R 1, F = 1.3*0.5/(0.15+1) = 0.65/1.15
    # k >= 128: empty -> P 1, R 0, F 0
    r = _scores([[128, 128]], [[T, F]])
    expected_f = np.where(K < 128, 0.65 / 1.15, 0.0)
    np.testing.assert_allclose(r["f_curve"], expected_f, rtol=0, atol=1e-15)
    assert r["best_threshold"] == 0
    # v >= 128 is foreground everywhere: tp 1, fp 1 -> IoU 1/2, accuracy 1/2
    assert r["iou"] == 0.5 and r["accuracy"] == 0.5
    # (|128/255 - 1| + |128/255|) / 2 = (127 + 128) / 510 = 0.5
    assert r["mae"] == pytest.approx(0.5, abs=1e-15)


def test_threshold_127_vs_128_is_exact_integer():
    # v = 127 is below 0.5 (127/255 = 0.498), v = 128 is above (0.502): IoU uses v >= 128.
    assert _scores([[127]], [[T]])["iou"] == 0.0
    assert _scores([[128]], [[T]])["iou"] == 1.0
    # maxF: v > k. A single pixel v = 1 is foreground only at k = 0.
    r = _scores([[1]], [[T]])
    np.testing.assert_array_equal(r["f_curve"], np.where(K == 0, 1.0, 0.0))


def test_s_measure_hand_computed_edge_cases():
    s = SMeasure()
    s.update(np.array([[51, 0]], np.uint8), np.array([[F, F]]))  # empty gt: 1 - mean(pred) = 1 - 0.1
    s.update(np.array([[255, 102]], np.uint8), np.array([[T, T]]))  # full gt: mean(pred) = 0.7
    r = s.compute()
    np.testing.assert_allclose(r["s_measure_per_image"], [0.9, 0.7], rtol=0, atol=1e-15)
    assert r["s_measure"] == pytest.approx(0.8, abs=1e-15)


def test_e_measure_empty_gt():
    # gt empty: E(m) = #(pred background at v >= m) / (N - 1 + eps). pred [[0, 255]], N = 2:
    # m = 0: nothing is background -> 0; m = 1..255: one background pixel -> 1 / (1 + eps)
    e = EMeasure()
    e.update(np.array([[0, 255]], np.uint8), np.array([[F, F]]))
    r = e.compute()
    expected = np.where(np.arange(256) == 0, 0.0, 1.0)
    np.testing.assert_allclose(r["e_curve"], expected, rtol=0, atol=1e-15)
    # adaptive: 2 * mean = 2 * 127.5 / 255 = 1 -> v >= 255: one background pixel -> 1
    assert r["e_adaptive"] == pytest.approx(1.0, abs=1e-15)


# --------------------------------------------------------------------------- inputs


def test_float_predictions_are_quantised_like_an_8bit_png():
    p = np.array([[0.0, 0.2, 0.5, 1.0]])  # 0.2 * 255 = 51, 0.5 * 255 = 127.5 -> 128 (half to even)
    np.testing.assert_array_equal(prediction_to_uint8(p), [[0, 51, 128, 255]])
    gt = np.array([[F, T, T, T]])
    a = _scores(np.array([[0, 51, 128, 255]]), gt)
    m = SegmentationMetrics(("max_f", "iou", "accuracy", "mae"))
    m.update(p.astype(np.float32), gt)
    b = m.compute()
    for key in ("max_f", "iou", "accuracy", "mae"):
        assert a[key] == b[key]


def test_binarize_gt():
    np.testing.assert_array_equal(binarize_gt(np.array([0, 127, 128, 255], np.uint8)), [F, F, T, T])
    np.testing.assert_array_equal(binarize_gt(np.array([0.0, 0.49, 0.5, 1.0])), [F, F, T, T])
    np.testing.assert_array_equal(binarize_gt(np.array([T, F])), [T, F])
    # a {0, 1} label map: 1 is foreground (>= 128 would make it empty); 16-bit at half its range
    np.testing.assert_array_equal(binarize_gt(np.array([0, 1, 1], np.uint8)), [F, T, T])
    np.testing.assert_array_equal(binarize_gt(np.array([0, 1, 1], np.uint8), strict=True), [F, T, T])
    np.testing.assert_array_equal(binarize_gt(np.array([32767, 32768], np.uint16), strict=True), [F, T])
    np.testing.assert_array_equal(binarize_gt(np.array([128], np.uint8), strict=True), [F])
    with pytest.raises(ValueError, match="bool, uint8 or float"):
        binarize_gt(np.array([0, 1], np.int64))


@pytest.mark.parametrize(
    "pred, gt, match",
    [
        (np.zeros((2, 3), np.uint8), np.zeros((3, 2), bool), r"uint8\[2, 3\].*bool\[3, 2\].*differ in shape"),
        (np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8), "binarize_gt"),
        (np.full((2, 2), 1.5), np.zeros((2, 2), bool), r"\[0, 1\]"),
        (np.full((2, 2), np.nan), np.zeros((2, 2), bool), r"\[0, 1\]"),
        (np.zeros((2, 2), np.int64), np.zeros((2, 2), bool), "uint8 .* or float"),
        (np.zeros((2, 2, 1), np.uint8), np.zeros((2, 2, 1), bool), "2-D"),
    ],
)
def test_bad_inputs_raise_one_line_errors(pred, gt, match):
    with pytest.raises(ValueError, match=match) as info:
        MaxFMeasure().update(pred, gt)
    assert "\n" not in str(info.value)


def test_compute_without_images_and_unknown_metric():
    with pytest.raises(ValueError, match="no images"):
        IoU().compute()
    with pytest.raises(UnknownNameError, match="unknown metric 'ioo' \\(did you mean iou"):
        get_metric("ioo")


# --------------------------------------------------------------------------- naive loop


def _naive(preds, gts, beta2=0.3):
    """Per-threshold loop like the paper's reference code: binarise, count, average."""
    fs, ps, rs, ious, accs, maes = [], [], [], [], [], []
    for v, gt in zip(preds, gts):
        f_row, p_row, r_row = [], [], []
        for k in range(255):
            b = v > k
            tp = np.sum(b & gt)
            p = tp / b.sum() if b.sum() else 1.0
            r = tp / gt.sum() if gt.sum() else 1.0
            f = (1 + beta2) * p * r / (beta2 * p + r) if (p + r) > 0 else 0.0
            f_row.append(f), p_row.append(p), r_row.append(r)
        fs.append(f_row), ps.append(p_row), rs.append(r_row)
        b = v >= 128
        union = np.sum(b | gt)
        ious.append(np.sum(b & gt) / union if union else 1.0)
        accs.append(np.mean(b == gt))
        maes.append(np.mean(np.abs(v / 255.0 - gt)))
    return [np.mean(x, axis=0) for x in (fs, ps, rs, ious, accs, maes)]


@st.composite
def _pairs(draw):
    n = draw(st.integers(1, 3))
    shape = draw(st.tuples(st.integers(1, 5), st.integers(1, 5)))
    preds = [draw(hnp.arrays(np.uint8, shape)) for _ in range(n)]
    gts = [draw(hnp.arrays(np.bool_, shape)) for _ in range(n)]
    return preds, gts


@settings(max_examples=60, deadline=None)
@given(_pairs())
def test_vectorised_curves_equal_naive_loop(pairs):
    preds, gts = pairs
    m = SegmentationMetrics(("max_f", "iou", "accuracy", "mae"))
    for v, gt in zip(preds, gts):
        m.update(v, gt)
    r = m.compute()
    f, p, rec, iou, acc, mae = _naive(preds, gts)
    np.testing.assert_allclose(r["f_curve"], f, rtol=0, atol=1e-12)
    np.testing.assert_allclose(r["precision_curve"], p, rtol=0, atol=1e-12)
    np.testing.assert_allclose(r["recall_curve"], rec, rtol=0, atol=1e-12)
    assert r["max_f"] == pytest.approx(f.max(), abs=1e-12)
    assert r["iou"] == pytest.approx(iou, abs=1e-12)
    assert r["accuracy"] == pytest.approx(acc, abs=1e-12)
    assert r["mae"] == pytest.approx(mae, abs=1e-12)


def test_histograms_count_every_pixel():
    v = np.array([[0, 255, 7], [7, 0, 255]], np.uint8)
    gt = np.array([[T, T, F], [T, F, F]])
    s = image_stats(v, gt)
    expected_fg = np.zeros(256, int)
    expected_fg[[0, 255, 7]] = 1
    expected_bg = np.zeros(256, int)
    expected_bg[[7, 0, 255]] = 1
    np.testing.assert_array_equal(s.hist_fg, expected_fg)
    np.testing.assert_array_equal(s.hist_bg, expected_bg)


# --------------------------------------------------------------------------- pysodmetrics


def _ecssd_pairs(root, n=100, seed=0):
    """First n ECSSD masks at short side ~128 with perturbed 8-bit predictions (gt blurred +
    noise); every 5th prediction is dimmed so it is empty at high thresholds."""
    import cv2

    rng = np.random.default_rng(seed)
    pairs = []
    for path in sorted((root / "masks").glob("*.png"))[:n]:
        mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        h, w = mask.shape
        s = 128 / min(h, w)
        mask = cv2.resize(mask, (round(w * s), round(h * s)), interpolation=cv2.INTER_NEAREST)
        gt = binarize_gt(mask)
        p = cv2.GaussianBlur(gt.astype(np.float32), (0, 0), 3) + rng.normal(0, 0.15, gt.shape)
        if len(pairs) % 5 == 0:
            p = 0.6 * p
        v = np.clip(np.round(p * 255), 0, 255).astype(np.uint8)
        pairs.append((v, gt))
    return pairs


@pytest.mark.data
def test_agrees_with_pysodmetrics_on_ecssd(ecssd_dir):
    import py_sod_metrics as psm

    pairs = _ecssd_pairs(ecssd_dir)
    ours = SegmentationMetrics()
    handlers = {
        "f": psm.FmeasureHandler(with_dynamic=True, with_adaptive=False, beta=0.3),
        "p": psm.PrecisionHandler(with_dynamic=True, with_adaptive=False),
        "r": psm.RecallHandler(with_dynamic=True, with_adaptive=False),
        "iou": psm.IOUHandler(with_dynamic=False, with_adaptive=False, with_binary=True),
        "acc": psm.OverallAccuracyHandler(with_dynamic=False, with_adaptive=False, with_binary=True),
    }
    fm2 = psm.FmeasureV2(metric_handlers=handlers)
    others = {"mae": psm.MAE(), "sm": psm.Smeasure(), "em": psm.Emeasure()}
    for v, gt in pairs:
        ours.update(v, gt)
        prob = v / 255.0  # the same inputs, as pysodmetrics wants them with normalize=False
        fm2.step(prob, gt, normalize=False)
        for metric in others.values():
            metric.step(prob, gt, normalize=False)
    r = ours.compute()
    t = fm2.get_results()

    # Their curves run over v >= m, m = 255..0; flipped, index m; our k is their m = k + 1.
    def aligned(curve):
        return np.flip(curve)[1:]

    np.testing.assert_allclose(r["f_curve"], aligned(t["f"]["dynamic"]), rtol=0, atol=1e-6)
    assert r["max_f"] == pytest.approx(aligned(t["f"]["dynamic"]).max(), abs=1e-6)
    np.testing.assert_allclose(r["recall_curve"], aligned(t["r"]["dynamic"]), rtol=0, atol=1e-6)
    # Precision of an empty prediction: ours 1, theirs 0. Align per image, then compare.
    per_image = np.stack([aligned(x) for x in handlers["p"].dynamic_results])
    empty = np.stack([K[None, :] >= v.max() for v, _ in pairs]).reshape(per_image.shape)
    assert empty.any(), "the test data must exercise empty predictions"
    np.testing.assert_allclose(r["precision_curve"], np.where(empty, 1.0, per_image).mean(0), rtol=0, atol=1e-6)
    assert np.abs(r["precision_curve"] - aligned(t["p"]["dynamic"])).max() > 1e-3  # the documented difference

    assert r["iou"] == pytest.approx(t["iou"]["binary"], abs=1e-6)
    assert r["accuracy"] == pytest.approx(t["acc"]["binary"], abs=1e-6)
    assert r["mae"] == pytest.approx(others["mae"].get_results()["mae"], abs=1e-6)
    assert r["s_measure"] == pytest.approx(others["sm"].get_results()["sm"], abs=1e-6)
    em = others["em"].get_results()["em"]
    np.testing.assert_allclose(r["e_curve"], np.flip(em["curve"]), rtol=0, atol=1e-6)
    assert r["e_max"] == pytest.approx(em["curve"].max(), abs=1e-6)
    assert r["e_mean"] == pytest.approx(em["curve"].mean(), abs=1e-6)
    assert r["e_adaptive"] == pytest.approx(em["adp"], abs=1e-6)


def test_pysodmetrics_differs_only_where_both_masks_are_empty():
    import py_sod_metrics as psm

    # gt empty and a prediction that empties above k = 99: ours F = 1 there (both empty),
    # pysodmetrics 0 (its precision and recall are 0 for empty masks).
    v = np.array([[100, 0], [0, 0]], np.uint8)
    gt = np.zeros((2, 2), bool)
    ours = MaxFMeasure()
    ours.update(v, gt)
    theirs = psm.FmeasureV2(metric_handlers={"f": psm.FmeasureHandler(with_dynamic=True, with_adaptive=False)})
    theirs.step(v / 255.0, gt, normalize=False)
    f_theirs = np.flip(theirs.get_results()["f"]["dynamic"])[1:]
    np.testing.assert_array_equal(ours.compute()["f_curve"], np.where(K >= 100, 1.0, 0.0))
    np.testing.assert_array_equal(f_theirs, np.zeros(255))
    # IoU of two empty masks: ours 1 (docs/RULES.md, "Metrics and the two evaluation protocols"), theirs 0
    iou = IoU()
    iou.update(np.zeros((2, 2), np.uint8), gt)
    assert iou.compute()["iou"] == 1.0


def test_streaming_equals_bundle():
    rng = np.random.default_rng(3)
    data = [(rng.integers(0, 256, (6, 7), dtype=np.uint8), rng.random((6, 7)) < 0.4) for _ in range(4)]
    bundle = SegmentationMetrics()
    single = [MaxFMeasure(), IoU(), Accuracy(), MAE(), SMeasure(), EMeasure()]
    for v, gt in data:
        bundle.update(v, gt)
        for m in single:
            m.update(v, gt)
    merged = {}
    for m in single:
        merged.update(m.compute())
    rb = bundle.compute()
    for key, value in merged.items():
        np.testing.assert_array_equal(rb[key], value)


@settings(max_examples=80, deadline=None)
@given(_pairs())
def test_s_and_e_measure_equal_pysodmetrics_on_tiny_maps(pairs):
    import warnings

    import py_sod_metrics as psm

    for v, gt in zip(*pairs):
        s, e = SMeasure(), EMeasure()
        s.update(v, gt)
        e.update(v, gt)
        ps, pe = psm.Smeasure(), psm.Emeasure()
        with warnings.catch_warnings():  # pysodmetrics warns on empty quadrants (then NaN)
            warnings.simplefilter("ignore", RuntimeWarning)
            ps.step(v / 255.0, gt, normalize=False)
        pe.step(v / 255.0, gt, normalize=False)
        theirs = ps.get_results()["sm"]
        ours = s.compute()["s_measure"]
        assert np.isfinite(ours)
        if not np.isnan(theirs):  # NaN only when the centroid leaves an empty quadrant
            assert ours == pytest.approx(theirs, abs=1e-9)
        em = pe.get_results()["em"]
        r = e.compute()
        # theirs divides by N - 1 and exceeds 1 near perfect maps (4.5e15 on 1 x 1); ours caps at 1
        np.testing.assert_allclose(r["e_curve"], np.minimum(np.flip(em["curve"]), 1), rtol=0, atol=1e-9)
        assert r["e_adaptive"] == pytest.approx(min(em["adp"], 1), abs=1e-9)


def test_s_measure_empty_quadrant_is_finite_where_pysodmetrics_is_nan():
    import warnings

    import py_sod_metrics as psm

    # foreground only in the last column: centroid column 1 -> cx = 2 = W, right quadrants empty
    v = np.array([[10, 200], [30, 250]], np.uint8)
    gt = np.array([[F, T], [F, T]])
    s = SMeasure()
    s.update(v, gt)
    ps = psm.Smeasure()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ps.step(v / 255.0, gt, normalize=False)
    assert np.isnan(ps.get_results()["sm"])
    assert np.isfinite(s.compute()["s_measure"]) and 0 <= s.compute()["s_measure"] <= 1
