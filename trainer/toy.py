"""A tiny learnable shard set (a test fixture named as one): bright discs on a noisy background.

`write_disc_set` writes train and val shards with shardset.synthetic.write_set, so tests, benchmarks
and smoke runs exercise the real reader without TensorFlow or the GAN. Pure numpy; seeded.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from shardset.synthetic import write_set


def disc_samples(n: int, size: int, seed: int) -> list[dict]:
    """`n` samples: uint8 RGB noise in [0, 110], one disc of a bright colour (mask 1 inside)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    out = []
    for _ in range(n):
        img = rng.integers(0, 110, size=(size, size, 3), dtype=np.uint8)
        r = rng.uniform(0.15, 0.3) * size
        cy, cx = rng.uniform(r, size - r, size=2)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)
        colour = rng.integers(150, 256, size=3).astype(np.uint8)
        img[mask.astype(bool)] = colour
        out.append({"image": img, "mask": mask, "meta": {"fg_fraction": float(mask.mean())}})
    return out


def write_disc_set(out_dir: str | Path, name: str = "discs", *, n_train: int = 256, n_val: int = 64,
                   size: int = 32, shard_size: int = 64, seed: int = 0, encoding: str = "png") -> Path:
    """Write a disc set with shardset.synthetic.write_set; returns the manifest path. Val shards
    come after the train shards."""
    sizes = [min(shard_size, n - start) for n in (n_train, n_val) for start in range(0, n, shard_size)]
    n_val_shards = len(range(0, n_val, shard_size))
    manifest = write_set(out_dir, name, sizes, lambda k, n: disc_samples(n, size, seed=seed * 1_000_003 + k),
                         val_shards=n_val_shards, params={"toy": "discs", "size": size}, encoding=encoding,
                         seed=seed, shard_size=shard_size)
    return Path(out_dir) / f"{manifest['name']}.json"
