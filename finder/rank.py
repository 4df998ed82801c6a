"""Automatic choice of the segmenting direction (paper, appendix B.2), the TensorFlow part.

For every candidate direction h (made unit, then scaled by ``shift`` = 5 as in the paper) this
fits the two affine colour operators A1, A2 that best restore G(z + 5h) from G(z) pixel by pixel
(the restoration loss L_h, eq. 5-6) with Adam (batch 4, 200 steps, lr 0.005: the paper's numbers),
then scores the fit with the numpy model in `finder.affine` (L_h, D_h, class balance) and ranks
the candidates with `finder.affine.rank_candidates`.

How the samples are drawn (a documented choice, the paper does not say): ``samples`` latents
z ~ N(0, I) are drawn once from ``seed``; G(z) is rendered once and G(z + 5h) once per candidate.
Each Adam step takes a batch of 4 of these pairs (the same indices for every candidate, drawn
from ``seed``); L_h, D_h and the balance are then measured over all ``samples`` pairs. 24
parameters cannot overfit ``samples x 128 x 128`` pixels, so no held-out set is needed.
Candidates are fitted together in chunks: Adam acts elementwise and the candidates' losses are
summed, so a chunk's fit equals the candidates' separate fits.

Images are mapped from the GAN's [-1, 1] to [0, 1] before fitting, as in the paper.

A class-conditional GAN (BigGAN) gives each of the ``samples`` latents a class, drawn over the
class set after the latents, and renders every image of that latent (G(z), each G(z + 5h), the
orientation and the pictures) with it (`finder.conditional`); ranking.json records the set.

Two choices the paper leaves open, each with the other behaviour as an option:

- the start of the fit (``FitConfig.init``): ``lighting`` (default) = exact least squares on the
  lighting rule's split (`affine.lighting_init`); ``identity`` = A1 = I + 0.1, A2 = I - 0.1, close
  to the reference code's near-identity start. From the identity, 200 steps of lr 0.005 cannot
  reach the operators of a saturating light (A1 close to "paint white"): measured on the toy GAN,
  its shipped direction's L_h is 0.146 after 200 steps from the identity, 0.029 from ``lighting``;
- signs (`rank_directions(both_signs=True)`): each candidate is scored as +h and -h, since
  discovered directions have no sign and the numbers of -h differ from those of +h.

The Adam loop runs as one XLA-compiled TensorFlow while-loop (one chunk of 8 toy candidates,
200 steps, on a loaded 2-core CPU: 5.9-7.1 s with XLA, 16.6-25.7 s without); set
``BGW_FIT_JIT=0`` to run it without XLA.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from core.atomic import atomic_write_bytes as write_bytes
from core.errors import UserError
from core.pictures import image_grid, labelled_grid  # noqa: F401 - finder.discover and optimize draw through ds.*
from finder import affine
from finder import conditional as cond
from masking.rules import MASK_RULES, lighting_mask, pair_shifts

log = logging.getLogger(__name__)

JIT = os.environ.get("BGW_FIT_JIT", "1") == "1"


# rank_directions' defaults (find-direction rank's too): score +h and -h, orient the winner, draw 3
BOTH_SIGNS = True
ORIENT_WINNER = True
PICTURE_TOP = 3


class RankError(UserError, ValueError):
    """The candidates cannot be ranked (a zero row, another latent size, every one dropped)."""


@dataclass(frozen=True)
class FitConfig:
    """How each candidate's operators are fitted (paper, appendix B.2)."""

    steps: int = 200  # Adam steps per candidate
    batch: int = 4  # image pairs per Adam step
    lr: float = 0.005  # Adam learning rate
    shift: float = 5.0  # latent shift length: G(z + shift * h) with h of unit norm
    samples: int = 32  # latents z drawn once; batches are taken from them; scores use all of them
    init: str = "lighting"  # start of the fit: "lighting" (affine.lighting_init) or "identity"
    init_bias: float = 0.1  # "identity" start: A1 = I + bias, A2 = I - bias (affine.identity_pair)
    clamp: bool = False  # reference code's option: clamp A(c) to the image range [0, 1] in the fit
    chunk: int = 8  # candidates fitted together (memory: chunk x samples images)
    seed: int = 0


@dataclass
class CandidateScore:
    """One candidate's fitted operators and its appendix-B numbers (over all samples)."""

    index: int
    ops: np.ndarray  # [2, 3, 4]: A1, A2 as [M | b] on colours in [0, 1]
    loss: float  # L_h, mean over pixels
    distance: float  # D_h
    balance: float  # share of pixels assigned to A1
    extra: dict = field(default_factory=dict)


def unit_rows(candidates: np.ndarray) -> np.ndarray:
    """Candidates ``[C, D]`` scaled to unit norm; raises RankError naming a zero row."""
    c = np.asarray(candidates, np.float64)
    if c.ndim != 2:
        raise RankError(f"candidates must be a [C, D] array; got shape {c.shape}")
    norms = np.linalg.norm(c, axis=1)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    if bad.size:
        raise RankError(f"candidate {int(bad[0])} is zero or not finite; every row needs a direction")
    return (c / norms[:, None]).astype(np.float32)


def to_unit_range(x: np.ndarray) -> np.ndarray:
    """GAN images in [-1, 1] to [0, 1] (float32)."""
    return ((np.asarray(x, np.float32) + 1.0) * 0.5).astype(np.float32)


def fit_operators(x: np.ndarray, x_shift: np.ndarray, config: FitConfig = FitConfig(),
                  init: np.ndarray | None = None) -> np.ndarray:
    """Adam fit of A1, A2 per candidate minimising L_h (eq. 6).

    ``x``: [N, H, W, 3] in [0, 1]; ``x_shift``: [C, N, H, W, 3] in [0, 1] (candidate c's shifted
    images). Returns ``ops`` [C, 2, 3, 4] (float64). Deterministic for a given ``config.seed``."""
    import tensorflow as tf

    x = np.asarray(x, np.float32)
    x_shift = np.asarray(x_shift, np.float32)
    if x_shift.ndim != 5 or x_shift.shape[1:] != x.shape or x.shape[-1] != 3:
        raise ValueError(f"need x [N,H,W,3] and x_shift [C,N,H,W,3]; got {x.shape}, {x_shift.shape}")
    n_cand, n = x_shift.shape[0], x.shape[0]
    rng = np.random.default_rng(config.seed)
    # One index table for all steps, drawn up front, so the fit does not depend on chunking.
    batch = min(config.batch, n)
    idx = np.array([rng.choice(n, batch, replace=False) for _ in range(config.steps)], np.int32)
    start = affine.identity_pair(config.init_bias) if init is None else np.asarray(init, np.float64)
    start = np.broadcast_to(start, (n_cand, 2, 3, 4)).astype(np.float64)
    if config.steps == 0:
        return start.copy()
    # Layout for one matmul per step: pixels [N, H*W, 4] (homogeneous), targets [N, H*W, C, 3].
    xh = np.concatenate([x.reshape(n, -1, 3), np.ones((n, x[0, ..., 0].size, 1), np.float32)], -1)
    xst = np.ascontiguousarray(np.moveaxis(x_shift.reshape(n_cand, n, -1, 3), 0, 2))
    fit = _adam_fit()
    w = fit(tf.constant(xh), tf.constant(xst), tf.constant(idx), tf.constant(start.astype(np.float32)),
            tf.constant(config.lr, tf.float32), tf.constant(config.clamp))
    return w.numpy().astype(np.float64)


_ADAM_FIT = None


def _adam_fit():
    """The compiled Adam loop (built once per process: TensorFlow is imported lazily)."""
    global _ADAM_FIT
    if _ADAM_FIT is not None:
        return _ADAM_FIT
    import tensorflow as tf

    beta1, beta2, eps = 0.9, 0.999, 1e-8

    def loss_fn(params, xb, xsb, clamp):
        # xb [P, 4], xsb [P, C, 3], params [C, 2, 3, 4]
        n_cand = tf.shape(params)[0]
        wflat = tf.reshape(tf.transpose(params, [3, 0, 1, 2]), [4, -1])  # [4, C*2*3]
        pred = tf.reshape(tf.matmul(xb, wflat), [-1, n_cand, 2, 3])  # [P, C, 2, 3]
        pred = tf.cond(clamp, lambda: tf.clip_by_value(pred, 0.0, 1.0), lambda: pred)
        # sqrt(. + tiny): the norm's gradient is NaN at exactly 0 (a perfectly restored pixel)
        d = tf.sqrt(tf.reduce_sum(tf.square(pred - xsb[:, :, None]), axis=-1) + 1e-12)  # [P, C, 2]
        per_cand = tf.reduce_mean(tf.reduce_min(d, axis=2), axis=0)  # [C]
        return tf.reduce_sum(per_cand)  # sum: candidates' gradients stay independent

    @tf.function(jit_compile=JIT, reduce_retracing=True)
    def fit(xh, xst, idx, w0, lr, clamp):
        def body(step, w, m, v):
            sel = idx[step]
            xb = tf.reshape(tf.gather(xh, sel), [-1, 4])
            xsb = tf.reshape(tf.gather(xst, sel), [-1, tf.shape(w)[0], 3])
            with tf.GradientTape() as tape:
                tape.watch(w)
                loss = loss_fn(w, xb, xsb, clamp)
            g = tape.gradient(loss, w)
            t = tf.cast(step + 1, tf.float32)
            m = beta1 * m + (1 - beta1) * g
            v = beta2 * v + (1 - beta2) * tf.square(g)
            mhat = m / (1 - tf.pow(beta1, t))
            vhat = v / (1 - tf.pow(beta2, t))
            return step + 1, w - lr * mhat / (tf.sqrt(vhat) + eps), m, v

        zeros = tf.zeros_like(w0)
        _, w, _, _ = tf.while_loop(lambda step, *_: step < tf.shape(idx)[0], body, (0, w0, zeros, zeros))
        return w

    _ADAM_FIT = fit
    return fit


INITS = ("lighting", "identity")


def initial_operators(x: np.ndarray, xs: np.ndarray, config: FitConfig) -> np.ndarray:
    """Start operators [C, 2, 3, 4] for candidates' shifted images ``xs`` [C, N, H, W, 3]."""
    if config.init == "identity":
        return np.broadcast_to(affine.identity_pair(config.init_bias), (len(xs), 2, 3, 4)).copy()
    if config.init == "lighting":
        return np.stack([affine.lighting_init(x, s, config.init_bias) for s in xs])
    raise ValueError(f"unknown init {config.init!r}; choose from {INITS}")


def score(index: int, ops: np.ndarray, x: np.ndarray, x_shift: np.ndarray) -> CandidateScore:
    """L_h, D_h and class balance of fitted operators over all sample pairs (numpy)."""
    classes = affine.assign_classes(ops, x, x_shift)
    # the lighting rule's foreground share: the orientation check (the object is what lightens)
    fg = float(np.mean(lighting_mask(2.0 * x - 1.0, 2.0 * x_shift - 1.0)))
    return CandidateScore(index=index, ops=np.asarray(ops, np.float64),
                          loss=affine.restoration_loss(ops, x, x_shift),
                          distance=affine.operator_distance(ops, x),
                          balance=affine.class_balance(classes), extra={"lighting_fg": fg})


def draw_latents(n: int, dim: int, seed: int) -> np.ndarray:
    """``n`` latents z ~ N(0, I) of dimension ``dim`` from ``seed`` (float32)."""
    return cond.draw_samples(n, dim, seed)[0]


def score_candidates(gan, candidates: np.ndarray, config: FitConfig = FitConfig(),
                     progress: Callable[[int], None] | None = None, classes: cond.ClassSet | None = None
                     ) -> tuple[list[CandidateScore], np.ndarray, np.ndarray | None]:
    """Fit and score every candidate direction on ``gan`` (anything with ``generate(z)`` in [-1, 1]
    and ``latent_dim``). Returns the scores (input order), the latents used and, for a
    conditional GAN, their classes (drawn from ``classes``, default all; None otherwise), each
    latent's the same for G(z) and every G(z + shift h).

    ``progress(n)`` is called after each chunk with the number of candidates it finished."""
    dirs = unit_rows(candidates)
    if dirs.shape[1] != gan.latent_dim:
        raise RankError(f"candidates have dimension {dirs.shape[1]}, the GAN's latent has {gan.latent_dim}")
    if classes is None:
        classes = cond.class_set(gan, None)
    z, labels = cond.draw_samples(config.samples, gan.latent_dim, config.seed, classes)
    x = to_unit_range(cond.generate(gan, z, labels))
    scores: list[CandidateScore] = []
    for lo in range(0, len(dirs), config.chunk):
        chunk = dirs[lo:lo + config.chunk]
        xs = np.stack([to_unit_range(cond.generate(gan, z + config.shift * h[None], labels)) for h in chunk])
        ops = fit_operators(x, xs, config, init=initial_operators(x, xs, config))
        for j, h in enumerate(chunk):
            s = score(lo + j, ops[j], x, xs[j])
            scores.append(s)
            log.debug("candidate %d: L_h %.4f D_h %.4f balance %.3f", s.index, s.loss, s.distance, s.balance)
        if progress is not None:
            progress(len(chunk))
    return scores, z, labels


def mask_fraction(gan, z: np.ndarray, direction: np.ndarray, shift: float, labels: np.ndarray | None = None,
                  mask_rule: str = "lighting") -> float:
    """Mean share of pixels that `mask_rule` calls foreground on the pair it compares
    (`masking.rules.pair_shifts`: G(z), G(z + shift h) for the paper's rules)."""
    a, b = pair_shifts(mask_rule, shift)
    h = np.asarray(direction, np.float32)[None]
    xa = np.asarray(cond.generate(gan, z + a * h, labels), np.float32)
    xb = np.asarray(cond.generate(gan, z + b * h, labels), np.float32)
    return float(np.mean(MASK_RULES.get(mask_rule)(xa, xb)))


def orient(gan, z: np.ndarray, direction: np.ndarray, shift: float,
           labels: np.ndarray | None = None, mask_rule: str = "lighting") -> tuple[np.ndarray, int, dict]:
    """Choose the sign of a direction so that the mask rule's foreground is the smaller part.

    The appendix-B fit does not fix a direction's sign (discovered directions have none), while
    a mask rule needs one: the lighting rule (mask = pixels that brighten) the sign that lights the
    object, `background-removal` the one that whitens the background. Objects are the smaller part
    of an image (the size filter keeps foreground <= 50%), so the sign whose foreground share under
    `mask_rule` (gen-synth's rule for this direction) is smaller wins; +h is kept on a tie. Returns
    the oriented direction, the sign (+1 / -1) and both shares."""
    h = np.asarray(direction, np.float32)
    plus = mask_fraction(gan, z, h, shift, labels, mask_rule)
    minus = mask_fraction(gan, z, -h, shift, labels, mask_rule)
    sign = -1 if minus < plus else 1
    if mask_rule == "lighting":  # the keys ranking.json has always had
        return (sign * h).astype(np.float32), sign, {"lighting_fg_plus": plus, "lighting_fg_minus": minus}
    return (sign * h).astype(np.float32), sign, {"orient_rule": mask_rule, "fg_plus": plus, "fg_minus": minus}


# --------------------------------------------------------------------------------------------
# pictures (shared with finder.discover)


def unit_to_uint8(x: np.ndarray) -> np.ndarray:
    """Images (or masks) in [0, 1] to uint8 (rounded, clipped)."""
    return np.clip(np.rint(np.asarray(x, np.float64) * 255.0), 0, 255).astype(np.uint8)


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Write an RGB uint8 image as PNG atomically (temp name in the same folder, then rename)."""
    import cv2

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise RuntimeError(f"could not encode {path} as PNG")
    write_bytes(path, buf.tobytes())


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """``np.save`` atomically (no pickle: plain numeric arrays only)."""
    import io

    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    write_bytes(path, buf.getvalue())


def figure10(gan, z: np.ndarray, direction: np.ndarray, ops: np.ndarray, shift: float,
             labels: np.ndarray | None = None) -> list[list[np.ndarray]]:
    """The paper's figure 10 for one direction, as grid rows over the samples ``z`` (with their
    classes ``labels`` on a conditional GAN): G(z), G(z + shift h), the two-operator approximation
    S·G(z), and the class mask (the class whose operator lights its pixels drawn white)."""
    x = to_unit_range(cond.generate(gan, z, labels))
    xs = to_unit_range(cond.generate(gan, z + shift * np.asarray(direction, np.float32)[None], labels))
    approx = affine.two_operator_image(ops, x, xs)
    classes = affine.assign_classes(ops, x, xs)
    lit = affine.lit_class(ops, x, classes)
    mask = (classes == lit).astype(np.float64)
    return [[unit_to_uint8(a) for a in x], [unit_to_uint8(a) for a in xs],
            [unit_to_uint8(a) for a in approx], [unit_to_uint8(a) for a in mask]]


# --------------------------------------------------------------------------------------------
# the `rank` step end to end


def rank_directions(gan, candidates: np.ndarray, out_dir: str | os.PathLike, config: FitConfig = FitConfig(),
                    rule: affine.RankRule = affine.RankRule(), *, source: str | list[tuple[str, int]] = "array",
                    both_signs: bool = BOTH_SIGNS,
                    picture_top: int = PICTURE_TOP, picture_samples: int = 4, orient_winner: bool = ORIENT_WINNER,
                    progress: Callable[[int], None] | None = None, classes: str | None = None,
                    mask_rule: str = "lighting") -> dict:
    """Score, rank and write: ``ranking.json``, ``direction.npy`` (the winner, unit norm,
    float32 [D]) and ``ranking.png`` (figure 10 for the ``picture_top`` best entries).

    ``both_signs``: every candidate h is scored as +h and as -h (2C entries). Discovered
    directions have no sign, and the appendix-B numbers of -h differ from those of +h (a shift
    that lights the object by +5 merely undoes a little light by -5). Entry ``e`` is candidate
    ``e % C`` with sign ``+1`` for ``e < C``, ``-1`` after.

    ``orient_winner``: see `orient` (under ``mask_rule``, the rule gen-synth will use with the
    direction); the written direction is ``orient_sign * sign * h``.

    ``source``: where the candidates came from, one name, or a pool of sources as (name, count)
    pairs in row order (`find-direction rank --candidates A --candidates B`): every entry then
    names its source and its row within it, so methods are compared in one table.

    ``classes``: the class set of a conditional GAN (`gans.classes.parse_class_set`; None: all),
    an error for an unconditional one; each latent's class follows its z (`conditional.draw_samples`).
    Returns the report written to ``ranking.json``. Raises ValueError when every entry is dropped."""
    import hashlib
    import json
    from dataclasses import asdict

    class_set = cond.class_set(gan, classes)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dirs = unit_rows(candidates)
    n_cand = len(dirs)
    pool = [(source, n_cand)] if isinstance(source, str) else [(str(a), int(b)) for a, b in source]
    if sum(b for _, b in pool) != n_cand:
        raise RankError(f"the sources name {sum(b for _, b in pool)} candidates, the array holds {n_cand}")
    origin = [(name, i) for name, count in pool for i in range(count)]  # candidate -> (source, row)
    signs = np.array([1] * n_cand + ([-1] * n_cand if both_signs else []))
    signed = np.concatenate([dirs, -dirs]) if both_signs else dirs
    scores, z, labels = score_candidates(gan, signed, config, progress=progress, classes=class_set)
    entries = affine.rank_candidates([s.loss for s in scores], [s.distance for s in scores],
                                     [s.balance for s in scores], rule)
    ranked = sorted((e for e in entries if e.rank is not None), key=lambda e: e.rank)
    if not ranked:
        raise RankError(f"all {len(entries)} candidates were dropped (one class holds >= "
                         f"{100 * rule.max_class_fraction:g}% of pixels); try other candidates or a larger shift")
    best = ranked[0]
    winner = signed[best.index]
    orient_sign, orient_info = 1, {}
    if orient_winner:
        winner, orient_sign, orient_info = orient(gan, z, winner, config.shift, labels, mask_rule)
    winner = (winner / np.linalg.norm(winner)).astype(np.float32)
    report = {
        "format": "bgw-direction-ranking",
        "version": 1,
        "gan": {"handle": getattr(gan, "handle", None), "fingerprint": getattr(gan, "fingerprint", None)},
        "candidates": {"source": " + ".join(name for name, _ in pool),
                       "sources": [{"source": name, "count": count} for name, count in pool], "count": int(n_cand), "dim": int(dirs.shape[1]), "both_signs": both_signs,
                       "sha256": hashlib.sha256(np.ascontiguousarray(dirs).tobytes()).hexdigest()},
        "config": asdict(config),
        "rule": {**asdict(rule), "text": "drop when one class holds >= max_class_fraction of pixels; "
                                          "top max(1, ceil(top_fraction * survivors)) by highest D_h; "
                                          "those by lowest L_h; the rest by highest D_h"},
        "winner": {"entry": best.index, "candidate": best.index % n_cand, "sign": int(signs[best.index]),
                   "orient_sign": orient_sign, **orient_info},
        **({} if class_set is None else {"classes": class_set.record()}),  # unconditional: as it was
        "order": [e.index for e in ranked],
        "entries": [
            {"entry": e.index, "candidate": e.index % n_cand, "source": origin[e.index % n_cand][0],
             "source_row": origin[e.index % n_cand][1], "sign": int(signs[e.index]), "rank": e.rank,
             "status": e.status, "reason": e.reason, "L_h": e.loss, "D_h": e.distance, "balance_A1": e.balance,
             "lighting_fg": scores[e.index].extra["lighting_fg"],
             "A1": scores[e.index].ops[0].tolist(), "A2": scores[e.index].ops[1].tolist()}
            for e in entries
        ],
    }
    save_npy(out / "direction.npy", winner)
    write_bytes(out / "ranking.json", (json.dumps(report, indent=1) + "\n").encode())
    zp = z[:picture_samples]
    labels_p = None if labels is None else labels[:picture_samples]
    rows: list[list[np.ndarray]] = []
    names: list[str] = []
    for e in ranked[:picture_top]:
        rows += figure10(gan, zp, signed[e.index], scores[e.index].ops, config.shift, labels_p)
        src, row = origin[e.index % n_cand]
        tag = f"#{e.rank} {'+' if signs[e.index] > 0 else '-'}{Path(src).name[:10]}[{row}]"
        names += [tag, "G(z+5h)", "S.G(z)", f"mask L{e.loss:.3f}"]
    write_png(out / "ranking.png", labelled_grid(rows, names, title=(
        f"rank: per candidate G(z), G(z+{config.shift:g}h), fit S.G(z), mask; #rank sign source[row]")))
    log.info("winner: candidate %d, sign %+d (L_h %.4f, D_h %.4f); written with orientation %+d",
             best.index % n_cand, signs[best.index], best.loss, best.distance, orient_sign)
    return report
