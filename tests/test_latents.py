"""generator.latents: per-shard streams, independent of how they are sliced (pure numpy)."""
from __future__ import annotations

import numpy as np
import pytest

from generator.latents import DRAW_BLOCK, LatentStream, shard_seed_sequence

D = 120


def _reference_prior(seed: int, shard: int, n: int) -> np.ndarray:
    """The documented construction, written out: blocks of DRAW_BLOCK normals from PCG64(seq)."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(shard,))))
    blocks = -(-n // DRAW_BLOCK)
    return np.concatenate([rng.standard_normal((DRAW_BLOCK, D)) for _ in range(blocks)])[:n].astype(np.float32)


def _take_all(stream: LatentStream, sizes: list[int]):
    parts = [stream.take(k) for k in sizes]
    return (np.concatenate([p.z for p in parts]), np.concatenate([p.source_index for p in parts]),
            np.concatenate([p.draw_index for p in parts]))


def test_prior_matches_reference_construction():
    got = LatentStream(7, 3, D).take(600)
    np.testing.assert_array_equal(got.z, _reference_prior(7, 3, 600))
    assert got.z.dtype == np.float32 and got.z.shape == (600, D)
    np.testing.assert_array_equal(got.source_index, np.full(600, -1))
    np.testing.assert_array_equal(got.draw_index, np.arange(600))


@pytest.mark.parametrize("sizes", [[1] * 300, [7, 250, 43], [256, 44], [300], [255, 2, 43]])
def test_slicing_never_changes_the_stream(sizes):
    emb = np.random.default_rng(0).standard_normal((13, D)).astype(np.float32)
    for kwargs in ({}, {"embeddings": emb, "alpha": 0.2}):
        whole = LatentStream(1, 5, D, **kwargs).take(300)
        z, src, draw = _take_all(LatentStream(1, 5, D, **kwargs), sizes)
        np.testing.assert_array_equal(z, whole.z)
        np.testing.assert_array_equal(src, whole.source_index)
        np.testing.assert_array_equal(draw, np.arange(300))


def test_shards_and_seeds_are_independent_streams():
    a = LatentStream(1, 0, D).take(8).z
    assert np.array_equal(a, LatentStream(1, 0, D).take(8).z)
    assert not np.allclose(a, LatentStream(1, 1, D).take(8).z)
    assert not np.allclose(a, LatentStream(2, 0, D).take(8).z)
    # spawn keys: (seed, k) is not (seed + k, 0) nor (k, seed)
    assert not np.allclose(LatentStream(1, 2, D).take(8).z, LatentStream(3, 0, D).take(8).z)
    assert not np.allclose(LatentStream(1, 2, D).take(8).z, LatentStream(2, 1, D).take(8).z)


def test_embeddings_alpha_zero_is_the_embedding_itself():
    emb = np.arange(4 * D, dtype=np.float32).reshape(4, D)
    b = LatentStream(3, 0, D, embeddings=emb, alpha=0.0).take(500)
    np.testing.assert_array_equal(b.z, emb[b.source_index])
    assert set(b.source_index.tolist()) == {0, 1, 2, 3}


def test_embeddings_noise_is_alpha_times_standard_normal():
    emb = np.random.default_rng(1).standard_normal((10, D)).astype(np.float32)
    b = LatentStream(0, 2, D, embeddings=emb, alpha=0.2).take(2000)
    xi = (b.z.astype(np.float64) - emb[b.source_index]) / 0.2
    assert abs(xi.mean()) < 0.01
    assert abs(xi.std() - 1.0) < 0.01
    counts = np.bincount(b.source_index, minlength=10)
    assert counts.min() > 150 and counts.max() < 250  # uniform over 10 images, 200 expected
    # the draws follow the documented order inside a block: indices first, then the noise
    rng = np.random.Generator(np.random.PCG64(shard_seed_sequence(0, 2)))
    src = rng.integers(0, 10, size=DRAW_BLOCK, dtype=np.int64)
    noise = rng.standard_normal((DRAW_BLOCK, D))
    np.testing.assert_array_equal(b.source_index[:DRAW_BLOCK], src)
    np.testing.assert_array_equal(b.z[:DRAW_BLOCK], (emb[src].astype(np.float64) + 0.2 * noise).astype(np.float32))


@pytest.mark.parametrize("kwargs, match", [
    ({"embeddings": np.zeros((3, 5), np.float32)}, "embeddings must be"),
    ({"embeddings": np.zeros((0, D), np.float32)}, "embeddings must be"),
    ({"alpha": -0.1}, "alpha must be"),
    ({"alpha": float("nan")}, "alpha must be"),
    ({"shifted_images": 1.5}, "shifted_images must be"),
    ({"shifted_images": -0.1}, "shifted_images must be"),
])
def test_bad_inputs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LatentStream(0, 0, D, **kwargs)


def test_bad_seed_and_take():
    with pytest.raises(ValueError, match="seed and shard"):
        shard_seed_sequence(-1, 0)
    with pytest.raises(ValueError, match="n >= 1"):
        LatentStream(0, 0, D).take(0)


# ------------------------------------------------------------------ classes and shifted images

CLASSES = np.array([3, 7, 10, 11, 12], np.int64)


def test_unconditional_streams_are_what_they_were_before_classes():
    """Digests of draws made by the code before classes and shifted images existed (commit bc96b8d)."""
    import hashlib

    got = LatentStream(0, 0, 8).take(5).z
    ref = np.random.Generator(np.random.PCG64(np.random.SeedSequence(0, spawn_key=(0,)))).standard_normal((256, 8))
    np.testing.assert_array_equal(got, ref[:5].astype(np.float32))
    assert got[0, :3].tolist() == [1.4436908960342407, -0.8959459662437439, 0.7359556555747986]
    prior = LatentStream(0, 0, 8).take(300)
    assert prior.classes is None and prior.shifted is None
    assert hashlib.sha256(prior.z.tobytes()).hexdigest() == \
        "c543e0da850cf78e40ae3343fcdfc88da47467456cef0862917dfe65a43dd94c"
    emb = np.arange(5 * 8, dtype=np.float32).reshape(5, 8) / 7
    e = LatentStream(4, 2, 8, embeddings=emb, alpha=0.2, shifted_images=0.0).take(300)
    assert hashlib.sha256(e.z.tobytes() + e.source_index.tobytes()).hexdigest() == \
        "d072f52f4c5513978a2362df04f6acedaa64ac15011a5c3c28ae35c1b408e8f2"


def test_classes_and_shifts_follow_the_block_s_latents_in_the_documented_order():
    from gans.classes import draw_classes

    b = LatentStream(5, 1, D, class_set=CLASSES, shifted_images=0.3).take(DRAW_BLOCK)
    rng = np.random.Generator(np.random.PCG64(shard_seed_sequence(5, 1)))
    z = rng.standard_normal((DRAW_BLOCK, D)).astype(np.float32)
    classes = draw_classes(rng, CLASSES, DRAW_BLOCK)
    u = rng.random(DRAW_BLOCK)
    np.testing.assert_array_equal(b.z, z)  # the block's z are an unconditional stream's
    np.testing.assert_array_equal(b.classes, classes)
    assert b.classes.dtype == np.int64
    np.testing.assert_array_equal(b.shifted, u < 0.3)
    # the uniforms come after the classes: a stream without classes draws them right after z
    plain = LatentStream(5, 1, D, shifted_images=0.3).take(DRAW_BLOCK)
    rng = np.random.Generator(np.random.PCG64(shard_seed_sequence(5, 1)))
    rng.standard_normal((DRAW_BLOCK, D))
    np.testing.assert_array_equal(plain.shifted, rng.random(DRAW_BLOCK) < 0.3)
    assert plain.classes is None


@pytest.mark.parametrize("sizes", [[1] * 300, [7, 250, 43], [300], [255, 2, 43]])
def test_classes_and_shifts_never_depend_on_the_batch_size(sizes):
    emb = np.random.default_rng(0).standard_normal((13, D)).astype(np.float32)
    for kwargs in ({"class_set": CLASSES}, {"class_set": CLASSES, "shifted_images": 0.5},
                   {"embeddings": emb, "alpha": 0.2, "class_set": CLASSES, "shifted_images": 0.1}):
        whole = LatentStream(2, 3, D, **kwargs).take(300)
        stream = LatentStream(2, 3, D, **kwargs)
        parts = [stream.take(k) for k in sizes]
        for field in ("z", "source_index", "classes", "shifted"):
            want = getattr(whole, field)
            got = [getattr(p, field) for p in parts]
            if want is None:
                assert all(g is None for g in got)
            else:
                np.testing.assert_array_equal(np.concatenate(got), want)


def test_classes_are_uniform_over_the_set_and_shards_differ():
    b = LatentStream(0, 0, D, class_set=CLASSES).take(5000)
    counts = np.array([np.sum(b.classes == c) for c in CLASSES])
    assert counts.sum() == 5000 and counts.min() > 900 and counts.max() < 1100  # 1000 expected each
    other = LatentStream(0, 1, D, class_set=CLASSES).take(50).classes
    assert not np.array_equal(other, b.classes[:50])
    shifted = LatentStream(0, 0, D, shifted_images=0.1).take(5000).shifted
    assert 0.085 < shifted.mean() < 0.115
    assert LatentStream(0, 0, D, shifted_images=1.0).take(10).shifted.all()
