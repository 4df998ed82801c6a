"""find-direction: the TensorFlow fit of the two operators, `rank` end to end on a hand-made GAN
with exact two-operator directions, `rank` on the toy GAN (the issue's done criterion, on a
subset of the axes), `discover` (outputs, checkpoints, exact resume) and the CLI's errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from finder import affine
from finder import rank as ds

pytestmark = pytest.mark.tf
tf = pytest.importorskip("tensorflow")

A1 = np.array([[0.6, 0.1, 0.0, 0.35], [0.0, 0.7, 0.1, 0.30], [0.1, 0.0, 0.5, 0.40]])
A2 = np.array([[0.5, 0.0, 0.0, -0.05], [0.05, 0.45, 0.0, -0.02], [0.0, 0.0, 0.55, -0.04]])


def _scene(seed=0, n=8, size=24):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.05, 0.95, (n, size, size, 3))
    region = np.zeros((n, size, size), bool)
    for i in range(n):
        r, c = rng.integers(2, size // 2, 2)
        region[i, r:r + size // 3, c:c + size // 3] = True
    xs = np.where(region[..., None], affine.apply_affine(A1, x), affine.apply_affine(A2, x))
    return x.astype(np.float32), xs.astype(np.float32), region


# --------------------------------------------------------------------------------------------
# the Adam fit


def test_adam_fit_from_the_lighting_start_recovers_operators_and_mask():
    x, xs, region = _scene()
    init = affine.lighting_init(x, xs)
    ops = ds.fit_operators(x, xs[None], ds.FitConfig(), init=init)[0]
    np.testing.assert_allclose(ops[0], A1, atol=0.02)
    np.testing.assert_allclose(ops[1], A2, atol=0.02)
    np.testing.assert_array_equal(affine.assign_classes(ops, x, xs), np.where(region, 0, 1))
    assert affine.restoration_loss(ops, x, xs) < 0.01


def test_adam_fit_from_the_identity_start_recovers_operators():
    x, xs, region = _scene(seed=1)
    ops = ds.fit_operators(x, xs[None], ds.FitConfig(steps=400))[0]
    np.testing.assert_allclose(ops, np.stack([A1, A2]), atol=0.02)
    assert np.mean(affine.assign_classes(ops, x, xs) == np.where(region, 0, 1)) > 0.99


def test_fitting_candidates_together_equals_fitting_them_alone():
    x, xs, _ = _scene(seed=2, n=6, size=12)
    xs2 = np.clip(xs * 0.8 + 0.1, 0, 1).astype(np.float32)
    xs3 = x[:, ::-1].copy()
    stack = np.stack([xs, xs2, xs3])
    cfg = ds.FitConfig(steps=30)
    together = ds.fit_operators(x, stack, cfg)
    alone = np.concatenate([ds.fit_operators(x, s[None], cfg) for s in stack])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert ds.fit_operators(x, stack[:1], ds.FitConfig(steps=0)).tolist() == [affine.identity_pair(0.1).tolist()]


# --------------------------------------------------------------------------------------------
# a hand-made GAN: latent 4, images 16x16, with exact two-operator directions


class HandGan:
    """z0 moves a square object; z1 = "saliency light": object -> white, background -> black by
    the factor exp(-K z1), so a shift along e1 acts as two exact affine maps; z2 mixes colours
    by expm(0.1 z2 G) with G's rows summing to 0 (one operator for every pixel, which commutes
    with the two light maps, so e1 stays exact); z3 does nothing."""

    latent_dim = 4
    handle = "hand-made"
    fingerprint = "0" * 64
    K = 0.3
    MIX = 0.5 * np.array([[-1.0, 1.0, 0.0], [0.0, -1.0, 1.0], [1.0, 0.0, -1.0]])

    def __init__(self):
        rng = np.random.default_rng(7)
        self.obj = rng.uniform(0.2, 0.6, (16, 16, 3))
        self.bg = rng.uniform(0.3, 0.7, (16, 16, 3))

    def mask(self, z):
        col = np.arange(16)[None, None, :]
        row = np.arange(16)[None, :, None]
        left = np.rint(6 + 2 * np.clip(z[:, 0], -2, 2))[:, None, None]
        return (col >= left) & (col < left + 5) & (row >= 5) & (row < 11)

    def generate(self, z):
        from scipy.linalg import expm

        z = np.asarray(z, np.float64)
        f = np.exp(-self.K * z[:, 1])[:, None, None, None]
        img = np.where(self.mask(z)[..., None], 1 - (1 - self.obj) * f, self.bg * f)
        mix = np.stack([expm(0.1 * s * self.MIX) for s in z[:, 2]])  # [N, 3, 3]
        img = np.einsum("nij,nhwj->nhwi", mix, img)
        return (2 * img - 1).astype(np.float32)


def test_orientation_follows_the_mask_rule_the_direction_is_for():
    # +e1 lights the object and darkens the background: the lighting rule wants +e1, while
    # background-removal (the centred pair; the object is what brightens least) wants -e1, whose
    # shift whitens the background
    gan, e1 = HandGan(), np.eye(4, dtype=np.float32)[1]
    z = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    h, sign, info = ds.orient(gan, z, e1, 5.0)
    assert sign == 1 and info["lighting_fg_plus"] < info["lighting_fg_minus"]
    h, sign, info = ds.orient(gan, z, e1, 5.0, mask_rule="background-removal")
    assert sign == -1 and info["orient_rule"] == "background-removal"
    np.testing.assert_array_equal(h, -e1)
    object_share = 30 / 256  # the 5 x 6 square
    assert info["fg_minus"] == pytest.approx(object_share, abs=0.03) and info["fg_plus"] > 0.5


def test_rank_on_a_hand_made_gan_picks_and_orients_the_saliency_light(tmp_path):
    e = np.eye(4, dtype=np.float32)
    cands = np.stack([e[0], e[1], e[2], e[3], (e[0] + e[1]) / np.sqrt(2)])
    cfg = ds.FitConfig(samples=8, steps=100)
    report = ds.rank_directions(HandGan(), cands, tmp_path, cfg, source="hand")
    entries = report["entries"]  # entry i: candidate i % 5, sign + for i < 5, - after
    assert [(x["candidate"], x["sign"]) for x in entries[4:6]] == [(4, 1), (0, -1)]
    # the null direction puts every pixel in A2 (nothing brightens); the colour mix is one operator
    # for every pixel, so both operators fit it equally and one takes all: dropped (99% rule)
    assert [x["entry"] for x in entries if x["status"] == "dropped"] == [2, 3, 7, 8]
    assert entries[3]["balance_A1"] == 0.0 and max(entries[2]["balance_A1"], 1 - entries[2]["balance_A1"]) >= 0.99
    # 6 survivors: top ceil(1.2) = 2 by D_h: -e1 (darkens the object by exp(1.5): D_h =
    # |1 - e^1.5| sqrt(3)) and -(e0 + e1)/sqrt2; by lowest L_h -e1 first (exact two-operator)
    assert report["order"][:2] == [6, 9]
    assert entries[6]["D_h"] == pytest.approx(abs(1 - np.exp(1.5)) * np.sqrt(3), rel=0.02)
    assert entries[1]["D_h"] == pytest.approx((1 - np.exp(-1.5)) * np.sqrt(3), rel=0.02)
    assert entries[1]["L_h"] < 0.01 and entries[6]["L_h"] < 0.02 < entries[9]["L_h"]
    # +e1's operators are A1(c) = e^-1.5 c + (1 - e^-1.5), A2(c) = e^-1.5 c
    k = np.exp(-1.5)
    np.testing.assert_allclose(np.array(entries[1]["A1"]), np.c_[k * np.eye(3), np.full(3, 1 - k)], atol=0.02)
    np.testing.assert_allclose(np.array(entries[1]["A2"]), np.c_[k * np.eye(3), np.zeros(3)], atol=0.02)
    # -e1 lights the background (the larger part): the written direction is flipped to +e1
    assert report["winner"] == {**report["winner"], "entry": 6, "candidate": 1, "sign": -1, "orient_sign": -1}
    np.testing.assert_array_equal(np.load(tmp_path / "direction.npy", allow_pickle=False), e[1])
    on_disk = json.loads((tmp_path / "ranking.json").read_text())
    assert on_disk["order"] == report["order"] and len(on_disk["entries"]) == 10
    assert on_disk["candidates"]["source"] == "hand" and on_disk["config"]["steps"] == 100
    import cv2

    pic = cv2.imread(str(tmp_path / "ranking.png"))
    # 3 entries x 4 rows (G(z), G(z+h), approximation, mask) of 4 samples: 16 px tiles shown 6x (96 px),
    # 2 px pad, a 24 px title band and a 160 px column of row names
    assert pic.shape == (24 + 12 * 98 + 2, 160 + 4 * 98 + 2, 3)
    assert (pic[:24] < 128).any() and (pic[24:, :160] < 128).any()  # the title and the names are drawn
    assert [e["source"] for e in on_disk["entries"]] == ["hand"] * 10
    assert sorted(e["source_row"] for e in on_disk["entries"]) == sorted(list(range(5)) * 2)


def test_rank_pools_sources_and_names_each_entrys_origin(tmp_path):
    e = np.eye(4, dtype=np.float32)
    report = ds.rank_directions(HandGan(), e, tmp_path, ds.FitConfig(samples=4, steps=20),
                                source=[("axes", 3), ("opt.npy", 1)], both_signs=False, picture_top=1)
    assert report["candidates"]["sources"] == [{"source": "axes", "count": 3}, {"source": "opt.npy", "count": 1}]
    assert [(x["source"], x["source_row"]) for x in report["entries"]] == [
        ("axes", 0), ("axes", 1), ("axes", 2), ("opt.npy", 0)]
    assert all(0.0 <= x["lighting_fg"] <= 1.0 for x in report["entries"])
    with pytest.raises(ds.RankError, match="sources name 3"):
        ds.rank_directions(HandGan(), e, tmp_path, source=[("axes", 3)])


def test_rank_raises_when_every_candidate_is_dropped(tmp_path):
    e = np.eye(4, dtype=np.float32)
    with pytest.raises(ValueError, match="all 4 candidates were dropped"):
        ds.rank_directions(HandGan(), e[2:], tmp_path, ds.FitConfig(samples=4, steps=5))


def test_unit_rows_rejects_zero_rows():
    with pytest.raises(ValueError, match="candidate 1 is zero"):
        ds.unit_rows(np.array([[1.0, 0.0], [0.0, 0.0]]))


# --------------------------------------------------------------------------------------------
# the toy GAN


@pytest.fixture(scope="module")
def toy_env(tmp_path_factory):
    from gans import toy
    from gans.loader import load_gan

    cache = tmp_path_factory.getbasetemp() / "bgw-cache"
    toy.ensure_toy_module(cache)
    return load_gan("toy", cache_dir=cache), cache


def _lighting(gan, z, h):
    from masking.rules import lighting_mask

    x, xs = gan.generate_pair(z, h, 5.0)
    return lighting_mask(x, xs)


def _iou(a, b):
    inter = (a & b).sum(axis=(1, 2))
    union = (a | b).sum(axis=(1, 2))
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def test_rank_on_the_toy_picks_a_direction_whose_masks_match_the_shipped_one(toy_env, tmp_path):
    # The done criterion on a subset (6 axes + the shipped direction, negated as a discovered
    # direction may be, + 2 random distractors), fewer samples and steps; the full 120-axis run
    # is a README command.
    from gans import toy

    gan, _ = toy_env
    rng = np.random.default_rng(5)
    shipped = toy.toy_direction()
    cands = np.concatenate([np.eye(120, dtype=np.float32)[:6], -shipped[None], rng.standard_normal((2, 120))])
    report = ds.rank_directions(gan, cands, tmp_path, ds.FitConfig(samples=6, steps=50, chunk=9))
    assert report["winner"]["candidate"] == 6 and report["winner"]["sign"] == -1
    h = np.load(tmp_path / "direction.npy", allow_pickle=False)
    z = ds.draw_latents(200, 120, seed=99)
    assert _iou(_lighting(gan, z, h), _lighting(gan, z, shipped)).mean() >= 0.9


# --------------------------------------------------------------------------------------------
# discover


class TinyTfGan:
    """A differentiable stand-in in TensorFlow (latent 6, 16x16 images) with the hub module's
    shape: ``module.signatures['generate'](z=...)['default']``. Much faster to trace than the toy."""

    latent_dim = 6
    handle = "tiny-tf"
    fingerprint = "1" * 64

    def __init__(self):
        w = tf.constant(np.random.default_rng(3).standard_normal((6, 16 * 16 * 3)).astype(np.float32) * 0.5)

        @tf.function(input_signature=[tf.TensorSpec([None, 6], tf.float32)])
        def generate(z):
            return {"default": tf.reshape(tf.tanh(z @ w), [-1, 16, 16, 3])}

        from types import SimpleNamespace

        self.module = SimpleNamespace(signatures={"generate": generate.get_concrete_function()})

    def generate(self, z):
        return self.module.signatures["generate"](z=tf.constant(np.asarray(z, np.float32)))["default"].numpy()


def test_discover_writes_orthonormal_directions_and_resumes_exactly(tmp_path):
    from finder import discover as dc

    gan = TinyTfGan()
    cfg = dc.DiscoverConfig(directions=3, steps=2, batch=4, recon_size=16, width=4, lr=1e-2, lr_directions=1e-2,
                            checkpoint_every=1, picture_samples=1)
    dc.discover(gan, tmp_path / "a", cfg)
    a2 = np.load(tmp_path / "a" / "directions.npy", allow_pickle=False)
    more = dc.DiscoverConfig(**{**cfg.__dict__, "steps": 3})
    summary = dc.discover(gan, tmp_path / "a", more, resume=True)
    straight = dc.discover(gan, tmp_path / "b", more)
    a3 = np.load(tmp_path / "a" / "directions.npy", allow_pickle=False)
    b3 = np.load(tmp_path / "b" / "directions.npy", allow_pickle=False)
    assert summary["steps"] == straight["steps"] == 3
    np.testing.assert_allclose(a3, b3, atol=1e-6)
    assert not np.allclose(a2, a3)  # the resumed step did move the directions
    assert a3.shape == (3, 6) and a3.dtype == np.float32
    np.testing.assert_allclose(a3 @ a3.T, np.eye(3), atol=1e-5)
    assert sorted(p.name for p in (tmp_path / "a" / "effects").iterdir()) == [
        "direction-000.png", "direction-001.png", "direction-002.png"]
    assert (tmp_path / "a" / "checkpoints" / "checkpoint").is_file()
    assert any((tmp_path / "a" / "tensorboard").iterdir())
    with pytest.raises(dc.RunExists, match="--resume"):
        dc.discover(gan, tmp_path / "a", more)
    with pytest.raises(ValueError, match="directions 3 -> 2"):
        dc.discover(gan, tmp_path / "a", dc.DiscoverConfig(**{**more.__dict__, "directions": 2}), resume=True)


def test_directions_lr_drops_by_gamma_at_each_milestone():
    from finder import discover as dc

    cfg = dc.DiscoverConfig(lr_directions=1e-3, lr_directions_milestones=(3, 5), lr_directions_gamma=0.5)
    assert [dc.directions_lr(cfg, s) for s in range(7)] == [1e-3, 1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4, 2.5e-4]
    assert dc.directions_lr(dc.DiscoverConfig(lr_directions=2e-4), 10**6) == 2e-4


def test_the_discover_config_checks_itself_in_one_place():
    from finder import discover as dc

    assert dc.DiscoverConfig().check(120).directions == 120
    with pytest.raises(dc.DiscoveryError, match=r"directions must be in 1..8 \(the latent size\); got 9"):
        dc.DiscoverConfig(directions=9).check(8)
    with pytest.raises(dc.DiscoveryError, match="unknown init 'zeros'"):
        dc.DiscoverConfig(init="zeros").check()
    with pytest.raises(dc.DiscoveryError, match="lr_directions_gamma > 0"):
        dc.DiscoverConfig(lr_directions_gamma=0.0).check()


def test_discover_resumes_across_an_lr_milestone_exactly(tmp_path):
    from finder import discover as dc

    gan = TinyTfGan()
    base = dict(directions=3, batch=4, recon_size=16, width=4, lr=1e-2, lr_directions=1e-2, checkpoint_every=1,
                picture_samples=1)
    # one milestone before the interruption at step 2, one after it
    sched = dc.DiscoverConfig(steps=4, lr_directions_milestones=(1, 3), lr_directions_gamma=0.1, **base)
    dc.discover(gan, tmp_path / "a", dc.DiscoverConfig(**{**sched.__dict__, "steps": 2}))
    dc.discover(gan, tmp_path / "a", sched, resume=True)
    dc.discover(gan, tmp_path / "b", sched)
    dc.discover(gan, tmp_path / "c", dc.DiscoverConfig(steps=4, **base))
    a, b, c = (np.load(tmp_path / r / "directions.npy", allow_pickle=False) for r in "abc")
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert not np.allclose(b, c, atol=1e-4)  # the milestone did change the run
    with pytest.raises(ValueError, match="milestones"):
        dc.discover(gan, tmp_path / "d", dc.DiscoverConfig(steps=1, lr_directions_milestones=(0,), **base))


def test_config_json_records_the_settings_of_each_resumed_stretch(tmp_path):
    import json

    from finder import discover as dc

    gan = TinyTfGan()
    base = dict(directions=3, batch=4, recon_size=16, width=4, lr=1e-2, lr_directions=1e-2, checkpoint_every=1,
                picture_samples=1)
    dc.discover(gan, tmp_path, dc.DiscoverConfig(steps=2, **base))
    dc.discover(gan, tmp_path, dc.DiscoverConfig(steps=3, lr_directions_milestones=(1,), **base), resume=True)
    record = json.loads((tmp_path / "config.json").read_text())
    assert [(g["from_step"], g["steps"], g["lr_directions_milestones"]) for g in record["segments"]] == [
        (0, 2, []), (2, 3, [1])]
    assert record["lr_directions_milestones"] == [1]  # the top level keeps the latest settings
    # a resume from an older checkpoint drops the stretches it replays
    (tmp_path / "checkpoints" / "checkpoint").write_text('model_checkpoint_path: "ckpt-1"\n')
    dc.discover(gan, tmp_path, dc.DiscoverConfig(steps=2, **{**base, "lr": 5e-3}), resume=True)
    record = json.loads((tmp_path / "config.json").read_text())
    assert [(g["from_step"], g["lr"]) for g in record["segments"]] == [(0, 1e-2), (1, 5e-3)]


def test_draw_step_pushes_small_shifts_out_and_is_seeded():
    from finder import discover as dc

    cfg = dc.DiscoverConfig()
    z, idx, eps = dc.draw_step(3, 7, 4096, 5, 10, cfg)
    assert np.all(np.abs(eps) >= 0.5) and np.all(np.abs(eps) <= 6.0)
    assert set(np.unique(idx)) == set(range(10))
    z2, idx2, eps2 = dc.draw_step(3, 7, 4096, 5, 10, cfg)
    np.testing.assert_array_equal(eps, eps2)
    assert not np.array_equal(dc.draw_step(3, 8, 4096, 5, 10, cfg)[2], eps)


# --------------------------------------------------------------------------------------------
# CLI


@pytest.fixture
def cli_env(toy_env, monkeypatch):
    monkeypatch.setenv("BGW_CACHE_DIR", str(toy_env[1]))
    from finder.cli import main

    return main


def test_cli_rank_on_axes_file_writes_outputs(cli_env, tmp_path):
    from gans import toy

    cands = tmp_path / "c.npy"
    np.save(cands, np.stack([np.eye(120, dtype=np.float32)[0], toy.toy_direction()]))
    res = CliRunner().invoke(cli_env, ["rank", "--gan", "toy", "--candidates", str(cands), "--out",
                                       str(tmp_path / "r"), "--samples", "4", "--steps", "20", "--top", "1"])
    assert res.exit_code == 0, res.output
    assert "winner: row 1 of " in res.output and "(candidate 1," in res.output
    assert res.output.splitlines()[0].split() == ["rank", "source", "row", "sign", "L_h", "D_h", "fg"]
    for name in ("ranking.json", "direction.npy", "ranking.png"):
        assert (tmp_path / "r" / name).is_file()
    # the winner is ready for gen-synth --direction
    from gans.directions import load_direction

    h, _ = load_direction(tmp_path / "r" / "direction.npy")
    np.testing.assert_allclose(h, toy.toy_direction(), atol=1e-6)


@pytest.mark.parametrize("value, message", [
    ("nope.npy", "neither 'axes' nor an existing .npy"),
    ("BAD_SHAPE", "need numbers [C, 120]"),
    ("ZERO", "zero or non-finite row"),
])
def test_cli_rank_bad_candidates_give_one_line_errors(cli_env, tmp_path, value, message):
    if value == "BAD_SHAPE":
        value = str(tmp_path / "bad.npy")
        np.save(value, np.ones((2, 7), np.float32))
    elif value == "ZERO":
        value = str(tmp_path / "zero.npy")
        np.save(value, np.zeros((1, 120), np.float32))
    res = CliRunner().invoke(cli_env, ["rank", "--gan", "toy", "--candidates", value, "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert message in res.output and "Traceback" not in res.output


def test_cli_discover_refuses_an_existing_run_without_resume(cli_env, tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "config.json").write_text("{}")
    res = CliRunner().invoke(cli_env, ["discover", "--gan", "toy", "--directions", "2", "--steps", "1",
                                       "--out", str(out)])
    assert res.exit_code == 1 and "pass --resume" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(cli_env, ["discover", "--gan", "nosuchgan", "--steps", "1", "--out", str(out)])
    assert res.exit_code == 2 and "Error: unknown GAN 'nosuchgan'" in res.output
    assert "Traceback" not in res.output
    res = CliRunner().invoke(cli_env, ["discover", "--gan", "toy", "--steps", "1", "--out", str(tmp_path / "e"),
                                       "--lr-directions-milestones", "8000,soon"])
    assert res.exit_code == 2 and "comma-separated list of steps" in res.output and "Traceback" not in res.output


def test_cli_bad_out_resume_and_shift_fail_before_any_work(cli_env, tmp_path, monkeypatch):
    from finder import rank as ds
    from finder import discover as dc

    calls = []
    monkeypatch.setattr(ds, "score_candidates", lambda *a, **k: calls.append("fit"))
    monkeypatch.setattr(dc, "discover", lambda *a, **k: calls.append("discover"))
    a_file = tmp_path / "f"
    a_file.write_text("x")
    for args, needle in (
        (["discover", "--gan", "toy", "--steps", "1", "--out", str(a_file)], "is a file"),
        (["rank", "--gan", "toy", "--candidates", "axes", "--out", str(a_file)], "is a file"),
        (["rank", "--gan", "toy", "--candidates", "axes", "--out", str(tmp_path / "r"), "--shift", "nan"],
         "finite number > 0"),
        (["discover", "--gan", "toy", "--steps", "1", "--resume", "--out", str(tmp_path / "none")],
         "holds no discovery run to resume"),
    ):
        res = CliRunner().invoke(cli_env, args)
        assert res.exit_code == 2 and needle in res.output and "Traceback" not in res.output, res.output
    assert calls == [] and not (tmp_path / "none").exists()


def test_discover_prints_no_tensorflow_error_lines(toy_env, tmp_path):
    """Grappler's remapper fails on discover's graph and used to print `E0000 ... remapper failed` on
    every run; the pass is off for that graph (finder.discover._remapper_off)."""
    import os
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "finder.cli", "discover", "--gan", "toy", "--directions", "2",
                          "--steps", "2", "--batch-size", "2", "--out", str(tmp_path / "d")],
                         capture_output=True, text=True, env={**os.environ, "BGW_CACHE_DIR": str(toy_env[1])},
                         timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "remapper failed" not in res.stderr and "E0000" not in res.stderr, res.stderr[-2000:]


def test_the_combined_form_spells_steps_as_discover_does(cli_env):
    help_text = CliRunner().invoke(cli_env, ["--help"]).output
    assert "--steps" in help_text and "--discover-steps" not in help_text and "--rank-steps" not in help_text
    res = CliRunner().invoke(cli_env, ["--discover-steps", "3"])
    assert res.exit_code != 0 and "--discover-steps" in res.output
