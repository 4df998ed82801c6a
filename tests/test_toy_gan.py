"""The toy GAN (a test fixture named as one): BigBiGAN's signatures through hub.load, a
deterministic build, a shipped direction that segments and passes the paper's default filters
at a healthy rate (with some rejections by each filter), other directions that do other things,
and an encoder whose latents regenerate the input."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gans import toy

pytestmark = pytest.mark.tf
tf = pytest.importorskip("tensorflow")
hub = pytest.importorskip("tensorflow_hub")

REPO = Path(__file__).resolve().parents[1]


def gray(x: np.ndarray) -> np.ndarray:
    """The gray of docs/RULES.md, inline so this file does not depend on masking.rules."""
    return 0.2989 * x[..., 0] + 0.5870 * x[..., 1] + 0.1140 * x[..., 2]


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    inter = (a & b).sum(axis=(-2, -1))
    union = (a | b).sum(axis=(-2, -1))
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


@pytest.fixture(scope="session")
def toy_path(tmp_path_factory) -> Path:
    # one build per session, shared by every test file through the same cache folder
    return toy.ensure_toy_module(tmp_path_factory.getbasetemp() / "bgw-cache")


@pytest.fixture(scope="session")
def toy_module(toy_path):
    return hub.load(str(toy_path))


def _gen(module, z) -> dict:
    return {k: v.numpy() for k, v in module.signatures["generate"](z=tf.constant(z, tf.float32)).items()}


def prior(n: int, seed: int) -> np.ndarray:
    return np.random.RandomState(seed).standard_normal((n, toy.LATENT_DIM)).astype(np.float32)


# ------------------------------------------------------------------------------ signatures

EXPECTED = {
    "generate": ({"z": [None, 120]}, {"default": [None, 128, 128, 3], "upsampled": [None, 256, 256, 3]}),
    "encode": ({"x": [None, 256, 256, 3]},
               {"z_sample": [None, 120], "z_mean": [None, 120], "z_stdev": [None, 120], "default": [None, 120],
                "avepool_feat": [None, 2048], "bn_crelu_feat": [None, 4096]}),
    "discriminate": ({"x": [None, 128, 128, 3], "z": [None, 120]},
                     {"score_x": [None], "score_z": [None], "score_xz": [None]}),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_signature_names_shapes_dtypes(toy_module, name):
    fn = toy_module.signatures[name]
    args, kwargs = fn.structured_input_signature
    inputs, outputs = EXPECTED[name]
    assert args == ()
    assert {k: v.shape.as_list() for k, v in kwargs.items()} == inputs
    assert {v.dtype for v in kwargs.values()} == {tf.float32}
    assert {k: v.shape.as_list() for k, v in fn.structured_outputs.items()} == outputs
    assert {v.dtype for v in fn.structured_outputs.values()} == {tf.float32}


def test_only_the_three_bigbigan_signatures(toy_module):
    assert sorted(toy_module.signatures) == ["discriminate", "encode", "generate"]


@pytest.mark.parametrize("n", [1, 5])
def test_outputs_run_with_any_batch_and_stay_in_range(toy_module, n):
    z = prior(n, seed=n) * 3.0  # far into the tails too
    out = _gen(toy_module, z)
    assert out["default"].shape == (n, 128, 128, 3) and out["default"].dtype == np.float32
    assert out["upsampled"].shape == (n, 256, 256, 3)
    for v in out.values():
        assert np.isfinite(v).all() and v.min() >= -1.0 and v.max() <= 1.0
    enc = {k: v.numpy() for k, v in toy_module.signatures["encode"](x=tf.constant(out["upsampled"])).items()}
    assert {k: v.shape for k, v in enc.items()} == {
        "z_sample": (n, 120), "z_mean": (n, 120), "z_stdev": (n, 120), "default": (n, 120),
        "avepool_feat": (n, 2048), "bn_crelu_feat": (n, 4096)}
    np.testing.assert_array_equal(enc["z_sample"], enc["z_mean"])  # documented: no sampling noise
    assert (enc["z_stdev"] > 0).all()
    np.testing.assert_array_equal(enc["bn_crelu_feat"][:, :2048] - enc["bn_crelu_feat"][:, 2048:],
                                  enc["avepool_feat"])  # CReLU of the pooled features


def test_upsampled_is_the_default_image_enlarged(toy_module):
    out = _gen(toy_module, prior(2, 7))
    down = out["upsampled"].reshape(2, 128, 2, 128, 2, 3).mean(axis=(2, 4))
    assert np.abs(down - out["default"]).mean() < 0.02


def test_discriminate_prefers_matching_pairs(toy_module):
    z = prior(4, 11)
    x = _gen(toy_module, z)["default"]
    disc = toy_module.signatures["discriminate"]
    match = disc(x=tf.constant(x), z=tf.constant(z))["score_xz"].numpy()
    other = disc(x=tf.constant(x), z=tf.constant(z[::-1].copy()))["score_xz"].numpy()
    assert match.shape == (4,)
    np.testing.assert_allclose(match, 0.0, atol=1e-6)  # x is exactly G(z)
    assert (other < -1e-3).all()


# ------------------------------------------------------------------------------ determinism

def test_two_builds_have_identical_variables_and_outputs(toy_path, toy_module, tmp_path):
    again = toy.build_toy_module(tmp_path / "again")
    for rel in ("variables/variables.index", "variables/variables.data-00000-of-00001"):
        assert (again / rel).read_bytes() == (toy_path / rel).read_bytes(), rel
    z = prior(3, 5)
    np.testing.assert_array_equal(_gen(hub.load(str(again)), z)["default"], _gen(toy_module, z)["default"])


def test_ensure_reuses_the_cached_build(toy_path):
    stamp = (toy_path / "saved_model.pb").stat().st_mtime_ns
    assert toy.ensure_toy_module(toy_path.parent) == toy_path
    assert (toy_path / "saved_model.pb").stat().st_mtime_ns == stamp
    assert not [p for p in toy_path.parent.iterdir() if p.name.endswith(".tmp")]


def test_ensure_rebuilds_a_stale_or_broken_cache(tmp_path):
    broken = tmp_path / f"toy-gan-v{toy.TOY_VERSION}"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"half written")
    path = toy.ensure_toy_module(tmp_path)
    assert path == broken and toy._is_current(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [broken.name]


def test_toy_direction_is_fixed_unit_and_orthogonal_to_other_factors():
    h = toy.toy_direction()
    assert h.dtype == np.float32 and h.shape == (120,)
    assert abs(np.linalg.norm(h) - 1.0) < 1e-5
    np.testing.assert_array_equal(h, toy.toy_direction())
    for name in ("center_x", "size", "light", "object_color", "background_color"):
        assert abs(float(h @ toy.toy_factor_direction(name))) < 1e-5
    # pinned: the direction is part of the fixture's contract (changing it must be deliberate)
    np.testing.assert_allclose(h[:3], toy._params()["q"][:3, 25])
    assert float(np.abs(h).max()) < 0.5  # not axis-aligned, as in a real GAN


def test_importing_toy_and_gan_does_not_import_tensorflow():
    code = ("import sys, generator, gans.toy, gans.loader, generator.embed\n"
            "gans.toy.toy_direction(); gans.toy.toy_true_mask([[0.0]*120])\n"
            "print('TF' if 'tensorflow' in sys.modules else 'OK')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "OK"


# ------------------------------------------------------------------------------ directions

def test_shipped_direction_segments_the_object(toy_module):
    z = prior(64, 1)
    x = _gen(toy_module, z)["default"]
    xs = _gen(toy_module, z + toy.SHIFT * toy.toy_direction())["default"]
    truth = toy.toy_true_mask(z)
    masks = gray(x) < gray(xs)  # the paper's lighting rule
    scores = iou(masks, truth)
    assert scores.mean() >= 0.9, scores
    assert np.median(scores) >= 0.95
    # the shifted image is mostly dark + light: most pixels in the two outer bins at each end
    g = gray(xs)
    assert np.mean(np.abs(g) >= 2.0 / 3.0) >= 0.9


@pytest.fixture(scope="module")
def filtered_batch(toy_module):
    """A fixed prior batch through both histogram rules (masking.rules), with the paper's other filters."""
    from masking import rules as gm

    z = prior(256, 12)
    x = _gen(toy_module, z)["default"]
    xs = _gen(toy_module, z + toy.SHIFT * toy.toy_direction())["default"]
    return z, {rule: gm.process_batch(x, xs, gm.FilterConfig(histogram_rule=rule)) for rule in ("bimodal", "paper")}


def test_default_filters_accept_most_and_reject_the_big_objects(filtered_batch):
    """The default (reference code's) rule passes nearly every toy sample; the size filter rejects
    the objects that cover more than half the image (up to the masks' soft edge)."""
    z, by_rule = filtered_batch
    res = by_rule["bimodal"]
    assert res.accepted.mean() >= 0.9, res.rejected()
    truth = toy.toy_true_mask(z)
    acc = res.accepted
    assert iou(res.masks[acc].astype(bool), truth[acc]).mean() >= 0.95
    size, frac = np.array(res.reason) == "size", truth.mean(axis=(1, 2))
    assert size[frac > 0.55].all() and not size[frac < 0.45].any() and size.sum() >= 1


def test_paper_rule_rejects_the_weakly_lit_samples(filtered_batch):
    """The text's stricter rule rejects a share of the toy, more often the draws whose saliency
    coordinate s is low: z + 5h does not saturate their colours, so their histogram keeps inner
    modes (soft edges give every sample a few mid-gray pixels, so well-lit draws fail it too)."""
    z, by_rule = filtered_batch
    res = by_rule["paper"]
    assert 0.5 <= res.accepted.mean() <= 0.9, res.rejected()
    s = z @ toy._params()["q"][:, toy.TOY_FACTORS["saliency_light"]]
    hist = np.array(res.reason) == "histogram"
    assert np.median(s[hist]) < np.median(s[res.accepted])
    assert np.mean(res.accepted[s > 0]) > np.mean(res.accepted[s < 0])
    assert hist.sum() > by_rule["bimodal"].rejected()["histogram"]


def test_the_edge_is_soft_with_and_without_the_light():
    """No image of the toy is shaped for a histogram rule: G(z) and G(z + 5h) both have soft edges
    (alphas strictly between 1/6 and 5/6, the ones that put edge pixels in mid-gray bins), and the
    light does not move the object (alpha >= 0.5 is the same region)."""
    z = prior(32, 13)
    for a in (toy.toy_alpha(z), toy.toy_alpha(z + toy.SHIFT * toy.toy_direction())):
        assert (((a > 1 / 6) & (a < 5 / 6)).sum(axis=(1, 2)) > 0).all()
        np.testing.assert_array_equal(a >= 0.5, toy.toy_true_mask(z))


def test_alpha_is_smooth_along_the_saliency_direction():
    """Direction search differentiates through alpha: small step, small change."""
    z = prior(4, 14)
    h = toy.toy_direction()
    a0, a1 = toy.toy_alpha(z), toy.toy_alpha(z + 1e-3 * h)
    assert 0 < np.abs(a1 - a0).max() < 0.05


def test_object_is_a_plausible_salient_object():
    truth = toy.toy_true_mask(prior(64, 2))
    frac = truth.mean(axis=(1, 2))
    assert (frac > 0.01).all() and np.mean(frac <= 0.5) >= 0.95  # the paper's size filter keeps most
    assert not truth[:, 0, :].all(axis=1).any()  # never fills a whole border row


@pytest.mark.parametrize("seed", [100, 101, 102])
def test_random_direction_does_not_segment(toy_module, seed):
    z = prior(32, 3)
    r = np.random.RandomState(seed).standard_normal(120).astype(np.float32)
    r /= np.linalg.norm(r)
    x = _gen(toy_module, z)["default"]
    xr = _gen(toy_module, z + toy.SHIFT * r)["default"]
    assert iou(gray(x) < gray(xr), toy.toy_true_mask(z)).mean() < 0.6


def test_light_direction_brightens_everything(toy_module):
    z = prior(16, 4)
    x = _gen(toy_module, z)["default"]
    xl = _gen(toy_module, z + 2.0 * toy.toy_factor_direction("light"))["default"]
    truth = toy.toy_true_mask(z)
    up = gray(xl) > gray(x)
    assert up[truth].mean() > 0.95 and up[~truth].mean() > 0.95  # object and background alike
    np.testing.assert_array_equal(toy.toy_true_mask(z + 2.0 * toy.toy_factor_direction("light")), truth)


def test_position_direction_moves_the_object():
    z = prior(16, 5)

    def cx(m):
        return np.array([np.nonzero(a)[1].mean() for a in m])

    moved = cx(toy.toy_true_mask(z + 2.0 * toy.toy_factor_direction("center_x"))) - cx(toy.toy_true_mask(z))
    # every object moves right; less where cx = 0.5 + 0.2 tanh(0.7 u0) already saturates
    assert (moved > 2.0).all() and np.median(moved) > 10.0, moved


def test_colour_direction_recolours_the_object_only(toy_module):
    z = prior(8, 6)
    d = toy.toy_factor_direction("object_color")
    x = _gen(toy_module, z)["default"]
    xc = _gen(toy_module, z + 2.0 * d)["default"]
    truth = toy.toy_true_mask(z)
    np.testing.assert_array_equal(toy.toy_true_mask(z + 2.0 * d), truth)
    change = np.abs(xc - x).max(axis=-1)
    assert change[truth].mean() > 0.05 and change[~truth].mean() < 0.01


def test_alpha_is_smooth_in_z():
    """A small step in z changes the soft alpha a little (direction search needs gradients)."""
    z = prior(4, 8)
    h = toy.toy_factor_direction("size")
    a0, a1 = toy.toy_alpha(z), toy.toy_alpha(z + 1e-3 * h)
    diff = np.abs(a1 - a0).max()
    assert 0 < diff < 0.05


# ------------------------------------------------------------------------------ encoder

def _centroid(m: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(m)
    return np.array([xs.mean(), ys.mean()])


def test_encode_then_generate_resembles_the_input(toy_module):
    z = prior(32, 9)
    out = _gen(toy_module, z)
    z2 = toy_module.signatures["encode"](x=tf.constant(out["upsampled"]))["z_sample"].numpy()
    x, x2 = out["default"], _gen(toy_module, z2)["default"]
    t1, t2 = toy.toy_true_mask(z), toy.toy_true_mask(z2)
    assert t2.any(axis=(1, 2)).all()
    err = np.array([np.linalg.norm(_centroid(a) - _centroid(b)) for a, b in zip(t1, t2)])
    assert np.median(err) < 4.0, err  # pixels, on 128x128
    assert np.median(iou(t1, t2)) > 0.6
    bg_err = np.array([np.abs(a[~m1].mean(0) - b[~m2].mean(0)).mean() for a, b, m1, m2 in zip(x, x2, t1, t2)])
    obj_err = np.array([np.abs(a[m1].mean(0) - b[m2].mean(0)).mean() for a, b, m1, m2 in zip(x, x2, t1, t2)])
    assert np.median(bg_err) < 0.05 and np.median(obj_err) < 0.15
    # and it beats encoding someone else's image
    wrong = np.array([np.linalg.norm(_centroid(a) - _centroid(b)) for a, b in zip(t1, t2[::-1])])
    assert np.median(err) < 0.5 * np.median(wrong)


def test_encode_of_a_plain_image_gives_a_plain_picture(toy_module):
    """Nothing salient: no object coordinates, the background colour is recovered."""
    x = np.zeros((1, 256, 256, 3), np.float32)
    x[..., 0] = 0.5
    z = toy_module.signatures["encode"](x=tf.constant(x))["z_sample"].numpy()
    u = z @ toy._params()["q"]
    np.testing.assert_allclose(u[0, :6], 0.0, atol=1e-5)
    np.testing.assert_allclose(u[0, 6:9], u[0, 9:12], atol=1e-5)  # object colour = background colour
    assert np.isfinite(z).all()
