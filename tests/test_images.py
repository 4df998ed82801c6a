"""core.images: header sizes of every supported format, the pixel limit checked before
decoding, truncated and corrupt files skipped with a reason; and the one policy (warn, skip,
count) in every reader of user images: eval-seg's folders, `shardset import`, gen-synth's
embedding images."""
from __future__ import annotations

import io
import logging
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from core.images import DEFAULT_MAX_PIXELS, Skip, image_header_size, read_user_image


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _encoded(ext: str, h: int = 23, w: int = 37, params=()) -> bytes:
    ok, enc = cv2.imencode(ext, _rgb(h, w), list(params))
    assert ok
    return enc.tobytes()


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def bomb_png(w: int = 20000, h: int = 20000) -> bytes:
    """A valid PNG header claiming w x h RGB pixels, followed by a few rows of data: the limit must
    refuse it from the header alone (decoding it fully would need w * h * 3 bytes)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * (3 * w + 1) * 4))
            + _chunk(b"IEND", b""))


def _size(data: bytes) -> tuple[str, int, int]:
    return image_header_size(io.BytesIO(data))


# ------------------------------------------------------------------- header sizes


@pytest.mark.parametrize("ext, params, fmt", [
    (".png", (), "PNG"),
    (".jpg", (), "JPEG"),
    (".jpg", (cv2.IMWRITE_JPEG_PROGRESSIVE, 1), "JPEG"),
    (".webp", (cv2.IMWRITE_WEBP_QUALITY, 80), "WebP"),   # lossy: VP8
    (".webp", (cv2.IMWRITE_WEBP_QUALITY, 101), "WebP"),  # lossless: VP8L
    (".bmp", (), "BMP"),
    (".tiff", (), "TIFF"),
])
def test_header_sizes_of_what_opencv_writes(tmp_path, ext, params, fmt):
    data = _encoded(ext, params=params)
    assert _size(data) == (fmt, 37, 23)
    (tmp_path / f"x{ext}").write_bytes(data)
    assert read_user_image(tmp_path / f"x{ext}").shape == (23, 37, 3)


def test_header_sizes_of_hand_made_headers():
    # WebP VP8X (extended: alpha, animation, ...): sides minus one, 24 bits little-endian
    vp8x = b"RIFF" + struct.pack("<I", 30) + b"WEBPVP8X" + struct.pack("<I", 10) + b"\x10\0\0\0" \
        + (36).to_bytes(3, "little") + (22).to_bytes(3, "little")
    assert _size(vp8x) == ("WebP", 37, 23)
    # BMP: a top-down bitmap has a negative height; the OS/2 core header has 16-bit sides
    bmp = b"BM" + b"\0" * 12 + struct.pack("<Iii", 40, 37, -23) + b"\0" * 28
    assert _size(bmp) == ("BMP", 37, 23)
    core = b"BM" + b"\0" * 12 + struct.pack("<IHH", 12, 37, 23) + b"\0" * 8
    assert _size(core) == ("BMP", 37, 23)
    # TIFF, big-endian: width as SHORT, length as LONG
    mm = b"MM\0*" + struct.pack(">I", 8) + struct.pack(">H", 2) \
        + struct.pack(">HHIHH", 256, 3, 1, 37, 0) + struct.pack(">HHII", 257, 4, 1, 23) + b"\0" * 4
    assert _size(mm) == ("TIFF", 37, 23)
    # BigTIFF, little-endian, its IFD 100 kB into the file (read where it lies, not within 64 KiB)
    off = 100_000
    big = b"II+\0" + struct.pack("<HHQ", 8, 0, off) + b"\0" * (off - 16) + struct.pack("<Q", 2) \
        + struct.pack("<HHQQ", 256, 16, 1, 37) + struct.pack("<HHQQ", 257, 3, 1, 23) + b"\0" * 8
    assert _size(big) == ("TIFF", 37, 23)


def test_jpeg_frame_header_past_the_first_64_kib(tmp_path):
    jpg = _encoded(".jpg")
    app = b"\xff\xe1" + struct.pack(">H", 65000) + b"\0" * 64998  # two large APP1 (EXIF-like) segments
    data = jpg[:2] + app + app + jpg[2:]
    assert _size(data) == ("JPEG", 37, 23)
    (tmp_path / "x.jpg").write_bytes(data)
    assert read_user_image(tmp_path / "x.jpg").shape == (23, 37, 3)


def test_unknown_and_cut_headers_are_skipped_with_a_reason(tmp_path):
    (tmp_path / "a.gif").write_bytes(b"GIF89a" + b"\0" * 20)
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0")
    (tmp_path / "c.jpg").write_bytes(b"")
    assert read_user_image(tmp_path / "a.gif") == Skip("unreadable", f"{tmp_path / 'a.gif'}: not a PNG, JPEG, "
                                                                     "WebP, BMP or TIFF file")
    assert read_user_image(tmp_path / "b.png") == Skip(
        "unreadable", f"{tmp_path / 'b.png'}: not a PNG file (bad signature or missing IHDR)")
    assert read_user_image(tmp_path / "c.jpg").kind == "unreadable"
    missing = read_user_image(tmp_path / "nope.png")
    assert missing == Skip("unreadable", f"{tmp_path / 'nope.png'}: cannot read it (No such file or directory)")


# ------------------------------------------------------------------- the limit and broken files


def test_pixel_limit_is_checked_from_the_header_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png())
    assert len(path.read_bytes()) < 100_000  # small file, 1.2 GB of pixels
    decoded = []
    monkeypatch.setattr(cv2, "imdecode", lambda *a: decoded.append(a))
    assert read_user_image(path) == Skip("too_large", f"{path}: 20000x20000 = 400000000 pixels, over the limit "
                                                      "of 64000000 (--max-image-pixels); skipped before decoding")
    assert decoded == []
    assert DEFAULT_MAX_PIXELS == 64_000_000


def test_pixel_limit_boundary(tmp_path):
    path = tmp_path / "img.png"
    assert cv2.imwrite(str(path), _rgb(200, 300))
    assert read_user_image(path, max_pixels=59_999).kind == "too_large"
    got = read_user_image(path, max_pixels=60_000)
    np.testing.assert_array_equal(got, cv2.imread(str(path)))


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_truncated_files_are_skipped_not_decoded_in_part(tmp_path, ext):
    data = _encoded(ext, 120, 160)
    path = tmp_path / f"cut{ext}"
    path.write_bytes(data[: len(data) * 6 // 10])
    assert cv2.imread(str(path)) is not None or ext == ".png"  # cv2.imread fills a cut JPEG in with grey
    fmt = "JPEG" if ext == ".jpg" else "PNG"
    assert read_user_image(path) == Skip("truncated", f"{path}: truncated {fmt} (the file ends before its image "
                                                      "data does)")


def test_corrupt_but_complete_file_is_unreadable(tmp_path):
    data = bytearray(_encoded(".png", 40, 40))
    data[60:90] = b"\xff" * 30  # inside IDAT: the zlib stream breaks, the file still ends with IEND
    path = tmp_path / "bad.png"
    path.write_bytes(bytes(data))
    assert read_user_image(path) == Skip("unreadable", f"{path}: corrupt PNG (OpenCV cannot decode it)")


def test_header_sizes_match_decoding_on_ecssd(ecssd_dir):
    files = sorted((ecssd_dir / "images").iterdir()) + sorted((ecssd_dir / "masks").iterdir())
    largest = 0
    for p in files:
        with open(p, "rb") as f:
            _, w, h = image_header_size(f)
        a = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        assert (a.shape[1], a.shape[0]) == (w, h), p
        largest = max(largest, w * h)
    assert len(files) == 2000 and largest == 400 * 400  # the limit is 400 x this


def test_decoding_matches_cv2_imread_on_ecssd(ecssd_dir):
    for p in sorted((ecssd_dir / "images").iterdir())[:50]:
        np.testing.assert_array_equal(read_user_image(p), cv2.imread(str(p)))


# ------------------------------------------------------------------- every reader: warn, skip, count


@pytest.fixture
def folder(tmp_path):
    """images/ + masks/ with one good pair, an image bomb, a truncated JPEG and a mask bomb."""
    img, msk = tmp_path / "images", tmp_path / "masks"
    img.mkdir()
    msk.mkdir()
    good = _rgb(32, 48)
    assert cv2.imwrite(str(img / "a.png"), good)
    (img / "b.png").write_bytes(bomb_png())
    (img / "c.jpg").write_bytes(_encoded(".jpg", 32, 48)[:500])
    assert cv2.imwrite(str(img / "d.png"), good)
    m = np.zeros((32, 48), np.uint8)
    m[8:24, 12:36] = 255
    for k in "abc":
        assert cv2.imwrite(str(msk / f"{k}.png"), m)
    (msk / "d.png").write_bytes(bomb_png(48, 2_000_000))
    return tmp_path


def test_eval_datasets_skip_and_record_bombs_and_truncated_files(folder, caplog):
    from benchdata import DatasetError, ImageSkipped, get_dataset, read_image

    ds = get_dataset(f"folder:{folder}")
    with caplog.at_level(logging.WARNING, logger="benchdata.datasets"):
        got = list(ds.iter_loaded(ds.test_items(), workers=2))
    assert [it.id for it, _, _ in got] == ["a"]
    assert sorted(ds.skipped) == ["b", "c", "d"]
    assert "b.png: 20000x20000 = 400000000 pixels, over the limit of 64000000" in ds.skipped["b"]
    assert ds.skipped["c"].endswith("c.jpg: truncated JPEG (the file ends before its image data does)")
    assert "masks/d.png: 48x2000000 = 96000000 pixels" in ds.skipped["d"]
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 3
    # the limit is the dataset's: lower it and the good image goes too
    small = get_dataset(f"folder:{folder}", max_pixels=1000)
    assert list(small.iter_loaded(small.test_items())) == [] and len(small.skipped) == 4
    with pytest.raises(ImageSkipped) as e:
        read_image(folder / "images" / "b.png")
    assert isinstance(e.value, DatasetError) and e.value.skip.kind == "too_large"


def test_shardset_import_skips_and_counts(folder, tmp_path):
    from shardset import load_manifest
    from shardset.cli import cli

    out = tmp_path / "out"
    args = ["import", "--images", str(folder / "images"), "--masks", str(folder / "masks"), "--out", str(out),
            "--name", "s", "--size", "16"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "wrote 1 shards, 1 samples (3 skipped)" in res.output
    m = load_manifest(out / "s.json")
    assert m["totals"]["rejected"] == {"too_large_image": 1, "too_large_mask": 1, "truncated_image": 1}
    assert m["params"]["max_image_pixels"] == DEFAULT_MAX_PIXELS
    res = CliRunner().invoke(cli, args[:-4] + ["--out", str(tmp_path / "o2"), "--name", "t", "--size", "16",
                                               "--max-image-pixels", "1000"])
    assert res.exit_code == 0, res.output
    assert "0 samples (4 skipped)" in res.output
    assert load_manifest(tmp_path / "o2" / "t.json")["totals"]["rejected"] == {"too_large_image": 4}


def test_generator_embedding_reader_skips_bombs_with_a_warning(folder, caplog):
    from generator.embed import read_encoder_input

    with caplog.at_level(logging.WARNING, logger="generator.embed"):
        assert read_encoder_input(folder / "images" / "b.png") is None
    assert [r.message for r in caplog.records] == [
        f"{folder / 'images' / 'b.png'}: 20000x20000 = 400000000 pixels, over the limit of 64000000 "
        "(--max-image-pixels); skipped before decoding"]
    assert read_encoder_input(folder / "images" / "c.jpg") is None  # truncated
    assert read_encoder_input(folder / "images" / "a.png").shape == (256, 256, 3)
    assert read_encoder_input(folder / "images" / "a.png", max_pixels=32 * 48 - 1) is None


def test_exif_orientation_is_applied_as_cv2_imread_does(tmp_path):
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :10] = 255
    jpg = cv2.imencode(".jpg", img)[1].tobytes()
    tiff = b"MM\0*" + struct.pack(">IH", 8, 1) + struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0) + struct.pack(">I", 0)
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 6 + len(tiff)) + b"Exif\0\0" + tiff  # orientation 6: rotate 90
    path = tmp_path / "rotated.jpg"
    path.write_bytes(jpg[:2] + app1 + jpg[2:])
    got = read_user_image(path)
    assert got.shape == (40, 20, 3)  # the header says 40x20; the pixel count is what is checked
    np.testing.assert_array_equal(got, cv2.imread(str(path)))
    unchanged = cv2.IMREAD_UNCHANGED
    np.testing.assert_array_equal(read_user_image(path, unchanged), cv2.imread(str(path), unchanged))
