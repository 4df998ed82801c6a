"""One split of a shard set read by sample key: what a benchmark made of a set's held-out part
needs (benchdata's `shards:SET` dataset takes `open_split` as its reader, so that it imports no
shardset code itself). Every shard listed in the manifest is checked against its record while it
streams."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .reader import iter_raw_samples, iter_samples
from .urls import ShardSetRef, resolve


@dataclass
class SplitReader:
    """The shards of one split of a set (`urls`, in order) and what names the set."""

    ref: ShardSetRef
    urls: list[str]

    @property
    def manifest_name(self) -> str | None:
        return (self.ref.manifest or {}).get("name")

    @property
    def fingerprint(self) -> str | None:
        return (self.ref.manifest or {}).get("fingerprint")

    def keys(self, url: str) -> list[str]:
        """The sample keys of one shard, in order; no image is decoded."""
        return [raw["__key__"] for raw in iter_raw_samples(url, expect=self.ref.record(url))]

    def samples(self, url: str, keys: set[str]) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """(key, image uint8 RGB, mask bool) of the samples of shard `url` whose key is in `keys`."""
        for s in iter_samples(url, expect=self.ref.record(url)):
            if s["__key__"] in keys:
                yield s["__key__"], s["image"], s["mask"].astype(bool)


def open_split(spec: str, split: str = "val") -> SplitReader:
    """The `split` ("val": the held-out part) of the set named by `spec` (see `resolve`).
    Raises the ShardSetError or ShardError of a spec that names no readable set."""
    ref = resolve(spec)
    return SplitReader(ref, list(ref.split_urls(split)))
