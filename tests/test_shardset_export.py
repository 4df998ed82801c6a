"""`shardset export --plain-tar` (decompressed shards + their manifest) and the `--json` output of
`shardset inspect` and `shardset verify`."""
from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import zstandard
from click.testing import CliRunner

from shardset import ShardError, ShardSetExistsError, iter_samples, load_manifest, manifest_fingerprint
from shardset.cli import cli
from shardset.export import export_plain_tar
from shardset.synthetic import write_synthetic_set

NAME = "s"


@pytest.fixture
def shard_set(tmp_path) -> Path:
    """3 shards of 4 samples (the last one val) in tmp_path/set."""
    write_synthetic_set(tmp_path / "set", NAME, shards=3, shard_size=4, val_shards=1)
    return tmp_path / "set"


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


def _one_line_error(result) -> str:
    assert result.exit_code != 0 and "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


# ---------------------------------------------------------------------------------------------
# --plain-tar


def test_plain_tar_export_is_the_decompressed_shards(shard_set, tmp_path):
    m = load_manifest(shard_set / f"{NAME}.json")
    out = tmp_path / "plain"
    plain = export_plain_tar(str(shard_set), out)

    assert sorted(_files(out)) == [f"{NAME}-00000{i}.tar" for i in range(3)] + [f"{NAME}.json"]
    assert json.loads((out / f"{NAME}.json").read_text()) == plain
    assert plain["format"] == "bgw-shardset-plain-tar" and plain["format_version"] == 1
    assert plain["name"] == NAME and plain["encoding"] == m["encoding"]
    assert plain["source"] == {"fingerprint": m["fingerprint"], "complete": True, "created": m["created"],
                               "tool": m["tool"], "shards": 3}
    assert plain["splits"] == {"train": {"shards": [0, 1], "samples": 8}, "val": {"shards": [2], "samples": 4}}
    for rec, src in zip(plain["shards"], m["shards"], strict=True):
        data = (out / rec["file"]).read_bytes()
        compressed = (shard_set / src["file"]).read_bytes()
        assert data == zstandard.ZstdDecompressor().decompress(compressed)
        if shutil.which("zstd"):
            assert data == subprocess.run(["zstd", "-dc", str(shard_set / src["file"])], capture_output=True,
                                          check=True).stdout
        assert rec == {"index": src["index"], "file": f"{NAME}-{src['index']:06d}.tar", "split": src["split"],
                       "samples": 4, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                       "source_file": src["file"], "source_sha256": src["sha256"]}
        # any tar reader groups the same samples as bgw-seg's reader
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            keys = sorted({name.split(".", 1)[0] for name in tar.getnames()})
        assert keys == [s["__key__"] for s in iter_samples(str(shard_set / src["file"]))]
    assert plain["totals"] == {"shards": 3, "samples": 12, "bytes": sum(r["bytes"] for r in plain["shards"])}


def test_plain_tar_export_of_some_shards(shard_set, tmp_path):
    plain = export_plain_tar(str(shard_set / f"{NAME}-00000[12].tar.zst"), tmp_path / "plain")
    assert [r["file"] for r in plain["shards"]] == [f"{NAME}-000001.tar", f"{NAME}-000002.tar"]
    assert plain["splits"] == {"train": {"shards": [1], "samples": 4}, "val": {"shards": [2], "samples": 4}}
    assert plain["source"]["shards"] == 3 and plain["totals"]["shards"] == 2


def test_plain_tar_export_refuses_to_overwrite(shard_set, tmp_path):
    out = tmp_path / "plain"
    export_plain_tar(str(shard_set), out)
    before = _files(out)
    with pytest.raises(ShardSetExistsError, match="already holds an export of 's'"):
        export_plain_tar(str(shard_set), out)
    line = _one_line_error(CliRunner().invoke(cli, ["export", str(shard_set), "--plain-tar", "--out", str(out)]))
    assert "choose another --out" in line
    assert _files(out) == before

    # one stray plain shard of the set is enough to refuse; other files do not matter
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    export_plain_tar(str(shard_set), other)
    (other / f"{NAME}.json").unlink()
    with pytest.raises(ShardSetExistsError):
        export_plain_tar(str(shard_set), other)


@pytest.mark.parametrize("out_exists", [False, True])
def test_failed_plain_tar_export_leaves_nothing(shard_set, tmp_path, out_exists):
    shard = shard_set / f"{NAME}-000001.tar.zst"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    out = tmp_path / "plain"
    if out_exists:
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    with pytest.raises(ShardError, match="s-000001.tar.zst"):
        export_plain_tar(str(shard_set), out)
    # shard 0 was written before shard 1 failed: it is gone too, and so is the folder we made
    assert _files(out) == ({"notes.txt": b"mine"} if out_exists else {})
    assert out.exists() == out_exists


def test_plain_tar_export_refuses_members_the_format_does_not_allow(shard_set, tmp_path):
    """A shard whose manifest record matches it but which holds a member outside the format (a
    pickle) is refused, so a plain tar never carries one to a tool that would unpickle it."""
    manifest_path = shard_set / f"{NAME}.json"
    m = json.loads(manifest_path.read_text())
    shard = shard_set / m["shards"][0]["file"]
    buf = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(zstandard.ZstdDecompressor().decompress(shard.read_bytes()))) as src, \
            tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as dst:
        for member in src.getmembers():
            dst.addfile(member, src.extractfile(member))
        payload = b"cos\nsystem\n(S'echo pwned'\ntR."
        info = tarfile.TarInfo(f"{NAME}-000000-000000.payload.pyd")
        info.size = len(payload)
        dst.addfile(info, io.BytesIO(payload))
    shard.write_bytes(zstandard.ZstdCompressor().compress(buf.getvalue()))
    m["shards"][0].update(bytes=shard.stat().st_size, sha256=hashlib.sha256(shard.read_bytes()).hexdigest())
    m["totals"]["bytes"] = sum(r["bytes"] for r in m["shards"])
    m["fingerprint"] = manifest_fingerprint(m)
    manifest_path.write_text(json.dumps(m))
    with pytest.raises(ShardError, match="unexpected tar member 's-000000-000000.payload.pyd'"):
        export_plain_tar(str(shard_set), tmp_path / "plain")
    assert not (tmp_path / "plain").exists()


def test_plain_tar_cli(shard_set, tmp_path):
    runner = CliRunner()
    out = tmp_path / "plain"
    res = runner.invoke(cli, ["export", str(shard_set / f"{NAME}.json"), "--plain-tar", "--out", str(out)])
    assert res.exit_code == 0, res.output
    size = sum(p.stat().st_size for p in out.glob("*.tar"))
    assert res.stdout.strip() == f"wrote 3 plain tar shards (12 samples, {size} bytes) and s.json to {out}"

    line = _one_line_error(runner.invoke(cli, ["export", str(shard_set), "--plain-tar", "--limit", "2",
                                               "--out", str(tmp_path / "x")]))
    assert "--plain-tar exports whole shards" in line and not (tmp_path / "x").exists()
    # bgw-seg reads the .tar.zst set, and says so when given the export
    line = _one_line_error(runner.invoke(cli, ["verify", str(out)]))
    assert "plain-tar export" in line and ".tar.zst set" in line

    (shard_set / f"{NAME}.json").unlink()
    line = _one_line_error(runner.invoke(cli, ["export", str(shard_set / f"{NAME}-*.tar.zst"), "--plain-tar",
                                               "--out", str(tmp_path / "y")]))
    assert "no manifest found" in line and not (tmp_path / "y").exists()


# ---------------------------------------------------------------------------------------------
# --json


def test_inspect_json(shard_set, tmp_path):
    m = load_manifest(shard_set / f"{NAME}.json")
    res = CliRunner().invoke(cli, ["inspect", str(shard_set), "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    t = m["totals"]
    assert got["shards"] == {"total": 3, "train": 2, "val": 1}
    assert got["samples"] == {"total": 12, "train": 8, "val": 4}
    assert got["bytes"] == t["bytes"] and got["bytes_per_sample"] == t["bytes"] / 12
    assert got["rejected"] == t["rejected"] and got["drawn"] == t["drawn"]
    assert got["kept_per_drawn"] == 12 / t["drawn"]
    for key in ("name", "encoding", "seed", "shard_size", "params", "fingerprint", "complete", "created", "tool"):
        assert got[key] == m[key], key
    assert got["urls"] == [str(shard_set / r["file"]) for r in m["shards"]]
    assert got["manifest"] == str(shard_set / f"{NAME}.json")

    # the table shows the same facts
    table = CliRunner().invoke(cli, ["inspect", str(shard_set)]).stdout
    assert re.search(r"^samples +12 \(train 8, val 4\)$", table, re.M)

    # with a preview the output is still one JSON object
    sheet = tmp_path / "sheet.png"
    res = CliRunner().invoke(cli, ["inspect", str(shard_set), "--json", "--preview", str(sheet), "--n", "3"])
    assert json.loads(res.stdout)["preview"] == {"path": str(sheet), "pairs": 3} and sheet.exists()

    (shard_set / f"{NAME}.json").unlink()
    res = CliRunner().invoke(cli, ["inspect", str(shard_set / f"{NAME}-*.tar.zst"), "--json"])
    got = json.loads(res.stdout)
    assert got == {"manifest": None, "shards": 3, "samples": 12,
                   "urls": [str(shard_set / f"{NAME}-00000{i}.tar.zst") for i in range(3)]}


def test_verify_json_keeps_the_exit_code(shard_set):
    runner = CliRunner()
    res = runner.invoke(cli, ["verify", str(shard_set), "--json"])
    assert res.exit_code == 0
    got = json.loads(res.stdout)
    assert got == {"set": str(shard_set / f"{NAME}.json"), "ok": True, "samples": 12, "bad": 0, "problems": [],
                   "notes": [], "shards": [{"url": str(shard_set / f"{NAME}-00000{i}.tar.zst"), "ok": True,
                                            "samples": 4, "reason": ""} for i in range(3)]}

    shard = shard_set / f"{NAME}-000001.tar.zst"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    (shard_set / f"{NAME}-000002.tar.zst").unlink()
    res = runner.invoke(cli, ["verify", str(shard_set / f"{NAME}.json"), "--json"])
    assert res.exit_code == 1
    got = json.loads(res.stdout)
    assert got["ok"] is False and got["bad"] == 2 and got["samples"] == 4
    assert [s["ok"] for s in got["shards"]] == [True, False, False]
    assert "sha256 differs" in got["shards"][1]["reason"] and got["shards"][2]["reason"] == "no such file"
    assert got["problems"] == []
    # a glob that misses a shard the manifest lists: a set-level problem
    res = runner.invoke(cli, ["verify", str(shard_set / f"{NAME}-*.tar.zst"), "--json"])
    got = json.loads(res.stdout)
    assert res.exit_code == 1 and len(got["shards"]) == 2
    assert len(got["problems"]) == 1 and "missing on disk: s-000002.tar.zst" in got["problems"][0]


def test_json_errors_stay_one_line(tmp_path):
    for cmd in ("inspect", "verify"):
        res = CliRunner().invoke(cli, [cmd, str(tmp_path / "nowhere-*.tar.zst"), "--json"])
        assert "matches no" in _one_line_error(res) and res.stdout == ""


def test_plain_tar_images_equal_the_set(shard_set, tmp_path):
    """The image.delta members of the plain tar decode with numpy alone (FORMAT.md's two running sums)
    to bgw-seg's images, and the mask.pbm members with numpy alone to its masks."""
    export_plain_tar(str(shard_set), tmp_path / "plain")
    images, masks = [], []
    with tarfile.open(tmp_path / "plain" / f"{NAME}-000000.tar") as tar:
        for n in tar.getnames():
            data = tar.extractfile(n).read()
            if n.endswith(".image.delta"):
                r = np.load(io.BytesIO(data), allow_pickle=False)
                x = np.cumsum(np.cumsum(r, axis=0, dtype=np.uint8), axis=1, dtype=np.uint8)
                x[..., 0] += x[..., 1]
                x[..., 2] += x[..., 1]
                images.append(x)
            elif n.endswith(".mask.pbm"):
                _, size, bits = data.split(b"\n", 2)
                w, h = map(int, size.split())
                masks.append(1 - np.unpackbits(np.frombuffer(bits, np.uint8).reshape(h, -1), axis=1, count=w))
    expected = list(iter_samples(str(shard_set / f"{NAME}-000000.tar.zst")))
    assert len(images) == len(masks) == len(expected) == 4
    np.testing.assert_array_equal(np.stack(images), np.stack([s["image"] for s in expected]))
    np.testing.assert_array_equal(np.stack(masks), np.stack([s["mask"] for s in expected]))
