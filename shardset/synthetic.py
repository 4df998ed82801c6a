"""Small synthetic shard sets for tests and demos (no GAN, no data): `write_set` writes any
samples as a complete set (the one writer of synthetic sets: trainer.toy's learnable discs use it
too), `write_synthetic_set` a set of textured images with an ellipse as foreground. Deterministic
in `seed`; other packages' tests use it to get a shard set without TensorFlow."""
from __future__ import annotations

import os
from typing import Callable

import numpy as np

from .format import DEFAULT_ENCODING
from .writer import ShardSetWriter


def make_samples(n: int, size: int = 32, *, seed: int = 0, z_dim: int | None = 8) -> list[dict]:
    """`n` samples {"image", "mask", "z", "meta"} of size x size; foreground is an ellipse."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    out = []
    for i in range(n):
        cy, cx = rng.uniform(0.3, 0.7, 2) * size
        ry, rx = rng.uniform(0.15, 0.3, 2) * size
        mask = ((((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) <= 1).astype(np.uint8)
        bg = rng.integers(0, 120, (size, size, 3))
        fg = rng.integers(120, 256, (size, size, 3))
        image = np.where(mask[..., None] == 1, fg, bg).astype(np.uint8)
        sample = {"image": image, "mask": mask,
                  "meta": {"source_index": i, "fg_fraction": round(float(mask.mean()), 6), "stream": "synthetic"}}
        if z_dim:
            sample["z"] = rng.standard_normal(z_dim).astype(np.float32)
        out.append(sample)
    return out


def write_set(out_dir: str | os.PathLike, name: str, sizes: list[int], samples_of: Callable[[int, int], list[dict]],
              *, val_shards: int = 0, params: dict, encoding: str = DEFAULT_ENCODING, seed: int = 0,
              shard_size: int | None = None, stats_of: Callable[[int, int], dict] | None = None,
              order: list[int] | None = None) -> dict:
    """Write a complete set of `len(sizes)` shards, shard k holding `samples_of(k, sizes[k])` (keys
    are `sample_key(name, k, i)` unless a sample names its own); the last `val_shards` shards are
    val. `shard_size` (default: the largest size) is the set's nominal shard size; `stats_of(k, n)`
    gives a shard's stats (default: n drawn). Returns the final manifest."""
    shards = len(sizes)
    with ShardSetWriter(out_dir, name, encoding=encoding, shard_size=shard_size or max(sizes), params=params,
                        seed=seed, planned={"shards": shards}) as w:
        for k in order if order is not None else range(shards):
            w.write_shard(k, samples_of(k, sizes[k]), split="val" if k >= shards - val_shards else "train",
                          stats=stats_of(k, sizes[k]) if stats_of else {"drawn": sizes[k]})
        return w.finalize(planned={"shards": shards})


def write_synthetic_set(out_dir: str | os.PathLike, name: str = "synth", *, shards: int = 2, shard_size: int = 4,
                        size: int = 32, val_shards: int = 0, encoding: str = DEFAULT_ENCODING, seed: int = 0,
                        order: list[int] | None = None) -> dict:
    """Write a complete synthetic set of ellipses (the last `val_shards` shards are val); returns its
    manifest. Each shard's stats record made-up rejections, so readers of the counts have some."""
    return write_set(out_dir, name, [shard_size] * shards,
                     lambda k, n: make_samples(n, size, seed=seed * 1_000_003 + k), val_shards=val_shards,
                     params={"generator": "synthetic", "size": size}, encoding=encoding, seed=seed, order=order,
                     stats_of=lambda k, n: {"drawn": n + k, "rejected": {"size": k, "histogram": 0}})
