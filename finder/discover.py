"""Unsupervised discovery of interpretable latent directions (Voynov & Babenko 2020), in TensorFlow.

K directions h_1..h_K are learned jointly with a reconstructor R. Each step draws z ~ N(0, I), a
direction index k uniform in 0..K-1 and a shift eps uniform in [-6, 6] (shifts with |eps| < 0.5 are
pushed out to +-0.5, as the authors' code does); R sees the pair (G(z), G(z + eps h_k)) and predicts
k (logits) and eps. Loss = cross-entropy(k) + 0.25 * mean |eps_pred - eps|; Adam, lr 1e-4 for both
the directions and R, batch 32 (the authors' defaults). The generator is frozen; gradients reach the
directions through it.

Directions: the first K columns of the orthogonal matrix ``expm(S - S^T)`` for a learned square
matrix S (the authors' "ortho" deformator), so they are orthonormal by construction. S starts at
``N(0, 1)`` (init ``random``: a random rotation, the authors' ``random_init``, which their
run_train.py always sets) or ``0.001 * N(0, 1)`` (init ``identity``: the directions start next to
the coordinate axes, their class default when ``random_init`` is off).

Reconstructor: a small CNN (four stride-2 3x3 convolutions, global mean, two heads) on the pair
average-pooled to ``recon_size``, fed as ``[G(z), G(z + eps h) - G(z)]``: the same information as
the raw pair (the first convolution is linear), conditioned so short runs learn faster.

Run folder: ``config.json`` (the latest settings, and ``segments``: the settings each stretch of
steps ran with, so a run resumed with a new lr schedule keeps its history), ``checkpoints/`` (TF
checkpoints of S, R, both optimisers and the step; never pickle), ``tensorboard/`` (loss, ce,
shift_loss, accuracy), and at the end
``directions.npy`` (float32 [K, D], unit rows) and ``effects/direction-KKK.png`` (each direction's
effect on a few samples: rows = samples, columns = shifts -2r, -r, 0, r, 2r with r = 5).
Each step's random draws come from ``(seed, step)``, so a resumed run continues exactly the
stream an uninterrupted run would have seen.

A class-conditional GAN (BigGAN) gets one class per latent, drawn uniformly over the run's class
set after the step's other draws and held fixed across G(z) and G(z + eps h) (`finder.conditional`);
config.json and summary.json then record the set (``classes``), and a resume must keep it.
"""
from __future__ import annotations

import contextlib
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
from finder.conditional import differentiable_generator  # noqa: F401 - optimize and the tests import it from here

log = logging.getLogger(__name__)

INITS = ("identity", "random")


class DiscoveryError(UserError, ValueError):
    """Discovery cannot start or resume with these settings; the message says what to change."""


@dataclass(frozen=True)
class DiscoverConfig:
    """Voynov & Babenko's training setup (defaults = the authors' code)."""

    directions: int = 120  # K, at most the latent size
    steps: int = 100_000  # total training steps (the authors' n_steps)
    batch: int = 32  # latents per step
    lr: float = 1e-4  # Adam learning rate of the reconstructor
    lr_directions: float = 1e-4  # Adam learning rate of the directions' matrix S
    # the directions' lr is multiplied by lr_directions_gamma at each of these steps (not in the
    # authors' code: on the toy, alignment levels off at lr 1e-3 and moves on after a drop)
    lr_directions_milestones: tuple[int, ...] = ()
    lr_directions_gamma: float = 0.1
    shift_scale: float = 6.0  # eps ~ U[-shift_scale, shift_scale]
    min_shift: float = 0.5  # |eps| below this is pushed out to +-min_shift
    shift_weight: float = 0.25  # weight of the mean absolute error on eps
    init: str = "random"  # "random": S ~ N(0,1) (the authors' runs); "identity": S ~ 0.001 N(0,1)
    recon_size: int = 64  # reconstructor input side (pairs are average-pooled to it)
    width: int = 32  # reconstructor base width
    checkpoint_every: int = 500  # steps between checkpoints (and one at the end)
    log_every: int = 10  # steps between TensorBoard scalars
    picture_samples: int = 3  # samples per effect picture
    picture_shift: float = 5.0  # r of the effect pictures' columns -2r..2r
    seed: int = 0

    def check(self, latent_dim: int | None = None) -> "DiscoverConfig":
        """Raise DiscoveryError for a setting no run can use (`directions` against the GAN's
        `latent_dim` when it is given); return self."""
        if latent_dim is not None and not 1 <= self.directions <= latent_dim:
            raise DiscoveryError(f"directions must be in 1..{latent_dim} (the latent size); got {self.directions}")
        if self.init not in INITS:
            raise DiscoveryError(f"unknown init {self.init!r}; choose from {INITS}")
        if any(int(m) != m or m < 1 for m in self.lr_directions_milestones) or self.lr_directions_gamma <= 0:
            raise DiscoveryError(f"lr_directions_milestones must be steps >= 1 and lr_directions_gamma > 0; got "
                                 f"{list(self.lr_directions_milestones)} and {self.lr_directions_gamma}")
        return self


# Fields that must match when a run is resumed (the rest may change, e.g. `steps`).
_RESUME_KEYS = ("directions", "batch", "init", "recon_size", "width", "seed")
# Fields that shape training and may change on resume: config.json's `segments` records them
# per stretch of steps.
_SEGMENT_KEYS = ("steps", "lr", "lr_directions", "lr_directions_milestones", "lr_directions_gamma",
                 "shift_scale", "min_shift", "shift_weight")


def directions_lr(cfg: DiscoverConfig, step: int) -> float:
    """The directions' Adam lr at 0-based ``step``: lr_directions x gamma^(milestones passed).

    A function of the step alone, so a resumed run uses the lr an uninterrupted one would."""
    passed = sum(1 for m in cfg.lr_directions_milestones if step >= m)
    return float(cfg.lr_directions * cfg.lr_directions_gamma ** passed)


class Adam:
    """Adam (Kingma & Ba; torch's defaults) whose state is tf.Variables, so it checkpoints."""

    def __init__(self, variables, lr: float, tf):
        self.vars = list(variables)
        self.lr = lr
        self.m = [tf.Variable(tf.zeros_like(v), trainable=False) for v in self.vars]
        self.v = [tf.Variable(tf.zeros_like(v), trainable=False) for v in self.vars]
        self.t = tf.Variable(0.0, trainable=False)
        self._tf = tf

    def apply(self, grads, lr=None):
        """One update; ``lr`` (a tensor, for schedules) overrides the constructor's."""
        tf = self._tf
        lr = self.lr if lr is None else lr
        self.t.assign_add(1.0)
        b1, b2, eps = 0.9, 0.999, 1e-8
        for var, g, m, v in zip(self.vars, grads, self.m, self.v):
            m.assign(b1 * m + (1 - b1) * g)
            v.assign(b2 * v + (1 - b2) * tf.square(g))
            mhat = m / (1 - tf.pow(b1, self.t))
            vhat = v / (1 - tf.pow(b2, self.t))
            var.assign_sub(lr * mhat / (tf.sqrt(vhat) + eps))

    def state(self) -> dict:
        return {"m": self.m, "v": self.v, "t": self.t}


def _build(latent_dim: int, cfg: DiscoverConfig):
    """The directions' matrix S and the reconstructor's variables, initialised from ``cfg.seed``."""
    import tensorflow as tf

    rng = np.random.default_rng([cfg.seed, 2**31 - 1])  # its own stream, apart from the steps'
    scale = 0.001 if cfg.init == "identity" else 1.0
    s = tf.Variable((scale * rng.standard_normal((latent_dim, latent_dim))).astype(np.float32), name="S")
    w = cfg.width
    chans = [6, w, 2 * w, 4 * w, 4 * w]
    rec = {}
    for i in range(4):
        fan_in = 9 * chans[i]
        rec[f"conv{i}"] = tf.Variable((rng.standard_normal((3, 3, chans[i], chans[i + 1])) * np.sqrt(2 / fan_in))
                                      .astype(np.float32), name=f"conv{i}")
        rec[f"bias{i}"] = tf.Variable(np.zeros(chans[i + 1], np.float32), name=f"bias{i}")
    feat = chans[-1]
    for name, n_out in (("hidden", feat), ("logits", cfg.directions), ("shift", 1)):
        n_in = feat
        rec[f"{name}_w"] = tf.Variable((rng.standard_normal((n_in, n_out)) * np.sqrt(1 / n_in)).astype(np.float32),
                                       name=f"{name}_w")
        rec[f"{name}_b"] = tf.Variable(np.zeros(n_out, np.float32), name=f"{name}_b")
    return s, rec


def _directions(s, k: int):
    """[K, D]: the first K columns of expm(S - S^T), as rows."""
    import tensorflow as tf

    mat = tf.linalg.expm(s - tf.transpose(s))
    return tf.transpose(mat[:, :k])


def _reconstruct(rec: dict, x, xs, size: int):
    import tensorflow as tf

    pool = x.shape[1] // size if x.shape[1] and x.shape[1] >= size else 1
    a = tf.nn.avg_pool2d(x, pool, pool, "VALID") if pool > 1 else x
    b = tf.nn.avg_pool2d(xs, pool, pool, "VALID") if pool > 1 else xs
    h = tf.concat([a, b - a], axis=-1)
    for i in range(4):
        h = tf.nn.leaky_relu(tf.nn.conv2d(h, rec[f"conv{i}"], 2, "SAME") + rec[f"bias{i}"], 0.2)
    h = tf.reduce_mean(h, axis=[1, 2])
    h = tf.nn.leaky_relu(h @ rec["hidden_w"] + rec["hidden_b"], 0.2)
    return h @ rec["logits_w"] + rec["logits_b"], (h @ rec["shift_w"] + rec["shift_b"])[:, 0]


@contextlib.contextmanager
def _remapper_off(tf):
    """Grappler's remapper cannot fuse this graph's LeakyRelu gradients: it fails, leaves the graph as
    it was, and says so at ERROR level on every run (`E0000 ... remapper failed`), which no log level
    short of hiding every error holds back. Switching the pass off for this graph changes nothing but
    that line; it is switched back on after, for whatever else the process runs."""
    before = tf.config.optimizer.get_experimental_options().get("remapping", True)
    tf.config.optimizer.set_experimental_options({"remapping": False})
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options({"remapping": before})


def draw_step(seed: int, step: int, batch: int, latent_dim: int, k: int, cfg: DiscoverConfig,
              classes: cond.ClassSet | None = None):
    """The random draws of one step, from ``(seed, step)``: z [B, D], index [B], eps [B], and
    with a class set the classes [B] (int64), drawn after the others so they stay what an
    unconditional step draws."""
    rng = np.random.default_rng([seed, step])
    z = rng.standard_normal((batch, latent_dim)).astype(np.float32)
    idx = rng.integers(0, k, batch).astype(np.int32)
    eps = (cfg.shift_scale * (2.0 * rng.random(batch) - 1.0)).astype(np.float32)
    small = np.abs(eps) < cfg.min_shift
    eps[small] = np.where(eps[small] < 0, -cfg.min_shift, cfg.min_shift)  # 0 counts as positive
    if classes is None:
        return z, idx, eps
    return z, idx, eps, classes.draw(rng, batch)


class RunExists(DiscoveryError):
    """The output folder already holds a run and `resume` was not asked for."""


def discover(gan, out_dir: str | os.PathLike, cfg: DiscoverConfig = DiscoverConfig(), *, resume: bool = False,
             progress: Callable[[int, dict], None] | None = None, classes: str | None = None) -> dict:
    """Train directions + reconstructor on ``gan`` up to ``cfg.steps``; write the run folder.

    ``resume=True`` continues from the newest checkpoint in ``out_dir`` (an error if the recorded
    config differs in a field of ``_RESUME_KEYS`` or in the class set). ``progress(step, metrics)``
    is called after every step. ``classes``: the class set of a conditional GAN
    (`gans.classes.parse_class_set`; None: all), an error for an unconditional one. Returns a
    summary dict (also written as ``summary.json``)."""
    import tensorflow as tf

    out = Path(out_dir)
    d = int(gan.latent_dim)
    cfg.check(d)
    class_set = cond.class_set(gan, classes)
    class_record = None if class_set is None else class_set.record()
    cfg_path = out / "config.json"
    ckpt_dir = out / "checkpoints"
    has_run = cfg_path.exists() or (ckpt_dir / "checkpoint").exists()
    if has_run and not resume:
        raise RunExists(f"{out} already holds a discovery run; pass --resume to continue it or choose another --out")
    old = json.loads(cfg_path.read_text()) if resume and cfg_path.exists() else None
    if old is not None:
        diff = {k: (old.get(k), getattr(cfg, k)) for k in _RESUME_KEYS if old.get(k) != getattr(cfg, k)}
        if old.get("classes") != class_record:  # the steps' class draws depend on the set
            diff["classes"] = ((old.get("classes") or {}).get("set"), (class_record or {}).get("set"))
        if diff:
            raise DiscoveryError(f"cannot resume {out}: settings differ from the run's config.json: "
                             + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in diff.items()))
    out.mkdir(parents=True, exist_ok=True)

    s, rec = _build(d, cfg)
    opt_s = Adam([s], cfg.lr_directions, tf)
    rec_vars = [rec[k] for k in sorted(rec)]
    opt_r = Adam(rec_vars, cfg.lr, tf)
    step_var = tf.Variable(0, dtype=tf.int64, trainable=False)
    ckpt = tf.train.Checkpoint(S=s, reconstructor=rec, opt_s=opt_s.state(), opt_r=opt_r.state(), step=step_var)
    manager = tf.train.CheckpointManager(ckpt, str(ckpt_dir), max_to_keep=3)
    if resume and manager.latest_checkpoint:
        ckpt.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        log.info("resumed %s at step %d", manager.latest_checkpoint, int(step_var.numpy()))
    start = int(step_var.numpy())
    # config.json holds the latest settings; `segments` keeps the ones each stretch of steps ran
    # with, so a run resumed with a new lr schedule still says how it was trained
    segment = {"from_step": start, **{key: getattr(cfg, key) for key in _SEGMENT_KEYS}}
    record = {**asdict(cfg), "gan": {"handle": getattr(gan, "handle", None),
                                     "fingerprint": getattr(gan, "fingerprint", None)}, "latent_dim": d,
              "segments": [g for g in (old or {}).get("segments", []) if g["from_step"] < start] + [segment]}
    if class_record is not None:  # only then: an unconditional run's config.json stays as it was
        record["classes"] = class_record
    ds.write_bytes(cfg_path, (json.dumps(record, indent=1) + "\n").encode())
    generate = differentiable_generator(gan)
    k = cfg.directions

    with _remapper_off(tf):
        @tf.function
        def train_step(z, idx, eps, lr_s, labels=None):
            # the same classes for both images: the direction moves z only
            x = tf.stop_gradient(generate(z, labels))
            with tf.GradientTape() as tape:
                dirs = _directions(s, k)
                shift = eps[:, None] * tf.gather(dirs, idx)
                xs = generate(z + shift, labels)
                logits, eps_pred = _reconstruct(rec, x, xs, cfg.recon_size)
                ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=idx, logits=logits))
                shift_loss = cfg.shift_weight * tf.reduce_mean(tf.abs(eps_pred - eps))
                loss = ce + shift_loss
            grads = tape.gradient(loss, [s] + rec_vars)
            opt_s.apply(grads[:1], lr_s)
            opt_r.apply(grads[1:])
            acc = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, 1, output_type=tf.int32), idx), tf.float32))
            return {"loss": loss, "ce": ce, "shift_loss": shift_loss, "accuracy": acc}

        writer = tf.summary.create_file_writer(str(out / "tensorboard"))
        # tf.summary.write is TensorFlow's own op; tf.summary.scalar goes through TensorBoard's Python
        # layer, which a train-unet run earlier in the same process switches to its TF-free stub
        scalar_meta = tf.compat.v1.SummaryMetadata(
            plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name="scalars"))
        metrics: dict = {}
        window: list[dict] = []
        for step in range(start, cfg.steps):
            z, idx, eps, *labels = draw_step(cfg.seed, step, cfg.batch, d, k, cfg, class_set)
            lr_s = directions_lr(cfg, step)
            # none at all for an unconditional GAN: its step is traced as before classes existed
            labels = [tf.constant(c.astype(np.int32)) for c in labels]
            metrics = {key: float(v) for key, v in train_step(tf.constant(z), tf.constant(idx), tf.constant(eps),
                                                              tf.constant(lr_s, tf.float32), *labels).items()}
            metrics["lr_directions"] = lr_s
            step_var.assign(step + 1)
            window.append(metrics)
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                with writer.as_default(step=step + 1):
                    for key in metrics:
                        tf.summary.write(key, tf.constant(float(np.mean([m[key] for m in window]))),
                                         metadata=scalar_meta)
                window = []
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
                manager.save(checkpoint_number=step + 1)
            if progress is not None:
                progress(step + 1, metrics)
        writer.flush()

    dirs = _directions(s, k).numpy().astype(np.float64)
    dirs = (dirs / np.linalg.norm(dirs, axis=1, keepdims=True)).astype(np.float32)
    ds.save_npy(out / "directions.npy", dirs)
    write_effects(gan, dirs, out / "effects", cfg, class_set)
    summary = {"steps": int(step_var.numpy()), "directions": k, "latent_dim": d,
               "last_metrics": metrics, "directions_file": "directions.npy"}
    if class_record is not None:
        summary["classes"] = class_record
    ds.write_bytes(out / "summary.json", (json.dumps(summary, indent=1) + "\n").encode())
    return summary


def write_effects(gan, dirs: np.ndarray, folder: Path, cfg: DiscoverConfig,
                  classes: cond.ClassSet | None = None) -> None:
    """One picture per direction: rows = samples, columns = shifts -2r, -r, 0, r, 2r; a
    conditional GAN's sample keeps its class (from ``classes``, default all) along its row."""
    folder.mkdir(parents=True, exist_ok=True)
    if classes is None:
        classes = cond.class_set(gan, None)
    z, labels = cond.draw_samples(cfg.picture_samples, dirs.shape[1], cfg.seed + 1, classes)
    shifts = cfg.picture_shift * np.array([-2, -1, 0, 1, 2], np.float32)
    row_labels = None if labels is None else np.repeat(labels, len(shifts))
    for k, h in enumerate(dirs):
        zz = (z[:, None, :] + shifts[None, :, None] * h[None, None, :]).reshape(-1, dirs.shape[1])
        imgs = ds.unit_to_uint8(ds.to_unit_range(cond.generate(gan, zz, row_labels)))
        imgs = imgs.reshape(len(z), len(shifts), *imgs.shape[1:])
        cols = ", ".join(f"{v:+g}" for v in shifts)
        ds.write_png(folder / f"direction-{k:03d}.png", ds.labelled_grid(
            [list(row) for row in imgs], [f"sample {i + 1}" for i in range(len(z))],
            title=f"direction {k}: G(z + s h), s = {cols} (left to right)"))

