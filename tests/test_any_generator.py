"""The model contract beyond BigBiGAN: a 64 x 64 generator with no encoder (a test fixture: the toy
rendered at half size) goes through gen-synth with prior latents, resampled to the set's size, and
through `find-direction rank`; asking it for embeddings is a one-line error naming the signature."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from gans import toy

pytestmark = pytest.mark.tf
tf = pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_hub")


@pytest.fixture(scope="module")
def toy64(tmp_path_factory):
    """A SavedModel with only `generate`: z [N,120] -> default [N,64,64,3] (2 x 2 means of the toy's)."""
    root = tmp_path_factory.mktemp("toy64")
    inner = toy._make_module()

    class Toy64(tf.Module):
        def __init__(self):
            super().__init__()
            self.toy = inner

        @tf.function(input_signature=[tf.TensorSpec([None, toy.LATENT_DIM], tf.float32, name="z")])
        def generate(self, z):
            return {"default": tf.nn.avg_pool2d(self.toy.generate_outputs(z)["default"], 2, 2, "VALID")}

    module = Toy64()
    tf.saved_model.save(module, str(root / "toy64"), signatures={"generate": module.generate})
    direction = root / "h.npy"
    np.save(direction, toy.toy_direction())
    return root / "toy64", direction


def _gen_synth(*args):
    from generator.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("size, resample", [(128, "bilinear (tf.image.resize)"), (64, None)])
def test_gen_synth_with_prior_latents_resamples_to_the_set_size(toy64, tmp_path, size, resample):
    module, direction = toy64
    res = _gen_synth("--gan", module, "--direction", direction, "--latents", "prior", "--n", 20,
                     "--shard-size", 10, "--val-shards", 1, "--out", tmp_path, "--name", "t64",
                     "--image-size", size, "--cache-dir", tmp_path / "cache")
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "t64.json").read_text())
    assert m["params"]["generator"]["image_size"] == 64 and m["params"]["generator"]["encoder"] is False
    assert m["params"]["image"]["size"] == size
    assert (m["params"]["image"]["resample"] or "").startswith(resample or "") and \
        (resample is None) == (m["params"]["image"]["resample"] is None)
    from shardset.reader import iter_samples

    sample = next(iter_samples(str(tmp_path / "t64-000000.tar.zst")))
    assert sample["image"].shape == (size, size, 3) and sample["mask"].shape == (size, size)


def test_embeddings_need_an_encoder(toy64, tmp_path, ecssd_dir):
    module, direction = toy64
    for args in (["--gan", module, "--direction", direction, "--dataset", f"folder:{ecssd_dir}", "--out", tmp_path],
                 ["embed", "--gan", module, "--dataset", f"folder:{ecssd_dir}"]):
        res = _gen_synth(*args, "--cache-dir", tmp_path / "cache") if args[0] != "embed" else \
            _gen_synth("--cache-dir", tmp_path / "cache", *args)
        lines = [line for line in res.output.splitlines() if line.strip()]
        assert res.exit_code != 0 and len(lines) == 1, res.output
        assert "has no 'encode' signature" in lines[0] and "--latents prior" in lines[0]
    assert not list(tmp_path.glob("*.tar.zst"))


def test_rank_finds_the_light_at_64_pixels(toy64, tmp_path):
    from finder.cli import main

    module, _ = toy64
    rng = np.random.default_rng(0)
    cands = np.concatenate([rng.standard_normal((2, 120)), toy.toy_direction()[None]]).astype(np.float32)
    np.save(tmp_path / "cands.npy", cands)
    res = CliRunner().invoke(main, ["rank", "--gan", str(module), "--candidates", str(tmp_path / "cands.npy"),
                                    "--out", str(tmp_path / "rank"), "--samples", "8", "--steps", "50"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "rank" / "ranking.json").read_text())
    assert report["winner"]["candidate"] == 2, report["winner"]
    assert (tmp_path / "rank" / "ranking.png").is_file()
