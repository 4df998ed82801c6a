"""Codec: exact round trips, 1-bit masks, and header checks that refuse before decoding."""
from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest

from shardset import Limits, ShardError, decode_sample
from shardset.codec import (
    DecodeError,
    decode_image,
    decode_mask,
    decode_meta,
    decode_z,
    encode_image,
    encode_mask,
    encode_meta,
    encode_sample,
    encode_z,
    image_size,
)
from shardset.format import ENCODINGS, LOSSLESS_ENCODINGS


def _image(h=24, w=40, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("encoding", sorted(LOSSLESS_ENCODINGS))
def test_lossless_round_trip_is_exact(encoding):
    img = _image()
    data = encode_image(img, encoding)
    assert image_size(data, encoding) == (40, 24)
    np.testing.assert_array_equal(decode_image(data, encoding), img)


def test_jpeg_round_trip_is_close_and_rgb_ordered():
    img = np.zeros((32, 48, 3), np.uint8)
    img[..., 0] = 200  # pure red: a BGR/RGB swap would move it to the blue channel
    data = encode_image(img, "jpg")
    assert image_size(data, "jpg") == (48, 32)
    out = decode_image(data, "jpg").astype(int)
    assert np.abs(out - img).max() <= 3


def test_webp_lossy_header_parses():
    ok, enc = cv2.imencode(".webp", _image(), [cv2.IMWRITE_WEBP_QUALITY, 80])
    assert image_size(enc.tobytes(), "webp") == (40, 24)


def test_mask_is_one_bit_png_and_exact():
    mask = np.zeros((5, 7), np.uint8)
    mask[1:4, 2:6] = 1
    data = encode_mask(mask)
    assert data[24] == 1 and data[25] == 0  # IHDR bit depth 1, colour type 0 (gray)
    out = decode_mask(data)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, mask)
    np.testing.assert_array_equal(decode_mask(encode_mask(mask.astype(bool))), mask)


def test_mask_values_must_be_binary():
    with pytest.raises(ValueError, match="0 or 1"):
        encode_mask(np.full((4, 4), 255, np.uint8))


def test_eight_bit_mask_png_refused():
    ok, enc = cv2.imencode(".png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DecodeError, match="1-bit"):
        decode_mask(enc.tobytes())


def test_z_and_meta_round_trip():
    z = np.arange(5, dtype=np.float64) / 3
    np.testing.assert_array_equal(decode_z(encode_z(z)), z.astype(np.float32))
    meta = {"b": 1, "a": [1.5, "x"]}
    assert encode_meta(meta) == b'{"a":[1.5,"x"],"b":1}'
    assert decode_meta(encode_meta(meta)) == meta
    assert encode_meta({"f": np.float32(0.5), "i": np.int64(3), "v": np.arange(2)}) == b'{"f":0.5,"i":3,"v":[0,1]}'
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        encode_meta({"x": object()})
    with pytest.raises(ValueError, match="no mask"):
        encode_sample({"image": _image()}, "png")


def _png_header_only(w, h, depth=8, ctype=2):
    ihdr = struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\0" * 64


def test_huge_png_header_refused_before_decoding(monkeypatch):
    data = _png_header_only(100000, 100000)

    def boom(*a, **k):  # decoding must never be attempted
        raise AssertionError("imdecode called on an over-size image")

    monkeypatch.setattr(cv2, "imdecode", boom)
    with pytest.raises(DecodeError, match="100000x100000"):
        decode_image(data, "png")
    with pytest.raises(DecodeError, match="100000x100000"):
        decode_mask(_png_header_only(100000, 100000, 1, 0))


def test_huge_npy_image_refused():
    hdr = {"descr": "|u1", "fortran_order": False, "shape": (100000, 100000, 3)}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, hdr)
    with pytest.raises(DecodeError, match="100000x100000"):
        decode_image(buf.getvalue(), "npy")


def test_npy_object_array_never_unpickled():
    buf = io.BytesIO()
    np.save(buf, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DecodeError, match="object arrays|float32"):
        decode_z(buf.getvalue())
    with pytest.raises(DecodeError):
        decode_image(buf.getvalue(), "npy")


def test_npy_wrong_length_refused():
    data = encode_image(_image(), "npy")
    with pytest.raises(DecodeError, match="data bytes"):
        decode_image(data[:-1], "npy")


def test_limits_apply_to_small_images_too():
    data = encode_image(_image(24, 40), "png")
    with pytest.raises(DecodeError, match="40x24"):
        decode_image(data, "png", Limits(max_image_side=32))


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_decode_sample(encoding):
    img = _image()
    mask = (img[..., 0] > 128).astype(np.uint8)
    raw = {"__key__": "s-000000-000001", **encode_sample({"image": img, "mask": mask, "meta": {"k": 1},
                                                          "z": np.ones(3, np.float32)}, encoding)}
    out = decode_sample(raw)
    assert out["__key__"] == "s-000000-000001"
    np.testing.assert_array_equal(out["mask"], mask)
    np.testing.assert_array_equal(out["z"], np.ones(3, np.float32))
    assert out["meta"] == {"k": 1}
    if encoding in LOSSLESS_ENCODINGS:
        np.testing.assert_array_equal(out["image"], img)


def test_decode_sample_refuses_unknown_fields():
    raw = {"__key__": "k", "__url__": "shard-x.tar.zst", **encode_sample({"image": _image(), "mask": np.zeros((24, 40), np.uint8)}, "png")}
    raw["payload.pickle"] = b"\x80\x04K\x01."
    with pytest.raises(ShardError, match=r"shard-x\.tar\.zst: sample 'k': unknown member k\.payload\.pickle"):
        decode_sample(raw)
