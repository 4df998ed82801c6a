"""The toy GAN: the project's stand-in for BigBiGAN, a TEST FIXTURE NAMED AS ONE.

It is no trained network. It is a small procedural renderer written in TensorFlow and saved as a
SavedModel with BigBiGAN's exact TF-Hub signatures (names, input names, output keys, shapes,
dtypes, value ranges), so tests, the offline demo and `gen-synth --gan toy` run the real loading
code (`hub.load`) and the whole pipeline with no network and no weights:

    generate(z [N,120])            -> default [N,128,128,3] in [-1,1], upsampled [N,256,256,3]
                                      (gradients flow through `default` only)
    encode(x [N,256,256,3])        -> z_sample, z_mean, z_stdev, default [N,120],
                                      avepool_feat [N,2048], bn_crelu_feat [N,4096]
    discriminate(x [N,128,128,3], z [N,120]) -> score_x, score_z, score_xz  [N]

How z becomes a picture. A fixed orthogonal matrix Q (seeded) rotates z into factor
coordinates u = z @ Q, so no factor is axis-aligned in z (like a real GAN) and u ~ N(0, I) when
z is. Factors (see `TOY_FACTORS`, `toy_factor_direction(name)`): object centre, size, aspect,
rotation, superellipse exponent, contour wobble, object colour and texture, background colour
and texture, a global light (x -> x + L(1 - x^2), every pixel brighter or darker), the saliency
light, and 94 coordinates that paint low-frequency colour noise. The object's soft
alpha is a sigmoid of a signed distance, so it is a smooth function of z and gradient-based
direction searches see it.

The saliency light (`toy_direction()`, the shipped segmenting direction h = Q[:, 25]) acts as
the paper's appendix B describes: with t(s) = sigmoid(1.2 (s - 2.2)) increasing in the coordinate
s, object colours map by A1(c) = (1 - t) c + t (towards white) and background colours by
A2(c) = (1 - t) c - t (towards black). Shifting z by 5h raises t, so gray(G(z)) < gray(G(z + 5h))
exactly where alpha (1 - gray(obj)) > (1 - alpha)(1 + gray(bg)): the object, up to its edge.
`toy_true_mask(z)` gives the ground truth (alpha >= 0.5) from the same formula in numpy.

The object's edge is soft in every image (alpha's edge is about 0.5 px wide, with or without the
light): the toy is not shaped to suit either histogram rule of masking.rules. Version 4 hardened
the edge under the light so that an earlier, wrongly padded reading of the paper's rule could pass
(it passed 0% of version 5's samples). Realistic failures: when s is low, z + 5h does not
saturate the colours and the histogram filters may reject the sample; objects that cover more
than half the image fail the size filter. `python benchmarks/toy_gan.py` prints the acceptance
per rule and the IoU of the accepted masks with `toy_true_mask`.

The encoder is a heuristic, not a network: border pixels give the background colour, pixels far
from it in colour give the object's mask, whose moments give centre, size, aspect and
rotation, and whose mean gives the object colour; each is inverted through the renderer's
formulas. Other coordinates are 0. z_sample = z_mean (no sampling noise, so encoding is
reproducible); z_stdev is a constant 0.1.

Everything random comes from `numpy.random.RandomState(TOY_SEED)` (a stream numpy keeps stable),
so `build_toy_module` saves identical variables every time. TensorFlow is imported only inside
the functions that build or run the module; `toy_direction` and `toy_true_mask` are numpy.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from masking.rules import GRAY_WEIGHTS

log = logging.getLogger(__name__)

TOY_HANDLE = "toy"
# 2: the saliency light saturates and hardens the edge (paper histogram rule passes)
# 3: Q mixed blocks of 2-4 axes, which let a short discovery run start near the saliency light,
#    but also let weak position axes win appendix B's ranking over the 120 axes (see README)
# 4: back to version 2's dense Q
# 5: the light no longer hardens the edge (that was shaped to suit one histogram rule)
TOY_VERSION = 5
TOY_SEED = 20210211
LATENT_DIM = 120
SIZE = 128  # generate's `default` side
UP_SIZE = 256  # generate's `upsampled` side and encode's input side
SHIFT = 5.0  # the paper's r = ||h_bg||

# factor name -> coordinate(s) of u = z @ Q
TOY_FACTORS = {
    "center_x": 0,
    "center_y": 1,
    "size": 2,
    "aspect": 3,
    "rotation": 4,
    "roundness": 5,  # superellipse exponent
    "object_color": (6, 7, 8),
    "background_color": (9, 10, 11),
    "wobble": (12, 13, 14, 15),
    "object_texture": (16, 17, 18, 19),
    "background_texture": (20, 21, 22, 23),
    "light": 24,  # global brightness: every pixel moves the same way
    "saliency_light": 25,  # the segmenting direction
}
NOISE_START = 26  # coordinates 26..119 paint low-frequency colour noise
_NOISE_BG = 8  # background noise grid side
_NOISE_OBJ = 4  # object noise grid side
_EDGE_PX = 0.5  # alpha's edge width in pixels
# t(s) = sigmoid(_SAL_GAIN (s - _SAL_MID)); see the module docstring for the numbers
_SAL_GAIN, _SAL_MID = 1.2, 2.2
_LIGHT = 0.3  # max |global light| L: x -> x + L (1 - x^2) lifts mid-tones, keeps -1 and 1 fixed
_COLOR_GAIN = 0.9
_PIX_GAIN = 0.95  # colours are 0.95 tanh(.), strictly inside (-1, 1)
_RHO0, _RHO_GAIN = 0.21, 0.32  # object radius (fraction of the side) = RHO0 exp(RHO_GAIN u_size)
_CHUNK = 32  # images rendered per step (CPU cache friendly)


def _saliency_logit(s):
    """logit of the lighting strength t(s): increasing in the saliency coordinate s."""
    return _SAL_GAIN * (s - _SAL_MID)


def _saliency_t(s, ops):
    """Lighting strength t(s) in (0, 1), increasing; see `_SAL_GAIN`."""
    return ops.sigmoid(_saliency_logit(s))


_T0 = float(1.0 / (1.0 + np.exp(_SAL_GAIN * _SAL_MID)))  # t(0), undone by the encoder


@functools.lru_cache(maxsize=1)
def _params() -> dict[str, np.ndarray]:
    """The fixed random parameters, as float32 numpy arrays (the module's variables)."""
    rng = np.random.RandomState(TOY_SEED)
    a = rng.standard_normal((LATENT_DIM, LATENT_DIM))
    q, r = np.linalg.qr(a)
    q = q * np.sign(np.diag(r))[None, :]  # fix the sign convention so Q is unique
    n_noise = LATENT_DIM - NOISE_START
    # Each noise coordinate adds a random low-res RGB field; scaled so the summed field has
    # std ~0.25 (background) and ~0.12 (object) in pre-tanh units.
    w_bg = rng.standard_normal((n_noise, _NOISE_BG * _NOISE_BG * 3)) * (0.25 / np.sqrt(n_noise))
    w_obj = rng.standard_normal((n_noise, _NOISE_OBJ * _NOISE_OBJ * 3)) * (0.12 / np.sqrt(n_noise))
    feat = rng.standard_normal((8 * 8 * 3, 2048)) / np.sqrt(8 * 8 * 3)
    return {
        "q": q.astype(np.float32),
        "w_noise_bg": w_bg.astype(np.float32),
        "w_noise_obj": w_obj.astype(np.float32),
        "w_feat": feat.astype(np.float32),
        "interp_bg": _interp_matrix(_NOISE_BG, SIZE),
        "interp_obj": _interp_matrix(_NOISE_OBJ, SIZE),
    }


def _interp_matrix(n: int, size: int) -> np.ndarray:
    """[size, n] linear interpolation weights from an n-point grid to `size` pixel centres."""
    pos = (np.arange(size) + 0.5) / size * n - 0.5
    pos = np.clip(pos, 0, n - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    frac = pos - lo
    m = np.zeros((size, n))
    m[np.arange(size), lo] += 1 - frac
    m[np.arange(size), hi] += frac
    return m.astype(np.float32)


def toy_direction() -> np.ndarray:
    """The shipped segmenting direction h (unit float32 [120]): z + 5h lights the object, darkens the background."""
    return toy_factor_direction("saliency_light")


def toy_factor_direction(name: str) -> np.ndarray:
    """Unit direction in z that moves only one factor coordinate (the first, for multi-coordinate factors)."""
    if name not in TOY_FACTORS:
        raise KeyError(f"unknown toy factor {name!r}; choose from {sorted(TOY_FACTORS)}")
    idx = TOY_FACTORS[name]
    idx = idx[0] if isinstance(idx, tuple) else idx
    return np.ascontiguousarray(_params()["q"][:, idx])


# ---------------------------------------------------------------------------------------------
# The renderer, written once against a tiny op namespace so numpy (ground truth) and TensorFlow
# (the saved module) run the same formulas.

_NP_OPS = SimpleNamespace(
    tanh=np.tanh, exp=np.exp, cos=np.cos, sin=np.sin, sqrt=np.sqrt, atan2=np.arctan2,
    pow=np.power, sigmoid=lambda x: 0.5 * (1.0 + np.tanh(0.5 * x)), matmul=np.matmul,  # overflow-free
)


def _grid(ops_const):
    c = (np.arange(SIZE, dtype=np.float32) + 0.5) / SIZE
    return ops_const(c[None, None, :]), ops_const(c[None, :, None])  # X [1,1,W], Y [1,H,1]


def _shape_params(u, ops):
    """Object geometry from factor coordinates u [N,120]; every entry is [N,1,1]."""
    col = lambda i: u[:, i][:, None, None]  # noqa: E731
    cx = 0.5 + 0.2 * ops.tanh(0.7 * col(0))
    cy = 0.5 + 0.2 * ops.tanh(0.7 * col(1))
    rho = _RHO0 * ops.exp(_RHO_GAIN * col(2))  # ~2% of prior draws exceed half the image
    a = rho * ops.exp(0.2 * col(3))
    b = rho * ops.exp(-0.2 * col(3))
    theta = 1.2 * col(4)
    expo = 2.0 * ops.exp(0.35 * col(5))
    return cx, cy, a, b, theta, expo, col


def _alpha(u, ops, X, Y):
    """Soft object alpha [N,H,W] in (0,1); the object is where alpha >= 0.5."""
    cx, cy, a, b, theta, expo, col = _shape_params(u, ops)
    dx, dy = X - cx, Y - cy
    p = dx * ops.cos(theta) + dy * ops.sin(theta)
    q = -dx * ops.sin(theta) + dy * ops.cos(theta)
    eps = 1e-6
    # superellipse "radius": 1 on the boundary; (v^2 + eps)^(e/2) keeps it smooth at 0
    rad = ops.pow(ops.pow((p / a) ** 2 + eps, expo / 2) + ops.pow((q / b) ** 2 + eps, expo / 2), 1.0 / expo)
    phi = ops.atan2(q, p + eps)
    wobble = (1.0 + 0.12 * ops.tanh(col(12)) * ops.cos(3.0 * phi + col(13))
              + 0.08 * ops.tanh(col(14)) * ops.cos(5.0 * phi + col(15)))
    # distance to the boundary in pixels, approximately; the sigmoid gives a soft edge
    dist_px = (rad / wobble - 1.0) * ops.sqrt(a * b) * wobble * SIZE
    return ops.sigmoid(-dist_px / _EDGE_PX)


def toy_true_mask(z: np.ndarray) -> np.ndarray:
    """Ground-truth object masks bool [N,128,128] of the toy GAN's G(z) (alpha >= 0.5), in numpy."""
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] != LATENT_DIM:
        raise ValueError(f"z must be [N, {LATENT_DIM}], got shape {z.shape}")
    u = z @ _params()["q"].astype(np.float64)
    X, Y = _grid(np.asarray)
    return _alpha(u, _NP_OPS, X, Y) >= 0.5


def toy_alpha(z: np.ndarray) -> np.ndarray:
    """The soft alpha float32 [N,128,128] of G(z), in numpy (for direction-search tests)."""
    z = np.asarray(z, dtype=np.float64)
    u = z @ _params()["q"].astype(np.float64)
    X, Y = _grid(np.asarray)
    return _alpha(u, _NP_OPS, X, Y).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# TensorFlow module


def _tf_ops():
    import tensorflow as tf

    return SimpleNamespace(
        tanh=tf.tanh, exp=tf.exp, cos=tf.cos, sin=tf.sin, sqrt=tf.sqrt, atan2=tf.atan2,
        pow=tf.pow, sigmoid=tf.sigmoid, matmul=tf.matmul,
    )


def _make_module():
    """Build the tf.Module (TensorFlow imported here, not at module import)."""
    import tensorflow as tf

    ops = _tf_ops()
    p = _params()

    class ToyGan(tf.Module):
        """Procedural stand-in for BigBiGAN (a test fixture); see gans/toy.py."""

        def __init__(self):
            super().__init__(name="toy_gan")
            self.q = tf.Variable(p["q"], trainable=False, name="q")
            self.w_noise_bg = tf.Variable(p["w_noise_bg"], trainable=False, name="w_noise_bg")
            self.w_noise_obj = tf.Variable(p["w_noise_obj"], trainable=False, name="w_noise_obj")
            self.w_feat = tf.Variable(p["w_feat"], trainable=False, name="w_feat")
            self.interp_bg = tf.Variable(p["interp_bg"], trainable=False, name="interp_bg")
            self.interp_obj = tf.Variable(p["interp_obj"], trainable=False, name="interp_obj")
            self.version = tf.Variable(TOY_VERSION, trainable=False, name="version")

        def _render(self, z):
            u = tf.matmul(z, self.q)
            X, Y = _grid(tf.constant)
            alpha = _alpha(u, ops, X, Y)[..., None]  # [N,H,W,1]
            col = lambda i: u[:, i][:, None, None]  # noqa: E731
            n = tf.shape(z)[0]

            def noise(w, interp, k):
                f = tf.reshape(tf.matmul(u[:, NOISE_START:], w), [n, k, k, 3])
                # separable bilinear upsampling as two small matmuls (cheaper than resize here)
                return tf.einsum("yi,nijc,xj->nyxc", interp, f, interp)

            def stripes(i, freq0, freq_amp, amp):
                freq = freq0 + freq_amp * tf.tanh(col(i))
                ang = col(i + 1)
                wave = tf.sin(6.2831855 * freq * (X * tf.cos(ang) + Y * tf.sin(ang)) + 2.0 * col(i + 3))
                return (amp * tf.sigmoid(col(i + 2)) * wave)[..., None]

            obj_rgb = _COLOR_GAIN * u[:, 6:9][:, None, None, :]
            bg_rgb = _COLOR_GAIN * u[:, 9:12][:, None, None, :]
            obj = _PIX_GAIN * tf.tanh(obj_rgb + stripes(16, 6.0, 3.0, 0.3)
                                      + noise(self.w_noise_obj, self.interp_obj, _NOISE_OBJ))
            bg = _PIX_GAIN * tf.tanh(bg_rgb + stripes(20, 3.0, 2.0, 0.4)
                                     + noise(self.w_noise_bg, self.interp_bg, _NOISE_BG))
            # appendix B: two per-pixel affine colour maps, A1 towards white, A2 towards black
            t = _saliency_t(col(25), ops)[..., None]
            obj = obj + t * (1.0 - obj)
            bg = bg - t * (1.0 + bg)
            x = alpha * obj + (1.0 - alpha) * bg
            # global light: monotone per channel for |L| <= 0.5, so it never flips the lighting
            # rule inside the object or the background; the ends stay at -1 and 1, so the
            # shifted image keeps the dark/light histogram the paper's filter wants
            light = _LIGHT * tf.tanh(col(24))[..., None]
            return tf.clip_by_value(x + light * (1.0 - x * x), -1.0, 1.0)

        def _render_chunked(self, z):
            # Render in chunks of _CHUNK images: the ~20 elementwise intermediates of a chunk
            # stay in the CPU cache. Measured 2-3x faster than one pass at batch 128 on 2 cores.
            n = tf.shape(z)[0]
            k = (n + _CHUNK - 1) // _CHUNK
            zp = tf.pad(z, [[0, k * _CHUNK - n], [0, 0]])
            out = tf.map_fn(self._render, tf.reshape(zp, [k, _CHUNK, LATENT_DIM]), parallel_iterations=2,
                            fn_output_signature=tf.TensorSpec([_CHUNK, SIZE, SIZE, 3], tf.float32))
            return tf.reshape(out, [k * _CHUNK, SIZE, SIZE, 3])[:n]

        # The signatures' bodies are plain methods, so a TF1 graph can be built from them too
        # (tests/tf1_hub_standin.py saves the toy in the TF1 Hub format, as BigBiGAN ships).
        def generate_outputs(self, z):
            x = self._render_chunked(z)
            # no gradient through `upsampled`: the backward of a call gets a (zero) gradient for
            # every output, and resizing that for 256 x 256 made `find-direction discover`, which
            # differentiates `default` only, 1.5x slower per step
            up = tf.image.resize(tf.stop_gradient(x), [UP_SIZE, UP_SIZE], method="bilinear")
            return {"default": x, "upsampled": tf.clip_by_value(up, -1.0, 1.0)}

        def encode_outputs(self, x):
            z_mean = self._encode_mean(x)
            feat = tf.tanh(tf.matmul(
                tf.reshape(tf.nn.avg_pool2d(x, 32, 32, "VALID"), [-1, 8 * 8 * 3]), self.w_feat))
            return {
                "z_sample": z_mean,  # = z_mean: the toy encoder draws no noise (reproducible)
                "z_mean": z_mean,
                "z_stdev": 0.1 * tf.ones_like(z_mean),
                "default": z_mean,
                "avepool_feat": feat,
                "bn_crelu_feat": tf.concat([tf.nn.relu(feat), tf.nn.relu(-feat)], axis=1),
            }

        def discriminate_outputs(self, x, z):
            gz = self._render_chunked(z)
            luma = tf.tensordot(x, tf.constant(GRAY_WEIGHTS, tf.float32), axes=1)
            _, var = tf.nn.moments(luma, axes=[1, 2])
            return {
                "score_x": tf.sqrt(var + 1e-12),  # contrast
                "score_z": -0.5 * tf.reduce_mean(z * z, axis=1),  # prior log-density, scaled
                "score_xz": -tf.reduce_mean((x - gz) ** 2, axis=[1, 2, 3]),  # x agrees with G(z)
            }

        @tf.function(input_signature=[tf.TensorSpec([None, LATENT_DIM], tf.float32, name="z")])
        def generate(self, z):
            return self.generate_outputs(z)

        @tf.function(input_signature=[tf.TensorSpec([None, UP_SIZE, UP_SIZE, 3], tf.float32, name="x")])
        def encode(self, x):
            return self.encode_outputs(x)

        @tf.function(input_signature=[
            tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32, name="x"),
            tf.TensorSpec([None, LATENT_DIM], tf.float32, name="z"),
        ])
        def discriminate(self, x, z):
            return self.discriminate_outputs(x, z)

        def _encode_mean(self, x):
            img = tf.nn.avg_pool2d(x, 2, 2, "VALID")  # [N,128,128,3]
            img = tf.clip_by_value(img, -0.999, 0.999)
            n = tf.shape(img)[0]
            X, Y = _grid(tf.constant)
            border = 10
            ring = np.ones((SIZE, SIZE), np.float32)
            ring[border:-border, border:-border] = 0.0
            n_ring = float(ring.sum())
            ring = tf.constant(ring)[None, :, :, None]
            bg_mean = tf.reduce_sum(img * ring, axis=[1, 2]) / n_ring  # [N,3]
            dist = tf.norm(img - bg_mean[:, None, None, :], axis=-1)  # [N,H,W]
            ring2 = ring[..., 0]
            d_mean = tf.reduce_sum(dist * ring2, axis=[1, 2]) / n_ring
            d_var = tf.reduce_sum((dist - d_mean[:, None, None]) ** 2 * ring2, axis=[1, 2]) / n_ring
            tau = tf.maximum(d_mean + 3.0 * tf.sqrt(d_var), 0.15)[:, None, None]
            w = tf.sigmoid((dist - tau) / (0.1 * tau))  # soft "salient" mask
            area = tf.reduce_sum(w, axis=[1, 2])  # pixels
            found = area > 20.0
            safe = tf.maximum(area, 1e-3)[:, None, None]
            cx = tf.reduce_sum(w * X, axis=[1, 2]) / safe[:, 0, 0]
            cy = tf.reduce_sum(w * Y, axis=[1, 2]) / safe[:, 0, 0]
            ddx, ddy = X - cx[:, None, None], Y - cy[:, None, None]
            sxx = tf.reduce_sum(w * ddx * ddx, axis=[1, 2]) / safe[:, 0, 0]
            syy = tf.reduce_sum(w * ddy * ddy, axis=[1, 2]) / safe[:, 0, 0]
            sxy = tf.reduce_sum(w * ddx * ddy, axis=[1, 2]) / safe[:, 0, 0]
            half_tr, half_diff = (sxx + syy) / 2, (sxx - syy) / 2
            root = tf.sqrt(half_diff ** 2 + sxy ** 2 + 1e-12)
            lam1, lam2 = half_tr + root, tf.maximum(half_tr - root, 1e-8)
            theta = 0.5 * tf.atan2(2.0 * sxy, sxx - syy)
            obj_mean = tf.reduce_sum(img * w[..., None], axis=[1, 2]) / safe[:, 0]

            def atanh_safe(v, lim):
                v = tf.clip_by_value(v, -lim, lim)
                return 0.5 * tf.math.log((1.0 + v) / (1.0 - v))

            def clip3(v):
                return tf.clip_by_value(v, -3.0, 3.0)

            # invert the renderer's formulas (see _shape_params), at saliency coordinate s = 0
            u0 = atanh_safe((cx - 0.5) / 0.2, 0.95) / 0.7
            u1 = atanh_safe((cy - 0.5) / 0.2, 0.95) / 0.7
            rho = tf.sqrt(area / (np.pi * SIZE * SIZE))
            u2 = tf.math.log(tf.maximum(rho, 1e-3) / _RHO0) / _RHO_GAIN
            u3 = 0.25 * tf.math.log(lam1 / lam2) / 0.2  # a/b = sqrt(lam1/lam2) = exp(0.4 u3)
            u4 = theta / 1.2
            obj_c = (obj_mean - _T0) / (1.0 - _T0)
            bg_c = (bg_mean + _T0) / (1.0 - _T0)
            u_obj = atanh_safe(obj_c / _PIX_GAIN, 0.99) / _COLOR_GAIN
            u_bg = atanh_safe(bg_c / _PIX_GAIN, 0.99) / _COLOR_GAIN
            f = tf.cast(found, tf.float32)
            geo = tf.stack([u0, u1, u2, u3, u4], axis=1) * f[:, None]
            u_obj = u_obj * f[:, None] + u_bg * (1.0 - f[:, None])  # nothing found: plain picture
            u = tf.concat([clip3(geo), tf.zeros([n, 1]), clip3(u_obj), clip3(u_bg),
                           tf.zeros([n, LATENT_DIM - 12])], axis=1)
            return tf.matmul(u, self.q, transpose_b=True)  # z = u Q^T

    return ToyGan()


def build_toy_module(path: str | os.PathLike) -> Path:
    """Build the toy GAN and save it as a SavedModel at `path` (must not exist). Deterministic."""
    import tensorflow as tf

    path = Path(path)
    module = _make_module()
    tf.saved_model.save(module, str(path), signatures={
        "generate": module.generate,
        "encode": module.encode,
        "discriminate": module.discriminate,
    })
    _write_stamp(path)
    log.info("built toy GAN (a test fixture) at %s", path)
    return path


def _source_digest() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


_STAMP = "bgw-toy.json"


def _write_stamp(path: Path) -> None:
    stamp = {"version": TOY_VERSION, "source": _source_digest(), "seed": TOY_SEED}
    tmp = path / f"{_STAMP}.tmp"
    tmp.write_text(json.dumps(stamp, sort_keys=True))
    os.replace(tmp, path / _STAMP)


def _is_current(path: Path) -> bool:
    try:
        stamp = json.loads((path / _STAMP).read_text())
    except (OSError, ValueError):
        return False
    return (path / "saved_model.pb").is_file() and stamp.get("source") == _source_digest()


def default_cache_dir() -> Path:
    """`$BGW_CACHE_DIR`, else ~/.cache/bgw-seg."""
    env = os.environ.get("BGW_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "bgw-seg"


def ensure_toy_module(cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of the saved toy GAN under `cache_dir` (default `default_cache_dir()`)/toy-gan-v{TOY_VERSION}.

    Built on first use, and rebuilt when gans/toy.py changed (a stamp file records the
    source digest). Built in a temp folder and renamed into place, so a crash or a concurrent
    build never leaves a half-written module where a reader looks.
    """
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = base / f"toy-gan-v{TOY_VERSION}"
    if _is_current(target):
        return target
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        build_toy_module(tmp)
        if target.exists():
            if _is_current(target):  # another process finished first
                return target
            stale = base / f".{target.name}.stale.{uuid.uuid4().hex[:8]}"
            os.replace(target, stale)  # move aside atomically, then delete at leisure
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if not _is_current(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
