"""Writer: byte-identical rewrites, order-independent manifests, modes, resume and kill-safety."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from shardset import (
    ManifestError,
    ShardSetExistsError,
    ShardSetWriter,
    canonical_manifest,
    iter_samples,
    load_manifest,
    manifest_fingerprint,
    resolve,
    validate_manifest,
)
from shardset.synthetic import make_samples, write_synthetic_set

REPO = Path(__file__).resolve().parents[1]


def _bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tar.zst"))}


@pytest.mark.parametrize("encoding", ["png", "webp", "npy", "jpg"])
def test_round_trip_and_byte_identical_rewrite(tmp_path, encoding):
    m1 = write_synthetic_set(tmp_path / "a", "s", shards=2, shard_size=3, encoding=encoding, val_shards=1)
    m2 = write_synthetic_set(tmp_path / "b", "s", shards=2, shard_size=3, encoding=encoding, val_shards=1)
    assert _bytes(tmp_path / "a") == _bytes(tmp_path / "b") and len(_bytes(tmp_path / "a")) == 2
    assert canonical_manifest(m1) == canonical_manifest(m2)
    got = [s for u in resolve(str(tmp_path / "a")).urls for s in iter_samples(u)]
    want = make_samples(3, 32, seed=0) + make_samples(3, 32, seed=1)
    assert [s["__key__"] for s in got] == [f"s-{k:06d}-{i:06d}" for k in range(2) for i in range(3)]
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g["mask"], w["mask"])
        np.testing.assert_array_equal(g["z"], w["z"])
        assert g["meta"] == w["meta"]
        if encoding != "jpg":
            np.testing.assert_array_equal(g["image"], w["image"])


def test_manifest_contents(tmp_path):
    m = write_synthetic_set(tmp_path, "s", shards=3, shard_size=2, val_shards=1)
    assert m == load_manifest(tmp_path / "s.json")
    assert m["format"] == "bgw-shardset" and m["format_version"] == 1 and m["complete"] is True
    assert set(m["tool"]) == {"name", "version", "git_commit"}
    assert m["params"] == {"generator": "synthetic", "size": 32}
    assert [r["split"] for r in m["shards"]] == ["train", "train", "val"]
    assert m["splits"] == {"train": {"shards": [0, 1], "samples": 4}, "val": {"shards": [2], "samples": 2}}
    # stats: drawn = shard_size + k, rejected size = k
    assert m["totals"] == {"shards": 3, "samples": 6, "bytes": sum(r["bytes"] for r in m["shards"]),
                           "drawn": 2 + 3 + 4, "rejected": {"histogram": 0, "size": 0 + 1 + 2}}
    assert m["shards"][1]["rejected"] == {"histogram": 0, "size": 1}
    assert m["fingerprint"] == manifest_fingerprint(m)
    for r in m["shards"]:
        assert (tmp_path / r["file"]).stat().st_size == r["bytes"]


def test_manifest_identical_whatever_the_write_order(tmp_path):
    m1 = write_synthetic_set(tmp_path / "a", "s", shards=4, shard_size=2, order=[0, 1, 2, 3])
    m2 = write_synthetic_set(tmp_path / "b", "s", shards=4, shard_size=2, order=[3, 1, 0, 2])
    assert canonical_manifest(m1) == canonical_manifest(m2)
    assert _bytes(tmp_path / "a") == _bytes(tmp_path / "b")
    c = canonical_manifest(m1)
    assert "created" not in c and "created" in m1


def test_incomplete_when_planned_shards_missing(tmp_path):
    w = ShardSetWriter(tmp_path, "s", shard_size=2, params={}, seed=0)
    w.write_shard(1, make_samples(2))
    m = w.finalize(planned={"shards": 2})
    assert m["complete"] is False and [r["index"] for r in m["shards"]] == [1]


def test_mode_new_refuses_existing_set(tmp_path):
    write_synthetic_set(tmp_path, "s", shards=1)
    with pytest.raises(ShardSetExistsError, match=r"already holds shard set 's'.*'resume'.*'overwrite'"):
        ShardSetWriter(tmp_path, "s", params={}, seed=0)
    ShardSetWriter(tmp_path, "other", params={}, seed=0)  # a different name in the same folder is fine


def test_overwrite_replaces(tmp_path):
    write_synthetic_set(tmp_path, "s", shards=3, shard_size=2)
    w = ShardSetWriter(tmp_path, "s", shard_size=2, params={}, seed=0, mode="overwrite")
    assert w.completed() == {} and not list(tmp_path.glob("s-*.tar.zst"))
    assert load_manifest(tmp_path / "s.json")["shards"] == []


def test_resume_keeps_good_shards_and_drops_corrupt_ones(tmp_path):
    write_synthetic_set(tmp_path, "s", shards=3, shard_size=2)
    shard = tmp_path / "s-000001.tar.zst"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    (tmp_path / "s-000002.tar.zst.999999999.tmp").write_bytes(b"partial")  # leftover of a dead writer
    w = ShardSetWriter(tmp_path, "s", shard_size=2, params={"generator": "synthetic", "size": 32}, seed=0,
                       mode="resume")
    assert sorted(w.completed()) == [0, 2]
    assert not list(tmp_path.glob("*.tmp"))
    assert [r["index"] for r in load_manifest(tmp_path / "s.json")["shards"]] == [0, 2]


def test_resume_with_other_params_refused(tmp_path):
    write_synthetic_set(tmp_path, "s", shards=1)
    with pytest.raises(ValueError) as e:
        ShardSetWriter(tmp_path, "s", shard_size=4, params={"generator": "other"}, seed=0, mode="resume")
    # one short line naming each differing setting by its dotted path, the set's value and this run's
    assert str(e.value) == (f"cannot resume {tmp_path / 's.json'}: this run's settings differ from the set's in "
                            'params.generator (set "synthetic", this run "other"), params.size (set 32, not in this run)')
    assert "overwrite" not in str(e.value)


@pytest.mark.parametrize("bad, match", [
    (dict(name="a.b"), "set name"),
    (dict(encoding="tiff"), "tiff"),
    (dict(mode="append"), "append"),
    (dict(params={"x": float("nan")}), "JSON"),
])
def test_bad_arguments(tmp_path, bad, match):
    kw = dict(name="s", params={}, seed=0) | bad
    with pytest.raises(ValueError, match=match):
        ShardSetWriter(tmp_path, **kw)


def test_numpy_params_are_normalised(tmp_path):
    w = ShardSetWriter(tmp_path, "s", params={"shift": np.float32(5.0), "dims": np.array([1, 2])}, seed=np.int64(7))
    m = w.finalize()
    assert m["params"] == {"shift": 5.0, "dims": [1, 2]} and m["seed"] == 7


def test_bad_samples(tmp_path):
    w = ShardSetWriter(tmp_path, "s", shard_size=2, params={}, seed=0)
    s = make_samples(1)[0]
    with pytest.raises(ValueError, match="values must be 0 or 1"):
        w.write_shard(0, [dict(s, mask=s["mask"] * 255)])
    with pytest.raises(ValueError, match="must match s-000000-"):
        w.write_shard(0, [dict(s, __key__="other-1")])
    with pytest.raises(ValueError, match="over shard_size"):
        w.write_shard(0, make_samples(3))
    with pytest.raises(ValueError, match="split"):
        w.write_shard(0, [s], split="test")
    assert not list(tmp_path.glob("s-*"))


def test_manifest_validation_errors(tmp_path):
    m = write_synthetic_set(tmp_path, "s", shards=2, shard_size=2)
    bad = json.loads(json.dumps(m))
    bad["shards"][0]["sha256"] = "0" * 64
    with pytest.raises(ManifestError, match="fingerprint"):
        validate_manifest(bad)
    bad = dict(m, format_version=99)
    with pytest.raises(ManifestError, match="format_version 99"):
        validate_manifest(bad)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ManifestError, match="broken.json: not valid JSON"):
        load_manifest(tmp_path / "broken.json")


_CRASH = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {repo!r})
    from shardset import ShardSetWriter
    from shardset.synthetic import make_samples
    w = ShardSetWriter({out!r}, "s", shard_size=3, params={{}}, seed=0)
    w.write_shard(0, make_samples(3, seed=0))
    w.write_shard(1, make_samples(3, seed=1))
    # the process dies half-way through writing shard 2 (like SIGKILL: no cleanup runs)
    import builtins
    real_open = builtins.open
    def dying_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        if str(path).endswith(".tmp") and "s-000002" in str(path):
            f.write(b"half a shard")
            f.flush()
            os._exit(9)
        return f
    builtins.open = dying_open
    w.write_shard(2, make_samples(3, seed=2))
""")


def test_killed_writer_leaves_complete_shards_and_exact_manifest(tmp_path):
    out = tmp_path / "set"
    res = subprocess.run([sys.executable, "-c", _CRASH.format(repo=str(REPO), out=str(out))], capture_output=True)
    assert res.returncode == 9, res.stderr.decode()
    assert sorted(p.name for p in out.glob("s-*.tar.zst")) == ["s-000000.tar.zst", "s-000001.tar.zst"]
    assert len(list(out.glob("s-000002.tar.zst.*.tmp"))) == 1
    m = load_manifest(out / "s.json")
    assert [r["file"] for r in m["shards"]] == ["s-000000.tar.zst", "s-000001.tar.zst"]
    # resume: the stray tmp goes, the two shards are kept, the third is written
    w = ShardSetWriter(out, "s", shard_size=3, params={}, seed=0, mode="resume")
    assert sorted(w.completed()) == [0, 1] and not list(out.glob("*.tmp"))
    w.write_shard(2, make_samples(3, seed=2))
    m = w.finalize(planned={"shards": 3})
    assert m["complete"] and [r["index"] for r in m["shards"]] == [0, 1, 2]
    ref = write_synthetic_like(tmp_path / "ref")
    assert {p.name: p.read_bytes() for p in out.glob("s-*.tar.zst")} == ref


def write_synthetic_like(folder: Path) -> dict:
    w = ShardSetWriter(folder, "s", shard_size=3, params={}, seed=0)
    for k in range(3):
        w.write_shard(k, make_samples(3, seed=k))
    return {p.name: p.read_bytes() for p in folder.glob("s-*.tar.zst")}


def _worker(out: str, indices: list[int]) -> None:
    w = ShardSetWriter(out, "s", shard_size=2, params={"p": 1}, seed=5, mode="resume")
    for k in indices:
        w.write_shard(k, make_samples(2, seed=k), split="val" if k == 3 else "train")


def test_parallel_workers_share_one_folder(tmp_path):
    import multiprocessing as mp

    ShardSetWriter(tmp_path / "par", "s", shard_size=2, params={"p": 1}, seed=5)
    procs = [mp.get_context("fork").Process(target=_worker, args=(str(tmp_path / "par"), idx))
             for idx in ([0, 2], [3, 1])]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    m_par = ShardSetWriter(tmp_path / "par", "s", shard_size=2, params={"p": 1}, seed=5, mode="resume").finalize(
        planned={"shards": 4})
    ShardSetWriter(tmp_path / "seq", "s", shard_size=2, params={"p": 1}, seed=5)
    _worker(str(tmp_path / "seq"), [0, 1, 2, 3])
    m_seq = ShardSetWriter(tmp_path / "seq", "s", shard_size=2, params={"p": 1}, seed=5, mode="resume").finalize(
        planned={"shards": 4})
    assert m_par["complete"] and canonical_manifest(m_par) == canonical_manifest(m_seq)
    assert _bytes(tmp_path / "par") == _bytes(tmp_path / "seq")


def test_no_tensorflow_or_torch_imported():
    code = "import sys, shardset, shardset.cli, shardset.wds; " \
           "print(sorted(m for m in ('tensorflow', 'torch', 'webdataset') if m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env=dict(os.environ))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_fast_tar_builder_matches_tarfile_byte_for_byte():
    """build_tar fills a ustar template by hand for speed; tarfile is the reference it must equal."""
    from shardset.writer import _build_tar_tarfile, build_tar

    rng = np.random.default_rng(0)
    for _ in range(60):
        members = {}
        for j in range(int(rng.integers(1, 6))):
            name = f"set-000000-{j:06d}." + "x" * int(rng.integers(1, 60))
            size = int(rng.choice([0, 1, 511, 512, 513, 1024, int(rng.integers(0, 5000))]))
            members[name] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        assert build_tar(members) == _build_tar_tarfile(members)
