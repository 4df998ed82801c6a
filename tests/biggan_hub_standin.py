"""A TF1 Hub-format stand-in for BigGAN-128: a TEST FIXTURE, with BigGAN's hub interface.

BigGAN (https://tfhub.dev/deepmind/biggan-128/2) ships, like BigBiGAN, a TF1 graph saved with
SignatureDefs under the EMPTY tag set beside a `tfhub_module.pb` marker, but with ONE signature,
`default`: z float32 [?, 120], y float32 [?, 1000] (a one-hot class), truncation float32 [] ->
default float32 [?, 128, 128, 3] in [-1, 1]. This fixture saves exactly that interface, built
the way tests/tf1_hub_standin.py builds BigBiGAN's (whose marker and placing it reuses).

The images are the toy GAN's (gans/toy.py): default(z, y, t) = toy(t z + y E), where E is a fixed
[1000, 120] class embedding (`class_embedding()`) that moves only the toy's object and background
colour coordinates. So a test that knows the toy knows what to expect: class c of latent z is
the toy's image of t z + E[c]; the class visibly sets the colours; and the toy's segmenting
direction (`gans.toy.toy_direction()`, the saliency light, which E leaves alone) still segments.
Truncation scales z, the stand-in's reading of BigGAN's truncation trick; at 1.0 the image is
exactly the toy's of z + E[c].
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from tf1_hub_standin import MODULE_DEF_V3, place_under_handle

BIGGAN_HANDLE = "https://tfhub.dev/deepmind/biggan-128/2"
NUM_CLASSES = 1000
EMBED_SEED = 1282  # for the class embedding only; the toy keeps its own seed
EMBED_SCALE = 1.2  # std of a class's colour offsets, in the toy's factor units (prior std 1)


@functools.lru_cache(maxsize=1)
def class_embedding() -> np.ndarray:
    """E float32 [1000, 120]: row c is what class c adds to z. It moves only the factor coordinates
    u = z Q of the object's and the background's colour, so shape, position and the saliency light
    stay the latent's own."""
    from gans import toy

    q = toy._params()["q"].astype(np.float64)
    u = np.zeros((NUM_CLASSES, toy.LATENT_DIM))
    cols = [*toy.TOY_FACTORS["object_color"], *toy.TOY_FACTORS["background_color"]]
    u[:, cols] = np.random.RandomState(EMBED_SEED).standard_normal((NUM_CLASSES, len(cols))) * EMBED_SCALE
    return (u @ q.T).astype(np.float32)  # z-space rows: u = z Q with Q orthogonal, so z = u Q^T


def toy_latent(z: np.ndarray, classes: np.ndarray, truncation: float = 1.0) -> np.ndarray:
    """The toy latent whose image the stand-in draws for (z, classes, truncation): t z + E[classes]."""
    z = np.asarray(z, np.float32)
    return (np.float32(truncation) * z + class_embedding()[np.asarray(classes)]).astype(np.float32)


def build_biggan_hub_module(path: str | os.PathLike) -> Path:
    """Save the stand-in as a TF1 Hub-format module at `path` (which must not exist)."""
    import tensorflow as tf

    from gans import toy

    path = Path(path)
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        z = v1.placeholder(tf.float32, [None, toy.LATENT_DIM], name="z")
        y = v1.placeholder(tf.float32, [None, NUM_CLASSES], name="y")
        truncation = v1.placeholder(tf.float32, [], name="truncation")
        embed = tf.constant(class_embedding(), name="class_embedding")
        images = toy._make_module().generate_outputs(truncation * z + tf.matmul(y, embed))["default"]
        images = tf.ensure_shape(images, [None, toy.SIZE, toy.SIZE, 3])
        info = v1.saved_model.utils.build_tensor_info
        default = v1.saved_model.signature_def_utils.build_signature_def(
            inputs={"z": info(z), "y": info(y), "truncation": info(truncation)},
            outputs={"default": info(images)}, method_name="hub_module_signature")
        with v1.Session(graph=graph) as sess:
            sess.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(str(path))
            builder.add_meta_graph_and_variables(sess, tags=[], signature_def_map={"default": default},
                                                 strip_default_attrs=True)
            builder.save()
    (path / "tfhub_module.pb").write_bytes(MODULE_DEF_V3)
    return path


def place_biggan_under_handle(module_dir: str | os.PathLike, cache_dir: str | os.PathLike) -> Path:
    """Move a built stand-in to `$TFHUB_CACHE_DIR/<sha1 of BIGGAN_HANDLE>`, where `--gan biggan`
    finds it with no network. Returns the new folder."""
    return place_under_handle(module_dir, cache_dir, handle=BIGGAN_HANDLE)
