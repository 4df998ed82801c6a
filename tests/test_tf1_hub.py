"""BigBiGAN's real module format, offline: a TF1 Hub-format stand-in (tests/tf1_hub_standin.py,
a test fixture) placed at $TFHUB_CACHE_DIR/<sha1 of the real handle> loads as `--gan bigbigan`
with no network, and goes through gen-synth (prior and embeddings latents), `gen-synth embed`
and a few `find-direction discover` steps whose gradients reach the directions.

The default direction of `--gan bigbigan` is the authors' published `bg_direction.pth`; a
stand-in in the same format (written by torch here) sits where the download would put it."""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pytest
from click.testing import CliRunner

from gans import toy
from gans.loader import BIGBIGAN_HANDLE, load_gan
from tf1_hub_standin import build_tf1_hub_module, place_under_handle

pytestmark = pytest.mark.tf
tf = pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_hub")


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfhub")
    module = place_under_handle(build_tf1_hub_module(root / "built"), root / "hub")
    return root / "hub", module


@pytest.fixture
def offline_bigbigan(hub_cache, tmp_path, monkeypatch):
    """TFHUB_CACHE_DIR holds the stand-in, BGW_CACHE_DIR the published-format direction; the
    network refuses every call."""
    torch = pytest.importorskip("torch")
    hub_dir, _ = hub_cache
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(hub_dir))
    cache = tmp_path / "bgw-cache"
    (cache / "directions").mkdir(parents=True)
    torch.save(torch.from_numpy(toy.toy_direction()), cache / "directions" / "bigbigan-bg_direction.pth")
    monkeypatch.setenv("BGW_CACHE_DIR", str(cache))

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network disabled by the test")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return cache


def test_the_module_is_in_tf1_hub_format(hub_cache):
    _, module = hub_cache
    from tensorflow.core.protobuf import saved_model_pb2

    assert (module / "tfhub_module.pb").read_bytes() == b"\x08\x03"  # ModuleDef{format: FORMAT_V3}
    sm = saved_model_pb2.SavedModel.FromString((module / "saved_model.pb").read_bytes())
    (graph,) = sm.meta_graphs
    assert list(graph.meta_info_def.tags) == []  # the empty tag set of hub.Module exports
    assert set(graph.signature_def) == {"default", "generate", "encode", "discriminate"}
    assert not graph.object_graph_def.nodes  # a TF1 graph, no TF2 object graph
    gen = graph.signature_def["generate"]
    assert set(gen.inputs) == {"z"} and set(gen.outputs) == {"default", "upsampled"}


def test_loads_under_the_real_handle_with_no_network(offline_bigbigan):
    gan = load_gan("bigbigan", cache_dir=offline_bigbigan)
    assert gan.handle == BIGBIGAN_HANDLE
    assert (gan.latent_dim, gan.image_size, gan.encode_size) == (120, 128, 256)
    assert set(gan.module.signatures) == {"default", "generate", "encode", "discriminate"}
    # `generate` wins over the `default` that also takes z; BigBiGAN is unconditional
    assert (gan.signature, gan.num_classes, gan.conditional) == ("generate", None, False)
    z = np.random.RandomState(0).standard_normal((3, 120)).astype(np.float32)
    x = gan.generate(z)
    np.testing.assert_array_equal(x, load_gan("toy", cache_dir=offline_bigbigan).generate(z))
    assert gan.encode(np.zeros((2, 256, 256, 3), np.float32)).shape == (2, 120)
    scores = gan.module.signatures["discriminate"](x=tf.constant(x), z=tf.constant(z))
    assert set(scores) == {"score_x", "score_z", "score_xz"}


def _gen_synth(*args):
    from generator.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def test_gen_synth_with_prior_latents_and_the_published_direction(offline_bigbigan, tmp_path):
    res = _gen_synth("--gan", "bigbigan", "--latents", "prior", "--n", 40, "--shard-size", 20, "--val-shards", 1,
                     "--out", tmp_path / "out", "--name", "big", "--batch-size", 16)
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "out" / "big.json").read_text())
    assert m["complete"] and m["totals"]["samples"] == 40
    p = m["params"]
    assert p["generator"]["handle"] == BIGBIGAN_HANDLE
    assert p["direction"]["source"] == "bigbigan:published:bigbigan-bg_direction.pth"
    assert p["image"] == {"range": "[-1,1] -> round((x + 1) * 127.5)", "encoding": "delta", "size": 128,
                          "resample": None}


def test_gen_synth_embed_and_embeddings_latents(offline_bigbigan, tmp_path, ecssd_dir):
    images = tmp_path / "photos"
    images.mkdir()
    for p in sorted((ecssd_dir / "images").iterdir())[:6]:
        (images / p.name).write_bytes(p.read_bytes())
    res = _gen_synth("embed", "--dataset", f"folder:{images}", "--gan", "bigbigan")
    assert res.exit_code == 0, res.output
    assert "6 embeddings (dim 120" in res.output
    res = _gen_synth("--gan", "bigbigan", "--dataset", f"folder:{images}", "--n", 20, "--shard-size", 10,
                     "--val-shards", 1, "--out", tmp_path / "out", "--name", "emb", "--batch-size", 8)
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "out" / "emb.json").read_text())
    assert m["params"]["latents"]["source"] == "embeddings" and m["params"]["latents"]["alpha"] == 0.2
    assert m["params"]["embeddings"]["count"] == 6 and m["totals"]["samples"] == 20


def test_discover_steps_reach_the_directions(offline_bigbigan, tmp_path):
    from finder import discover as disc
    from finder.cli import main

    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["discover", "--gan", "bigbigan", "--directions", "4", "--steps", "3",
                                    "--batch-size", "4", "--out", str(out), "--lr-directions", "0.01"])
    assert res.exit_code == 0, res.output
    learned = np.load(out / "directions.npy")
    cfg = disc.DiscoverConfig(directions=4, batch=4)
    s0, _ = disc._build(120, cfg)
    start = disc._directions(s0, 4).numpy()
    assert learned.shape == (4, 120)
    # three Adam steps of lr 0.01 on S move every direction, and only the gradient through the
    # TF1 module's `generate` can have moved them
    assert np.abs(learned - start).max() > 1e-3
    np.testing.assert_allclose(learned @ learned.T, np.eye(4), atol=1e-5)


def test_optimize_steps_reach_the_direction(offline_bigbigan, tmp_path):
    from finder import optimize as op
    from finder.cli import main

    out = tmp_path / "opt"
    res = CliRunner().invoke(main, ["optimize", "--gan", "bigbigan", "--steps", "3", "--batch-size", "4",
                                    "--samples", "4", "--lr", "0.05", "--out", str(out)])
    assert res.exit_code == 0, res.output
    learned = np.load(out / "direction.npy")
    start = op.initial_direction(op.OptimizeConfig(), 120)
    # three Adam steps of lr 0.05 move d, and only the gradient through the TF1 module's `generate`
    # can have moved it
    assert learned.shape == (120,) and np.abs(learned - start).max() > 1e-3
    assert np.linalg.norm(learned) == pytest.approx(1.0, abs=1e-5)
