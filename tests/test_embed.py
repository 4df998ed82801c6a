"""The embeddings cache: image preparation, skipping unreadable files, cache hits and misses.

Most tests use a numpy stand-in encoder (no TensorFlow); one runs the toy GAN on real images."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from generator import embed


class FakeGan:
    """Encodes an image as its mean RGB and its top-left pixel's red; counts calls."""

    latent_dim = 4
    handle = "fake"

    def __init__(self, fingerprint: str = "f" * 64):
        self.fingerprint = fingerprint
        self.calls = 0
        self.images = 0

    def encode(self, x):
        assert x.shape[1:] == (256, 256, 3) and x.dtype == np.float32
        self.calls += 1
        self.images += len(x)
        return np.concatenate([x.mean(axis=(1, 2), dtype=np.float64), x[:, 0, 0, :1]], axis=1).astype(np.float32)


def _write(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))
    return path


@pytest.fixture
def folder(tmp_path) -> tuple[Path, list[Path]]:
    """Five readable PNGs of solid colours, one garbage .jpg and one empty .png."""
    root = tmp_path / "data" / "images"
    paths = []
    for i in range(5):
        paths.append(_write(root / f"img{i}.png", np.full((40 + 10 * i, 60, 3), (50 * i, 20, 200), np.uint8)))
    (root / "broken.jpg").write_bytes(b"this is not a jpeg")
    (root / "empty.png").write_bytes(b"")
    return root, sorted(root.iterdir())


def test_prepare_resizes_short_side_and_centre_crops(tmp_path):
    # 400 x 800: left quarter red, middle half green, right quarter blue -> 256 x 512 -> crop = green
    img = np.zeros((400, 800, 3), np.uint8)
    img[:, :200] = (255, 0, 0)
    img[:, 200:600] = (0, 255, 0)
    img[:, 600:] = (0, 0, 255)
    out = embed.read_encoder_input(_write(tmp_path / "wide.png", img))
    assert out.shape == (256, 256, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 1:-1], np.broadcast_to([-1.0, 1.0, -1.0], (256, 254, 3)), atol=1e-6)
    assert out.min() >= -1.0 and out.max() <= 1.0


def test_prepare_tall_small_and_gray_images(tmp_path):
    tall = np.zeros((300, 100, 3), np.uint8)
    tall[:100] = 255  # top third white, the rest black: the centre crop of 768 x 256 is black
    out = embed.read_encoder_input(_write(tmp_path / "tall.png", tall))
    assert out.shape == (256, 256, 3)
    np.testing.assert_allclose(out[2:-2], -1.0, atol=1e-6)
    gray = np.full((50, 70), 127, np.uint8)
    assert cv2.imwrite(str(tmp_path / "gray.png"), gray)
    g = embed.read_encoder_input(tmp_path / "gray.png")  # enlarged, 3 equal channels
    assert g.shape == (256, 256, 3)
    np.testing.assert_allclose(g, 127 / 127.5 - 1.0, atol=1e-6)


def test_prepare_returns_none_for_unreadable(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 garbage")
    assert embed.read_encoder_input(tmp_path / "bad.jpg") is None
    assert embed.read_encoder_input(tmp_path / "missing.png") is None


def test_encode_images_skips_and_counts_unreadable(folder):
    root, paths = folder
    gan = FakeGan()
    seen = []
    z, ok, skipped = embed.encode_images(gan, paths, batch_size=3, progress=seen.append)
    names = [p.name for p in paths]
    assert skipped == 2
    assert [names[i] for i in ok] == [f"img{i}.png" for i in range(5)]
    assert sum(seen) == len(paths) and seen == [3, 3, 1]
    assert z.shape == (5, 4) and z.dtype == np.float32
    # solid colour (50 i, 20, 200) -> mean RGB in [-1, 1], exactly
    expected = np.array([[50 * i, 20, 200, 50 * i] for i in range(5)], np.float32) / 127.5 - 1.0
    np.testing.assert_allclose(z, expected, atol=1e-5)


def test_encode_images_all_unreadable_and_empty(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    z, ok, skipped = embed.encode_images(FakeGan(), [tmp_path / "a.jpg"], threads=1)
    assert z.shape == (0, 4) and ok == [] and skipped == 1
    z, ok, skipped = embed.encode_images(FakeGan(), [])
    assert z.shape == (0, 4) and ok == [] and skipped == 0


def test_cache_path_is_order_independent_and_keyed():
    files = [("b.jpg", 10), ("a.jpg", 20)]
    p1 = embed.embeddings_cache_path("/c", "folder:/x/y", files, "fp")
    assert p1 == embed.embeddings_cache_path("/c", "folder:/x/y", files[::-1], "fp")
    assert p1.parent == Path("/c/embeddings") and p1.suffix == ".npy"
    assert p1.name.startswith("folder_x_y-")
    assert p1 != embed.embeddings_cache_path("/c", "folder:/x/y", files, "other")
    assert p1 != embed.embeddings_cache_path("/c", "folder:/x/y", [("b.jpg", 11), ("a.jpg", 20)], "fp")
    assert p1 != embed.embeddings_cache_path("/c", "folder:/x/y", files[:1], "fp")


def test_miss_then_hit(folder, tmp_path):
    root, paths = folder
    cache = tmp_path / "cache"
    gan = FakeGan()
    z1, info1 = embed.load_or_compute_embeddings(gan, paths[::-1], cache_dir=cache, dataset_name="mine")
    assert gan.images == 5
    npy = embed.embeddings_cache_path(cache, "mine", embed.file_list_of(paths), gan.fingerprint)
    assert info1["embeddings"]["sha256"] == hashlib.sha256(npy.read_bytes()).hexdigest()
    assert info1["train_images"] == 7 and info1["skipped"] == 2 and info1["embeddings"]["count"] == 5
    np.testing.assert_array_equal(np.load(npy, allow_pickle=False), z1)
    meta = json.loads(npy.with_suffix(".json").read_text())
    assert meta["files"] == [f"img{i}.png" for i in range(5)]  # rows in sorted order
    assert meta["skipped"] == ["broken.jpg", "empty.png"]
    assert not list(npy.parent.glob("*.tmp"))

    again = FakeGan()
    z2, info2 = embed.load_or_compute_embeddings(again, paths, cache_dir=cache, dataset_name="mine")
    assert again.calls == 0  # hit
    np.testing.assert_array_equal(z2, z1)
    assert info2 == info1


def test_moving_the_dataset_keeps_the_cache(folder, tmp_path):
    root, paths = folder
    cache = tmp_path / "cache"
    z1, info1 = embed.load_or_compute_embeddings(FakeGan(), paths, cache_dir=cache, dataset_name="mine")
    moved = tmp_path / "elsewhere" / "images"
    shutil.copytree(root, moved)
    gan = FakeGan()
    z2, info2 = embed.load_or_compute_embeddings(gan, sorted(moved.iterdir()), cache_dir=cache, dataset_name="mine")
    assert gan.calls == 0 and info2 == info1


@pytest.mark.parametrize("change", ["model", "file_size", "new_file"])
def test_changes_miss(folder, tmp_path, change):
    root, paths = folder
    cache = tmp_path / "cache"
    embed.load_or_compute_embeddings(FakeGan(), paths, cache_dir=cache, dataset_name="mine")
    gan = FakeGan("0" * 64 if change == "model" else "f" * 64)
    if change == "file_size":
        _write(paths[0], np.zeros((90, 90, 3), np.uint8))
    elif change == "new_file":
        paths = paths + [_write(root / "img9.png", np.zeros((30, 30, 3), np.uint8))]
    embed.load_or_compute_embeddings(gan, paths, cache_dir=cache, dataset_name="mine")
    assert gan.calls > 0
    assert len(list((cache / "embeddings").glob("*.npy"))) == 2


def test_corrupt_cache_is_recomputed(folder, tmp_path):
    root, paths = folder
    cache = tmp_path / "cache"
    z1, _ = embed.load_or_compute_embeddings(FakeGan(), paths, cache_dir=cache, dataset_name="mine")
    npy = next((cache / "embeddings").glob("*.npy"))
    np.save(npy, np.zeros_like(z1))  # the sidecar's sha256 no longer matches
    gan = FakeGan()
    z2, _ = embed.load_or_compute_embeddings(gan, paths, cache_dir=cache, dataset_name="mine")
    assert gan.calls > 0
    np.testing.assert_array_equal(z2, z1)


def test_npy_without_sidecar_is_not_a_hit(folder, tmp_path):
    root, paths = folder
    cache = tmp_path / "cache"
    embed.load_or_compute_embeddings(FakeGan(), paths, cache_dir=cache, dataset_name="mine")
    next((cache / "embeddings").glob("*.json")).unlink()  # as if killed between the two writes
    gan = FakeGan()
    embed.load_or_compute_embeddings(gan, paths, cache_dir=cache, dataset_name="mine")
    assert gan.calls > 0


def test_no_readable_image_is_an_error(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match="none of the 1 images"):
        embed.load_or_compute_embeddings(FakeGan(), [tmp_path / "a.jpg"], cache_dir=tmp_path / "c", dataset_name="d")
    assert not list((tmp_path / "c").rglob("*.npy"))


def test_dataset_spec_source(tmp_path):
    """`folder:PATH` specs resolve through benchdata.datasets (its train split: images/)."""
    pytest.importorskip("benchdata.datasets")
    root = tmp_path / "set"
    for i in range(3):
        _write(root / "images" / f"{i}.jpg", np.full((32, 48, 3), 40 * i, np.uint8))
        _write(root / "masks" / f"{i}.png", np.zeros((32, 48, 3), np.uint8))
    gan = FakeGan()
    z, info = embed.load_or_compute_embeddings(gan, f"folder:{root}", cache_dir=tmp_path / "c")
    assert z.shape == (3, 4) and gan.images == 3
    assert info["name"] == "set" and info["train_images"] == 3


@pytest.mark.tf
@pytest.mark.data
def test_toy_gan_on_real_images(ecssd_dir, tmp_path_factory):
    pytest.importorskip("tensorflow")
    from gans.loader import load_gan

    gan = load_gan("toy", cache_dir=tmp_path_factory.getbasetemp() / "bgw-cache")
    paths = sorted((ecssd_dir / "images").iterdir())[:6]
    z, ok, skipped = embed.encode_images(gan, paths, batch_size=4)
    assert z.shape == (6, 120) and skipped == 0 and ok == list(range(6))
    assert np.isfinite(z).all() and np.abs(z).max() > 0.1
    assert len({row.tobytes() for row in z}) == 6  # different images, different latents
