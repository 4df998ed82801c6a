"""The two-operator model (finder.affine) on hand-made images with known operators and region,
and the appendix-B ranking rule on hand-made L/D/balance tables."""
from __future__ import annotations

import numpy as np
import pytest

from finder import affine

# Two known operators in [M | b] form: A1 lights and desaturates a little, A2 halves and darkens.
A1 = np.array([[0.6, 0.1, 0.0, 0.35],
               [0.0, 0.7, 0.1, 0.30],
               [0.1, 0.0, 0.5, 0.40]])
A2 = np.array([[0.5, 0.0, 0.0, -0.05],
               [0.05, 0.45, 0.0, -0.02],
               [0.0, 0.0, 0.55, -0.04]])


def _scene(seed: int = 0, size: int = 12):
    """Two images [2, size, size, 3] in [0.05, 0.95] and a known region (a rectangle per image);
    shifted pixels = A1 inside the region, A2 outside, so eq. 3 holds exactly."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.05, 0.95, (2, size, size, 3))
    region = np.zeros((2, size, size), bool)
    region[0, 2:7, 3:9] = True
    region[1, 5:11, 1:6] = True
    x_shift = np.where(region[..., None], affine.apply_affine(A1, x), affine.apply_affine(A2, x))
    return x, x_shift, region


def test_apply_affine_is_matrix_plus_bias():
    c = np.array([0.2, 0.4, 0.6])
    expected = np.array([0.6 * 0.2 + 0.1 * 0.4 + 0.35, 0.7 * 0.4 + 0.1 * 0.6 + 0.30, 0.1 * 0.2 + 0.5 * 0.6 + 0.40])
    np.testing.assert_allclose(affine.apply_affine(A1, c), expected, rtol=0, atol=1e-15)


def test_true_operators_restore_exactly_and_give_the_region():
    x, x_shift, region = _scene()
    ops = np.stack([A1, A2])
    classes = affine.assign_classes(ops, x, x_shift)
    np.testing.assert_array_equal(classes, np.where(region, 0, 1))
    np.testing.assert_array_equal(affine.two_operator_image(ops, x, x_shift), x_shift)
    assert affine.restoration_loss(ops, x, x_shift) == 0.0
    assert affine.class_balance(classes) == region.mean()
    # A1 lights its pixels, A2 darkens: the lit class is A1
    assert affine.lit_class(ops, x, classes) == 0
    assert affine.lit_class(ops[::-1], x, 1 - classes) == 1


def test_restoration_loss_and_assignment_by_hand():
    # two pixels: the first moves by (0.3, 0.4, 0) (distance 0.5), the second not at all
    x = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    x_shift = np.array([[0.3, 0.4, 0.0], [1.0, 1.0, 1.0]])
    ops = affine.identity_pair(bias=0.0)
    assert affine.restoration_loss(ops, x, x_shift) == pytest.approx(0.25, abs=1e-15)
    np.testing.assert_array_equal(affine.assign_classes(ops, x, x_shift), [0, 0])  # ties go to A1
    ops[1, :, 3] = [0.3, 0.4, 0.0]  # A2 = translation that explains the first pixel exactly
    np.testing.assert_array_equal(affine.assign_classes(ops, x, x_shift), [1, 0])
    assert affine.restoration_loss(ops, x, x_shift) == 0.0
    np.testing.assert_array_equal(affine.two_operator_image(ops, x, x_shift), x_shift)


def test_operator_distance_of_two_translations_is_the_bias_gap():
    x, _, _ = _scene()
    ops = affine.identity_pair(bias=0.0)
    ops[0, :, 3] = [0.1, 0.2, 0.2]
    ops[1, :, 3] = [0.1, -0.1, -0.2]
    # A1 c - A2 c = (0, 0.3, 0.4) for every pixel: D_h = 0.5 exactly
    assert affine.operator_distance(ops, x) == pytest.approx(0.5, abs=1e-12)


def test_operator_distance_matches_a_pixel_loop():
    x = _scene(seed=3)[0][:1, :4, :4]
    ops = np.stack([A1, A2])
    total = 0.0
    for c in x.reshape(-1, 3):
        a = A1[:, :3] @ c + A1[:, 3]
        b = A2[:, :3] @ c + A2[:, 3]
        total += np.sqrt(((a - b) ** 2).sum())
    assert affine.operator_distance(ops, x) == pytest.approx(total / 16, rel=1e-12)


def test_least_squares_recovers_operators_from_known_classes():
    x, x_shift, region = _scene(seed=1)
    ops = affine.fit_least_squares(x, x_shift, np.where(region, 0, 1))
    np.testing.assert_allclose(ops[0], A1, atol=1e-10)
    np.testing.assert_allclose(ops[1], A2, atol=1e-10)


def test_em_recovers_operators_and_mask_from_the_identity_start():
    x, x_shift, region = _scene(seed=2)
    ops, classes, iters = affine.fit_em(x, x_shift)
    np.testing.assert_array_equal(classes, np.where(region, 0, 1))
    np.testing.assert_allclose(ops[0], A1, atol=1e-10)
    np.testing.assert_allclose(ops[1], A2, atol=1e-10)
    assert affine.restoration_loss(ops, x, x_shift) < 1e-10
    assert iters <= 3


def test_least_squares_keeps_the_fallback_for_an_empty_class():
    x, x_shift, _ = _scene()
    classes = np.zeros(x.shape[:-1], np.uint8)
    fallback = affine.identity_pair(0.25)
    ops = affine.fit_least_squares(x, x_shift, classes, fallback=fallback)
    np.testing.assert_array_equal(ops[1], fallback[1])


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="shape"):
        affine.restoration_loss(np.zeros((3, 4)), np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="share one shape"):
        affine.restoration_loss(affine.identity_pair(), np.zeros((2, 3)), np.zeros((3, 3)))


# ---------------------------------------------------------------------------------------------
# ranking


def test_rank_drops_one_class_candidates_then_top_fifth_by_distance_then_lowest_loss():
    #            0     1     2     3     4      5     6     7      8     9
    losses = [0.10, 0.05, 0.20, 0.01, 0.30, 0.02, 0.15, 0.12, 0.08, 0.11]
    dists = [0.50, 0.90, 0.80, 0.95, 0.85, 0.10, 0.70, 0.99, 0.60, 0.40]
    bal = [0.30, 0.50, 0.40, 0.995, 0.20, 0.50, 0.989, 0.99, 0.011, 0.01]
    entries = affine.rank_candidates(losses, dists, bal)
    # dropped: 3 (99.5% in A1), 7 (exactly 99%: ">= 99%" drops), 9 (99% in A2)
    assert [e.index for e in entries if e.status == "dropped"] == [3, 7, 9]
    # 7 survivors -> top ceil(0.2 * 7) = 2 by D_h: 1 (0.90) and 4 (0.85); by lowest L_h: 1 then 4;
    # then the rest by D_h: 2 (0.80), 6 (0.70), 8 (0.60), 0 (0.50), 5 (0.10)
    ranked = sorted((e for e in entries if e.rank is not None), key=lambda e: e.rank)
    assert [e.index for e in ranked] == [1, 4, 2, 6, 8, 0, 5]
    assert [e.rank for e in ranked] == [1, 2, 3, 4, 5, 6, 7]
    assert [e.status for e in ranked] == ["top", "top"] + ["below-top"] * 5
    assert [e.index for e in entries] == list(range(10))
    assert entries[3].rank is None and "99.50%" in entries[3].reason


def test_rank_top_share_is_at_least_one_and_lowest_loss_wins_inside_it():
    # 3 survivors: ceil(0.6) = 1 -> the highest D_h wins although its L_h is the worst
    entries = affine.rank_candidates([0.9, 0.1, 0.2], [1.0, 0.5, 0.6], [0.5, 0.5, 0.5])
    assert [e.rank for e in entries] == [1, 3, 2]
    # a larger top share lets the lowest L_h inside it win
    rule = affine.RankRule(top_fraction=0.67)  # ceil(2.01) = 3: everyone, ordered by L_h
    entries = affine.rank_candidates([0.9, 0.1, 0.2], [1.0, 0.5, 0.6], [0.5, 0.5, 0.5], rule)
    assert [e.rank for e in entries] == [3, 1, 2]


def test_rank_breaks_ties_by_the_other_key_then_index():
    entries = affine.rank_candidates([0.2, 0.1, 0.1, 0.1], [0.5, 0.5, 0.5, 0.7], [0.5] * 4,
                                     affine.RankRule(top_fraction=1.0))
    # all in the top share: L_h ascending; ties at L_h=0.1 by D_h descending (3), then index (1, 2)
    assert [e.rank for e in entries] == [4, 2, 3, 1]


def test_rank_drops_non_finite_and_handles_all_dropped():
    entries = affine.rank_candidates([np.nan, 0.1], [0.5, 0.5], [0.5, 1.0])
    assert [e.status for e in entries] == ["dropped", "dropped"]
    assert "non-finite" in entries[0].reason
    assert all(e.rank is None for e in entries)
    with pytest.raises(ValueError, match="differ in length"):
        affine.rank_candidates([0.1], [0.1, 0.2], [0.5])
