"""scoring.protocols: the `paper` and `sod-toolkit` protocols through one set of metric classes.

`sod-toolkit` is checked against pysodmetrics' defaults (normalize=True on uint8 maps and masks)
on real ECSSD masks with maps that do not span [0, 1], on hand-made arrays and on hypothesis'
tiny maps; every metric of both protocols stays in [0, 1] on any input."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from core.registry import UnknownNameError
from scoring.metrics import EMeasure, image_stats
from scoring.protocols import SegmentationMetrics, get_protocol, prepare_sod_toolkit, protocol_names
from sod_reference import TOOLKIT_KEYS
from sod_reference import pysodmetrics_defaults as _pysodmetrics

T, F = True, False
def _ours(pairs, protocol: str) -> dict:
    m = SegmentationMetrics(protocol=protocol)
    for v, gt in pairs:
        m.update(v, gt)
    return m.compute()


def _ecssd_maps(root, n=40) -> list[tuple[np.ndarray, np.ndarray]]:
    """Real ECSSD masks with predicted-like maps derived from them: blurred, then squeezed into
    sub-ranges such as [20, 120] or [100, 180] (never spanning 0..255), one in eight constant,
    one in five inverted, plus noise. ECSSD's masks are strictly 0/255; every other one is
    halved with area averaging (as crop128 resizes masks), so values such as 128 occur, where
    > 128 and >= 128 differ."""
    rng = np.random.default_rng(0)
    out = []
    for i, path in enumerate(sorted((root / "masks").glob("*.png"))[:n]):
        gt = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if i % 2:
            gt = cv2.resize(gt, (gt.shape[1] // 2, gt.shape[0] // 2), interpolation=cv2.INTER_AREA)
        p = cv2.GaussianBlur(gt.astype(np.float32) / 255, (0, 0), 2 + i % 5)
        if i % 5 == 4:
            p = 1 - p
        lo, hi = [(0.08, 0.47), (0.4, 0.7), (0.0, 0.6), (0.3, 1.0)][i % 4]
        p = lo + (hi - lo) * np.clip(p + rng.normal(0, 0.05, p.shape), 0, 1)
        v = np.rint(p * 255).astype(np.uint8)
        if i % 8 == 3:
            v[:] = 90 + i
        out.append((v, gt))
    return out


# --------------------------------------------------------------------------- real data


@pytest.mark.data
def test_sod_toolkit_equals_pysodmetrics_defaults_on_ecssd(ecssd_dir):
    pairs = _ecssd_maps(ecssd_dir)
    assert not any(v.min() == 0 and v.max() == 255 for v, _ in pairs)  # no map spans [0, 1]
    assert sum(int((gt == 128).sum()) for _, gt in pairs) > 100  # pixels where the rules differ
    ours, theirs = _ours(pairs, "sod-toolkit"), _pysodmetrics(pairs)
    for k in TOOLKIT_KEYS:
        assert ours[k] == pytest.approx(theirs[k], abs=1e-9), k
    np.testing.assert_allclose(ours["f_curve"], theirs["f_curve"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours["precision_curve"], theirs["precision_curve"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours["e_curve"], theirs["e_curve"], rtol=0, atol=1e-12)
    # and the paper protocol on the same maps is a different number (the reason both are reported)
    paper = _ours(pairs, "paper")
    assert abs(paper["s_measure"] - ours["s_measure"]) > 1e-3
    assert abs(paper["max_f"] - ours["max_f"]) > 1e-3


@pytest.mark.data
def test_paper_protocol_on_ecssd_maps_equals_pysodmetrics_without_normalisation(ecssd_dir):
    """The paper protocol's independent check: pysodmetrics with normalize=False on the maps as
    they are (v / 255) and the masks at >= 128, aligned to our 255 thresholds v > k."""
    import py_sod_metrics as psm

    pairs = _ecssd_maps(ecssd_dir)
    ours = _ours(pairs, "paper")
    fm2 = psm.FmeasureV2(metric_handlers={"f": psm.FmeasureHandler(with_dynamic=True, with_adaptive=False, beta=0.3),
                                          "iou": psm.IOUHandler(with_dynamic=False, with_adaptive=False,
                                                                with_binary=True)})
    sm, em, mae = psm.Smeasure(), psm.Emeasure(), psm.MAE()
    for v, gt in pairs:
        prob, mask = v / 255.0, gt >= 128
        fm2.step(prob, mask, normalize=False)
        for m in (sm, em, mae):
            m.step(prob, mask, normalize=False)
    t = fm2.get_results()
    # no mask is empty, so F agrees everywhere (the conventions differ only for empty masks)
    np.testing.assert_allclose(ours["f_curve"], np.flip(t["f"]["dynamic"])[1:], rtol=0, atol=1e-9)
    assert ours["iou"] == pytest.approx(t["iou"]["binary"], abs=1e-9)
    assert ours["s_measure"] == pytest.approx(sm.get_results()["sm"], abs=1e-9)
    assert ours["mae"] == pytest.approx(mae.get_results()["mae"], abs=1e-9)
    assert ours["e_mean"] == pytest.approx(em.get_results()["em"]["curve"].mean(), abs=1e-9)


# --------------------------------------------------------------------------- hand-made


def test_sod_toolkit_normalises_per_image_and_binarises_at_above_128():
    v = np.array([[50, 100], [150, 200]], np.uint8)
    gt = np.array([[0, 128], [129, 255]], np.uint8)
    levels_prob, mask = prepare_sod_toolkit(v, gt)
    np.testing.assert_allclose(levels_prob.prob, [[0, 1 / 3], [2 / 3, 1]], rtol=0, atol=1e-15)
    np.testing.assert_array_equal(levels_prob.levels, [[0, 85], [170, 255]])
    np.testing.assert_array_equal(mask, [[F, F], [T, T]])  # 128 is background (> 128)
    paper_map, paper_mask = get_protocol("paper").prepare(v, gt)
    np.testing.assert_array_equal(paper_map, v)
    np.testing.assert_array_equal(paper_mask, [[F, T], [T, T]])  # 128 is foreground (>= 128)
    # MAE on the normalised map: (0 + 1/3 + 1/3 + 0) / 4
    r = _ours([(v, gt)], "sod-toolkit")
    assert r["mae"] == pytest.approx(1 / 6, abs=1e-15)
    # 256 thresholds v >= m on the levels {0, 85, 170, 255}, P = R = 0 for empty masks:
    # m = 0: all 4 pixels (P 1/2, R 1); 1..85: 3 (P 2/3); 86..170: 2 (P 1, R 1); 171..255: 1 (R 1/2)
    m = np.arange(256)
    f = lambda p, r: 1.3 * p * r / (0.3 * p + r)  # noqa: E731
    expected = np.select([m == 0, m <= 85, m <= 170], [f(1 / 2, 1), f(2 / 3, 1), 1.0], f(1, 1 / 2))
    np.testing.assert_allclose(r["f_curve"], expected, rtol=0, atol=1e-15)
    assert r["max_f"] == 1.0 and r["mean_f"] == pytest.approx(expected.mean(), abs=1e-15)
    # adaptive: 2 * mean(prob) = 1 -> only the pixel at 1 is foreground: P 1, R 1/2
    assert r["adaptive_f"] == pytest.approx(f(1, 1 / 2), abs=1e-15)


def test_constant_map_is_left_as_it_is_like_pysodmetrics():
    v = np.full((4, 5), 77, np.uint8)
    gt = np.zeros((4, 5), np.uint8)
    gt[1:3, 1:4] = 255
    s, mask = prepare_sod_toolkit(v, gt)
    np.testing.assert_array_equal(s.prob, v / 255)  # no 0/0: mapminmax of a constant map is itself
    # pysodmetrics truncates p * 255 to 8 bits: 77 / 255 * 255 is 76.99999999999999 in float64
    assert s.levels[0, 0] == np.uint8(v[0, 0] / 255 * 255)
    ours, theirs = _ours([(v, gt)], "sod-toolkit"), _pysodmetrics([(v, gt)])
    for k in TOOLKIT_KEYS:
        assert ours[k] == pytest.approx(theirs[k], abs=1e-12), k


def test_float_maps_enter_the_toolkit_as_their_8_bit_png():
    p = np.array([[0.1, 0.2], [0.3, 0.9]])
    gt = np.array([[F, F], [T, T]])
    a = _ours([(p, gt)], "sod-toolkit")
    b = _ours([(np.round(p * 255).astype(np.uint8), gt)], "sod-toolkit")
    for k in TOOLKIT_KEYS:
        assert a[k] == b[k], k


def test_protocol_registry():
    assert protocol_names() == ["paper", "sod-toolkit"]
    with pytest.raises(UnknownNameError, match="unknown evaluation protocol 'sod'.*sod-toolkit"):
        SegmentationMetrics(protocol="sod")
    # the same classes: one protocol's options change only the conventions
    a, b = SegmentationMetrics(protocol="paper"), SegmentationMetrics(protocol="sod-toolkit")
    assert type(a.metrics["max_f"]) is type(b.metrics["max_f"])
    assert (a.metrics["max_f"].lowest_level, b.metrics["max_f"].lowest_level) == (1, 0)


# --------------------------------------------------------------------------- tiny maps


@st.composite
def _tiny(draw):
    """1..5 images up to 5 x 5: uint8 maps (often constant) and uint8 masks of {0, 128, 255}
    (often empty or full)."""
    n = draw(st.integers(1, 5))
    pairs = []
    for _ in range(n):
        shape = draw(st.tuples(st.integers(1, 5), st.integers(1, 5)))
        kind = draw(st.sampled_from(["any", "constant", "two"]))
        if kind == "constant":
            v = np.full(shape, draw(st.integers(0, 255)), np.uint8)
        elif kind == "two":
            v = np.where(draw(hnp.arrays(np.bool_, shape)), draw(st.integers(0, 255)), draw(st.integers(0, 255)))
            v = v.astype(np.uint8)
        else:
            v = draw(hnp.arrays(np.uint8, shape))
        fill = draw(st.sampled_from(["any", "empty", "full"]))
        if fill == "any":
            gt = draw(hnp.arrays(np.uint8, shape, elements=st.sampled_from([0, 128, 255])))
        else:
            gt = np.full(shape, 0 if fill == "empty" else 255, np.uint8)
        pairs.append((v, gt))
    return pairs


@settings(max_examples=150, deadline=None)
@given(_tiny())
def test_sod_toolkit_equals_pysodmetrics_on_tiny_maps(pairs):
    ours, theirs = _ours(pairs, "sod-toolkit"), _pysodmetrics(pairs)
    for k in ("max_f", "mean_f", "adaptive_f", "weighted_f", "mae"):
        assert ours[k] == pytest.approx(theirs[k], abs=1e-9), k
    np.testing.assert_allclose(ours["f_curve"], theirs["f_curve"], rtol=0, atol=1e-9)
    # the documented differences: E capped at 1 per image (theirs is N / (N - 1) for a perfect
    # map), S finite where an empty quadrant makes theirs NaN
    np.testing.assert_allclose(ours["e_curve"], np.mean(np.minimum(theirs["e_curves"], 1), axis=0), rtol=0, atol=1e-9)
    assert ours["e_adaptive"] == pytest.approx(np.mean(np.minimum(theirs["e_adaptives"], 1)), abs=1e-9)
    if np.isfinite(theirs["s_measure"]):
        assert ours["s_measure"] == pytest.approx(theirs["s_measure"], abs=1e-9)


@st.composite
def _any_maps(draw):
    """Any map (uint8 or float in [0, 1], constant, tiny) with any mask (empty, full, mixed)."""
    shape = draw(st.tuples(st.integers(1, 6), st.integers(1, 6)))
    if draw(st.booleans()):
        v = draw(hnp.arrays(np.uint8, shape, elements=st.sampled_from([0, 1, 127, 128, 254, 255]) | st.integers(0, 255)))
    else:
        v = draw(hnp.arrays(np.float64, shape, elements=st.floats(0, 1)))
    if draw(st.booleans()):
        v = np.full(shape, v.flat[0], v.dtype)
    gt = draw(st.sampled_from([np.zeros(shape, bool), np.ones(shape, bool), None]))
    if gt is None:
        gt = draw(hnp.arrays(np.bool_, shape))
    return v, gt


@settings(max_examples=300, deadline=None)
@given(st.lists(_any_maps(), min_size=1, max_size=3), st.sampled_from(["paper", "sod-toolkit"]))
def test_every_metric_stays_in_its_range_on_any_input(pairs, protocol):
    names = ("max_f", "iou", "accuracy", "mae", "s_measure", "e_measure", "weighted_f")
    m = SegmentationMetrics(names, protocol=protocol)
    for v, gt in pairs:
        m.update(v, gt)
    r = m.compute()
    for k, val in r.items():
        if k in ("n_images", "best_threshold", "thresholds", "e_thresholds"):
            continue
        a = np.asarray(val, dtype=np.float64)
        assert np.isfinite(a).all() and (a >= 0).all() and (a <= 1).all(), (k, val)


def test_one_by_one_image_has_an_e_measure_in_range():
    # issue 18: a 1 x 1 image gave 4.5e15 (the field's alignment sum / (N - 1) with N = 1).
    # Capped, a pixel scores 1 where the binarised map matches the mask and 0 where it does not.
    # Thresholds v >= m, m = 0..255: m = 0 marks the pixel as foreground whatever its value.
    m = np.arange(256)
    for v, gt, expected in (
        (255, T, np.ones(256)),  # foreground at every m
        (0, T, (m == 0) * 1.0),  # foreground only at m = 0
        (0, F, (m > 0) * 1.0),  # background from m = 1
    ):
        e = EMeasure()
        e.update(np.array([[v]], np.uint8), np.array([[gt]]))
        np.testing.assert_array_equal(e.compute()["e_curve"], expected)


def test_no_pixels_is_a_one_line_error():
    with pytest.raises(ValueError, match="no pixels"):
        image_stats(np.zeros((0, 3), np.uint8), np.zeros((0, 3), bool))
