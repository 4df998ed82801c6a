"""`--gan dcgan-faces`: the trained DCGAN of the PyPI package gan-face-generate (installed with
--no-deps by `make install`), rebuilt as a TF SavedModel from its weights read without torch.

Parity: the TF module equals the package's own PyTorch generator on the same z (max |diff| <= 1e-4);
torch appears in that test only."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from click.testing import CliRunner

from core.hashing import sha256_file
from gans import dcgan
from gans.loader import GanLoadError, load_gan

pytestmark = pytest.mark.tf
pytest.importorskip("tensorflow")
if importlib.util.find_spec("gan_face_generate") is None:
    pytest.skip(f"the package {dcgan.PACKAGE} is not installed ({dcgan.INSTALL}; make install does it)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("dcgan-cache")


@pytest.fixture(scope="module")
def faces(cache):
    return load_gan("dcgan-faces", cache_dir=cache)


def test_loads_with_its_facts(faces, cache):
    assert (faces.handle, faces.latent_dim, faces.image_size, faces.has_encoder) == ("dcgan-faces", 100, 64, False)
    assert faces.fingerprint == sha256_file(dcgan.weights_path())
    assert faces.path.parent == cache and faces.path.name.startswith("dcgan-faces-")
    # built once: a second load finds the module in the cache
    assert load_gan("dcgan-faces", cache_dir=cache).path == faces.path


def test_tf_module_equals_the_pytorch_generator(faces):
    torch = pytest.importorskip("torch")
    from gan_face_generate.models import Generator

    net = Generator(0, 3, dcgan.LATENT_DIM, 64)
    state = torch.load(dcgan.weights_path(), weights_only=True, map_location="cpu")["netG_state_dict"]
    net.load_state_dict(state)
    net.eval()
    z = np.random.RandomState(0).standard_normal((16, dcgan.LATENT_DIM)).astype(np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(z)[:, :, None, None]).permute(0, 2, 3, 1).numpy()
    got = faces.generate(z)
    assert got.shape == ref.shape == (16, 64, 64, 3)
    assert np.abs(got - ref).max() <= 1e-4
    assert ref.std() > 0.1  # real pictures, not a constant


def test_missing_package_is_one_line(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gan_face_generate" else real(name, *a))
    with pytest.raises(GanLoadError, match=r"pip install --no-deps gan-face-generate==1\.1\.1"):
        load_gan("dcgan-faces", cache_dir=tmp_path)
    from generator.cli import main

    np.save(tmp_path / "h.npy", np.ones(100, np.float32))
    res = CliRunner().invoke(main, ["--gan", "dcgan-faces", "--latents", "prior", "--direction",
                                    str(tmp_path / "h.npy"), "--out", str(tmp_path), "--cache-dir", str(tmp_path)])
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code != 0 and len(lines) == 1 and "pip install --no-deps gan-face-generate" in lines[0]


@pytest.mark.slow
def test_tiny_gen_synth_then_train_unet(faces, cache, tmp_path):
    """The chain with the DCGAN: prior latents, a direction file, samples resampled from 64 to 128 px,
    a U-Net trained a few steps on them. (The direction is any unit vector here: a fixture.)"""
    from generator.cli import main as gen_synth
    from trainer.cli import main as train_unet

    direction = tmp_path / "h.npy"
    np.save(direction, -np.eye(dcgan.LATENT_DIM, dtype=np.float32)[52])
    res = CliRunner().invoke(gen_synth, ["--gan", "dcgan-faces", "--latents", "prior", "--direction", str(direction),
                                         "--n", "60", "--shard-size", "20", "--val-shards", "1", "--no-size-filter",
                                         "--out", str(tmp_path / "s"), "--name", "faces", "--cache-dir", str(cache),
                                         "--batch-size", "32"])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "s" / "faces.json").read_text())
    assert m["params"]["generator"]["fingerprint"] == faces.fingerprint
    assert m["params"]["image"]["size"] == 128 and m["params"]["image"]["resample"].startswith("bilinear (")
    res = CliRunner().invoke(train_unet, ["--shards", str(tmp_path / "s" / "faces.json"), "--out",
                                          str(tmp_path / "run"), "--size", "64", "--width", "4", "--batch-size", "8",
                                          "--steps", "6", "--val-every", "6", "--val-samples", "8",
                                          "--ckpt-every", "6", "--workers", "0", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("val_iou" in m for m in metrics)


def test_no_direction_is_shipped_for_it(tmp_path):
    from generator.cli import main as gen_synth

    res = CliRunner().invoke(gen_synth, ["--gan", "dcgan-faces", "--latents", "prior", "--out", str(tmp_path)])
    assert res.exit_code != 0 and "ships no segmenting direction" in res.output and "find-direction" in res.output
