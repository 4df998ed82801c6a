"""Reader and verify: safe on shards from strangers; every error names the shard."""
from __future__ import annotations

import io
import struct
import tarfile
import zlib

import numpy as np
import pytest
import zstandard

from shardset import Limits, ShardError, iter_samples, verify_set
from shardset.codec import encode_sample
from shardset.synthetic import make_samples, write_synthetic_set
from shardset.writer import build_tar, compress


def _write(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _members(n=1):
    out = {}
    for i, s in enumerate(make_samples(n, 16)):
        for field, data in encode_sample(s, "png").items():
            out[f"x-000000-{i:06d}.{field}"] = data
    return out


def test_good_shard_reads(tmp_path):
    url = _write(tmp_path / "x-000000.tar.zst", compress(build_tar(_members(3))))
    assert [s["__key__"] for s in iter_samples(url)] == [f"x-000000-{i:06d}" for i in range(3)]


@pytest.mark.parametrize("name", ["x-000000-000000.pyd", "x-000000-000000.payload.pickle", "../evil.image.png",
                                  "x-000000-000000.image.png.exe", "__init__.py"])
def test_unknown_members_refused(tmp_path, name):
    members = _members(1)
    members[name] = b"cos\nsystem\n(S'touch pwned'\ntR."  # a pickle that would run a command
    url = _write(tmp_path / "evil.tar.zst", compress(build_tar(members)))
    with pytest.raises(ShardError, match=r"evil\.tar\.zst: unexpected tar member .*only KEY\.image"):
        list(iter_samples(url))
    assert not (tmp_path / "pwned").exists()


def _tar_with(kind: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT if kind == "gnu" else tarfile.PAX_FORMAT) as tar:
        if kind == "symlink":
            info = tarfile.TarInfo("x-000000-000000.image.png")
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        elif kind == "pax":
            info = tarfile.TarInfo("x-000000-000000.meta.json")
            info.pax_headers = {"comment": "x" * 10}
            tar.addfile(info, io.BytesIO(b""))
        elif kind == "dir":
            info = tarfile.TarInfo("x-000000-000000.image.png")
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["symlink", "pax", "dir"])
def test_non_regular_members_refused(tmp_path, kind):
    url = _write(tmp_path / "odd.tar.zst", compress(_tar_with(kind)))
    with pytest.raises(ShardError, match=r"odd\.tar\.zst: tar member .* only regular files"):
        list(iter_samples(url))


def test_zip_bomb_with_declared_size_refused_before_inflating(tmp_path):
    # a real frame that declares 64 MiB of zeros: refused from the header alone
    bomb = zstandard.ZstdCompressor(level=19).compress(b"\0" * (64 << 20))
    assert len(bomb) < 10_000
    url = _write(tmp_path / "bomb.tar.zst", bomb)
    with pytest.raises(ShardError, match=r"bomb\.tar\.zst: zstd frame declares 67108864 .*refused before inflating"):
        list(iter_samples(url, limits=Limits(max_shard_bytes=1 << 20)))


def test_frame_header_claiming_a_terabyte_refused_with_default_limits(tmp_path):
    # hand-made header: FCS flag 3 (8-byte content size), window descriptor, then 1 TiB declared
    header = b"\x28\xb5\x2f\xfd" + bytes([0xC0, 0x58]) + struct.pack("<Q", 1 << 40)
    url = _write(tmp_path / "tera.tar.zst", header + b"\0" * 32)
    with pytest.raises(ShardError, match=r"tera\.tar\.zst: zstd frame declares 1099511627776"):
        list(iter_samples(url))


def test_zip_bomb_without_declared_size_refused_while_streaming(tmp_path):
    # streamed frame (no content size): a valid tar member header claiming 32 MiB of zeros
    info = tarfile.TarInfo("x-000000-000000.meta.json")
    info.size = 32 << 20
    buf = io.BytesIO()
    with zstandard.ZstdCompressor(level=3).stream_writer(buf, closefd=False) as w:
        w.write(info.tobuf(format=tarfile.USTAR_FORMAT))
        for _ in range(32):
            w.write(b"\0" * (1 << 20))
    assert zstandard.get_frame_parameters(buf.getvalue()).content_size == zstandard.CONTENTSIZE_UNKNOWN
    url = _write(tmp_path / "stream-bomb.tar.zst", buf.getvalue())
    limits = Limits(max_shard_bytes=4 << 20, max_member_bytes=64 << 20)
    with pytest.raises(ShardError, match=r"stream-bomb\.tar\.zst: decompresses past the bound of 4194304"):
        list(iter_samples(url, limits=limits))
    with pytest.raises(ShardError, match=r"over Limits\.max_member_bytes"):
        list(iter_samples(url, limits=Limits(max_member_bytes=1 << 20)))


def test_huge_png_header_in_shard_refused(tmp_path):
    members = _members(1)
    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    members["x-000000-000000.image.png"] = png + b"\0" * 100
    url = _write(tmp_path / "huge.tar.zst", compress(build_tar(members)))
    with pytest.raises(ShardError, match=r"huge\.tar\.zst: sample 'x-000000-000000': image header claims 100000x100000"):
        list(iter_samples(url))


def test_not_zstd_and_truncated_refused(tmp_path):
    url = _write(tmp_path / "plain.tar.zst", build_tar(_members(1)))
    with pytest.raises(ShardError, match=r"plain\.tar\.zst: not a zstd stream"):
        list(iter_samples(url))
    data = compress(build_tar(_members(2)))
    url = _write(tmp_path / "cut.tar.zst", data[: len(data) // 2])
    with pytest.raises(ShardError, match=r"cut\.tar\.zst: (truncated|corrupt)"):
        list(iter_samples(url))


def test_missing_mask_and_split_groups_refused(tmp_path):
    members = {k: v for k, v in _members(1).items() if not k.endswith("mask.png")}
    url = _write(tmp_path / "nomask.tar.zst", compress(build_tar(members)))
    with pytest.raises(ShardError, match=r"nomask.tar.zst: sample 'x-000000-000000': has no mask member \(mask.pbm"):
        list(iter_samples(url))
    # a PNG mask and a PBM one: which is the sample's? Neither is guessed
    members = _members(1)
    members["x-000000-000000.mask.pbm"] = encode_sample(make_samples(1, 16)[0], "delta")["mask.pbm"]
    url = _write(tmp_path / "twomasks.tar.zst", compress(build_tar(members)))
    with pytest.raises(ShardError, match="twomasks.tar.zst: sample 'x-000000-000000': needs exactly one mask member"):
        list(iter_samples(url))


def test_verify_passes_then_names_each_flipped_shard(tmp_path):
    m = write_synthetic_set(tmp_path, "s", shards=3, shard_size=2)
    report = verify_set(str(tmp_path / "s.json"))
    assert report.ok and report.samples == 6
    originals = {r["file"]: (tmp_path / r["file"]).read_bytes() for r in m["shards"]}
    for r in m["shards"]:
        path = tmp_path / r["file"]
        for pos in (0, len(originals[r["file"]]) // 2, len(originals[r["file"]]) - 1):
            data = bytearray(originals[r["file"]])
            data[pos] ^= 0x01
            path.write_bytes(bytes(data))
            report = verify_set(str(tmp_path))
            assert not report.ok
            assert [b.url.rsplit("/", 1)[-1] for b in report.bad] == [r["file"]]
            assert "sha256" in report.bad[0].reason
            # decoding alone (no hashes) also refuses a flipped byte: the zstd frame checksum
            with pytest.raises(ShardError, match=r["file"]):
                list(iter_samples(str(path)))
        path.write_bytes(originals[r["file"]])
    assert verify_set(str(tmp_path)).ok


def test_verify_reports_missing_shard(tmp_path):
    write_synthetic_set(tmp_path, "s", shards=2, shard_size=2)
    (tmp_path / "s-000005.tar.zst").write_bytes((tmp_path / "s-000000.tar.zst").read_bytes())
    report = verify_set(str(tmp_path / "s.json"))
    assert report.ok and report.notes == ["1 shard files not listed in the manifest: s-000005.tar.zst"]
    (tmp_path / "s-000001.tar.zst").unlink()
    report = verify_set(str(tmp_path / "s.json"))
    assert [b.url.rsplit("/", 1)[-1] for b in report.bad] == ["s-000001.tar.zst"]
    assert "no such file" in report.bad[0].reason


def test_samples_decode_to_the_contract_types(tmp_path):
    write_synthetic_set(tmp_path, "s", shards=1, shard_size=2)
    s = next(iter_samples(str(tmp_path / "s-000000.tar.zst")))
    assert s["image"].dtype == np.uint8 and s["image"].shape == (32, 32, 3)
    assert s["mask"].dtype == np.uint8 and set(np.unique(s["mask"])) <= {0, 1}
    assert s["z"].dtype == np.float32 and s["z"].shape == (8,)
    assert set(s["meta"]) == {"source_index", "fg_fraction", "stream"}
