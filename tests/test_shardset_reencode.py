"""Sets written before `delta` became the default, and re-encoding a set (`shardset export --encoding`).

tests/data/npy-set-before-delta/ is a set written by bgw-seg at commit ca8b206 (npy images, 1-bit PNG
masks: the default then), with `write_synthetic_set(out, "old", shards=2, shard_size=3, size=16,
val_shards=1, seed=7)`; its manifest's tool names that commit. Every tool must still read it."""
from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import zstandard
from click.testing import CliRunner

from shardset import (DEFAULT_ENCODING, ShardSetError, ShardSetExistsError, iter_samples, load_manifest, resolve,
                      verify_set)
from shardset.cli import cli
from shardset.export import export_set, reencode_set
from shardset.synthetic import write_synthetic_set

OLD = Path(__file__).resolve().parent / "data" / "npy-set-before-delta"


def _samples(spec) -> list[dict]:
    ref = resolve(str(spec))
    return [s for url in ref.urls for s in iter_samples(url, expect=ref.record(url))]


def _members(shard: Path) -> list[str]:
    with tarfile.open(fileobj=zstandard.ZstdDecompressor().stream_reader(open(shard, "rb")), mode="r|") as tar:
        return [m.name.split(".", 1)[1] for m in tar]


def _same_samples(a: list[dict], b: list[dict]) -> None:
    assert [s["__key__"] for s in a] == [s["__key__"] for s in b]
    for x, y in zip(a, b):
        for k in ("image", "mask", "z"):
            np.testing.assert_array_equal(x[k], y[k])
        assert x["meta"] == y["meta"]


@pytest.fixture
def old_set(tmp_path) -> Path:
    shutil.copytree(OLD, tmp_path / "old")
    return tmp_path / "old"


def test_a_set_from_before_delta_reads_verifies_inspects_and_exports(old_set, tmp_path):
    m = load_manifest(old_set / "old.json")
    assert m["encoding"] == "npy" and m["tool"]["git_commit"].startswith("ca8b206")
    assert _members(old_set / "old-000000.tar.zst")[:4] == ["image.npy", "mask.png", "meta.json", "z.npy"]
    samples = _samples(old_set / "old.json")
    assert len(samples) == 6 and samples[0]["image"].shape == (16, 16, 3)
    assert set(np.unique(samples[0]["mask"])) == {0, 1}
    assert verify_set(str(old_set)).ok
    runner = CliRunner()
    res = runner.invoke(cli, ["inspect", str(old_set / "old.json"), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["encoding"] == "npy"
    assert export_set(str(old_set), tmp_path / "files") == 6
    res = runner.invoke(cli, ["export", str(old_set), "--out", str(tmp_path / "plain"), "--plain-tar"])
    assert res.exit_code == 0, res.output


def test_reencode_old_set_to_the_default_and_back(old_set, tmp_path):
    """npy -> delta: the same samples, keys, split and counts; new shards, sha256 and manifest.
    delta -> npy: the very bytes of the old shards (both encodings are lossless)."""
    res = CliRunner().invoke(cli, ["export", str(old_set / "old.json"), "--out", str(tmp_path / "delta"),
                                   "--encoding", DEFAULT_ENCODING])
    assert res.exit_code == 0, res.output
    assert "in encoding delta (was npy)" in res.output
    old, new = load_manifest(old_set / "old.json"), load_manifest(tmp_path / "delta" / "old.json")
    assert new["encoding"] == "delta" and new["complete"] and new["planned"] == old["planned"]
    for k in ("name", "seed", "shard_size", "splits"):
        assert new[k] == old[k], k
    for k in ("samples", "drawn", "rejected"):
        assert new["totals"][k] == old["totals"][k], k
    for a, b in zip(old["shards"], new["shards"]):
        assert (a["index"], a["split"], a["samples"], a["drawn"], a["rejected"]) == \
               (b["index"], b["split"], b["samples"], b["drawn"], b["rejected"])
        assert a["sha256"] != b["sha256"]
    assert new["fingerprint"] != old["fingerprint"]
    assert new["params"] == {**old["params"], "reencoded_from": {
        "encoding": "npy", "fingerprint": old["fingerprint"], "created": old["created"], "tool": old["tool"]}}
    assert _members(tmp_path / "delta" / "old-000000.tar.zst")[:4] == ["image.delta", "mask.pbm", "meta.json", "z.npy"]
    assert verify_set(str(tmp_path / "delta")).ok
    _same_samples(_samples(tmp_path / "delta"), _samples(old_set))

    back = reencode_set(str(tmp_path / "delta"), tmp_path / "back", "npy")
    for r in back["shards"]:
        assert (tmp_path / "back" / r["file"]).read_bytes() == (old_set / r["file"]).read_bytes()
    assert [r["sha256"] for r in back["shards"]] == [r["sha256"] for r in old["shards"]]


@pytest.mark.parametrize("encoding", ["png", "webp", "jpg"])
def test_reencode_to_every_encoding(tmp_path, encoding):
    write_synthetic_set(tmp_path / "src", "s", shards=2, shard_size=2)
    m = reencode_set(str(tmp_path / "src"), tmp_path / encoding, encoding)
    assert m["encoding"] == encoding and verify_set(str(tmp_path / encoding)).ok
    got, want = _samples(tmp_path / encoding), _samples(tmp_path / "src")
    if encoding == "jpg":  # lossy: only the pixels may differ (these are noise: no bound worth stating)
        for a, b in zip(got, want):
            assert a["image"].shape == b["image"].shape
            a["image"] = b["image"]
    _same_samples(got, want)


def test_reencode_keeps_a_set_without_meta_members_without_them(tmp_path):
    from shardset.synthetic import make_samples, write_set

    def no_meta(k, n):
        return [{k2: v for k2, v in s.items() if k2 != "meta"} for s in make_samples(n, 8, seed=k)]

    write_set(tmp_path / "src", "s", [2, 2], no_meta, params={}, encoding="npy")
    reencode_set(str(tmp_path / "src"), tmp_path / "out", "delta")
    assert "meta.json" not in _members(tmp_path / "out" / "s-000000.tar.zst")


def test_reencode_refusals_are_one_line_and_leave_nothing(old_set, tmp_path):
    runner = CliRunner()
    # the source's own folder, or any folder already holding the set
    with pytest.raises(ShardSetExistsError, match="already holds a set named 'old'"):
        reencode_set(str(old_set), old_set, "delta")
    # part of a set: its manifest's counts would not hold
    with pytest.raises(ShardSetError, match="cannot re-encode part of a set"):
        reencode_set(str(old_set / "old-000000.tar.zst"), tmp_path / "part", "delta")
    assert not (tmp_path / "part").exists()
    res = runner.invoke(cli, ["export", str(old_set), "--out", str(tmp_path / "x"), "--encoding", "delta",
                              "--plain-tar"])
    assert res.exit_code == 2 and "leave out --plain-tar" in res.output
    res = runner.invoke(cli, ["export", str(old_set), "--out", str(tmp_path / "x"), "--encoding", "gif"])
    assert res.exit_code == 2 and "gif" in res.output
    # a shard that differs from its record, met after the first shard was written: nothing is left
    shard = old_set / "old-000001.tar.zst"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    res = runner.invoke(cli, ["export", str(old_set), "--out", str(tmp_path / "bad"), "--encoding", "delta"])
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "old-000001.tar.zst" in res.output
    assert not (tmp_path / "bad").exists()
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "mine.txt").write_text("x")
    res = runner.invoke(cli, ["export", str(old_set), "--out", str(tmp_path / "keep"), "--encoding", "delta"])
    assert res.exit_code == 1 and sorted(p.name for p in (tmp_path / "keep").iterdir()) == ["mine.txt"]
