"""The two-operator model of a segmenting direction (paper, appendix B), in pure numpy.

A latent shift h is *segmenting* when every pixel of G(z+h) is one of two fixed affine colour maps
of the same pixel of G(z) (eq. 3). This module holds the maths of that model, shared by the
TensorFlow fit (`finder.rank`), the `find-direction rank` command and the tests:

- an affine operator is a float ``[3, 4]`` array ``[M | b]`` acting as ``A(c) = M c + b``; a pair
  of operators is ``ops[2, 3, 4]`` (``ops[0]`` = A1, ``ops[1]`` = A2);
- `two_operator_image` is S_{A1,A2} (eq. 4), `assign_classes` the pixel classes (eq. 7),
  `restoration_loss` L_h (eq. 5), `operator_distance` D_h, `class_balance` the share of A1;
- `fit_least_squares` / `fit_em` refit the operators exactly (least squares per class, alternated
  with eq. 7): the reference the gradient fit is tested against; `lighting_init` is the least
  squares fit on the lighting rule's split, the gradient fit's default start;
- `rank_candidates` is the appendix-B ranking rule.

Conventions (fixed here, documented in the README):

- colours are in [0, 1] (the paper states its operators for that range);
- L_h is eq. 5 divided by the pixel count: the mean over pixels (and images) of
  ``min_i ||A_i c - c'||_2``, so it does not depend on the image size (the reference code reports
  this mean too);
- D_h is the mean over pixels of ``||A1 c - A2 c||_2``. The paper prints ``A1`` twice, a typo: the
  quantity "measures the difference between" the two operators;
- ties in eq. 7 go to A1 (class 0).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from masking.rules import gray, lighting_mask

# A pixel class is the index of the operator that explains it (eq. 7).
CLASS_A1 = 0
CLASS_A2 = 1


def identity_pair(bias: float = 0.1) -> np.ndarray:
    """Two identity operators with opposite biases ``+bias`` / ``-bias`` (A1 lightens, A2 darkens).

    The default start of every fit: with equal operators eq. 7 sends all pixels to A1 and A2 never
    receives a gradient, so the pair must start apart; opposite biases start it the way the paper
    describes a segmenting direction (one operator lights, the other darkens)."""
    ops = np.zeros((2, 3, 4), np.float64)
    ops[:, :, :3] = np.eye(3)
    ops[0, :, 3] = bias
    ops[1, :, 3] = -bias
    return ops


def _check_ops(ops: np.ndarray) -> np.ndarray:
    ops = np.asarray(ops, np.float64)
    if ops.shape != (2, 3, 4):
        raise ValueError(f"operators must have shape (2, 3, 4) (A1, A2 as [M | b]); got {ops.shape}")
    return ops


def _check_pair(x: np.ndarray, x_shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, np.float64)
    x_shift = np.asarray(x_shift, np.float64)
    if x.shape != x_shift.shape or x.shape[-1:] != (3,):
        raise ValueError(f"images must share one shape [..., 3]; got {x.shape} and {x_shift.shape}")
    return x, x_shift


def apply_affine(op: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``A(c) = M c + b`` for one operator ``op[3, 4]`` and colours ``c[..., 3]``."""
    op = np.asarray(op, np.float64)
    return np.asarray(c, np.float64) @ op[:, :3].T + op[:, 3]


def residual_norms(ops: np.ndarray, x: np.ndarray, x_shift: np.ndarray) -> np.ndarray:
    """``||A_i c - c'||_2`` per operator and pixel: shape ``[2, ...]`` for images ``[..., 3]``."""
    ops = _check_ops(ops)
    x, x_shift = _check_pair(x, x_shift)
    return np.stack([np.linalg.norm(apply_affine(op, x) - x_shift, axis=-1) for op in ops])


def assign_classes(ops: np.ndarray, x: np.ndarray, x_shift: np.ndarray) -> np.ndarray:
    """Eq. 7: per pixel, the index (0 = A1, 1 = A2) of the operator closer to G(z+h); uint8."""
    d = residual_norms(ops, x, x_shift)
    return (d[1] < d[0]).astype(np.uint8)  # strict: ties go to A1


def two_operator_image(ops: np.ndarray, x: np.ndarray, x_shift: np.ndarray) -> np.ndarray:
    """Eq. 4 applied pixelwise: S_{A1,A2}·G(z), the two-operator approximation of G(z+h)."""
    ops = _check_ops(ops)
    classes = assign_classes(ops, x, x_shift)
    return np.where(classes[..., None] == CLASS_A1, apply_affine(ops[0], x), apply_affine(ops[1], x))


def restoration_loss(ops: np.ndarray, x: np.ndarray, x_shift: np.ndarray) -> float:
    """L_h (eq. 5) as a mean over pixels: ``mean min_i ||A_i c - c'||_2``."""
    return float(residual_norms(ops, x, x_shift).min(axis=0).mean())


def operator_distance(ops: np.ndarray, x: np.ndarray) -> float:
    """D_h: the mean over the pixels c of G(z) of ``||A1 c - A2 c||_2``."""
    ops = _check_ops(ops)
    x = np.asarray(x, np.float64)
    return float(np.linalg.norm(apply_affine(ops[0], x) - apply_affine(ops[1], x), axis=-1).mean())


def class_balance(classes: np.ndarray) -> float:
    """The share of pixels in class A1 (0); the other class holds ``1 - balance``."""
    classes = np.asarray(classes)
    if classes.size == 0:
        raise ValueError("class map is empty")
    return float(np.mean(classes == CLASS_A1))


def lit_class(ops: np.ndarray, x: np.ndarray, classes: np.ndarray) -> int:
    """The class whose operator brightens its own pixels more (mean gray gain): the object class
    of a "saliency lighting" direction, so the picture can draw it white."""
    ops = _check_ops(ops)
    x = np.asarray(x, np.float64)
    gains = []
    for k in (CLASS_A1, CLASS_A2):
        sel = x[np.asarray(classes) == k]
        gains.append(-np.inf if sel.size == 0 else float(gray((apply_affine(ops[k], sel) - sel)[:, None]).mean()))
    return int(np.argmax(gains))


def fit_least_squares(x: np.ndarray, x_shift: np.ndarray, classes: np.ndarray,
                      fallback: np.ndarray | None = None) -> np.ndarray:
    """Exact least-squares operators for a fixed class map: per class, ``argmin_A sum ||A c - c'||^2``.

    A class with fewer than 4 pixels, or whose colours do not span an affine basis, keeps the
    operator from ``fallback`` (default `identity_pair`), because its system has no unique
    solution."""
    x, x_shift = _check_pair(x, x_shift)
    classes = np.asarray(classes)
    if classes.shape != x.shape[:-1]:
        raise ValueError(f"class map shape {classes.shape} does not match images {x.shape[:-1]}")
    ops = _check_ops(identity_pair() if fallback is None else fallback).copy()
    for k in (CLASS_A1, CLASS_A2):
        sel = classes == k
        src = np.concatenate([x[sel], np.ones((int(sel.sum()), 1))], axis=1)  # [n, 4] homogeneous
        if src.shape[0] < 4 or np.linalg.matrix_rank(src) < 4:
            continue
        w, *_ = np.linalg.lstsq(src, x_shift[sel], rcond=None)  # [4, 3]
        ops[k] = w.T
    return ops


def lighting_classes(x: np.ndarray, x_shift: np.ndarray) -> np.ndarray:
    """The lighting rule (masking.rules.lighting_mask) as a class map: A1 (0) where gray
    brightens, A2 (1) elsewhere."""
    x, x_shift = _check_pair(x, x_shift)
    return (~lighting_mask(x, x_shift)).astype(np.uint8)


def lighting_init(x: np.ndarray, x_shift: np.ndarray, bias: float = 0.1) -> np.ndarray:
    """A start for the gradient fit: exact least squares on the lighting rule's split.

    Saturating directions need operators far from the identity (A1 close to "paint white"), which
    200 Adam steps of lr 0.005 from the identity cannot reach; the lighting split puts the start
    next to the optimum of a lighting direction and costs two small least-squares solves."""
    return fit_least_squares(x, x_shift, lighting_classes(x, x_shift), fallback=identity_pair(bias))


def fit_em(x: np.ndarray, x_shift: np.ndarray, init: np.ndarray | None = None,
           max_iter: int = 50) -> tuple[np.ndarray, np.ndarray, int]:
    """Alternate eq. 7 (assign) and `fit_least_squares` (refit) until the classes stop changing.

    Returns ``(ops, classes, iterations)``. On images that obey eq. 3 exactly this recovers the
    two operators and the region from any start that already splits the two regions roughly."""
    ops = _check_ops(identity_pair() if init is None else init).copy()
    classes = assign_classes(ops, x, x_shift)
    for it in range(1, max_iter + 1):
        ops = fit_least_squares(x, x_shift, classes, fallback=ops)
        new = assign_classes(ops, x, x_shift)
        if np.array_equal(new, classes):
            return ops, classes, it
        classes = new
    return ops, classes, max_iter


# --------------------------------------------------------------------------------------------
# Ranking (appendix B.2)


@dataclass(frozen=True)
class RankRule:
    """The appendix-B ranking rule's two numbers."""

    max_class_fraction: float = 0.99  # drop when one class holds at least this share of pixels
    top_fraction: float = 0.2  # keep this share of the survivors by highest D_h (at least 1)


@dataclass(frozen=True)
class RankEntry:
    """One candidate's place in the ranking; `rank` is 1-based (1 = winner), None when dropped."""

    index: int
    loss: float
    distance: float
    balance: float
    status: str  # "top" (in the top share by D_h), "below-top" (survived, lower D_h), "dropped"
    reason: str
    rank: int | None


def rank_candidates(losses, distances, balances, rule: RankRule = RankRule()) -> list[RankEntry]:
    """Rank candidates by the appendix-B rule; returns one entry per candidate, in input order.

    1. drop a candidate whose classes (eq. 7) put >= ``max_class_fraction`` of the pixels in one
       class, i.e. ``max(balance, 1 - balance) >= 0.99`` (and any with a non-finite number);
    2. of the survivors, take the top ``max(1, ceil(top_fraction * survivors))`` by highest D_h;
    3. order those by lowest L_h: ranks 1, 2, ... (the winner is rank 1).

    The survivors outside the top share follow, ordered by highest D_h (the rule's first key).
    Ties break by the other number, then by the lower index, so the order is total."""
    losses, distances, balances = (np.asarray(v, np.float64).ravel() for v in (losses, distances, balances))
    if not (losses.shape == distances.shape == balances.shape):
        raise ValueError(f"losses, distances and balances differ in length: "
                         f"{losses.size}, {distances.size}, {balances.size}")
    reasons: dict[int, str] = {}
    for i in range(losses.size):
        if not (np.isfinite(losses[i]) and np.isfinite(distances[i]) and np.isfinite(balances[i])):
            reasons[i] = "non-finite L_h, D_h or balance"
        elif max(balances[i], 1.0 - balances[i]) >= rule.max_class_fraction:
            reasons[i] = (f"one class holds {100 * max(balances[i], 1 - balances[i]):.2f}% of pixels "
                          f"(>= {100 * rule.max_class_fraction:g}%)")
    kept = [i for i in range(losses.size) if i not in reasons]
    by_distance = sorted(kept, key=lambda i: (-distances[i], losses[i], i))
    n_top = max(1, math.ceil(rule.top_fraction * len(kept))) if kept else 0
    top = sorted(by_distance[:n_top], key=lambda i: (losses[i], -distances[i], i))
    order = top + by_distance[n_top:]
    rank_of = {i: r + 1 for r, i in enumerate(order)}
    top_set = set(top)
    out = []
    for i in range(losses.size):
        if i in reasons:
            status, reason = "dropped", reasons[i]
        elif i in top_set:
            status, reason = "top", f"in the top {n_top} of {len(kept)} by D_h; ordered by lowest L_h"
        else:
            status, reason = "below-top", f"not in the top {n_top} of {len(kept)} by D_h"
        out.append(RankEntry(i, float(losses[i]), float(distances[i]), float(balances[i]),
                             status, reason, rank_of.get(i)))
    return out
