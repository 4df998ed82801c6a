"""An optimised segmenting direction (Melas-Kyriazi et al. 2022, "Finding an Unsupervised Image
Segmenter in Each of Your Deep Generative Models"), for any GAN of the model contract.

One unit direction d is fitted directly: each step draws z ~ N(0, I) and a shift r ~ N(2, 0.5)
clipped at >= 0.1, renders x = G(z) (no gradient) and x' = G(z + r d), and takes an Adam step
(lr 5e-3) on

    loss = 2.0 * mean(gray(x') * c) + 10.0 * mean((sobel(gray x) - sobel(gray x'))^2)

where c = 4 (rho - mean(rho)) and rho = sqrt(u^2 + v^2) on a [-1, 1] x [-1, 1] pixel grid
(`centre_prior`): the shift must brighten the centre, darken the border (the first term) and
keep the edges where they are (the second). After every step d is made unit again. 300 steps,
batch 32: the authors' settings. So the orientation the lighting rule needs (the object is what
gets lighter) is built into the objective: no ranking, no sign to pick.

Two choices, each documented and an option:
- the shift r: the authors' code draws it per latent coordinate (``randn_like(z)``), which scales
  every coordinate of d differently; the paper's text describes one shift length per sample.
  ``shift_draw="sample"`` (default) draws one r per latent; ``"coordinate"`` is the code's.
- ``invert``: the centre term's sign is flipped, so the shift darkens the centre and lights the
  border (for GANs whose objects are already at full brightness). The lighting rule then marks
  the background; the summary shows it.

The images are the GAN's own (native size, values in [-1, 1]); the gray weights are the mask
rule's (`masking.rules.GRAY_WEIGHTS`); the Sobel filter is kornia's normalised one (kernel / 8,
replicated border, magnitude sqrt(gx^2 + gy^2 + 1e-6)), the authors' choice.

Every draw comes from ``(seed, step)`` (the start of d from its own stream), so a seed fixes the
run. A class-conditional GAN (BigGAN) gets one class per latent, drawn over the run's class set
after the other draws and held fixed across G(z) and G(z + r d) (`finder.conditional`); the
summary records the set. `objective` is the numpy form of the loss, the reference the TensorFlow step is tested
against; `mask_statistics` (numpy) measures where a direction's masks fall.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from core.errors import UserError
from finder import conditional as cond
from finder import rank as ds
from gans.directions import save_direction
from masking.rules import GRAY_WEIGHTS, FilterConfig, gray, process_batch, size_bound

log = logging.getLogger(__name__)

SHIFT_DRAWS = ("sample", "coordinate")
SOBEL_EPS = 1e-6  # inside the magnitude's sqrt, as kornia.filters.sobel
# kornia's normalised Sobel kernel (the x derivative; y is its transpose)
SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], np.float32) / 8.0


class OptimizeError(UserError, ValueError):
    """The optimisation cannot run with these settings; the message names the value and the fix."""


@dataclass(frozen=True)
class OptimizeConfig:
    """Melas-Kyriazi et al.'s settings (defaults = their public code's)."""

    steps: int = 300  # Adam steps
    batch: int = 32  # latents per step
    lr: float = 5e-3  # Adam learning rate of d
    shift_mean: float = 2.0  # r ~ N(shift_mean, shift_std), clipped at >= shift_min
    shift_std: float = 0.5
    shift_min: float = 0.1
    shift_draw: str = "sample"  # one r per latent ("sample") or per latent coordinate ("coordinate")
    centre_weight: float = 2.0  # weight of mean(gray(x') * c)
    edge_weight: float = 10.0  # weight of the Sobel term
    centre_scale: float = 4.0  # c = centre_scale * (rho - mean(rho))
    invert: bool = False  # the object darkens instead: c -> -c
    init_scale: float = 0.1  # d starts at init_scale * N(0, I), made unit
    samples: int = 256  # latents of the summary's mask statistics (a fixed draw from seed)
    mask_shift: float = 5.0  # shift of the summary's masks: gen-synth's default r
    seed: int = 0

    def check(self) -> "OptimizeConfig":
        """Raise OptimizeError for a setting no run can use; return self."""
        for name in ("steps", "batch", "samples"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise OptimizeError(f"{name} must be a positive integer, got {value!r}")
        for name in ("lr", "shift_std", "init_scale", "mask_shift", "centre_scale"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise OptimizeError(f"{name} must be a finite number > 0, got {value!r}")
        for name in ("shift_mean", "shift_min", "centre_weight", "edge_weight"):
            if not np.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise OptimizeError(f"{name} must be a finite number >= 0, got {getattr(self, name)!r}")
        if self.centre_weight == 0 and self.edge_weight == 0:
            raise OptimizeError("centre_weight and edge_weight are both 0: nothing to optimise")
        if self.shift_draw not in SHIFT_DRAWS:
            raise OptimizeError(f"shift_draw {self.shift_draw!r} is unknown; choose from {', '.join(SHIFT_DRAWS)}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise OptimizeError(f"seed must be an integer >= 0, got {self.seed!r}")
        return self


# ------------------------------------------------------------------------------ the loss, in numpy


def centre_prior(size: int, scale: float = 4.0, invert: bool = False) -> np.ndarray:
    """c [size, size] float32: scale x (rho - mean(rho)), rho the distance from the centre on a
    [-1, 1] x [-1, 1] grid. Negative at the centre, positive at the border, mean 0; so
    mean(gray(x') * c) falls when x' lights the centre and darkens the border."""
    u = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    rho = np.sqrt(u[:, None] ** 2 + u[None, :] ** 2)
    c = (rho - rho.mean()) * np.float32(scale)
    return (-c if invert else c).astype(np.float32)


def sobel_magnitude(g: np.ndarray) -> np.ndarray:
    """|grad| of gray images [N, H, W] (float32) with kornia's normalised Sobel kernel and a
    replicated border: sqrt(gx^2 + gy^2 + 1e-6)."""
    g = np.asarray(g, np.float32)
    p = np.pad(g, ((0, 0), (1, 1), (1, 1)), mode="edge")
    h, w = g.shape[1:]
    gx = np.zeros_like(g)
    gy = np.zeros_like(g)
    for i in range(3):
        for j in range(3):
            win = p[:, i:i + h, j:j + w]
            gx += SOBEL_X[i, j] * win
            gy += SOBEL_X[j, i] * win
    return np.sqrt(gx * gx + gy * gy + np.float32(SOBEL_EPS))


def objective(x: np.ndarray, x_shift: np.ndarray, cfg: OptimizeConfig = OptimizeConfig()) -> dict:
    """The loss terms for image pairs [N, S, S, 3] in [-1, 1]: {"centre", "edges", "loss"} (the
    weighted terms and their sum), in float64. The reference of the TensorFlow step."""
    x = np.asarray(x, np.float32)
    x_shift = np.asarray(x_shift, np.float32)
    c = centre_prior(x.shape[1], cfg.centre_scale, cfg.invert)
    gs = gray(x_shift)
    centre = cfg.centre_weight * float(np.mean(gs.astype(np.float64) * c))
    diff = sobel_magnitude(gray(x)).astype(np.float64) - sobel_magnitude(gs)
    edges = cfg.edge_weight * float(np.mean(diff ** 2))
    return {"centre": centre, "edges": edges, "loss": centre + edges}


def draw_step(cfg: OptimizeConfig, step: int, latent_dim: int, classes: cond.ClassSet | None = None) -> tuple:
    """The draws of one step from ``(seed, step)``: z [B, D] and r, [B, 1] or [B, D] (shift_draw),
    and with a class set the classes [B] (int64), drawn after the others so they stay what an
    unconditional step draws."""
    rng = np.random.default_rng([cfg.seed, step])
    z = rng.standard_normal((cfg.batch, latent_dim)).astype(np.float32)
    shape = (cfg.batch, 1) if cfg.shift_draw == "sample" else (cfg.batch, latent_dim)
    r = np.maximum(cfg.shift_mean + cfg.shift_std * rng.standard_normal(shape), cfg.shift_min)
    if classes is None:
        return z, r.astype(np.float32)
    return z, r.astype(np.float32), classes.draw(rng, cfg.batch)


def initial_direction(cfg: OptimizeConfig, latent_dim: int) -> np.ndarray:
    """d at step 0: init_scale x N(0, I) from its own stream of the seed, made unit (float32)."""
    d = cfg.init_scale * np.random.default_rng([cfg.seed, 2**31 - 1]).standard_normal(latent_dim)
    return (d / np.linalg.norm(d)).astype(np.float32)


# ------------------------------------------------------------------------------ where masks fall


def band_masks(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(centre, border) bool [size, size]: the central square of half the side, and the outer
    eighth of the side along each of the four edges."""
    centre = np.zeros((size, size), bool)
    q = size // 4
    centre[q:size - q, q:size - q] = True
    border = np.zeros((size, size), bool)
    b = max(1, size // 8)
    border[:b] = border[-b:] = True
    border[:, :b] = border[:, -b:] = True
    return centre, border


def mask_statistics(masks: np.ndarray) -> dict:
    """Where masks [N, S, S] (0/1) fall: mean foreground fraction, its quantiles, the foreground
    share of the central square and of the border band (`band_masks`), and the size bound that
    `--max-fg auto` derives from these masks (`masking.rules.size_bound`)."""
    m = np.asarray(masks).astype(bool)
    centre, border = band_masks(m.shape[-1])
    frac = m.reshape(len(m), -1).mean(axis=1)
    qs = (0.1, 0.25, 0.5, 0.75, 0.9)
    return {
        "samples": int(len(m)),
        "fg_mean": float(frac.mean()),
        "fg_quantiles": {str(q): float(np.quantile(frac, q)) for q in qs},
        "centre_fg": float(m[:, centre].mean()),
        "border_fg": float(m[:, border].mean()),
        "size_bound": size_bound(frac),
    }


def centre_assumption(stats: dict) -> str | None:
    """None when the masks sit at the centre more than at the border (the objective's prior);
    otherwise one sentence saying that the assumption failed."""
    if stats["centre_fg"] > stats["border_fg"]:
        return None
    return (f"the masks are not centred: {stats['centre_fg']:.0%} of the central square against "
            f"{stats['border_fg']:.0%} of the border is foreground; the objects of this GAN may not sit "
            f"at the centre of its images, or the direction failed (look at optimize.png)")


# ------------------------------------------------------------------------------ TensorFlow


def _train_step(generate, d, adam, cfg: OptimizeConfig, size: int):
    """The compiled step: (z, r[, classes]) -> loss terms, with one Adam update of d and d made unit."""
    import tensorflow as tf

    c = tf.constant(centre_prior(size, cfg.centre_scale, cfg.invert))
    weights = tf.constant(np.array(GRAY_WEIGHTS, np.float32))
    kx = tf.constant(SOBEL_X)
    kernels = tf.stack([kx, tf.transpose(kx)], axis=-1)[:, :, None, :]  # [3, 3, 1, 2]

    def to_gray(img):
        return tf.reduce_sum(img * weights, axis=-1)

    def sobel(g):
        p = tf.pad(g[..., None], [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")  # edge replicate
        grad = tf.nn.conv2d(p, kernels, 1, "VALID")
        return tf.sqrt(tf.reduce_sum(tf.square(grad), axis=-1) + SOBEL_EPS)

    @tf.function
    def step(z, r, labels=None):
        # the same classes for both images: the direction moves z only
        x = tf.stop_gradient(generate(z, labels))
        edges_x = sobel(to_gray(x))
        with tf.GradientTape() as tape:
            unit = d / tf.norm(d)
            xs = generate(z + r * unit[None, :], labels)
            gs = to_gray(xs)
            centre = cfg.centre_weight * tf.reduce_mean(gs * c)
            edges = cfg.edge_weight * tf.reduce_mean(tf.square(edges_x - sobel(gs)))
            loss = centre + edges
        adam.apply(tape.gradient(loss, [d]))
        d.assign(d / tf.norm(d))
        return {"loss": loss, "centre": centre, "edges": edges}

    return step


def optimize_direction(gan, cfg: OptimizeConfig = OptimizeConfig(),
                       progress: Callable[[int, dict], None] | None = None,
                       classes: cond.ClassSet | None = None) -> tuple[np.ndarray, list[dict]]:
    """Fit the direction on ``gan`` (a `gans.loader.Gan`, or anything `discover.differentiable_generator`
    takes), drawing each latent's class from ``classes`` for a conditional GAN (`conditional.class_set`).
    Returns (unit direction float32 [D], the loss terms of every step).
    ``progress(step, terms)`` is called after each step."""
    import tensorflow as tf

    from finder.discover import Adam, differentiable_generator

    cfg.check()
    dim = int(gan.latent_dim)
    if classes is None:
        classes = cond.class_set(gan, None)  # a conditional GAN draws from all its classes
    generate = differentiable_generator(gan)
    d = tf.Variable(initial_direction(cfg, dim), name="d")
    adam = Adam([d], cfg.lr, tf)
    step_fn = _train_step(generate, d, adam, cfg, int(gan.image_size))
    history: list[dict] = []
    for step in range(cfg.steps):
        z, r, *labels = draw_step(cfg, step, dim, classes)
        # none at all for an unconditional GAN: its step is traced as before classes existed
        labels = [tf.constant(c.astype(np.int32)) for c in labels]
        terms = {k: float(v) for k, v in step_fn(tf.constant(z), tf.constant(r), *labels).items()}
        if not np.isfinite(terms["loss"]):
            raise OptimizeError(f"the loss became {terms['loss']} at step {step + 1}; lower --lr or check the GAN's "
                                f"output (it must be finite, in [-1, 1])")
        history.append(terms)
        if progress is not None:
            progress(step + 1, terms)
    vec = d.numpy().astype(np.float64)
    return (vec / np.linalg.norm(vec)).astype(np.float32), history


# gen-synth's masks before its filters: the rule and the connected-components clean-up only
_UNFILTERED = FilterConfig(size_filter=False, histogram_rule=None)


def summarise(gan, direction: np.ndarray, cfg: OptimizeConfig, chunk: int = 64,
              picture_samples: int = 8, classes: cond.ClassSet | None = None) -> tuple[dict, list[list[np.ndarray]]]:
    """Mask statistics of ``direction`` over ``cfg.samples`` prior latents (seed ``cfg.seed + 1``,
    and their classes after them for a conditional GAN):
    lighting masks at ``cfg.mask_shift``, cleaned as gen-synth cleans them (connected components),
    at the GAN's own size. Returns (statistics, picture rows G(z) | G(z + shift d) | mask of the first
    ``picture_samples`` latents, from the same renders)."""
    if classes is None:
        classes = cond.class_set(gan, None)
    z, labels = cond.draw_samples(cfg.samples, int(gan.latent_dim), cfg.seed + 1, classes)
    masks, rows = [], None
    for lo in range(0, len(z), chunk):
        x, xs = cond.generate_pair(gan, z[lo:lo + chunk], direction, cfg.mask_shift,
                                   None if labels is None else labels[lo:lo + chunk])
        masks.append(process_batch(x, xs, _UNFILTERED).masks)
        if rows is None:
            k = picture_samples
            rows = [[ds.unit_to_uint8(ds.to_unit_range(a)) for a in x[:k]],
                    [ds.unit_to_uint8(ds.to_unit_range(a)) for a in xs[:k]],
                    [ds.unit_to_uint8(m) for m in masks[0][:k]]]
    return mask_statistics(np.concatenate(masks)), rows


def run(gan, out_dir: str | os.PathLike, cfg: OptimizeConfig = OptimizeConfig(),
        progress: Callable[[int, dict], None] | None = None, picture_samples: int = 8,
        classes: str | None = None) -> dict:
    """Optimise, then write ``direction.npy`` (unit float32 [D], what gen-synth --direction takes),
    ``summary.json`` (settings, losses, mask statistics, a conditional GAN's class set) and
    ``optimize.png``. ``classes``: the class set of a conditional GAN (`gans.classes.parse_class_set`;
    None: all), an error for an unconditional one. Returns the summary."""
    class_set = cond.class_set(gan, classes)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    direction, history = optimize_direction(gan, cfg, progress, class_set)
    stats, rows = summarise(gan, direction, cfg, picture_samples=picture_samples, classes=class_set)
    warning = centre_assumption(stats)
    first, last = history[0], history[-1]
    summary = {
        "format": "bgw-direction-optimize",
        "version": 1,
        "method": "Melas-Kyriazi et al. 2022: one direction, centre-light + edge-keeping loss",
        "gan": {"handle": str(getattr(gan, "handle", None)), "fingerprint": getattr(gan, "fingerprint", None),
                "latent_dim": int(gan.latent_dim), "image_size": int(gan.image_size)},
        "config": asdict(cfg),
        "loss": {"first": first, "last": last,
                 "every_10": [history[i] for i in range(0, len(history), 10)]},
        "masks": {**stats, "shift": cfg.mask_shift, "rule": "lighting, connected components (4, >= 0.2 x largest)",
                  "latents": f"{cfg.samples} prior draws, seed {cfg.seed + 1}"},
        "centre_assumption": "holds" if warning is None else warning,
        "direction_file": "direction.npy",
    }
    if class_set is not None:  # only then: an unconditional run's summary stays as it was
        summary["classes"] = class_set.record()
    summary["direction_sha256"] = save_direction(out / "direction.npy", direction)
    ds.write_bytes(out / "summary.json", (json.dumps(summary, indent=1) + "\n").encode())
    names = ["G(z)", f"G(z+{cfg.mask_shift:g}d)", "mask"]
    ds.write_png(out / "optimize.png", ds.labelled_grid(rows, names, title=(
        f"optimised direction: fg {stats['fg_mean']:.0%}, centre {stats['centre_fg']:.0%}, "
        f"border {stats['border_fg']:.0%}")))
    log.info("optimised direction: loss %.4f -> %.4f; masks fg %.3f, centre %.3f, border %.3f",
             first["loss"], last["loss"], stats["fg_mean"], stats["centre_fg"], stats["border_fg"])
    return summary
