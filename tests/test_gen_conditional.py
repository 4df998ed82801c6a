"""gen-synth on a class-conditional GAN (the BigGAN stand-in, tests/biggan_hub_standin.py): --classes,
Voynov & Babenko's centred pairs (--mask-rule background-removal) and --shifted-images."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_hub")

from generator.config import GenConfig, OptionForModelError  # noqa: E402
from test_gen_cli import assert_one_line_error, invoke  # noqa: E402

pytestmark = pytest.mark.tf

SEED = 2
CLASSES = "3,7,10-12"
CLASS_SET = {3, 7, 10, 11, 12}
R = 5.0  # the default shift


@pytest.fixture(scope="module")
def directions(tmp_path_factory) -> dict[str, Path]:
    """The toy's segmenting direction, and its opposite: the toy's direction lights the object, so
    its opposite darkens it, which is how BigGAN's background-removal direction treats the object
    (it brightens least), the case the background-removal rule is made for."""
    from gans.toy import toy_direction

    folder = tmp_path_factory.mktemp("dirs")
    out = {"light": folder / "light.npy", "dark": folder / "dark.npy"}
    np.save(out["light"], toy_direction())
    np.save(out["dark"], -toy_direction())
    return out


def gen(standin, direction: Path, out: Path, *args):
    return invoke("--gan", standin, "--direction", direction, "--latents", "prior", "--n", "16",
                  "--shard-size", "8", "--batch-size", "8", "--image-size", "64", "--seed", SEED,
                  "--name", "b", "--out", out, *args)


def shards(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("b-*.tar.zst"))}


def samples(folder: Path) -> list[dict]:
    from shardset import iter_samples

    return [s for p in sorted(folder.glob("b-*.tar.zst")) for s in iter_samples(str(p))]


def params(folder: Path) -> dict:
    return json.loads((folder / "b.json").read_text())["params"]


@pytest.fixture(scope="module")
def classes_set(biggan_standin, directions, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("classes")
    res = gen(biggan_standin, directions["light"], out, "--classes", CLASSES)
    assert res.exit_code == 0, res.output
    assert "16 samples in 2 shards" in res.output
    return out


def test_each_sample_has_a_class_of_the_set_drawn_from_its_shard_s_stream(classes_set):
    from generator.latents import LatentStream

    p = params(classes_set)
    assert p["latents"]["classes"] == {"spec": CLASSES, "num_classes": 1000, "set": sorted(CLASS_SET),
                                       "draw": "uniform over the set, one class per sample",
                                       "order": "drawn after each block's z"}
    assert p["generator"]["num_classes"] == 1000 and p["generator"]["truncation"] == 1.0
    assert "shifted" not in p["image"] and "pair_shifts" not in p["direction"]
    got = samples(classes_set)
    assert len(got) == 16 and {s["meta"]["class"] for s in got} <= CLASS_SET
    assert len({s["meta"]["class"] for s in got}) > 1
    for s in got:
        assert "image_shift" not in s["meta"]
        seed, shard, draw = s["meta"]["stream"]
        lat = LatentStream(seed, shard, 120, class_set=np.array(sorted(CLASS_SET))).take(draw + 1)
        assert s["meta"]["class"] == lat.classes[draw]
        np.testing.assert_array_equal(s["z"], lat.z[draw])


def test_the_same_command_gives_the_same_bytes_and_other_classes_another_set(
        classes_set, biggan_standin, directions, tmp_path):
    res = gen(biggan_standin, directions["light"], tmp_path / "same", "--classes", CLASSES)
    assert res.exit_code == 0, res.output
    assert shards(tmp_path / "same") == shards(classes_set)
    res = gen(biggan_standin, directions["light"], tmp_path / "other", "--classes", "500-509")
    assert res.exit_code == 0, res.output
    other = samples(tmp_path / "other")
    assert {s["meta"]["class"] for s in other} <= set(range(500, 510))
    # the classes come after z: the same latents, other classes, so other images
    assert [s["meta"]["stream"] for s in other][:4] == [s["meta"]["stream"] for s in samples(classes_set)][:4]
    assert shards(tmp_path / "other") != shards(classes_set)
    assert_one_line_error(gen(biggan_standin, directions["light"], classes_set, "--classes", "500-509", "--resume"),
                          "other parameters")


def test_centred_pairs_make_the_masks_and_shifted_images_are_the_b_renders(biggan_standin, directions, tmp_path):
    from generator.inputs import cached_gan
    from generator.preview import signed_to_uint8
    from masking.rules import FilterConfig, process_batch

    h = np.load(directions["dark"])
    res = gen(biggan_standin, directions["dark"], tmp_path, "--classes", CLASSES, "--mask-rule", "background-removal",
              "--shifted-images", "0.5")
    assert res.exit_code == 0, res.output
    p = params(tmp_path)
    assert p["direction"]["pair_shifts"] == [-R / 2, R / 2]
    assert p["image"]["shifted"]["fraction"] == 0.5 and p["image"]["shifted"]["latent_shift"] == R / 2
    got = samples(tmp_path)
    shifts = [s["meta"]["image_shift"] for s in got]
    assert set(shifts) == {0.0, R / 2}  # both kinds present among 16 samples at P = 0.5
    z = np.stack([s["z"] for s in got])
    classes = np.array([s["meta"]["class"] for s in got])
    # the run's one call per batch, [0, -r/2, r/2], on the recorded z and class
    x0, xa, xb = cached_gan(str(biggan_standin)).generate_shifted(z, h, [0.0, -R / 2, R / 2], 64, classes=classes)
    masks = process_batch(xa, xb, FilterConfig(mask_rule="background-removal")).masks
    for i, s in enumerate(got):
        np.testing.assert_array_equal(s["mask"], masks[i])
        stored = xb[i] if s["meta"]["image_shift"] == R / 2 else x0[i]
        np.testing.assert_array_equal(s["image"], signed_to_uint8(stored))
    # and the masks are the object's: the stand-in draws the toy, whose truth is known
    from biggan_hub_standin import toy_latent
    from gans.toy import toy_true_mask

    truth = toy_true_mask(toy_latent(z, classes))
    iou = [np.logical_and(m, t[::2, ::2]).sum() / np.logical_or(m, t[::2, ::2]).sum()
           for m, t in zip(masks, truth)]
    assert np.median(iou) > 0.8, iou


@pytest.mark.parametrize("spec, needles", [
    ("1000", ["--classes 1000", "0-999"]),
    ("5,x", ["'x'", "0-999"]),
    ("12-3", ["backwards"]),
])
def test_classes_outside_the_model_are_one_line(biggan_standin, directions, tmp_path, spec, needles):
    res = gen(biggan_standin, directions["light"], tmp_path, "--classes", spec)
    assert res.exit_code == 2
    assert_one_line_error(res, *needles)
    assert not list(tmp_path.iterdir())


def test_classes_for_an_unconditional_model_are_a_usage_error(tmp_path):
    res = invoke("--gan", "toy", "--latents", "prior", "--n", "8", "--out", tmp_path, "--classes", "1,2")
    assert res.exit_code == 2
    assert_one_line_error(res, "--classes 1,2", "not class-conditional", "drop --classes")
    with pytest.raises(OptionForModelError, match="not class-conditional"):
        GenConfig(classes="all").class_set("toy", None)
    assert GenConfig().class_set("toy", None) is None
    np.testing.assert_array_equal(GenConfig().class_set("biggan", 4), [0, 1, 2, 3])


def test_max_fg_auto_measures_the_centred_masks_of_classed_draws(biggan_standin, directions, monkeypatch):
    from generator import inputs as inputs_mod
    from generator.latents import LatentStream
    from masking.rules import FilterConfig, process_batch

    monkeypatch.setattr(inputs_mod, "AUTO_BOUND_SAMPLES", 12)
    gan = inputs_mod.cached_gan(str(biggan_standin))
    h = np.load(directions["dark"])
    class_set = np.array(sorted(CLASS_SET))
    cfg = GenConfig(gan=str(biggan_standin), classes=CLASSES, mask_rule="background-removal", image_size=64,
                    batch_size=8, seed=SEED, shifted_images=0.5).resolved()
    got = inputs_mod.auto_size_bound(inputs_mod.Inputs(gan, h, "", None, {}, class_set=class_set), cfg)
    # the draws of stream (seed, AUTO_BOUND_STREAM), classes included, as two batches of 8 and 4
    lat = LatentStream(SEED, inputs_mod.AUTO_BOUND_STREAM, 120, class_set=class_set).take(12)
    unfiltered = FilterConfig(mask_rule="background-removal", size_filter=False, histogram_rule=None)
    frac = []
    for lo in (0, 8):
        _, xa, xb = gan.generate_shifted(lat.z[lo:lo + 8], h, [0.0, -R / 2, R / 2], 64,
                                         classes=lat.classes[lo:lo + 8])
        frac.append(process_batch(xa, xb, unfiltered).fg_fraction)
    assert got["samples"] == 12 and got["median_fg"] == float(np.median(np.concatenate(frac)))
