"""A TF1 Hub-format stand-in for BigBiGAN: a TEST FIXTURE, built the way TF1 wrote hub modules.

BigBiGAN (https://tfhub.dev/deepmind/bigbigan-resnet50/1) is not a TF2 SavedModel: it is a TF1
graph saved with `SignatureDef`s under the EMPTY tag set, beside a `tfhub_module.pb` marker (a
`ModuleDef` proto with format FORMAT_V3). `hub.load` takes another path for it (tags = [],
signatures from the SignatureDefs, pruned `WrappedFunction`s instead of traced functions), and
the module carries the extra signatures `default` and `discriminate`.

This fixture builds exactly that from the toy GAN's formulas (gans/toy.py, version
`toy.TOY_VERSION`): placeholders `z` [?, 120], `x` [?, 256, 256, 3] (encode) and `x`/`z` of
`discriminate`, the output keys, shapes and ranges of BigBiGAN's module (README, "The model contract"). So the images are the toy's and
every test that knows the toy knows what to expect.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

# tensorflow_hub's hub_module.proto: `message ModuleDef { enum Format { FORMAT_V3 = 3; } Format
# format = 1; }`. Field 1, varint 3, serialised by hand: tensorflow_hub 0.16 no longer ships the
# generated proto module, and this marker is all `hub.load` looks at.
MODULE_DEF_V3 = b"\x08\x03"
BIGBIGAN_HANDLE = "https://tfhub.dev/deepmind/bigbigan-resnet50/1"


def build_tf1_hub_module(path: str | os.PathLike) -> Path:
    """Save the toy as a TF1 Hub-format module at `path` (which must not exist)."""
    import tensorflow as tf

    from gans import toy

    path = Path(path)
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        module = toy._make_module()
        d, s, up = toy.LATENT_DIM, toy.SIZE, toy.UP_SIZE
        z = v1.placeholder(tf.float32, [None, d], name="z")
        gen = module.generate_outputs(z)
        x = v1.placeholder(tf.float32, [None, up, up, 3], name="x")
        enc = module.encode_outputs(x)
        x_d = v1.placeholder(tf.float32, [None, s, s, 3], name="discriminate_x")
        z_d = v1.placeholder(tf.float32, [None, d], name="discriminate_z")
        disc = module.discriminate_outputs(x_d, z_d)

        def sig(inputs: dict, outputs: dict):
            info = v1.saved_model.utils.build_tensor_info
            return v1.saved_model.signature_def_utils.build_signature_def(
                inputs={k: info(t) for k, t in inputs.items()}, outputs={k: info(t) for k, t in outputs.items()},
                method_name="hub_module_signature")  # hub.Module's SignatureDefs name no TF-Serving method

        signatures = {
            "default": sig({"z": z}, {"default": gen["default"]}),  # module(z): the generator
            "generate": sig({"z": z}, gen),
            "encode": sig({"x": x}, enc),
            "discriminate": sig({"x": x_d, "z": z_d}, disc),
        }
        with v1.Session(graph=graph) as sess:
            sess.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(str(path))
            builder.add_meta_graph_and_variables(sess, tags=[], signature_def_map=signatures,
                                                 strip_default_attrs=True)
            builder.save()
    (path / "tfhub_module.pb").write_bytes(MODULE_DEF_V3)
    return path


def place_under_handle(module_dir: str | os.PathLike, cache_dir: str | os.PathLike,
                       handle: str = BIGBIGAN_HANDLE) -> Path:
    """Move a built module to `$TFHUB_CACHE_DIR/<sha1 of the handle>`, where tensorflow_hub finds a
    cached copy of `handle` with no network. Returns the new folder."""
    dest = Path(cache_dir) / hashlib.sha1(handle.encode("utf8")).hexdigest()
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(module_dir, dest)
    return dest
