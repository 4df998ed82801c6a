"""WebDataset reads shards through the registered zstd: scheme and the safe pipeline stages."""
from __future__ import annotations

import numpy as np
import pytest

from shardset import ShardError, decode_sample, iter_samples, resolve
from shardset import wds as swds
from shardset.synthetic import write_synthetic_set

wds = pytest.importorskip("webdataset")


@pytest.fixture
def ref(tmp_path):
    write_synthetic_set(tmp_path, "s", shards=2, shard_size=3)
    return resolve(str(tmp_path / "s.json"))


def test_webdataset_reads_through_registered_scheme(ref):
    swds.register()
    import importlib

    assert importlib.import_module("webdataset.gopen").gopen_schemes["zstd"] is swds.gopen_zstd
    ds = wds.WebDataset(swds.zstd_urls(ref.urls), shardshuffle=False)
    raws = list(ds)
    assert [r["__key__"] for r in raws] == [f"s-{k:06d}-{i:06d}" for k in range(2) for i in range(3)]
    want = [s for u in ref.urls for s in iter_samples(u)]
    for raw, w in zip(raws, want):
        got = decode_sample(raw)  # webdataset's own "__url__"/"__local_path__" entries pass through
        np.testing.assert_array_equal(got["image"], w["image"])
        np.testing.assert_array_equal(got["mask"], w["mask"])
        assert got["meta"] == w["meta"]


def test_safe_pipeline_stages(ref):
    pipe = wds.DataPipeline(wds.SimpleShardList(ref.urls), swds.tar_samples, swds.decode_samples)
    got = list(pipe)
    assert len(got) == 6 and got[0]["image"].shape == (32, 32, 3)
    assert got[0]["__url__"] == ref.urls[0]


def test_tar_samples_handler(ref, tmp_path):
    bad = tmp_path / "bad.tar.zst"
    bad.write_bytes(b"not a shard")
    urls = [str(bad)] + ref.urls
    with pytest.raises(ShardError, match=r"bad\.tar\.zst: not a zstd stream"):
        list(swds.tar_samples(urls))
    skipped = list(swds.tar_samples(urls, handler=lambda exn: True))
    assert len(skipped) == 6
