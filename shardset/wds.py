"""WebDataset glue: a `zstd:` URL scheme for `webdataset.gopen`, and safe pipeline stages.

    import shardset.wds, webdataset as wds
    shardset.wds.register()
    ds = wds.WebDataset(shardset.wds.zstd_urls(ref.urls))         # webdataset's own tar reader
    # or, bounded and strict (recommended for shards from strangers):
    ds = wds.DataPipeline(wds.SimpleShardList(ref.urls), shardset.wds.tar_samples,
                          shardset.wds.decode_samples)

webdataset is imported lazily (only `register` needs it): `import shardset` never pulls it in.

Integrity: `tar_samples` checks each shard against its manifest record while streaming it when
the descriptor carries one ({"url": ..., "expect": ref.record(url)}); the `zstd:` scheme (for
webdataset's own tar reader) has only the URL, so it does not.
The stages are top-level generator functions, so they pickle into DataLoader worker processes.
"""
from __future__ import annotations

import importlib
import logging
from typing import Callable, Iterable, Iterator

from .codec import decode_sample
from .format import Limits, ShardError
from .reader import iter_raw_samples, open_shard

log = logging.getLogger(__name__)

SCHEME = "zstd"


def gopen_zstd(url: str, mode: str = "rb", bufsize: int = 8192, **kw):
    """gopen handler for `zstd:<inner url>`: the decompressed, bounded stream of the shard."""
    if mode != "rb":
        raise ValueError(f"{url}: the zstd: scheme is read-only; write shards with shardset.ShardSetWriter")
    inner = url[len(SCHEME) + 1 :] if url.startswith(SCHEME + ":") else url
    return open_shard(inner, kw.get("limits", Limits()))


def register() -> None:
    """Register the `zstd:` scheme in `webdataset.gopen.gopen_schemes` (idempotent)."""
    # `webdataset.gopen` the attribute is the function; the module lives in sys.modules.
    gopen_module = importlib.import_module("webdataset.gopen")
    gopen_module.gopen_schemes[SCHEME] = gopen_zstd


def zstd_urls(urls: Iterable[str]) -> list[str]:
    """Prefix shard URLs with `zstd:` so that WebDataset opens them through `gopen_zstd`."""
    return [u if u.startswith(SCHEME + ":") else f"{SCHEME}:{u}" for u in urls]


def reraise_exception(exn: Exception) -> bool:
    raise exn


def tar_samples(src: Iterable[dict | str], handler: Callable[[Exception], bool] = reraise_exception,
                limits: Limits = Limits()) -> Iterator[dict]:
    """Pipeline stage: shard descriptors ({"url": ..., "expect": record or None} or plain URLs)
    -> raw samples {"__key__", "__url__", "image.png": bytes, ...}. Bounded and strict (see
    reader.py); a descriptor's "expect" (its manifest record) has the shard hashed as it streams.

    `handler(exn)` decides on a bad shard: return True to skip to the next shard, False to stop,
    or raise (the default), following webdataset's handler convention.
    """
    for item in src:
        url = item["url"] if isinstance(item, dict) else item
        expect = item.get("expect") if isinstance(item, dict) else None
        if url.startswith(SCHEME + ":"):
            url = url[len(SCHEME) + 1 :]
        try:
            yield from iter_raw_samples(url, limits=limits, expect=expect)
        except ShardError as exn:
            if handler(exn):
                log.warning("skipping shard: %s", exn)
                continue
            break


def decode_samples(src: Iterable[dict], handler: Callable[[Exception], bool] = reraise_exception,
                   limits: Limits = Limits()) -> Iterator[dict]:
    """Pipeline stage: raw samples -> decoded samples (see `shardset.decode_sample`)."""
    for raw in src:
        try:
            yield decode_sample(raw, limits)
        except ShardError as exn:
            if handler(exn):
                continue
            break
