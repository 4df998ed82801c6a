"""gans.loader.load_gan: the real loading path (tensorflow_hub) run against the toy stand-in,
under its own name, as a local folder, and under BigBiGAN's real handle from the hub cache."""
from __future__ import annotations

import hashlib
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from gans import loader as gan_mod
from gans import toy
from gans.loader import BIGBIGAN_HANDLE, GanLoadError, load_gan

pytestmark = pytest.mark.tf
tf = pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_hub")


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Path:
    path = tmp_path_factory.getbasetemp() / "bgw-cache"
    toy.ensure_toy_module(path)  # shared with test_toy_gan.py: built once per session
    return path


@pytest.fixture(scope="session")
def toy_gan(cache):
    return load_gan("toy", cache_dir=cache)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to reach the network fails loudly (and fast)."""
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network disabled by the test")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def test_toy_loads_with_bigbigan_facts(toy_gan, cache):
    assert toy_gan.handle == "toy" and toy_gan.latent_dim == 120
    assert toy_gan.path == cache / f"toy-gan-v{toy.TOY_VERSION}"
    assert toy_gan.device == "CPU" or toy_gan.device.startswith("GPU")
    assert len(toy_gan.fingerprint) == 64


def test_generate_and_pair_agree(toy_gan):
    z = np.random.RandomState(0).standard_normal((3, 120)).astype(np.float32)
    h = toy.toy_direction()
    x = toy_gan.generate(z)
    assert x.shape == (3, 128, 128, 3) and x.dtype == np.float32
    assert -1.0 <= x.min() and x.max() <= 1.0
    x1, x2 = toy_gan.generate_pair(z, h, 5.0)
    np.testing.assert_allclose(x1, x, atol=1e-4)
    np.testing.assert_allclose(x2, toy_gan.generate(z + 5.0 * h), atol=1e-4)
    assert np.abs(x2 - x1).mean() > 0.1  # the shift did something
    # float64 / list inputs are accepted and cast
    np.testing.assert_allclose(toy_gan.generate(z.astype(np.float64).tolist()), x, atol=1e-6)


def test_one_trace_for_every_batch_size(toy_gan):
    h = toy.toy_direction()
    for n in (1, 2, 5):
        toy_gan.generate(np.zeros((n, 120), np.float32))
        toy_gan.generate_pair(np.zeros((n, 120), np.float32), h, 5.0)
        toy_gan.generate_shifted(np.zeros((n, 120), np.float32), h, [0.0, 2.5, 5.0][:n])
    assert toy_gan._generate.experimental_get_tracing_count() == 1
    assert toy_gan._generate_shifted.experimental_get_tracing_count() == 1  # any batch, any number of shifts


def test_encode_returns_z_sample(toy_gan):
    x = np.zeros((2, 256, 256, 3), np.float32)
    z = toy_gan.encode(x)
    assert z.shape == (2, 120) and z.dtype == np.float32
    with pytest.raises(ValueError, match=r"\[N,256,256,3\]"):
        toy_gan.encode(np.zeros((2, 128, 128, 3), np.float32))


@pytest.mark.parametrize("bad", [np.zeros(64, np.float32), np.full(120, np.nan, np.float32)])
def test_bad_direction_is_refused(toy_gan, bad):
    with pytest.raises(ValueError, match="direction"):
        toy_gan.generate_pair(np.zeros((1, 120), np.float32), bad, 5.0)


def test_bad_z_is_refused(toy_gan):
    with pytest.raises(ValueError, match=r"\[N, 120\]"):
        toy_gan.generate(np.zeros((2, 64), np.float32))


def test_local_folder_loads(toy_gan, cache, no_network):
    g = load_gan(str(toy_gan.path), cache_dir=cache)
    assert g.handle == str(toy_gan.path.resolve()) and g.fingerprint == toy_gan.fingerprint
    z = np.ones((1, 120), np.float32)
    np.testing.assert_array_equal(g.generate(z), toy_gan.generate(z))


def test_stand_in_loads_under_the_real_bigbigan_handle_offline(toy_gan, cache, tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "hub"))
    sha1 = hashlib.sha1(BIGBIGAN_HANDLE.encode("utf8")).hexdigest()
    assert gan_mod.hub_cache_path(BIGBIGAN_HANDLE) == tmp_path / "hub" / sha1
    shutil.copytree(toy_gan.path, tmp_path / "hub" / sha1)
    g = load_gan("bigbigan", cache_dir=cache)
    assert g.handle == BIGBIGAN_HANDLE and g.path == tmp_path / "hub" / sha1
    assert g.latent_dim == 120 and g.fingerprint == toy_gan.fingerprint
    z = np.random.RandomState(1).standard_normal((2, 120)).astype(np.float32)
    np.testing.assert_array_equal(g.generate(z), toy_gan.generate(z))


def test_offline_without_a_cached_copy_says_what_to_do(tmp_path, monkeypatch, no_network, cache):
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "hub"))
    sha1 = hashlib.sha1(BIGBIGAN_HANDLE.encode("utf8")).hexdigest()
    with pytest.raises(GanLoadError) as err:
        load_gan("bigbigan", cache_dir=cache)
    msg = str(err.value)
    assert "\n" not in msg
    assert "--gan PATH" in msg and sha1 in msg and "TFHUB_CACHE_DIR" in msg and BIGBIGAN_HANDLE in msg
    assert not (tmp_path / "hub" / sha1).exists()  # nothing half-downloaded left behind


def test_unknown_spec_is_one_line(cache):
    with pytest.raises(GanLoadError, match="neither a known name"):
        load_gan("/no/such/folder", cache_dir=cache)


def test_folder_without_a_saved_model(tmp_path, cache):
    with pytest.raises(GanLoadError, match="not a loadable SavedModel"):
        load_gan(str(tmp_path), cache_dir=cache)


def _save(path: Path, **signatures) -> Path:
    mod = tf.Module()
    for name, fn in signatures.items():
        setattr(mod, name, fn)
    tf.saved_model.save(mod, str(path), signatures=signatures)
    return path


def _generate_fn(d: int, out_shape, dtype=tf.float32, z_shape=None):
    @tf.function(input_signature=[tf.TensorSpec(z_shape or [None, d], tf.float32, name="z")])
    def generate(z):
        return {"default": tf.zeros([tf.shape(z)[0], *out_shape], dtype)}

    return generate


def _encode_fn(side, d: int):
    @tf.function(input_signature=[tf.TensorSpec([None, side, side, 3], tf.float32, name="x")])
    def encode(x):
        return {"z_sample": tf.zeros([tf.shape(x)[0], d])}

    return encode


def test_any_latent_size_and_image_size_without_an_encoder(tmp_path, cache):
    g = load_gan(str(_save(tmp_path / "m", generate=_generate_fn(64, [48, 48, 3]))), cache_dir=cache)
    assert (g.latent_dim, g.image_size, g.encode_size, g.has_encoder) == (64, 48, None, False)
    z = np.zeros((2, 64), np.float32)
    x, xs = g.generate_pair(z, np.ones(64, np.float32), 5.0, size=128)
    assert x.shape == xs.shape == (2, 128, 128, 3)
    assert g.generate_pair(z, np.ones(64, np.float32), 5.0)[0].shape == (2, 48, 48, 3)
    with pytest.raises(gan_mod.NoEncoderError, match="has no 'encode' signature.*--latents prior"):
        g.encode(np.zeros((1, 256, 256, 3), np.float32))


@pytest.mark.parametrize("signatures, message", [
    (dict(encode=_encode_fn(256, 64)), r"lacks the signature 'generate' \(has \['encode'\]\)"),
    (dict(generate=_generate_fn(64, [16, 16, 3])), r"square, S >= 32.*\(S = 16\)"),
    (dict(generate=_generate_fn(64, [64, 32, 3])), r"'generate' must return default float32 \[N,S,S,3\]"),
    (dict(generate=_generate_fn(64, [64, 64, 1])), r"'generate' must return default float32 \[N,S,S,3\]"),
    (dict(generate=_generate_fn(64, [64, 64, 3], tf.float16)), r"float16"),
    (dict(generate=_generate_fn(64, [64, 64, 3], z_shape=[None, 64, 1, 1])), r"must take one input z float32 \[N,D\]"),
    (dict(generate=_generate_fn(64, [64, 64, 3]), encode=_encode_fn(256, 32)), r"'encode' must return z_sample \[N,64\]"),
])
def test_wrong_signatures_are_named(tmp_path, cache, signatures, message):
    with pytest.raises(GanLoadError, match=message):
        load_gan(str(_save(tmp_path / "m", **signatures)), cache_dir=cache)


def test_resample_keeps_the_native_size_exact(toy_gan):
    z = np.random.RandomState(3).standard_normal((2, 120)).astype(np.float32)
    h = toy.toy_direction()
    native = toy_gan.generate_pair(z, h, 5.0)
    same = toy_gan.generate_pair(z, h, 5.0, size=128)
    for a, b in zip(native, same):
        np.testing.assert_array_equal(a, b)  # no resampling at the native size: bit-identical
    assert gan_mod.resample_record(128, 128)["method"] is None


def test_resample_shrinks_without_aliasing_and_enlarges_smoothly(tmp_path, cache):
    """A one-pixel checkerboard of +-1 at 96 px: a plain bilinear resize to 32 px samples pixel
    centres (3i + 1) and keeps a full-contrast checkerboard; the antialiased one averages it away."""
    board = np.where(np.add.outer(np.arange(96), np.arange(96)) % 2 == 0, 1.0, -1.0).astype(np.float32)

    @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32, name="z")])
    def generate(z):
        img = tf.constant(np.repeat(board[:, :, None], 3, axis=2))
        return {"default": tf.tile(img[None], [tf.shape(z)[0], 1, 1, 1])}

    g = load_gan(str(_save(tmp_path / "board", generate=generate)), cache_dir=cache)
    small, _ = g.generate_pair(np.zeros((1, 8), np.float32), np.ones(8, np.float32), 1.0, size=32)
    assert small.shape == (1, 32, 32, 3) and np.abs(small).max() < 0.2
    plain = tf.image.resize(board[None, :, :, None], [32, 32], method="bilinear").numpy()
    assert np.abs(plain).min() > 0.9  # what an aliased resize would have written
    big, _ = g.generate_pair(np.zeros((1, 8), np.float32), np.ones(8, np.float32), 1.0, size=192)
    assert big.shape == (1, 192, 192, 3) and -1.0 <= big.min() and big.max() <= 1.0
    assert gan_mod.resample_record(96, 32)["method"].startswith("bilinear, antialiased")
    assert gan_mod.resample_record(96, 192)["method"].startswith("bilinear (")


def test_fingerprint_is_cached_and_tracks_the_bytes(toy_gan, cache, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(toy_gan.path, copy)
    fp = gan_mod.module_fingerprint(copy, cache_dir=cache)
    assert fp == toy_gan.fingerprint
    records = list((cache / "fingerprints").glob("*.json"))
    assert records  # recorded on disk for the next process
    data = copy / "variables" / "variables.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 0xFF
    data.write_bytes(bytes(raw))
    assert gan_mod.module_fingerprint(copy, cache_dir=cache) != fp


def test_fingerprint_hashes_saved_model_pb_for_other_modules(tmp_path):
    folder = tmp_path / "m"
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"graph")
    (folder / "variables" / "variables.index").write_bytes(b"idx")
    expected = hashlib.sha256(b"saved_model.pb\0graph" + b"variables/variables.index\0idx").hexdigest()
    assert gan_mod.module_fingerprint(folder) == expected


def test_statically_unknown_dims_are_accepted(tmp_path, cache):
    """TF1 hub modules may leave output dims unknown: only known dims are checked."""
    @tf.function(input_signature=[tf.TensorSpec([None, 16], tf.float32, name="z")])
    def generate(z):
        n = tf.shape(z)[0]
        return {"default": tf.zeros(tf.stack([n, tf.shape(z)[1] * 8, 128, 3]))}  # [N, ?, 128, 3]

    @tf.function(input_signature=[tf.TensorSpec([None, 256, 256, 3], tf.float32, name="x")])
    def encode(x):
        return {"z_sample": tf.zeros([tf.shape(x)[0], 16])}

    g = load_gan(str(_save(tmp_path / "m", generate=generate, encode=encode)), cache_dir=cache)
    assert g.latent_dim == 16 and g.image_size == 128  # read off one probing call
    assert g.generate(np.zeros((2, 16), np.float32)).shape == (2, 128, 128, 3)
