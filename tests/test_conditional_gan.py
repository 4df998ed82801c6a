"""Class-conditional generators in the model contract: BigGAN's hub interface (a TF1 `default`
signature taking z, a one-hot y and truncation), read off a stand-in (tests/biggan_hub_standin.py,
a test fixture drawing the toy's images, coloured by the class); the class rules of gans.classes;
and the Gan API every tool renders through (generate, generate_shifted, generate_pair,
tf_generator), which takes one class per latent from a conditional model and none otherwise."""
from __future__ import annotations

import hashlib
import re
import urllib.error
import urllib.request

import numpy as np
import pytest

from biggan_hub_standin import BIGGAN_HANDLE as STANDIN_HANDLE
from biggan_hub_standin import toy_latent
from core.errors import UserError
from gans import loader, toy
from gans.classes import ClassSpecError, class_set_record, draw_classes, parse_class_set
from gans.loader import BIGGAN_HANDLE, GanLoadError, ModelContract, load_gan

pytestmark = pytest.mark.tf
tf = pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_hub")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "bgw-cache"
    toy.ensure_toy_module(path)  # the path test_gan.py builds the toy under: once a session
    return path


@pytest.fixture(scope="module")
def toy_gan(cache):
    return load_gan("toy", cache_dir=cache)


@pytest.fixture(scope="module")
def biggan(biggan_standin, cache):
    return load_gan(str(biggan_standin), cache_dir=cache)


def _z(n: int, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).standard_normal((n, 120)).astype(np.float32)


def test_the_standin_has_biggans_hub_interface(biggan_standin):
    from tensorflow.core.protobuf import saved_model_pb2

    assert (biggan_standin / "tfhub_module.pb").read_bytes() == b"\x08\x03"
    sm = saved_model_pb2.SavedModel.FromString((biggan_standin / "saved_model.pb").read_bytes())
    (graph,) = sm.meta_graphs
    assert list(graph.meta_info_def.tags) == [] and set(graph.signature_def) == {"default"}
    sig = graph.signature_def["default"]
    shapes = {k: [d.size for d in v.tensor_shape.dim] for k, v in sig.inputs.items()}
    assert shapes == {"z": [-1, 120], "y": [-1, 1000], "truncation": []}
    assert [d.size for d in sig.outputs["default"].tensor_shape.dim] == [-1, 128, 128, 3]
    assert STANDIN_HANDLE == BIGGAN_HANDLE


def test_contract_is_read_off_the_default_signature(biggan, biggan_standin):
    assert loader.check_signatures(biggan.module, where=str(biggan_standin)) == ModelContract(
        latent_dim=120, image_size=128, encode_size=None, num_classes=1000, has_truncation=True,
        signature="default")
    assert (biggan.num_classes, biggan.conditional, biggan.truncation, biggan.signature) == (1000, True, 1.0, "default")
    assert not biggan.has_encoder and "num_classes=1000" in repr(biggan)


def test_unconditional_models_keep_their_contract(toy_gan):
    assert (toy_gan.num_classes, toy_gan.conditional, toy_gan.truncation, toy_gan.signature) == \
        (None, False, 1.0, "generate")


def test_the_class_sets_the_colours_and_nothing_else_varies(biggan, toy_gan):
    z = np.repeat(_z(1), 4, axis=0)
    x = biggan.generate(z, classes=np.array([3, 3, 4, 900]))
    np.testing.assert_array_equal(x[0], x[1])  # same (z, class): the same image
    assert np.abs(x[2] - x[0]).mean() > 0.05 and np.abs(x[3] - x[0]).mean() > 0.05
    # the stand-in draws the toy's image of t z + E[class]
    np.testing.assert_array_equal(x, toy_gan.generate(toy_latent(z, [3, 3, 4, 900])))
    np.testing.assert_array_equal(biggan.generate(z[:2], classes=[3, 3]), x[:2])  # lists are classes too


def test_truncation_is_fed_to_the_module(biggan_standin, cache, toy_gan):
    half = load_gan(str(biggan_standin), cache_dir=cache, truncation=0.5)
    assert half.truncation == 0.5
    z, c = _z(2, seed=1), np.array([10, 20])
    np.testing.assert_array_equal(half.generate(z, c), toy_gan.generate(toy_latent(z, c, truncation=0.5)))
    with pytest.raises(GanLoadError, match=r"toy takes no truncation input \(BigGAN's modules do\).*leave it out"):
        load_gan("toy", cache_dir=cache, truncation=0.5)
    with pytest.raises(GanLoadError, match="truncation must be a positive number"):
        load_gan("toy", cache_dir=cache, truncation=0.0)


def test_generate_shifted_is_one_call_and_pair_its_two_shift_case(biggan):
    z, c, h = _z(3, seed=2), np.array([1, 500, 999]), toy.toy_direction()
    for size in (None, 64):
        x, xs = biggan.generate_pair(z, h, 5.0, size=size, classes=c)
        a, b = biggan.generate_shifted(z, h, [0.0, 5.0], size=size, classes=c)
        assert x.tobytes() == a.tobytes() and xs.tobytes() == b.tobytes()
    shots = biggan.generate_shifted(z, h, [-2.5, 0.0, 5.0], classes=c)
    assert len(shots) == 3 and all(s.shape == (3, 128, 128, 3) for s in shots)
    np.testing.assert_allclose(shots[0], biggan.generate(z - 2.5 * h, c), atol=1e-4)
    np.testing.assert_allclose(shots[2], biggan.generate(z + 5.0 * h, c), atol=1e-4)
    assert biggan._generate_shifted.experimental_get_tracing_count() == 1


def test_pair_of_an_unconditional_model_is_the_graph_it_always_was(toy_gan):
    """gen-synth compares shard bytes across runs: generate_pair must render exactly what the
    concat [z, z + r h] of earlier versions rendered."""
    sig = toy_gan.module.signatures["generate"]

    @tf.function(input_signature=[tf.TensorSpec([None, 120]), tf.TensorSpec([120]), tf.TensorSpec([]),
                                  tf.TensorSpec([], tf.int32)])
    def before(z, h, shift, size):
        n = tf.shape(z)[0]
        x = loader.resample(sig(z=tf.concat([z, z + shift * h[None, :]], axis=0))["default"], size)
        return x[:n], x[n:]

    z, h = _z(3, seed=3), toy.toy_direction()
    for size in (128, 64):
        old = [t.numpy().tobytes() for t in before(z, h, np.float32(5.0), np.int32(size))]
        assert [a.tobytes() for a in toy_gan.generate_pair(z, h, 5.0, size=size)] == old
        assert [a.tobytes() for a in toy_gan.generate_shifted(z, h, [0.0, 5.0], size=size)] == old


def _one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg and isinstance(err.value, UserError) and isinstance(err.value, ValueError)
    return msg


@pytest.mark.parametrize("call", ["generate", "pair", "shifted"])
def test_classes_are_required_by_a_conditional_model_and_refused_otherwise(biggan, toy_gan, call):
    h = toy.toy_direction()
    run = {"generate": lambda g, z, c: g.generate(z, c),
           "pair": lambda g, z, c: g.generate_pair(z, h, 5.0, classes=c),
           "shifted": lambda g, z, c: g.generate_shifted(z, h, [0.0, 5.0], classes=c)}[call]
    z = _z(2)
    with pytest.raises(ClassSpecError) as err:
        run(biggan, z, None)
    assert "is class-conditional (1000 classes): pass classes (gen-synth --classes all, or a list)" in _one_line(err)
    with pytest.raises(ClassSpecError) as err:
        run(toy_gan, z, np.array([1, 2]))
    assert _one_line(err) == "model toy takes no classes (it is not class-conditional)"
    for bad in ([0, 1000], [-1, 3]):
        with pytest.raises(ClassSpecError) as err:
            run(biggan, z, np.array(bad))
        assert "classes must lie in [0, 1000)" in _one_line(err)
    for bad in ([1, 2, 3], [[1, 2]], [1.0, 2.0]):
        with pytest.raises(ClassSpecError) as err:
            run(biggan, z, np.array(bad))
        assert "classes must be 2 integers, one per latent" in _one_line(err)


def test_check_classes(biggan, toy_gan):
    out = biggan.check_classes([0, 999, 5], 3)
    assert out.dtype == np.int32 and out.tolist() == [0, 999, 5]
    assert toy_gan.check_classes(None, 3) is None


@pytest.mark.parametrize("spec, expected", [
    (None, np.arange(1000)),
    ("all", np.arange(1000)),
    (" ALL ", np.arange(1000)),
    ("239", [239]),
    ("1,5,10-19", [1, 5, *range(10, 20)]),
    (" 7 , 3,3, 2 - 4 ", [2, 3, 4, 7]),
    ("999", [999]),
    ("0-999", np.arange(1000)),
])
def test_parse_class_set(spec, expected):
    got = parse_class_set(spec, 1000)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, np.asarray(expected, np.int64))


@pytest.mark.parametrize("spec, part", [
    ("1000", "'1000' is out of range"),
    ("5,990-1005", "'990-1005' is out of range"),
    ("-1", "cannot read '-1'"),
    ("19-10", "'19-10' runs backwards"),
    ("", "the class set is empty"),
    ("dogs", "cannot read 'dogs'"),
    ("1,,2", "cannot read ''"),
    ("1-2-3", "cannot read '1-2-3'"),
    ("0-99999999999999999999", "is out of range"),
])
def test_bad_class_sets_name_the_part_and_the_range(spec, part):
    with pytest.raises(ClassSpecError) as err:
        parse_class_set(spec, 1000)
    msg = _one_line(err)
    assert part in msg and "classes are 0-999" in msg


def test_draw_classes_is_uniform_over_the_set_and_seeded():
    class_set = np.array([2, 7, 11, 400])
    a = draw_classes(np.random.default_rng(5), class_set, 40_000)
    assert a.dtype == np.int64 and a.shape == (40_000,)
    np.testing.assert_array_equal(a, draw_classes(np.random.default_rng(5), class_set, 40_000))
    assert not np.array_equal(a[:50], draw_classes(np.random.default_rng(6), class_set, 50))
    values, counts = np.unique(a, return_counts=True)
    assert values.tolist() == [2, 7, 11, 400]
    assert np.all(np.abs(counts / 40_000 - 0.25) < 0.015)  # 6 standard deviations of a fair draw
    with pytest.raises(ClassSpecError):
        draw_classes(np.random.default_rng(0), np.array([], np.int64), 3)


def test_class_set_record():
    assert class_set_record(None, None, 1000) == {
        "num_classes": 1000, "set": "all", "draw": "uniform over the set, one class per sample"}
    assert class_set_record("0-999", parse_class_set("0-999", 1000), 1000)["set"] == "all"
    assert class_set_record("5,1-2", parse_class_set("5,1-2", 1000), 1000)["set"] == [1, 2, 5]


def _save(path, signatures: dict):
    mod = tf.Module()
    for name, fn in signatures.items():
        setattr(mod, name, fn)
    tf.saved_model.save(mod, str(path), signatures=signatures)
    return str(path)


def _default_fn(**extra):
    specs = [tf.TensorSpec([None, 8], tf.float32, name="z")] + [
        tf.TensorSpec(shape, tf.float32, name=name) for name, shape in extra.items()]

    @tf.function(input_signature=specs)
    def default(z, *rest):
        return {"default": tf.zeros([tf.shape(z)[0], 32, 32, 3]) + sum(tf.reduce_sum(r) for r in rest)}

    return default


@pytest.mark.parametrize("extra, message", [
    (dict(label=[None, 10]), r"signature 'default' takes inputs \['label', 'z'\], and \['label'\] is none the "
                             r"model contract knows; a generator takes z float32 \[N,D\] \(required\), y float32"),
    (dict(y=[None, None]), r"may take y float32 \[N,C\] \(a one-hot class, C fixed\)"),
    (dict(truncation=[1]), r"may take truncation float32 \[\] \(a scalar\)"),
])
def test_unknown_or_misshapen_inputs_are_refused_in_one_line(tmp_path, cache, extra, message):
    with pytest.raises(GanLoadError, match=message) as err:
        load_gan(_save(tmp_path / "m", {"default": _default_fn(**extra)}), cache_dir=cache)
    assert "\n" not in str(err.value)


def test_a_default_signature_without_z_is_no_generator(tmp_path, cache):
    @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32, name="x")])
    def default(x):
        return {"default": tf.zeros([tf.shape(x)[0], 32, 32, 3])}

    with pytest.raises(GanLoadError, match=r"lacks the signature 'generate' \(has \['default'\]\)"):
        load_gan(_save(tmp_path / "m", {"default": default}), cache_dir=cache)


def test_a_small_conditional_module_of_any_class_count(tmp_path, cache):
    g = load_gan(_save(tmp_path / "m", {"default": _default_fn(y=[None, 7])}), cache_dir=cache)
    assert (g.num_classes, g.signature, g.truncation, g.image_size) == (7, "default", 1.0, 32)
    assert g.generate(np.zeros((2, 8), np.float32), classes=[0, 6]).shape == (2, 32, 32, 3)
    with pytest.raises(GanLoadError, match="takes no truncation input"):
        load_gan(str(tmp_path / "m"), cache_dir=cache, truncation=0.4)


def test_biggan_loads_under_its_real_handle_offline(biggan_handle_cache, cache, monkeypatch, toy_gan):
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network disabled by the test")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    g = load_gan("biggan", cache_dir=cache)
    assert g.handle == BIGGAN_HANDLE
    assert g.path == biggan_handle_cache / hashlib.sha1(BIGGAN_HANDLE.encode()).hexdigest()
    assert (g.num_classes, g.latent_dim, g.image_size) == (1000, 120, 128)
    z = _z(2, seed=4)
    np.testing.assert_array_equal(g.generate(z, [7, 8]), toy_gan.generate(toy_latent(z, [7, 8])))


def _grad(f, z, *args):
    z = tf.constant(z)
    with tf.GradientTape() as tape:
        tape.watch(z)
        loss = tf.reduce_mean(tf.square(f(z, *args)))
    return tape.gradient(loss, z).numpy()


def test_tf_generator_gradients_reach_z(toy_gan, biggan):
    z = _z(2, seed=5)
    g_toy = _grad(toy_gan.tf_generator(), z)
    g_big = _grad(biggan.tf_generator(), z, tf.constant([3, 600], tf.int32))
    for g in (g_toy, g_big):
        assert g.shape == (2, 120) and np.all(np.isfinite(g)) and np.abs(g).max() > 1e-6
    np.testing.assert_allclose(biggan.tf_generator()(tf.constant(z), np.array([3, 600])).numpy(),
                               biggan.generate(z, [3, 600]), atol=1e-5)

    @tf.function(input_signature=[tf.TensorSpec([None, 120]), tf.TensorSpec([None], tf.int32)])
    def traced(z, classes):  # classes traced in a graph, as the finder's steps draw them
        with tf.GradientTape() as tape:
            tape.watch(z)
            loss = tf.reduce_mean(biggan.tf_generator()(z, classes))
        return tape.gradient(loss, z)

    assert np.abs(traced(tf.constant(z), tf.constant([1, 2], tf.int32)).numpy()).max() > 1e-6


def test_tf_generator_checks_classes(toy_gan, biggan):
    z = tf.constant(_z(2))
    with pytest.raises(ClassSpecError, match="is class-conditional"):
        biggan.tf_generator()(z)
    with pytest.raises(ClassSpecError, match="takes no classes"):
        toy_gan.tf_generator()(z, tf.constant([1, 2], tf.int32))
    with pytest.raises(ClassSpecError, match=r"\[0, 1000\)"):
        biggan.tf_generator()(z, tf.constant([1, 1000], tf.int32))


def _sized_fn(dim: int, side: int, **extra):
    specs = [tf.TensorSpec([None, dim], tf.float32, name="z")] + [
        tf.TensorSpec(shape, tf.float32, name=name) for name, shape in extra.items()]

    @tf.function(input_signature=specs)
    def default(z, *rest):
        return {"default": tf.zeros([tf.shape(z)[0], side, side, 3])}

    return default


@pytest.mark.parametrize("dim, side, extra, says", [
    (10 ** 9, 32, {}, "z [N,1000000000] declares 1,000,000,000 latent dimensions, more than the 65,536"),
    (8, 32, dict(y=[None, 10 ** 9]), "y [N,1000000000] declares 1,000,000,000 classes, more than the 100,000"),
    (8, 5000, {}, "images [N,5000,5000,3] declares 5,000 pixels a side, more than the 4,096"),
])
def test_a_module_that_declares_absurd_sizes_is_refused_before_anything_is_drawn(tmp_path, cache, dim, side,
                                                                                 extra, says):
    # a hostile or broken module: nothing may be allocated from these numbers (the side is declared
    # statically, so no image is rendered to learn it)
    with pytest.raises(GanLoadError, match=re.escape(says)) as err:
        load_gan(_save(tmp_path / "m", {"default": _sized_fn(dim, side, **extra)}), cache_dir=cache)
    assert "\n" not in str(err.value)


def test_the_largest_sizes_real_generators_use_load(tmp_path, cache):
    g = load_gan(_save(tmp_path / "m", {"default": _sized_fn(18 * 512, 1024, y=[None, 21_843])}), cache_dir=cache)
    assert (g.latent_dim, g.image_size, g.num_classes) == (9216, 1024, 21_843)
