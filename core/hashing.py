"""sha256 of a file, read in 1 MiB blocks: the one helper for shard files, checkpoints, model
weights and embedding caches (hashing a 300 MB BigBiGAN variables file holds 1 MiB in memory)."""
from __future__ import annotations

import hashlib
import os

__all__ = ["sha256_file"]

BLOCK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """The hex sha256 of the file at `path`."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            h.update(block)
    return h.hexdigest()
