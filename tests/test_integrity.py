"""Shard-set integrity at the boundaries (issue 18): tampered shards are refused while they stream,
incomplete and partly selected sets are reported, one writer per set (workers share), short
messages for resumes with other settings, and no debris after a refused export."""
from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zstandard
from click.testing import CliRunner

from shardset import (LockHeldError, ShardError, ShardSetWriter, iter_raw_samples, iter_samples, load_manifest,
                      resolve, verify_set)
from shardset.cli import cli
from shardset.export import export_set
from shardset.synthetic import make_samples, write_synthetic_set
from shardset.writer import compress

REPO = Path(__file__).resolve().parents[1]


def tamper(shard: Path) -> None:
    """Change one pixel of the first sample's image and recompress as valid zstd, keeping the size:
    the shard decodes cleanly (tar sizes and checksums untouched), only its sha256 differs from
    the manifest."""
    original = shard.read_bytes()
    tar = bytearray(zstandard.ZstdDecompressor().decompress(original))
    # past the tar header and the .npy header (image.delta is a .npy of residuals, as image.npy is of pixels)
    pixels = tar.index(b".image.") // 512 * 512 + 512 + 128
    for offset in range(64):
        tar[pixels + offset] ^= 0x01
        data = compress(bytes(tar))  # the writer's own zstd settings: a valid frame with its checksum
        if len(data) == len(original):  # same size: only the sha256 can tell
            shard.write_bytes(data)
            return
        tar[pixels + offset] ^= 0x01
    raise AssertionError(f"no one-pixel change of {shard} keeps its compressed size")


@pytest.fixture
def tampered(tmp_path):
    write_synthetic_set(tmp_path, "s", shards=3, shard_size=2, val_shards=1)
    tamper(tmp_path / "s-000001.tar.zst")
    return tmp_path


# ------------------------------------------------------------------- hashed while streaming


def test_tampered_shard_decodes_but_is_refused_against_its_record(tampered):
    url = str(tampered / "s-000001.tar.zst")
    assert len(list(iter_samples(url))) == 2  # valid zstd, valid tar: decoding alone cannot tell
    ref = resolve(str(tampered / "s.json"))
    with pytest.raises(ShardError) as e:
        list(iter_samples(url, expect=ref.record(url)))
    assert str(e.value) == (f"{url}: sha256 differs from its manifest record: the shard changed (corrupt or "
                            "tampered) since it was written; run `shardset verify`")
    # refused before the last sample is handed out (here at once: the whole small file is read by
    # the decoder's first read), so a full read never completes unchecked
    got = []
    with pytest.raises(ShardError):
        for s in iter_raw_samples(url, expect=ref.record(url)):
            got.append(s)
    assert len(got) < 2
    good = str(tampered / "s-000000.tar.zst")
    assert len(list(iter_samples(good, expect=ref.record(good)))) == 2


def test_longer_or_shorter_shard_refused_with_its_size(tampered):
    ref = resolve(str(tampered / "s.json"))
    url = str(tampered / "s-000000.tar.zst")
    rec = ref.record(url)
    with pytest.raises(ShardError, match=f"is {rec['bytes']} bytes, its manifest record says {rec['bytes'] + 1}"):
        list(iter_samples(url, expect={**rec, "bytes": rec["bytes"] + 1}))
    with pytest.raises(ShardError, match=f"longer than the {rec['bytes'] - 1} bytes its manifest record says"):
        list(iter_samples(url, expect={**rec, "bytes": rec["bytes"] - 1}))


def test_hashing_reads_each_byte_once(tampered, monkeypatch):
    """No extra pass: the file is read exactly once, by the decoder, with the hash riding along."""
    import shardset.urls as urls

    ref = resolve(str(tampered / "s.json"))
    url = str(tampered / "s-000000.tar.zst")
    counted = {"bytes": 0}
    real_open = urls.open_url

    class Counting:
        def __init__(self, f):
            self.f = f

        def read(self, n=-1):
            data = self.f.read(n)
            counted["bytes"] += len(data)
            return data

        def close(self):
            self.f.close()

    monkeypatch.setattr(urls, "open_url", lambda u: Counting(real_open(u)))
    assert len(list(iter_samples(url, expect=ref.record(url)))) == 2
    assert counted["bytes"] == ref.record(url)["bytes"]


def test_eval_seg_shards_refuse_a_tampered_val_shard(tampered):
    from benchdata import DatasetError, get_dataset
    from shardset.split import open_split

    tamper(tampered / "s-000002.tar.zst")  # the val shard
    ds = get_dataset(f"shards:{tampered / 's.json'}", shard_sets=open_split)
    with pytest.raises(DatasetError, match=r"s-000002\.tar\.zst: sha256 differs from its manifest record"):
        ds.test_items()


def test_export_refuses_a_tampered_shard_and_leaves_nothing(tampered, tmp_path):
    out = tmp_path / "exp" / "deep"
    with pytest.raises(ShardError, match="s-000001.tar.zst: sha256 differs"):
        export_set(str(tampered / "s.json"), out)
    assert not (tmp_path / "exp").exists()  # the first shard's files, folders and meta tmp are gone
    # an existing --out keeps what it held, and gets nothing new
    out.mkdir(parents=True)
    (out / "mine.txt").write_text("x")
    res = CliRunner().invoke(cli, ["export", str(tampered / "s.json"), "--out", str(out)])
    assert res.exit_code == 1 and "Traceback" not in res.output and "s-000001.tar.zst" in res.output
    assert sorted(p.name for p in out.rglob("*")) == ["mine.txt"]


def test_export_refused_at_once_leaves_no_folders(tmp_path):
    write_synthetic_set(tmp_path / "set", "s", shards=1, shard_size=2)
    shard = tmp_path / "set" / "s-000000.tar.zst"
    shard.write_bytes(shard.read_bytes()[:100])
    res = CliRunner().invoke(cli, ["export", str(tmp_path / "set"), "--out", str(tmp_path / "exp")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert not (tmp_path / "exp").exists()


# ------------------------------------------------------------------- incomplete and partial sets


def _incomplete(folder: Path) -> Path:
    with ShardSetWriter(folder, "s", shard_size=2, params={}, seed=0) as w:
        for k in range(2):
            w.write_shard(k, make_samples(2, seed=k))
        w.finalize(planned={"shards": 4})
    return folder / "s.json"


def test_verify_fails_an_incomplete_set(tmp_path):
    manifest = _incomplete(tmp_path)
    report = verify_set(str(manifest))
    assert not report.ok and not report.bad
    assert report.problems == ["incomplete: the manifest says complete: false, 2 of 4 planned shards written; "
                               "its writer stopped early or is still running"]
    res = CliRunner().invoke(cli, ["verify", str(manifest)])
    assert res.exit_code == 1, res.output
    assert "complete: false" in res.output and "FAILED: 0 of 2 shards bad; 1 set-level problem(s)" in res.output


def test_verify_fails_when_listed_shards_are_missing_or_not_selected(tmp_path):
    write_synthetic_set(tmp_path, "s", shards=4, shard_size=2)
    res = CliRunner().invoke(cli, ["verify", str(tmp_path / "s-00000[0-2].tar.zst")])
    assert res.exit_code == 1
    assert "1 of the 4 shards the manifest lists are not selected by" in res.output and "s-000003" in res.output
    (tmp_path / "s-000002.tar.zst").unlink()
    report = verify_set(str(tmp_path / "s-*"))
    assert not report.ok and not report.bad
    assert report.problems == ["1 of the 4 shards the manifest lists are missing on disk: s-000002.tar.zst"]
    assert CliRunner().invoke(cli, ["verify", str(tmp_path / "s-*")]).exit_code == 1


def test_trainer_refuses_an_incomplete_set_unless_allowed(tmp_path, caplog):
    from shardset.select import SelectionError, select_shards

    manifest = _incomplete(tmp_path)
    with pytest.raises(SelectionError) as e:
        select_shards([str(manifest)])
    assert str(e.value) == (f"--shards {str(manifest)!r} is an incomplete set (its manifest says complete: false, "
                            "2 of 4 planned shards written); finish it (e.g. gen-synth --resume) or pass --allow-incomplete "
                            "to train on the shards it has")
    with caplog.at_level(logging.WARNING, logger="shardset.select"):
        src = select_shards([str(manifest)], allow_incomplete=True)
    assert len(src.train_urls) == 2
    assert any(r.levelno == logging.WARNING and "--allow-incomplete" in r.message for r in caplog.records)


def test_trainer_warns_with_counts_when_a_glob_selects_a_subset(tmp_path, caplog):
    from shardset.select import select_shards

    write_synthetic_set(tmp_path, "s", shards=4, shard_size=2)
    (tmp_path / "s-000001.tar.zst").unlink()
    with caplog.at_level(logging.WARNING, logger="shardset.select"):
        src = select_shards([str(tmp_path / "s-*")])
    assert len(src.train_urls) == 3 and set(src.expect) == set(src.train_urls)
    warned = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == [f"--shards {str(tmp_path / 's-*')!r} selects 3 of the 4 shards its manifest "
                      f"{tmp_path / 's.json'} lists; training on that subset"]


def test_trainer_refuses_a_listed_shard_missing_on_disk(tmp_path):
    from shardset.select import SelectionError, select_shards

    write_synthetic_set(tmp_path, "s", shards=3, shard_size=2)
    (tmp_path / "s-000002.tar.zst").unlink()
    with pytest.raises(SelectionError, match=r"shard .*s-000002\.tar\.zst \(listed in .*s\.json\) does not exist"):
        select_shards([str(tmp_path / "s.json")])


def test_bare_shards_are_said_to_be_unverified_once(tmp_path, caplog):
    from shardset.select import select_shards

    write_synthetic_set(tmp_path, "s", shards=2, shard_size=2)
    (tmp_path / "s.json").unlink()
    with caplog.at_level(logging.WARNING):
        src = select_shards([str(tmp_path / "s-*")])
    assert src.expect == {}
    warned = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "unverified" in warned[0] and "no NAME.json" in warned[0]


# ------------------------------------------------------------------- one writer per set


def test_second_writer_fails_at_once_naming_the_holder(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from shardset import ShardSetWriter; "
         f"w = ShardSetWriter({str(tmp_path)!r}, 's', params={{'seed_of': 1}}, seed=1); "
         "print('ready', flush=True); sys.stdin.read()"],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        t0 = time.monotonic()
        for mode in ("new", "overwrite", "resume"):
            with pytest.raises(LockHeldError) as e:
                ShardSetWriter(tmp_path, "s", params={"seed_of": 2}, seed=2, mode=mode)
            msg = str(e.value)
            assert "\n" not in msg
            assert msg.startswith(f"shard set {tmp_path / 's.json'} is in use: pid {holder.pid} on host "
                                  f"{socket.gethostname()} (since ")
            assert msg.endswith("holds s.lock; wait for that writer to finish, or write to another name or folder")
        assert time.monotonic() - t0 < 5  # at once, no waiting
        # the holder's set is untouched: its header still names its own seed
        assert json.loads((tmp_path / ".s.records" / "set.json").read_text())["seed"] == 1
    finally:
        holder.stdin.close()
        holder.wait(30)
    with ShardSetWriter(tmp_path, "s", params={"seed_of": 2}, seed=2, mode="overwrite") as w:
        w.write_shard(0, make_samples(1))
    assert load_manifest(tmp_path / "s.json")["seed"] == 2


def _open_elsewhere(folder: Path, mode: str, seed: int = 0, params: str = "{}") -> str:
    """Open set 's' in `folder` from another process and close it: 'ok', or 'held: <message>'."""
    code = ("from shardset import LockHeldError, ShardSetWriter\n"
            "try:\n"
            f"    ShardSetWriter({str(folder)!r}, 's', shard_size=2, params={params}, seed={seed}, mode={mode!r}).close()\n"
            "    print('ok')\n"
            "except LockHeldError as e:\n"
            "    print('held:', e)\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_lock_is_released_by_close_and_by_a_killed_holder(tmp_path):
    w = ShardSetWriter(tmp_path, "s", shard_size=2, params={}, seed=0)
    assert _open_elsewhere(tmp_path, "overwrite").startswith(f"held: shard set {tmp_path / 's.json'} is in use: "
                                                             f"pid {os.getpid()} on host")
    w.close()
    assert _open_elsewhere(tmp_path, "overwrite") == "ok"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from shardset import ShardSetWriter; "
                               f"w = ShardSetWriter({str(tmp_path)!r}, 's', params={{}}, seed=0, mode='overwrite'); "
                               "print('ready', flush=True); time.sleep(60)"],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "ready"
    with pytest.raises(LockHeldError, match=f"pid {holder.pid} on host"):
        ShardSetWriter(tmp_path, "s", params={}, seed=0, mode="resume")
    holder.kill()
    holder.wait(30)
    ShardSetWriter(tmp_path, "s", params={}, seed=0, mode="resume").close()


def test_a_writer_left_open_in_this_process_does_not_block_the_next(tmp_path):
    """A failed call in a long-lived process (a Ray worker, a notebook) may leave its writer
    alive, held by the exception's traceback: the process's next writer of the set still opens."""
    stale = ShardSetWriter(tmp_path, "s", shard_size=2, params={}, seed=0)
    with ShardSetWriter(tmp_path, "s", shard_size=2, params={}, seed=0, mode="resume") as w:
        w.write_shard(0, make_samples(2))
    assert _open_elsewhere(tmp_path, "resume").startswith("held: ")  # the stale one still excludes others
    stale.close()
    assert _open_elsewhere(tmp_path, "resume") == "ok"


def test_workers_share_a_set_but_keep_exclusive_writers_out(tmp_path):
    a = ShardSetWriter(tmp_path, "s", shard_size=2, params={"p": 1}, seed=5, mode="resume")
    b = ShardSetWriter(tmp_path, "s", shard_size=2, params={"p": 1}, seed=5, mode="resume")
    # another process: a worker of the same run joins; an exclusive writer is kept out
    assert _open_elsewhere(tmp_path, "resume", seed=5, params="{'p': 1}") == "ok"
    assert _open_elsewhere(tmp_path, "overwrite", seed=5, params="{'p': 1}").startswith(
        f"held: shard set {tmp_path / 's.json'} is in use: pid {os.getpid()} on host")
    # a worker of another run (other seed) is refused by the header check, in one short line
    with pytest.raises(ValueError, match=r"differ from the set's in seed \(set 5, this run 6\)$"):
        ShardSetWriter(tmp_path, "s", shard_size=2, params={"p": 1}, seed=6, mode="resume")
    a.write_shard(0, make_samples(2, seed=0))
    b.write_shard(1, make_samples(2, seed=1))
    b.write_shard(0, make_samples(2, seed=0))  # the same index twice: same bytes, one consistent record
    m = a.finalize(planned={"shards": 2})
    a.close()
    b.close()
    assert m["complete"] and verify_set(str(tmp_path / "s.json")).ok


def test_a_parent_shares_its_exclusive_lock_with_its_workers(tmp_path):
    w = ShardSetWriter(tmp_path, "s", shard_size=2, params={}, seed=0)
    assert _open_elsewhere(tmp_path, "resume").startswith("held: ")
    w.share()
    assert _open_elsewhere(tmp_path, "resume") == "ok"
    assert _open_elsewhere(tmp_path, "overwrite").startswith("held: ")
    w.close()
    assert _open_elsewhere(tmp_path, "overwrite") == "ok"


def test_resume_with_changed_nested_params_names_the_one_that_differs(tmp_path):
    params = {f"knob_{i:02d}": "x" * 40 for i in range(40)}
    params["filters"] = {"min_fg": 0.1, "rules": ["lighting", "size"]}
    with ShardSetWriter(tmp_path, "s", params=params, seed=3):
        pass
    changed = json.loads(json.dumps(params))
    changed["filters"]["rules"][1] = "histogram"
    with pytest.raises(ValueError) as e:
        ShardSetWriter(tmp_path, "s", params=changed, seed=3, mode="resume")
    assert str(e.value) == (f"cannot resume {tmp_path / 's.json'}: this run's settings differ from the set's in "
                            'params.filters.rules[1] (set "size", this run "histogram")')
