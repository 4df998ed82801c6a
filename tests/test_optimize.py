"""find-direction optimize (finder.optimize): the loss in numpy against hand-computed values, the
TensorFlow step against the numpy loss, determinism, a hand-made GAN whose one centre-lighting axis
the optimisation must find, the toy through the CLI, and the statistics that `--max-fg auto` uses."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from finder import optimize as op
from masking.rules import size_bound

# ------------------------------------------------------------------------------ numpy, by hand


def test_centre_prior_by_hand():
    r2 = math.sqrt(2.0)
    rho = np.array([[r2, 1, r2], [1, 0, 1], [r2, 1, r2]])
    expected = 4.0 * (rho - (4 * r2 + 4) / 9)
    np.testing.assert_allclose(op.centre_prior(3), expected, rtol=1e-6)
    np.testing.assert_allclose(op.centre_prior(3, invert=True), -expected, rtol=1e-6)
    c = op.centre_prior(64)
    assert c[32, 32] < 0 < c[0, 0] and abs(float(c.mean())) < 1e-5


def test_sobel_magnitude_of_a_ramp_by_hand():
    # gray = column index: the normalised kernel gives 1 inside; the replicated border halves it
    g = np.tile(np.arange(5, dtype=np.float32), (4, 1))[None]
    gx = np.array([0.5, 1, 1, 1, 0.5], np.float32)
    expected = np.sqrt(np.tile(gx, (4, 1)) ** 2 + 1e-6)[None]
    np.testing.assert_allclose(op.sobel_magnitude(g), expected, rtol=1e-6)


def test_objective_rewards_a_lit_centre_and_punishes_moved_edges():
    x = np.zeros((1, 16, 16, 3), np.float32)
    lit = x.copy()
    lit[:, 4:12, 4:12] = 0.5  # the centre lightens, an edge appears
    dark_border = x.copy()
    dark_border[:, :2] = -0.5
    assert op.objective(x, lit)["centre"] < 0 and op.objective(x, dark_border)["centre"] < 0
    assert op.objective(x, lit)["edges"] > op.objective(x, x)["edges"] == pytest.approx(0.0, abs=1e-9)
    terms = op.objective(x, lit)
    assert terms["loss"] == pytest.approx(terms["centre"] + terms["edges"])


def test_draws_are_seeded_and_clipped():
    cfg = op.OptimizeConfig(batch=64, shift_mean=0.0, shift_std=1.0, shift_min=0.1)
    z, r = op.draw_step(cfg, 3, 5)
    z2, r2 = op.draw_step(cfg, 3, 5)
    assert z.shape == (64, 5) and r.shape == (64, 1) and (z == z2).all() and (r == r2).all()
    assert r.min() == pytest.approx(0.1) and (r >= 0.1).all()
    _, rc = op.draw_step(op.OptimizeConfig(batch=4, shift_draw="coordinate"), 0, 5)
    assert rc.shape == (4, 5)


def test_mask_statistics_of_hand_made_masks():
    centre = np.zeros((2, 8, 8), np.uint8)
    centre[:, 2:6, 2:6] = 1  # exactly the central square
    s = op.mask_statistics(centre)
    assert s["fg_mean"] == 0.25 and s["centre_fg"] == 1.0 and s["border_fg"] == 0.0
    assert op.centre_assumption(s) is None
    ring = 1 - centre
    assert "not centred" in op.centre_assumption(op.mask_statistics(ring))


def test_size_bound_follows_large_masks_and_keeps_the_papers_bound_for_small_ones():
    assert size_bound([0.1, 0.2, 0.3]) == 0.5
    # numpy's linear quantile of nine 0.6 and one 0.95 at 0.9: 0.6 + 0.1 x 0.35
    assert size_bound([0.6] * 9 + [0.95]) == pytest.approx(0.635)
    assert size_bound([1.0] * 3) == 1.0
    for bad in ([], [np.nan, 0.2]):
        with pytest.raises(ValueError):
            size_bound(bad)


def test_config_check_names_the_bad_value():
    with pytest.raises(op.OptimizeError, match="shift_draw"):
        op.OptimizeConfig(shift_draw="pixel").check()
    with pytest.raises(op.OptimizeError, match="both 0"):
        op.OptimizeConfig(centre_weight=0.0, edge_weight=0.0).check()


# ------------------------------------------------------------------------------ TensorFlow

tf = pytest.importorskip("tensorflow")


class CentreLightGan:
    """A hand-made differentiable GAN (latent 4, 16 x 16): coordinate 0 lights a soft central blob
    and darkens the border; coordinates 1-3 paint fixed edgy patterns. The segmenting direction is
    axis 0, and nothing else lights the centre."""

    latent_dim = 4
    image_size = 16
    handle = "centre-light"
    fingerprint = "0" * 64

    def __init__(self):
        u = np.linspace(-1, 1, 16, dtype=np.float32)
        rho = np.sqrt(u[:, None] ** 2 + u[None, :] ** 2)
        light = np.exp(-4 * rho ** 2) - 0.3
        rng = np.random.default_rng(0)
        stripes = np.sign(rng.standard_normal((3, 16, 16))).astype(np.float32) * 0.3
        basis = tf.constant(np.concatenate([light[None], stripes]).reshape(4, -1).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def generate(z):
            img = tf.reshape(tf.tanh(0.5 * z @ basis), [-1, 16, 16, 1])
            return {"default": tf.tile(img, [1, 1, 1, 3])}

        self.module = SimpleNamespace(signatures={"generate": generate.get_concrete_function()})

    def generate(self, z):
        return self.module.signatures["generate"](z=tf.constant(np.asarray(z, np.float32)))["default"].numpy()

    def generate_pair(self, z, h, shift, size=None):
        z = np.asarray(z, np.float32)
        return self.generate(z), self.generate(z + shift * np.asarray(h, np.float32)[None])


def test_the_tensorflow_step_computes_the_numpy_loss():
    from finder.discover import Adam, differentiable_generator

    gan = CentreLightGan()
    cfg = op.OptimizeConfig(batch=6)
    d = tf.Variable(op.initial_direction(cfg, 4))
    start = d.numpy().copy()
    step = op._train_step(differentiable_generator(gan), d, Adam([d], cfg.lr, tf), cfg, 16)
    z, r = op.draw_step(cfg, 0, 4)
    terms = {k: float(v) for k, v in step(tf.constant(z), tf.constant(r)).items()}
    expected = op.objective(gan.generate(z), gan.generate(z + r * start[None]), cfg)
    for k in ("centre", "edges", "loss"):
        assert terms[k] == pytest.approx(expected[k], rel=1e-4, abs=1e-6)
    assert np.linalg.norm(d.numpy()) == pytest.approx(1.0, abs=1e-6) and not np.allclose(d.numpy(), start)


def test_optimize_finds_the_centre_light_and_is_deterministic():
    gan = CentreLightGan()
    cfg = op.OptimizeConfig(steps=60, batch=8, lr=0.05)
    d, history = op.optimize_direction(gan, cfg)
    d2, _ = op.optimize_direction(gan, cfg)
    assert d.tobytes() == d2.tobytes() and len(history) == 60
    assert d[0] > 0.9, d  # unit vector: mostly axis 0, with the lighting sign
    assert history[-1]["loss"] < history[0]["loss"]
    inverted, _ = op.optimize_direction(gan, op.OptimizeConfig(steps=60, batch=8, lr=0.05, invert=True))
    assert inverted[0] < -0.9, inverted


def test_run_writes_direction_summary_and_picture(tmp_path):
    from gans.directions import load_direction

    gan = CentreLightGan()
    summary = op.run(gan, tmp_path, op.OptimizeConfig(steps=30, batch=8, lr=0.05, samples=32), picture_samples=3)
    vec, digest = load_direction(tmp_path / "direction.npy", dim=4)
    assert summary["direction_sha256"] == digest and vec[0] > 0.8
    saved = json.loads((tmp_path / "summary.json").read_text())
    m = saved["masks"]
    assert m["samples"] == 32 and m["centre_fg"] > m["border_fg"] and saved["centre_assumption"] == "holds"
    assert (tmp_path / "optimize.png").stat().st_size > 0


# ------------------------------------------------------------------------------ the CLI on the toy


@pytest.fixture(scope="module")
def toy_cache(tmp_path_factory):
    from gans import toy

    cache = tmp_path_factory.getbasetemp() / "bgw-cache"
    toy.ensure_toy_module(cache)
    return cache


def test_cli_optimize_on_the_toy(toy_cache, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from finder.cli import main

    monkeypatch.setenv("BGW_CACHE_DIR", str(toy_cache))
    out = tmp_path / "opt"
    res = CliRunner().invoke(main, ["optimize", "--gan", "toy", "--steps", "3", "--batch-size", "4",
                                    "--samples", "8", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "--max-fg auto would bound at" in res.output
    assert np.load(out / "direction.npy").shape == (120,)
    assert json.loads((out / "summary.json").read_text())["config"]["steps"] == 3
    bad = CliRunner().invoke(main, ["optimize", "--gan", "toy", "--shift-std", "0", "--out", str(out)])
    assert bad.exit_code != 0 and "shift-std" in bad.output and "Traceback" not in bad.output
