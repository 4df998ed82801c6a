"""masking.rules: every rule and filter against hand-made arrays with exact expected outcomes,
the binning against np.histogram, and the clean-up against skimage.measure.label."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from core.registry import UnknownNameError
from masking import rules as M

W = [np.float32(c) for c in M.GRAY_WEIGHTS]


def rgb(v, shape=None):
    """An image [..., 3] whose three channels equal `v` (so gray = 0.9999 v); a constant one of
    `shape` when given."""
    v = np.asarray(v, np.float32) if shape is None else np.full(shape, v, np.float32)
    return np.repeat(v[..., None], 3, axis=-1)


# ------------------------------------------------------------------------------------ gray

def test_gray_exact_weights_and_shape():
    x = np.array([[[1, 0, 0], [0, 1, 0], [0, 0, 1], [-1, -1, -1], [0.5, -0.25, 1]]], np.float32)
    g = M.gray(x)
    assert g.dtype == np.float32 and g.shape == (1, 5)
    expected = [W[0], W[1], W[2], (-W[0] + -W[1]) + -W[2],
                (W[0] * np.float32(0.5) + W[1] * np.float32(-0.25)) + W[2] * np.float32(1)]
    np.testing.assert_array_equal(g[0], np.array(expected, np.float32))
    with pytest.raises(ValueError, match="RGB"):
        M.gray(np.zeros((4, 4)))


def test_gray_is_elementwise_whatever_the_batch():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (3, 70, 90, 3)).astype(np.float32)  # > one 16K-pixel block in all
    g = M.gray(x)
    ref = W[0] * x[..., 0] + W[1] * x[..., 1] + W[2] * x[..., 2]
    np.testing.assert_array_equal(g, ref)
    np.testing.assert_array_equal(M.gray(x[1]), g[1])


# ------------------------------------------------------------------------------------ mask rules

def test_lighting_rule_exact():
    # brighter after the shift -> foreground; equal or darker -> background
    x = rgb([[0.0, 0.0, 0.5], [-0.5, 0.2, 0.9]])
    xs = rgb([[0.1, -0.1, 0.5], [-0.4, 0.2, 1.0]])
    expected = np.array([[1, 0, 0], [1, 0, 1]], bool)
    np.testing.assert_array_equal(M.MASK_RULES["lighting"](x, xs), expected)
    np.testing.assert_array_equal(M.MASK_RULES["lighting"](x[None], xs[None])[0], expected)


def test_mean_rule_is_per_image_and_ignores_x():
    a = rgb([[0.0, 0.4], [0.8, 1.0]])  # mean 0.55 * 0.9999: > mean at 0.8, 1.0
    b = rgb([[-1.0, -0.9], [-0.8, -0.4]])  # mean -0.775 * 0.9999: > mean at -0.4, and not -0.8
    xs = np.stack([a, b])
    x = np.full_like(xs, 5.0)  # unused by the rule
    expected = np.array([[[0, 0], [1, 1]], [[0, 0], [0, 1]]], bool)
    np.testing.assert_array_equal(M.MASK_RULES["mean"](x, xs), expected)
    # a constant image: nothing is strictly above its mean
    assert not M.MASK_RULES["mean"](x[0], rgb(0.3, shape=(3, 3))).any()


def test_background_removal_rule_exact():
    # d = mean_c(x') - mean_c(x) = [[0, 1], [2, 4]] -> scaled [[0, .25], [.5, 1]]: below 0.6 is foreground
    x = np.zeros((2, 2, 3), np.float32)
    xs = np.zeros((2, 2, 3), np.float32)
    xs[..., 0] = [[0.0, 3.0], [6.0, 12.0]]  # channel means 0, 1, 2, 4
    expected = np.array([[1, 1], [1, 0]], bool)
    np.testing.assert_array_equal(M.MASK_RULES["background-removal"](x, xs), expected)
    # per image: the second image's scale comes from its own min and max; 0.6 exactly is background
    x2 = rgb([[0.0, 0.0], [0.0, 0.0]])
    xs2 = rgb([[-1.0, 0.0], [0.2, 0.6]])  # d = -1, 0, .2, .6 -> scaled 0, .625, .75, 1
    got = M.MASK_RULES["background-removal"](np.stack([x, x2]), np.stack([xs, xs2]))
    np.testing.assert_array_equal(got, np.stack([expected, np.array([[1, 0], [0, 0]], bool)]))
    edge = rgb([[0.0, 0.6], [1.0, 1.0]])  # d scaled 0, .6, 1, 1: exactly 0.6 is not foreground
    np.testing.assert_array_equal(M.MASK_RULES["background-removal"](rgb(np.zeros((2, 2))), edge),
                                  np.array([[1, 0], [0, 0]], bool))
    # a constant difference (no contrast at all) has no foreground
    assert not M.MASK_RULES["background-removal"](x, rgb(0.7, shape=(2, 2))).any()


def test_pair_shifts_of_each_rule():
    assert M.pair_shifts("lighting", 5.0) == (0.0, 5.0)
    assert M.pair_shifts("mean", 5) == (0.0, 5.0)
    assert M.pair_shifts("background-removal", 22.0) == (-11.0, 11.0)
    with pytest.raises(UnknownNameError):
        M.pair_shifts("lightning", 5.0)


def test_registry_unknown_and_duplicate():
    with pytest.raises(UnknownNameError) as err:
        M.MASK_RULES["lightning"]
    msg = str(err.value)
    assert "did you mean lighting" in msg and "choose from background-removal, lighting, mean" in msg and "\n" not in msg
    with pytest.raises(UnknownNameError, match="did you mean paper"):
        M.HISTOGRAM_RULES["papr"]
    with pytest.raises(ValueError, match="registered twice"):
        M.MASK_RULES.register("mean")(lambda x, xs, g=None: xs)
    assert set(M.MASK_RULES) == {"background-removal", "lighting", "mean"}
    assert set(M.HISTOGRAM_RULES) == {"paper", "bimodal"}


# ------------------------------------------------------------------------------------ components

DIAGONAL = np.array([
    [1, 1, 1, 0, 0],
    [1, 1, 1, 0, 0],
    [1, 1, 1, 0, 0],
    [0, 0, 0, 1, 0],
    [0, 0, 0, 0, 0],
], np.uint8)


def test_connectivity_4_vs_8_on_a_diagonal():
    # 4-connectivity: the corner pixel is its own component, area 1 < 0.2 x 9 -> removed
    only_block = DIAGONAL.copy()
    only_block[3, 3] = 0
    np.testing.assert_array_equal(M.keep_large_components(DIAGONAL, connectivity=4), only_block)
    # 8-connectivity: it touches the block by a corner, one component of area 10 -> kept
    np.testing.assert_array_equal(M.keep_large_components(DIAGONAL, connectivity=8), DIAGONAL)


def test_ratio_boundary_equal_area_is_kept():
    m = np.zeros((6, 8), np.uint8)
    m[0:2, 0:5] = 1  # largest, area 10
    m[4, 0:2] = 1  # area 2 == 0.2 x 10 -> kept
    m[4, 6] = 1  # area 1 < 2 -> removed
    m[5, 4] = 1  # area 1 -> removed
    expected = m.copy()
    expected[4, 6] = expected[5, 4] = 0
    out = M.keep_large_components(m)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)
    # ratio 0.21: 2 < 2.1 -> the bar goes too
    expected[4, 0:2] = 0
    np.testing.assert_array_equal(M.keep_large_components(m, min_ratio=0.21), expected)
    # ratio 0 keeps everything
    np.testing.assert_array_equal(M.keep_large_components(m, min_ratio=0), m)


def test_components_batch_bool_input_and_empty():
    batch = np.stack([DIAGONAL.astype(bool), np.zeros((5, 5), bool), DIAGONAL.astype(bool)])
    out = M.keep_large_components(batch, connectivity=4)
    assert out.shape == (3, 5, 5) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], out[2])
    assert out[0].sum() == 9 and out[1].sum() == 0
    with pytest.raises(ValueError, match="connectivity"):
        M.keep_large_components(DIAGONAL, connectivity=6)


def _skimage_reference(mask: np.ndarray, connectivity: int, ratio: float) -> np.ndarray:
    from skimage.measure import label

    labels = label(mask, connectivity=1 if connectivity == 4 else 2, background=0)
    areas = np.bincount(labels.ravel())
    areas[0] = 0
    if areas.max() == 0:
        return mask.astype(np.uint8)
    r = Fraction(str(ratio))
    keep = np.array([a * r.denominator >= r.numerator * areas.max() for a in areas])
    keep[0] = False
    return keep[labels].astype(np.uint8)


@settings(max_examples=150, deadline=None)
@given(mask=hnp.arrays(bool, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=14)),
       connectivity=st.sampled_from([4, 8]), ratio=st.sampled_from([0.0, 0.1, 0.2, 0.5, 1.0]))
def test_components_match_skimage(mask, connectivity, ratio):
    pytest.importorskip("skimage")
    got = M.keep_large_components(mask, connectivity=connectivity, min_ratio=ratio)
    np.testing.assert_array_equal(got, _skimage_reference(mask, connectivity, ratio))


@pytest.mark.parametrize("connectivity", [4, 8])
def test_components_large_masks_match_skimage(connectivity):
    # > 2 x 65535 pixels: labels no longer fit 16 bits, the 32-bit path runs
    pytest.importorskip("skimage")
    rng = np.random.default_rng(3)
    mask = rng.random((400, 400)) < 0.45
    mask[50:150, 50:150] = True  # one large component, so most of the noise goes
    got = M.keep_large_components(mask, connectivity=connectivity)
    np.testing.assert_array_equal(got, _skimage_reference(mask, connectivity, 0.2))
    assert 0 < got.sum() < mask.sum()


# ------------------------------------------------------------------------------------ size

def test_size_filter_boundary():
    m = np.zeros((4, 4), np.uint8)
    m.flat[:8] = 1
    assert M.passes_size_filter(m) is True  # exactly 0.5 passes
    m.flat[8] = 1
    assert M.passes_size_filter(m) is False
    assert M.passes_size_filter(m, max_fraction=9 / 16) is True
    batch = np.zeros((3, 4, 4), bool)
    batch[0].flat[:8] = True
    batch[1].flat[:9] = True
    np.testing.assert_array_equal(M.passes_size_filter(batch), [True, False, True])
    np.testing.assert_array_equal(M.fg_fraction(batch), [0.5, 9 / 16, 0.0])
    with pytest.raises(ValueError, match="max_fraction"):
        M.passes_size_filter(m, max_fraction=0)


# ------------------------------------------------------------------------------------ histogram binning

def _np_reference(v: np.ndarray) -> np.ndarray:
    return np.stack([np.histogram(np.clip(a, -1, 1), M.N_BINS, (-1, 1))[0] for a in v])


def test_histogram_bins_at_the_edges():
    edges = np.linspace(-1, 1, 13, dtype=np.float32)
    below = np.nextafter(edges, np.float32(-2))
    v = np.stack([edges, below, np.nextafter(edges, np.float32(2))])[None]
    h = M.histogram12(v)
    # each edge value opens its bin; 1.0 closes the last one; just below an edge is the bin before
    np.testing.assert_array_equal(h[0], [4] + [3] * 10 + [5])
    np.testing.assert_array_equal(M.histogram12(edges[None]), [[1] * 11 + [2]])
    np.testing.assert_array_equal(M.histogram12(below[None]), [[2] + [1] * 10 + [1]])
    # out of range is clipped into the end bins; NaN is counted nowhere; -0.0 opens bin 6
    special = np.array([[-7.0, 3.0, -np.inf, np.inf, np.nan, -0.0, -1e-30, 1e-30]], np.float32)
    np.testing.assert_array_equal(M.histogram12(special), [[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2]])
    np.testing.assert_array_equal(M.histogram12(special), _np_reference(special))


@settings(max_examples=100, deadline=None)
@given(v=hnp.arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(1, 40)),
                    elements=st.one_of(st.floats(-1.5, 1.5, width=32),
                                       st.sampled_from(list(np.linspace(-1, 1, 13, dtype=np.float32))),
                                       st.floats(width=32))))
def test_histogram_matches_np_histogram(v):
    np.testing.assert_array_equal(M.histogram12(v), _np_reference(v))


def test_histogram_sources():
    xs = np.zeros((1, 2, 3, 3), np.float32)
    xs[..., 0], xs[..., 1], xs[..., 2] = -0.95, 0.95, 0.05
    # bimodal pools the three channels: 6 values each in bins 0, 6 and 11
    np.testing.assert_array_equal(M.HISTOGRAM_RULES["bimodal"].histogram(xs), [[6, 0, 0, 0, 0, 0, 6, 0, 0, 0, 0, 6]])
    # paper histograms gray(x') = -0.2839... + 0.5576... + 0.0057 = 0.2795: bin 7
    np.testing.assert_array_equal(M.HISTOGRAM_RULES["paper"].histogram(xs), [[0] * 7 + [6] + [0] * 4])


# ------------------------------------------------------------------------------------ histogram rules

END_MASSES = [5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]  # 6s = 15 10 0 .. 0 14 21
INNER_PEAK = [5, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 7]
INNER_PLATEAU = [0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0]  # 6s = 0 0 0 2 4 4 2 0 ..: plateau start at 4
PLATEAU_THEN_RISE = [6, 0, 0, 0, 1, 0, 0, 1, 0, 0, 3, 3]  # 6s = 18 12 0 2 2 2 2 2 2 6 12 18
RIGHT_SHOULDER = [4, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1]  # 6s[9..11] = 4 6 6: plateau to the end
LEFT_SHOULDER = [1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 4]  # 6s[0..2] = 6 6 4: not s[1] > s[0]
LEFT_SPREAD = [5, 3, 1, 0, 0, 0, 0, 0, 0, 0, 0, 6]  # 6s[0..2] = 24 18 8: mass spills into bin 2
LEFT_SPREAD_PADDED = [5, 3, 1, 0, 0, 0, 0, 0, 0, 0, 0, 6]  # zero padding: 3s[0..2] = 8 9 4, bin 1 a max
BRIGHT_SPREAD = [6, 0, 0, 0, 0, 0, 0, 0, 1, 2, 4, 3]  # 6s[8..11] = 6 14 18 21: rises to the end
ONE_MODE = [1, 2, 3, 4, 5, 6, 7, 6, 5, 4, 3, 2]  # s peaks at 6 only
TWO_MODES = [20, 10, 6, 4, 3, 2, 1, 4, 5, 6, 10, 20]  # 6s = 90 72 40 26 18 12 14 20 30 42 72 90
TWO_MODES_INNER = [1, 10, 6, 4, 3, 2, 1, 4, 5, 6, 10, 1]  # 6s = 33 34 40 26 .. 42 34 33: bins 2 and 9
UNIFORM = [1] * 12  # 6s = 6 6 ... 6: no maximum at all
TIE_AT_ONE = [2, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5]  # 6s = 12 8: h1 = h0 is no maximum
SPILL_TIE = [3, 3, 3, 0, 0, 0, 0, 0, 0, 0, 0, 5]  # 6s = 18 18 12: s[1] == s[0], not >


@pytest.mark.parametrize("counts, keep", [
    (END_MASSES, True),
    (INNER_PEAK, False),
    (INNER_PLATEAU, False),
    (PLATEAU_THEN_RISE, False),  # the start of any inner plateau counts, as the text says
    (RIGHT_SHOULDER, True),  # plateau runs on to bin 11: a shoulder of the end bin
    ([4, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0], False),  # 6s[8..11] = 4 6 4 3: the same plateau, cut
    (LEFT_SHOULDER, True),
    (LEFT_SPREAD, True),  # the corrected end window: a dark mass spilling into bin 2 passes
    (BRIGHT_SPREAD, True),
    (ONE_MODE, False),
    (TWO_MODES, True),
    (TWO_MODES_INNER, False),  # modes inside the histogram are inner maxima
    (UNIFORM, True),
    (TIE_AT_ONE, True),
    (SPILL_TIE, True),
    ([2, 1, 3, 0, 0, 0, 0, 0, 0, 0, 0, 5], False),  # 6s = 9 12 8: a dip at bin 1 still peaks its window
    ([0] * 12, True),
    ([100] + [0] * 11, True),
    ([0] * 11 + [100], True),
    ([0] * 6 + [100] + [0] * 5, False),
])
def test_paper_rule_hand_made(counts, keep):
    assert M.paper_keeps(np.array(counts)) == keep


def test_paper_rule_window_averages_the_bins_it_covers():
    np.testing.assert_array_equal(M._window3_mean6(np.array(LEFT_SPREAD)), [24, 18, 8, 2] + [0] * 6 + [12, 18])
    np.testing.assert_array_equal(M._window3(np.array(LEFT_SPREAD_PADDED))[:3], [8, 9, 4])


@pytest.mark.parametrize("counts, keep", [
    (ONE_MODE, False),  # one maximum (bin 6)
    (TWO_MODES, True),  # 3s = 30 36 20 ..: exactly two maxima, bins 1 and 10
    (END_MASSES, True),  # s = 5 5 0 ... 0 7 7: ties count, many maxima
    (LEFT_SPREAD_PADDED, True),  # bins 1 and 11
    ([0] * 6 + [100] + [0] * 5, True),  # the zero runs at both ends count as maxima (reference code)
    ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], False),  # s rises to bin 10 (s[10]=33 > s[11]=23): 1 max
    ([12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1], False),  # its mirror: 1 max at bin 1
    ([3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], True),  # s = 4 5 3 3 ... 3 2: bin 1 and the flat run 3..10
])
def test_bimodal_rule_hand_made(counts, keep):
    assert M.bimodal_keeps(np.array(counts)) == keep


def test_histogram_rules_vectorise():
    batch = np.array([END_MASSES, INNER_PEAK, RIGHT_SHOULDER, ONE_MODE, TWO_MODES])
    np.testing.assert_array_equal(M.paper_keeps(batch), [True, False, True, False, True])
    np.testing.assert_array_equal(M.bimodal_keeps(batch), [True, True, True, False, True])
    with pytest.raises(ValueError, match="12 bin counts"):
        M.paper_keeps(np.zeros(10))


# ------------------------------------------------------------------------------------ config & batch

def pair(obj: np.ndarray, fg: float, bg: float) -> tuple[np.ndarray, np.ndarray]:
    """x' = fg on the object, bg elsewhere; x is 0.1 darker on the object and 0.1 brighter
    elsewhere, so the lighting mask is exactly `obj`."""
    xs = np.where(obj, np.float32(fg), np.float32(bg)).astype(np.float32)
    x = np.where(obj, xs - np.float32(0.1), xs + np.float32(0.1)).astype(np.float32)
    return rgb(x), rgb(xs)


def block(h0, h1, w0, w1, shape=(8, 8)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[h0:h1, w0:w1] = True
    return m


def _batch(*pairs):
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def test_presets_and_config_validation():
    assert M.PRESETS["default"] == M.FilterConfig("lighting", 4, 0.2, True, 0.5, "bimodal")
    assert M.PRESETS["flowers"] == M.FilterConfig(mask_rule="mean", size_filter=False)
    assert M.PRESETS.get("flowers").histogram_rule == "bimodal"
    with pytest.raises(UnknownNameError, match="did you mean flowers"):
        M.PRESETS.get("flower")
    with pytest.raises(UnknownNameError, match="choose from background-removal, lighting, mean"):
        M.FilterConfig(mask_rule="brightness")
    with pytest.raises(UnknownNameError, match="bimodal"):
        M.FilterConfig(histogram_rule="bimodl")
    with pytest.raises(ValueError, match="connectivity"):
        M.FilterConfig(connectivity=2)
    with pytest.raises(ValueError, match="min_component_ratio"):
        M.FilterConfig(min_component_ratio=1.5)
    with pytest.raises(ValueError, match="max_fg_fraction"):
        M.FilterConfig(max_fg_fraction=0.0)
    with pytest.raises(Exception):
        M.PRESETS["default"].mask_rule = "mean"  # frozen


def test_process_batch_order_and_reasons():
    small, big, half = block(2, 5, 2, 5), block(1, 7, 1, 7), block(0, 4, 0, 8)
    stray = half.copy()
    stray[6, 6] = True  # 33/64 > 0.5 before the clean-up, 32/64 after it
    x, xs = _batch(
        pair(small, 0.95, -0.95),  # end masses, 9/64: accepted
        pair(big, 0.95, 0.05),  # 36/64 too big AND inner-bin histogram: counted as "size"
        pair(small, 0.95, 0.05),  # size ok, histogram peaks in bin 6: "histogram"
        pair(half, 0.95, -0.95),  # exactly half: accepted
        pair(stray, 0.95, -0.95),  # components run before the size filter: accepted
    )
    paper = M.FilterConfig(histogram_rule="paper")
    r = M.process_batch(x, xs, paper)
    assert r.reason == [None, "size", "histogram", None, None]
    np.testing.assert_array_equal(r.accepted, [True, False, False, True, True])
    assert r.rejected() == {"size": 1, "histogram": 1}
    assert r.masks.dtype == np.uint8 and r.masks.shape == (5, 8, 8)
    for got, want in zip(r.masks, [small, big, small, half, half]):
        np.testing.assert_array_equal(got, want.astype(np.uint8))
    np.testing.assert_array_equal(r.fg_fraction, [9 / 64, 36 / 64, 9 / 64, 0.5, 0.5])

    # each filter switches off on its own
    no_hist = M.process_batch(x, xs, M.FilterConfig(histogram_rule=None))
    assert no_hist.reason == [None, "size", None, None, None]
    no_size = M.process_batch(x, xs, M.FilterConfig(size_filter=False, histogram_rule="paper"))
    assert no_size.reason == [None, "histogram", "histogram", None, None]
    no_cc = M.process_batch(x, xs, M.FilterConfig(min_component_ratio=0.0, histogram_rule="paper"))
    assert no_cc.reason == [None, "size", "histogram", None, "size"]
    np.testing.assert_array_equal(no_cc.masks[4], stray.astype(np.uint8))
    # the reference code's histogram rule (the default) keeps the bin-6 sample: maxima in the
    # zero runs count
    bimodal = M.process_batch(x, xs)
    assert bimodal.reason == [None, "size", None, None, None]


def test_process_batch_flowers_preset():
    # mean rule: foreground = brighter than the mean of gray(x'); no size filter
    obj = block(0, 6, 0, 8)  # 48/64 = 0.75 of the image
    x, xs = _batch(pair(obj, 0.95, -0.95))
    x[:] = 0.0  # the mean rule ignores x
    r = M.process_batch(x, xs, M.PRESETS["flowers"])
    np.testing.assert_array_equal(r.masks[0], obj.astype(np.uint8))
    assert r.reason == [None] and r.fg_fraction[0] == 0.75
    assert M.process_batch(x, xs).reason == ["size"]  # lighting: x = 0 < gray(x') on the object


def test_process_batch_empty_mask_is_kept_and_shapes():
    nothing = np.zeros((8, 8), bool)
    x, xs = _batch(pair(nothing, 0.95, -0.95))
    r = M.process_batch(x, xs)
    assert r.accepted.tolist() == [True] and r.reason == [None] and r.masks.sum() == 0
    single = M.process_batch(x[0], xs[0])  # one pair without the batch axis
    assert single.masks.shape == (1, 8, 8)
    empty = M.process_batch(np.zeros((0, 8, 8, 3)), np.zeros((0, 8, 8, 3)))
    assert empty.masks.shape == (0, 8, 8) and empty.reason == [] and empty.rejected() == {"size": 0, "histogram": 0}
    with pytest.raises(ValueError, match="one shape"):
        M.process_batch(x, xs[:, :4])
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        M.process_batch(x[..., :2], xs[..., :2])


def test_process_batch_does_not_depend_on_the_batch(monkeypatch):
    monkeypatch.setattr(M, "CHUNK_PIXELS", 2 * 16 * 16 + 1)  # chunks of 2 images, and a short one
    rng = np.random.default_rng(1)
    pairs = []
    for i in range(7):
        side = [3, 14, 5, 12, 4, 6, 15][i]  # objects of 9 .. 225 pixels out of 256
        bg = [-0.95, 0.05][i % 2]
        x, xs = pair(block(1, 1 + side, 0, side, shape=(16, 16)), 0.95, bg)
        noise = rng.normal(0, 0.08, (2,) + x.shape).astype(np.float32)  # stray components
        pairs.append((x + noise[0], xs + noise[1]))
    x, xs = _batch(*pairs)
    for cfg in (M.FilterConfig(histogram_rule="paper"), M.FilterConfig(histogram_rule="bimodal", connectivity=8)):
        whole = M.process_batch(x, xs, cfg)
        assert {None, "size"} <= set(whole.reason)
        for i in range(len(x)):
            one = M.process_batch(x[i:i + 1], xs[i:i + 1], cfg)
            np.testing.assert_array_equal(one.masks[0], whole.masks[i])
            assert one.reason[0] == whole.reason[i]
    assert set(M.process_batch(x, xs, M.FilterConfig(histogram_rule="paper")).reason) == {None, "size", "histogram"}


def _reference_maxes_filter(shifted_nchw):
    """The reference code's `maxes_filter` (gan_mask_gen.py), transcribed with its torch calls."""
    import torch
    import torch.nn.functional as F

    good = []
    for im in shifted_nchw:
        stats = torch.histc(im, 12, -1, 1)
        stats = F.conv1d(stats.view(1, 1, -1), torch.ones([1, 1, 3]), padding=1).view(-1).numpy()
        maxes = np.r_[True, stats[1:] >= stats[:-1]] & np.r_[stats[:-1] >= stats[1:], True]
        good.append(len(np.nonzero(maxes)[0]) >= 2)
    return np.array(good)


def test_bimodal_matches_the_reference_code():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    centres = (np.arange(12) + 0.5) / 6 - 1  # values well inside bins: the binnings agree there
    xs = []
    for i in range(40):  # 4 x 4 x 3 = 48 values: ONE_MODE's counts, or random ones
        counts = ONE_MODE if i % 4 == 0 else rng.multinomial(48, rng.dirichlet(np.full(12, rng.uniform(0.2, 3))))
        values = np.repeat(centres, counts) + rng.uniform(-0.05, 0.05, 48)
        xs.append(rng.permutation(values).reshape(4, 4, 3))
    xs = np.array(xs, np.float32)
    ref = _reference_maxes_filter(torch.from_numpy(xs).permute(0, 3, 1, 2))
    np.testing.assert_array_equal(M.HISTOGRAM_RULES["bimodal"](xs), ref)
    assert 0 < ref.sum() < len(ref)  # both outcomes occur


def test_fast_gray_equals_the_plain_numpy_weighted_sum():
    """gray() sums through cv2 for speed; it must equal numpy's left-to-right float32 sum exactly."""
    assert M._cv2_sums_in_order()
    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 1, size=(3, 17, 23, 3)).astype(np.float32)
    w = np.float32([0.2989, 0.5870, 0.1140])
    ref = (x[..., 0] * w[0] + x[..., 1] * w[1]) + x[..., 2] * w[2]
    np.testing.assert_array_equal(M.gray(x), ref)
