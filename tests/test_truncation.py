"""BigGAN's truncation trick (gans.truncation) and gen-synth --truncation on the BigGAN stand-in."""
from __future__ import annotations

import json

import numpy as np
import pytest

from gans.truncation import TruncationError, check_truncation, truncated_latents, truncated_normal


class ScriptedRng:
    """A generator whose standard_normal returns the arrays it was given, in order."""

    def __init__(self, *arrays):
        self.arrays = [np.asarray(a, np.float64) for a in arrays]
        self.calls = []

    def standard_normal(self, shape):
        self.calls.append(shape)
        out = self.arrays.pop(0)
        assert out.shape == (shape if isinstance(shape, tuple) else (shape,))
        return out.copy()


def test_values_outside_the_bound_are_drawn_again_in_index_order_until_none_is():
    rng = ScriptedRng([[0.5, 3.0], [-2.5, 2.0]], [2.1, -0.1], [1.5])
    x = truncated_normal(rng, (2, 2))
    # 3.0 and -2.5 are redrawn (2.0 exactly stays), then 2.1 once more
    np.testing.assert_array_equal(x, [[0.5, 1.5], [-0.1, 2.0]])
    assert rng.calls == [(2, 2), 2, 1]


def test_truncated_latents_are_scaled_and_bounded_and_fixed_by_the_seed():
    a = truncated_latents(np.random.default_rng(4), (512, 120), 0.5)
    b = truncated_latents(np.random.default_rng(4), (512, 120), 0.5)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a).max() <= 1.0 and np.abs(a).max() > 0.95
    # the truncated normal's standard deviation: 0.880 for [-2, 2], times T
    assert a.std() == pytest.approx(0.5 * 0.8796, abs=0.01)


@pytest.mark.parametrize("bad", [0, -0.5, 1.5, float("nan"), float("inf"), "x", None])
def test_truncation_outside_zero_one_is_one_line(bad):
    with pytest.raises(TruncationError, match=r"must be a number in \(0, 1\]") as err:
        check_truncation(bad)
    assert "\n" not in str(err.value)
    assert check_truncation(1) == 1.0 and check_truncation("0.4") == 0.4


def test_a_truncated_stream_is_the_same_whatever_the_batches_and_the_plain_one_unchanged():
    from generator.latents import LatentStream

    whole = LatentStream(3, 1, 8, truncation=0.7).take(600)
    parts = LatentStream(3, 1, 8, truncation=0.7)
    pieces = [parts.take(k) for k in (1, 255, 300, 44)]
    np.testing.assert_array_equal(np.concatenate([p.z for p in pieces]), whole.z)
    assert np.abs(whole.z).max() <= np.float32(1.4)
    # the first block is T * truncated_normal of the shard's generator, as gans.truncation draws it
    from generator.latents import shard_seed_sequence

    rng = np.random.Generator(np.random.PCG64(shard_seed_sequence(3, 1)))
    np.testing.assert_array_equal(whole.z[:256], (0.7 * truncated_normal(rng, (256, 8))).astype(np.float32))
    plain = np.random.Generator(np.random.PCG64(shard_seed_sequence(3, 1))).standard_normal((256, 8))
    np.testing.assert_array_equal(LatentStream(3, 1, 8).take(256).z, plain.astype(np.float32))
    with pytest.raises(ValueError, match="not to embeddings"):
        LatentStream(0, 0, 8, embeddings=np.zeros((2, 8), np.float32), truncation=0.5)


# ------------------------------------------------------------------------------- gen-synth --truncation

tf = pytest.importorskip("tensorflow")


def test_gen_synth_truncates_the_prior_and_feeds_the_module(biggan_standin, tmp_path):
    from gans.toy import toy_direction
    from generator.latents import LatentStream
    from shardset import iter_samples
    from test_gen_cli import invoke

    np.save(tmp_path / "h.npy", toy_direction())
    args = ["--gan", biggan_standin, "--direction", tmp_path / "h.npy", "--latents", "prior", "--n", "16",
            "--shard-size", "8", "--batch-size", "8", "--image-size", "64", "--seed", "5", "--name", "t",
            "--truncation", "0.5"]
    res = invoke(*args, "--out", tmp_path / "a")
    assert res.exit_code == 0, res.output
    params = json.loads((tmp_path / "a" / "t.json").read_text())["params"]
    assert params["latents"]["truncation"]["value"] == 0.5 and params["generator"]["truncation"] == 0.5
    got = [s for p in sorted((tmp_path / "a").glob("t-*.tar.zst")) for s in iter_samples(str(p))]
    assert len(got) == 16
    for s in got:
        seed, shard, draw = s["meta"]["stream"]
        lat = LatentStream(seed, shard, 120, class_set=np.arange(1000), truncation=0.5).take(draw + 1)
        np.testing.assert_array_equal(s["z"], lat.z[draw])
        assert np.abs(s["z"]).max() <= 1.0
    # the same command, the same bytes; without --truncation, other latents
    assert invoke(*args, "--out", tmp_path / "b").exit_code == 0
    read = lambda d: [p.read_bytes() for p in sorted(d.glob("t-*.tar.zst"))]  # noqa: E731
    assert read(tmp_path / "a") == read(tmp_path / "b")
    assert invoke(*args[:-2], "--out", tmp_path / "c").exit_code == 0
    assert read(tmp_path / "c") != read(tmp_path / "a")


@pytest.mark.parametrize("args, code, needles", [
    (["--gan", "toy", "--latents", "prior", "--truncation", "0.5"], 2, ["--truncation 0.5", "toy takes no truncation"]),
    (["--gan", "toy", "--latents", "prior", "--truncation", "1"], 2, ["--truncation 1.0", "toy takes no truncation"]),
    (["--gan", "toy", "--latents", "prior", "--truncation", "1.5"], 2, ["--truncation", "1.5", "0<x<=1"]),
    # a contradiction between two settings, as every other gen-synth has (exit 1)
    (["--gan", "toy", "--dataset", "folder:.", "--latents", "embeddings", "--truncation", "0.5"], 1,
     ["not to embeddings", "--latents prior"]),
])
def test_truncation_a_model_cannot_take_is_one_line(tmp_path, args, code, needles):
    from test_gen_cli import assert_one_line_error, invoke

    res = invoke(*args, "--n", "8", "--out", tmp_path / "o")
    assert res.exit_code == code, res.output
    assert_one_line_error(res, *needles)
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())
