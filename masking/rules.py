"""Mask rules and sample filters of the paper (section 3.3): pure numpy plus cv2, no TensorFlow.

A pair (x, x') = (G(z), G(z + r*h_bg)) of images in [-1, 1], NHWC, becomes one mask and one
accept/reject decision, in the order docs/RULES.md ("Masks and filters") fixes:

    mask rule -> connected-components clean-up -> size filter -> histogram filter

- Mask rules (`MASK_RULES`): `lighting` (default), M = [gray(x) < gray(x')]; `mean` (the paper's
  Flowers rule), M = [gray(x') > mean(gray(x'))] per image; `background-removal` (Voynov &
  Babenko 2020, BigGAN's background-removal direction: Table 4's first row), which compares the
  centred pair (G(z - r/2 h), G(z + r/2 h)) instead: `pair_shifts` says which two renders a rule
  compares.
- `keep_large_components`: keep the components whose area is >= `min_ratio` x the largest one's;
  4-connectivity is the paper's "connected by edges", 8 is the reference code's (skimage default).
- `passes_size_filter`: foreground fraction <= `max_fraction` (0.5) passes.
- Histogram rules (`HISTOGRAM_RULES`): `bimodal` (the reference code's, the default) and `paper`;
  each is a histogram source plus a pure decision on 12 bin counts, so the decisions are
  testable on hand-made histograms (`paper_keeps`, `bimodal_keeps`).

Binning (`histogram12`), pinned down exactly: the values are clipped into [-1, 1] and binned as
`np.histogram(np.clip(v, -1, 1), bins=12, range=(-1, 1))` does for float32 v, i.e. bin i holds
`edges[i] <= v < edges[i+1]` with `edges = np.linspace(-1, 1, 13, dtype=np.float32)`, and the
last bin also holds 1.0. NaN is counted nowhere; +-inf clip to the end bins. (The reference code's
`torch.histc` drops out-of-range values instead of clipping; generator output is in [-1, 1], so
the two agree there up to float rounding at the bin edges.)

Empty masks: a mask that is empty after the clean-up is KEPT (accepted if the histogram filter
passes it). Neither the paper nor the reference code rejects it (its foreground fraction 0 passes
the size filter), and the clean-up never empties a mask that had foreground, since the largest
component always survives. So `process_batch` never reports a reason "empty".

The functions work on whole batches [N, H, W(, 3)] (mask functions also on one [H, W] mask).
Grays and comparisons are plain float32 element-wise operations (no BLAS, no FMA), and the
per-image steps see one image at a time, so a sample's result never depends on its batch.

Mask rules, histogram rules and filter presets are core.registry registries (`MASK_RULES`,
`HISTOGRAM_RULES`, `PRESETS`): an unknown name is one UnknownNameError naming the choices. Mask
rules are called as `MASK_RULES.get(name)(x, x_shift, gray_shift=None) -> bool [N, H, W]`
(`gray_shift` = gray(x') when the caller already has it); histogram rules as
`HISTOGRAM_RULES.get(name)(x_shift, gray_shift=None) -> keep bool [N]`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable

import cv2
import numpy as np

from core.registry import Registry

log = logging.getLogger(__name__)

GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # R, G, B, as the reference code's rgb2gray
N_BINS = 12  # histogram bins over [-1, 1] (paper, section 3.3)
REASONS = ("size", "histogram")  # rejection reasons, in filter order
# process_batch works through chunks of about this many pixels, so every step's arrays stay in
# cache (10-20% faster than whole batches); every step is per image, so results cannot change.
CHUNK_PIXELS = 1 << 18


# ----------------------------------------------------------------------------------- gray

_GRAY_BLOCK = 1 << 14  # pixels per block
_TILED_WEIGHTS = np.tile(np.array(GRAY_WEIGHTS, np.float32), _GRAY_BLOCK)  # wR wG wB wR wG wB ...
_ONES3 = np.ones((1, 3), np.float32)


def _sum3_numpy(p: np.ndarray, out: np.ndarray) -> None:
    """out = (p[:, 0] + p[:, 1]) + p[:, 2] for float32 p [k, 3]: two strided numpy adds."""
    np.add(p[:, 0], p[:, 1], out=out)
    out += p[:, 2]


def _sum3_cv2(p: np.ndarray, out: np.ndarray) -> None:
    """The same sums in one cv2.transform with the matrix [1 1 1]: 2x faster than the strided
    adds. With unit weights every product is exact and a fused multiply-add is a plain rounded
    add, so the result is the float32 left-to-right sum, as long as OpenCV adds in channel
    order; `_cv2_sums_in_order` checks that once (a -0.0 sum may come out as +0.0)."""
    cv2.transform(p.reshape(len(p), 1, 3), _ONES3, out.reshape(len(out), 1))


def _cv2_sums_in_order() -> bool:
    """Whether _sum3_cv2 equals _sum3_numpy on triples whose float32 sum depends on the order
    (1 + 2^-24 + 2^-24 is 1 left to right but 1 + 2^-23 right to left) and on random ones."""
    tiny = np.float32(2.0**-24)
    probe = [(1, tiny, tiny), (tiny, tiny, 1), (tiny, 1, tiny), (-1, 1, tiny), (1e8, -1e8, 1.5), (3, 1e-8, -3)]
    rng = np.random.default_rng(0)
    p = np.concatenate([np.array(probe, np.float32),
                        (rng.standard_normal((4093, 3)) * 10.0 ** rng.integers(-3, 4, (4093, 1))).astype(np.float32)])
    a, b = np.empty(len(p), np.float32), np.empty(len(p), np.float32)
    try:
        _sum3_numpy(p, a)
        _sum3_cv2(p, b)
    except cv2.error:
        return False
    return bool(np.array_equal(a, b))


_SUM3 = _sum3_cv2 if _cv2_sums_in_order() else _sum3_numpy


def gray(x: np.ndarray) -> np.ndarray:
    """Luma of RGB images in [-1, 1]: [..., H, W, 3] -> float32 [..., H, W],
    0.2989 R + 0.5870 G + 0.1140 B, evaluated left to right in float32 as the reference code does."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim < 3 or x.shape[-1] != 3:
        raise ValueError(f"gray expects [..., H, W, 3] RGB, got shape {x.shape}")
    out = np.empty(x.shape[:-1], np.float32)
    flat_x, flat_out = x.reshape(-1), out.reshape(-1)
    # Per block of 16K pixels (in cache): one contiguous SIMD multiply of the interleaved RGB by
    # the tiled weights, then the sums (wR*R + wG*G) + wB*B of each pixel's three products: the
    # same float32 products and sums as the reference formula.
    block = _GRAY_BLOCK
    prod = np.empty(3 * min(block, flat_out.size), np.float32)
    for s in range(0, flat_out.size, block):
        o = flat_out[s:s + block]
        k = len(o)
        p = prod[:3 * k]
        np.multiply(flat_x[3 * s:3 * (s + k)], _TILED_WEIGHTS[:3 * k], out=p)
        _SUM3(p.reshape(k, 3), o)
    return out


# ----------------------------------------------------------------------------------- mask rules

MASK_RULES: Registry[Callable[..., np.ndarray]] = Registry("mask rule")


@MASK_RULES.register("lighting")
def lighting_mask(x: np.ndarray, x_shift: np.ndarray, gray_shift: np.ndarray | None = None) -> np.ndarray:
    """Paper's rule (default): foreground where the shift brightens the pixel,
    M = [gray(x) < gray(x')]. Returns bool [..., H, W]."""
    g_shift = gray(x_shift) if gray_shift is None else gray_shift
    return gray(x) < g_shift


@MASK_RULES.register("mean")
def mean_mask(x: np.ndarray, x_shift: np.ndarray, gray_shift: np.ndarray | None = None) -> np.ndarray:
    """Paper's Flowers rule: M = [gray(x') > mean(gray(x'))], the mean taken per image (in
    float64, so it does not depend on summation order). `x` is unused. Returns bool [..., H, W]."""
    g_shift = gray(x_shift) if gray_shift is None else gray_shift
    mean = g_shift.mean(axis=(-2, -1), keepdims=True, dtype=np.float64)
    return g_shift > mean


# Voynov & Babenko's threshold on the per-sample normalised difference (GANLatentDiscovery,
# segmentation/train_segmentation.py: mask_thr = 0.6 with use_diff = True)
BACKGROUND_REMOVAL_THRESHOLD = 0.6
_CENTRED_RULES = frozenset({"background-removal"})


@MASK_RULES.register("background-removal")
def background_removal_mask(x: np.ndarray, x_shift: np.ndarray, gray_shift: np.ndarray | None = None) -> np.ndarray:
    """Voynov & Babenko (2020)'s rule for BigGAN's background-removal direction, on the centred pair
    x = G(z - r/2 h), x' = G(z + r/2 h) (`pair_shifts`): d = mean over channels of x' - x, scaled
    per image to [0, 1] by its min and max; foreground where d < 0.6: the direction whitens the
    background, so the object is what brightens least. An image where d is constant has no
    foreground (their division by zero gives NaN, which compares false). Channel means, not luma,
    as their code; `gray_shift` is unused. Returns bool [..., H, W]."""
    x = np.asarray(x, np.float32)
    x_shift = np.asarray(x_shift, np.float32)
    d = x_shift.mean(axis=-1, dtype=np.float32) - x.mean(axis=-1, dtype=np.float32)
    lo = d.min(axis=(-2, -1), keepdims=True)
    span = d.max(axis=(-2, -1), keepdims=True) - lo
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = (d - lo) / span
    return scaled < np.float32(BACKGROUND_REMOVAL_THRESHOLD)


def pair_shifts(rule: str, shift: float) -> tuple[float, float]:
    """The latent shifts (a, b) of the two renders G(z + a h), G(z + b h) that mask rule `rule`
    compares, for the run's shift r: (0, r) for the paper's rules, (-r/2, r/2) for the centred
    `background-removal` (Voynov & Babenko shift by -0.5 and +0.5 times r). The stored image is
    G(z) either way."""
    MASK_RULES.get(rule)  # an unknown name is the registry's one line
    r = float(shift)
    return (-r / 2, r / 2) if rule in _CENTRED_RULES else (0.0, r)


# ----------------------------------------------------------------------------------- components

def _ratio(value: float, name: str) -> tuple[int, int]:
    """A fraction as an exact ratio p/q, so that area boundaries such as 0.2 x 10 = 2 compare
    exactly in integers instead of in binary floating point."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")
    f = Fraction(value).limit_denominator(1_000_000)
    return f.numerator, f.denominator


def _as_mask_batch(mask: np.ndarray) -> tuple[np.ndarray, bool]:
    mask = np.asarray(mask)
    if mask.ndim not in (2, 3):
        raise ValueError(f"expected a mask [H, W] or a batch [N, H, W], got shape {mask.shape}")
    single = mask.ndim == 2
    m = (mask != 0) if mask.dtype != np.bool_ else mask
    return np.ascontiguousarray(m[None] if single else m).view(np.uint8), single


def _clean_one(m: np.ndarray, connectivity: int, p: int, q: int) -> np.ndarray:
    """One uint8 {0,1} mask [H, W] -> the mask with small components removed (may be `m` itself)."""
    # Labels only (no per-component stats: those cost 3x the labelling), 16-bit while they fit.
    ltype = cv2.CV_16U if m.size < 2 * 65535 else cv2.CV_32S
    n, labels = cv2.connectedComponentsWithAlgorithm(m, connectivity, ltype, cv2.CCL_DEFAULT)
    if n <= 2:  # background plus at most one component (the usual case): nothing to remove
        return m
    if ltype == cv2.CV_16U:  # exact integer counts: bins of width 1 over [0, n)
        areas = cv2.calcHist([labels], [0], None, [n], [0, n]).ravel()[1:].astype(np.int64)
    else:
        areas = np.bincount(labels.ravel(), minlength=n)[1:].astype(np.int64)
    keep = areas * q >= p * areas.max()  # |M_i| >= ratio * |M_1|, exactly; equality keeps
    if keep.all():
        return m
    kept = np.flatnonzero(keep) + 1
    if len(kept) <= 3:  # usually one big object: a few vectorised compares beat a gather
        out = labels == kept[0]
        for k in kept[1:]:
            out |= labels == k
        return out.view(np.uint8)
    lut = np.zeros(n, np.uint8)
    lut[kept] = 1
    return np.take(lut, labels)


def keep_large_components(mask: np.ndarray, connectivity: int = 4, min_ratio: float = 0.2) -> np.ndarray:
    """Remove the foreground components smaller than `min_ratio` x the largest one.

    mask: [H, W] or [N, H, W], any dtype (nonzero = foreground). connectivity: 4 (the paper's
    "connected by edges", default) or 8 (the reference code's skimage default). A component with
    area exactly `min_ratio` x the largest is kept. Returns uint8 {0, 1} of the same shape."""
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity!r}")
    p, q = _ratio(min_ratio, "min_ratio")
    batch, single = _as_mask_batch(mask)
    out = np.empty_like(batch)
    for i in range(len(batch)):
        out[i] = _clean_one(batch[i], connectivity, p, q) if p else batch[i]
    return out[0] if single else out


def fg_fraction(mask: np.ndarray) -> np.ndarray | float:
    """Foreground fraction of a mask [H, W] (a float) or of each mask in [N, H, W] (float64 [N])."""
    batch, single = _as_mask_batch(mask)
    size = batch.shape[1] * batch.shape[2]
    rows = batch.reshape(len(batch), size)
    if rows.size and size < 2**31:  # row sums of the {0,1} bytes in one call: 7x np.count_nonzero(axis=1)
        counts = cv2.reduce(rows, 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel()
    else:
        counts = np.count_nonzero(rows, axis=1)
    frac = counts / float(size)
    return float(frac[0]) if single else frac


def passes_size_filter(mask: np.ndarray, max_fraction: float = 0.5) -> np.ndarray | bool:
    """Paper's mask size filter: pass when the foreground fraction is <= `max_fraction`
    (exactly 0.5 passes). Returns a bool for [H, W], bool [N] for [N, H, W]."""
    if not 0.0 < max_fraction <= 1.0:
        raise ValueError(f"max_fraction must lie in (0, 1], got {max_fraction!r}")
    frac = fg_fraction(mask)
    # count / size is correctly rounded, so a fraction equal to max_fraction compares equal
    return bool(frac <= max_fraction) if np.isscalar(frac) else frac <= max_fraction


PAPER_MAX_FG = 0.5  # the paper's size bound: objects are the smaller part of an image
SIZE_BOUND_QUANTILE = 0.9  # `--max-fg auto`: the bound sits at this quantile of the direction's masks


def size_bound(fractions, quantile: float = SIZE_BOUND_QUANTILE, floor: float = PAPER_MAX_FG) -> float:
    """The size filter's bound that follows a direction's own masks (`gen-synth --max-fg auto`):
    the `quantile` (0.9) of their foreground fractions, never below the paper's 0.5.

    The paper's bound assumes objects are the smaller part of the image; a GAN whose objects fill
    the frame (faces) has typical masks above it, and the fixed bound would keep only its smaller
    objects. Following the masks, the filter keeps its purpose, rejecting the rare masks larger
    than nine in ten of the direction's own (a direction that lit the whole frame), and for
    directions whose masks are small it is the paper's 0.5 exactly."""
    frac = np.asarray(fractions, np.float64).ravel()
    if frac.size == 0 or not np.all(np.isfinite(frac)):
        raise ValueError("size_bound needs a non-empty array of finite foreground fractions")
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile must lie in (0, 1], got {quantile!r}")
    return float(min(1.0, max(floor, float(np.quantile(frac, quantile)))))


# ----------------------------------------------------------------------------------- histograms

_EDGES = np.linspace(-1.0, 1.0, N_BINS + 1, dtype=np.float32)  # what np.histogram uses for float32
# v >= -inf holds for every value but NaN; v >= edges[k] for k = 1..11 opens bin k
_THRESHOLDS = [np.float32(-np.inf)] + [np.float32(e) for e in _EDGES[1:-1]]


def histogram12(values: np.ndarray) -> np.ndarray:
    """12-bin histograms over [-1, 1] of each image: values [N, ...] (any trailing shape, e.g.
    [N, H, W] grays or [N, H, W, 3] pooled channels) -> int64 counts [N, 12]. Binning as
    `np.histogram(np.clip(v, -1, 1), 12, (-1, 1))` on the float32 values (module docstring)."""
    v = np.ascontiguousarray(values, dtype=np.float32)
    if v.ndim < 2:
        raise ValueError(f"histogram12 expects a batch [N, ...], got shape {v.shape}")
    flat = v.reshape(len(v), -1)
    # Count the values >= each edge and difference the counts: the very comparisons that define
    # np.histogram's bins, so the result is exact, and clipping comes free (nothing is above the
    # last bin, nothing below the first). Twelve SIMD compare-and-count passes are 2x faster than
    # any table look-up or float formula with exact edge fix-ups measured here (cv2.calcHist
    # included). The passes run over groups of images of about CHUNK_PIXELS values (in cache),
    # and cv2.reduce sums each image's {0,1} row in one call: 1.5x faster than per image.
    n, length = flat.shape
    at_least = np.zeros((n, N_BINS + 1), np.int64)
    if n == 0 or length == 0:
        return at_least[:, :-1]
    if length >= 2**31:  # beyond cv2's int32 sums: count image by image
        for i, row in enumerate(flat):
            at_least[i] = [np.count_nonzero(row >= t) for t in _THRESHOLDS]
        return at_least[:, :-1] - at_least[:, 1:]
    group = max(1, CHUNK_PIXELS // length)
    above = np.empty((min(group, n), length), np.uint8)
    for s in range(0, n, group):
        rows = flat[s:s + group]
        a = above[:len(rows)]
        for k, t in enumerate(_THRESHOLDS):
            np.greater_equal(rows, t, out=a.view(bool))
            at_least[s:s + len(rows), k] = cv2.reduce(a, 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel()
    return at_least[:, :-1] - at_least[:, 1:]


def _counts12(counts: np.ndarray) -> np.ndarray:
    c = np.asarray(counts, np.int64)
    if c.shape[-1] != N_BINS:
        raise ValueError(f"expected {N_BINS} bin counts in the last axis, got shape {c.shape}")
    return c


def _window3(counts: np.ndarray) -> np.ndarray:
    """Window-3 sums with zero padding (3 x the moving average; integer, so ties are exact):
    the reference code's `conv1d(h, ones(3), padding=1)`."""
    c = _counts12(counts)
    s = c.copy()
    s[..., 1:] += c[..., :-1]
    s[..., :-1] += c[..., 1:]
    return s


def _window3_mean6(counts: np.ndarray) -> np.ndarray:
    """6 x the window-3 moving average whose end windows average only the bins they cover:
    6 s[0] = 3 (h0 + h1), 6 s[i] = 2 (h[i-1] + h[i] + h[i+1]), 6 s[11] = 3 (h10 + h11).
    Integers, so ties compare exactly."""
    c = _counts12(counts)
    s = 2 * _window3(c)
    s[..., 0] = 3 * (c[..., 0] + c[..., 1])
    s[..., -1] = 3 * (c[..., -2] + c[..., -1])
    return s


def paper_keeps(counts: np.ndarray) -> np.ndarray:
    """Paper's histogram rule (section 3.3, read literally) on 12 bin counts [..., 12] -> keep bool [...].

    s = moving average of window 3, a window cut by the end of the histogram averaging the bins it
    covers (`_window3_mean6`). Reject when an inner bin is a local maximum: some i in 1..10 with
    s[i] > s[i-1] and s[i] >= s[i+1] (a peak, or the start of a plateau), unless that plateau runs
    on to the last bin (s[i] == ... == s[11]): then it is the shoulder of an end bin. (A plateau
    that starts at bin 0 is a shoulder too; the strict s[i] > s[i-1] already excludes it.)

    Why not zero padding (an earlier text of the design said so): it halves the end windows, so
    any dark mass spilling into bin 2 made bin 1 a "maximum", and nearly every natural image failed."""
    s = _window3_mean6(counts)
    start = (s[..., 1:-1] > s[..., :-2]) & (s[..., 1:-1] >= s[..., 2:])  # i = 1..10
    flat_next = s[..., :-1] == s[..., 1:]  # s[i] == s[i+1], i = 0..10
    # flat_to_end[i] = all(s[i] == s[i+1] == ... == s[11]): a suffix AND over flat_next
    flat_to_end = np.logical_and.accumulate(flat_next[..., ::-1], axis=-1)[..., ::-1]
    inner_max = start & ~flat_to_end[..., 1:]
    return ~inner_max.any(axis=-1)


def bimodal_keeps(counts: np.ndarray) -> np.ndarray:
    """Reference code's rule (`maxes_filter`) on 12 bin counts [..., 12] -> keep bool [...].

    s = counts convolved with ones(3), zero padding 1; maxima where s[i] >= s[i-1] and
    s[i] >= s[i+1], an end bin comparing with its one neighbour only; keep when there are at
    least 2 maxima (plateaus count every bin)."""
    s = _window3(counts)
    left = np.ones(s.shape, bool)
    left[..., 1:] = s[..., 1:] >= s[..., :-1]
    right = np.ones(s.shape, bool)
    right[..., :-1] = s[..., :-1] >= s[..., 1:]
    return (left & right).sum(axis=-1) >= 2


@dataclass(frozen=True)
class HistogramRule:
    """A histogram filter: which values are histogrammed (`source`: "gray" = gray(x'),
    "rgb" = the three channels of x' pooled) and the decision on their 12 bin counts."""

    name: str
    source: str
    keeps: Callable[[np.ndarray], np.ndarray] = field(repr=False)

    def __post_init__(self):
        if self.source not in ("gray", "rgb"):
            raise ValueError(f"histogram source must be 'gray' or 'rgb', got {self.source!r}")

    def histogram(self, x_shift: np.ndarray, gray_shift: np.ndarray | None = None) -> np.ndarray:
        """int64 [N, 12] bin counts of this rule's source for a batch x' [N, H, W, 3]."""
        if self.source == "gray":
            return histogram12(gray(x_shift) if gray_shift is None else gray_shift)
        return histogram12(x_shift)

    def __call__(self, x_shift: np.ndarray, gray_shift: np.ndarray | None = None) -> np.ndarray:
        """keep bool [N] for a batch x' [N, H, W, 3] in [-1, 1]."""
        return self.keeps(self.histogram(x_shift, gray_shift))


HISTOGRAM_RULES: Registry[HistogramRule] = Registry("histogram rule")
HISTOGRAM_RULES.register("paper", HistogramRule("paper", "gray", paper_keeps))
HISTOGRAM_RULES.register("bimodal", HistogramRule("bimodal", "rgb", bimodal_keeps))


# ----------------------------------------------------------------------------------- the batch

@dataclass(frozen=True)
class FilterConfig:
    """How masks are made and which samples are kept. Defaults are the paper's, except the
    histogram rule, which is the reference code's (docs/RULES.md, "Histogram rules")."""

    mask_rule: str = "lighting"  # key of MASK_RULES: "lighting" | "mean" | "background-removal"
    connectivity: int = 4  # 4 = paper ("connected by edges"), 8 = reference code
    min_component_ratio: float = 0.2  # keep components >= ratio x largest area; 0 = no clean-up
    size_filter: bool = True  # reject when the foreground fraction exceeds max_fg_fraction
    max_fg_fraction: float = PAPER_MAX_FG  # fraction of pixels; exactly this value passes
    # key of HISTOGRAM_RULES, or None for no histogram filter. The reference code's rule is the
    # default (the one exception to "the paper's rule is the default"): it produced the paper's
    # numbers (table 5), and the text's rule keeps far fewer natural images (README, "Histogram")
    histogram_rule: str | None = "bimodal"

    def __post_init__(self):
        MASK_RULES.get(self.mask_rule)  # raises UnknownNameError naming the choices
        if self.histogram_rule is not None:
            HISTOGRAM_RULES.get(self.histogram_rule)
        if self.connectivity not in (4, 8):
            raise ValueError(f"connectivity must be 4 or 8, got {self.connectivity!r}")
        _ratio(self.min_component_ratio, "min_component_ratio")
        if not 0.0 < self.max_fg_fraction <= 1.0:
            raise ValueError(f"max_fg_fraction must lie in (0, 1], got {self.max_fg_fraction!r}")


PRESETS: Registry[FilterConfig] = Registry("filter preset")
PRESETS.register("default", FilterConfig())
# Flowers (paper, section 4.1): mean-threshold masks, no size filter (it rejects most samples)
PRESETS.register("flowers", FilterConfig(mask_rule="mean", size_filter=False))


@dataclass
class BatchResult:
    """Masks and decisions for a batch of N pairs."""

    masks: np.ndarray  # uint8 [N, H, W] in {0, 1}, after the connected-components clean-up
    accepted: np.ndarray  # bool [N]
    reason: list[str | None]  # None when accepted, else the FIRST filter that rejected
    fg_fraction: np.ndarray  # float64 [N], foreground fraction of each cleaned mask

    def rejected(self) -> dict[str, int]:
        """Counts per rejection reason, every reason present: {"size": k, "histogram": k}."""
        return {r: sum(1 for x in self.reason if x == r) for r in REASONS}


def _process_chunk(x, x_shift, cfg: FilterConfig, masks, size_ok, hist_ok, frac) -> None:
    """process_batch on a few images, writing into the caller's output slices."""
    g_shift = gray(x_shift)
    masks[...] = keep_large_components(MASK_RULES.get(cfg.mask_rule)(x, x_shift, g_shift),
                                       cfg.connectivity, cfg.min_component_ratio)
    frac[...] = fg_fraction(masks)
    if cfg.size_filter:
        size_ok[...] = frac <= cfg.max_fg_fraction
    if cfg.histogram_rule is not None and size_ok.any():
        rule = HISTOGRAM_RULES.get(cfg.histogram_rule)
        source = g_shift if rule.source == "gray" else x_shift
        if size_ok.all():  # no copy
            hist_ok[...] = rule.keeps(histogram12(source))
        else:  # only samples still in the running need a histogram
            todo = np.flatnonzero(size_ok)
            hist_ok[todo] = rule.keeps(histogram12(source[todo]))


def process_batch(x: np.ndarray, x_shift: np.ndarray, cfg: FilterConfig = PRESETS.get("default")) -> BatchResult:
    """Masks and filter decisions for a batch of pairs x = G(z + a*h), x' = G(z + b*h) with (a, b) =
    `pair_shifts(cfg.mask_rule, r)` (x = G(z), x' = G(z + r*h) for the paper's rules), both
    [N, H, W, 3] (or one [H, W, 3] pair, treated as N = 1) in [-1, 1].

    Order: mask rule -> connected components -> size filter -> histogram filter; a sample
    rejected by the size filter is counted under "size" even if the histogram would reject it."""
    x = np.asarray(x, np.float32)
    x_shift = np.asarray(x_shift, np.float32)
    if x.shape != x_shift.shape:
        raise ValueError(f"x and x_shift must have one shape, got {x.shape} and {x_shift.shape}")
    if x.ndim == 3:
        x, x_shift = x[None], x_shift[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected images [N, H, W, 3], got shape {x.shape}")
    n, h, w = x.shape[:3]

    masks = np.empty((n, h, w), np.uint8)
    size_ok, hist_ok, frac = np.ones(n, bool), np.ones(n, bool), np.zeros(n)
    step = max(1, CHUNK_PIXELS // max(1, h * w))
    for s in range(0, n, step):
        sl = slice(s, s + step)
        _process_chunk(x[sl], x_shift[sl], cfg, masks[sl], size_ok[sl], hist_ok[sl], frac[sl])

    reason = [None if s and h else ("size" if not s else "histogram") for s, h in zip(size_ok, hist_ok)]
    result = BatchResult(masks=masks, accepted=size_ok & hist_ok, reason=reason, fg_fraction=frac)
    log.debug("process_batch: %d pairs, %d accepted, rejected %s", n, int(result.accepted.sum()),
              result.rejected())
    return result


__all__ = [
    "GRAY_WEIGHTS", "N_BINS", "REASONS", "gray",
    "MASK_RULES", "lighting_mask", "mean_mask", "background_removal_mask", "BACKGROUND_REMOVAL_THRESHOLD",
    "pair_shifts", "keep_large_components", "fg_fraction",
    "passes_size_filter", "size_bound", "PAPER_MAX_FG", "histogram12", "paper_keeps", "bimodal_keeps", "HistogramRule",
    "HISTOGRAM_RULES", "FilterConfig", "PRESETS", "BatchResult", "process_batch",
]
