"""Codec: exact round trips (delta images bit-exact, by bgw-seg and by numpy alone), 1-bit PNG and PBM
masks, and header checks that refuse before decoding."""
from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardset import Limits, ShardError, decode_sample
from shardset.codec import (
    DecodeError,
    decode_image,
    decode_mask,
    decode_mask_pbm,
    decode_meta,
    decode_z,
    encode_image,
    encode_mask,
    encode_mask_pbm,
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


@pytest.mark.parametrize("encoding", ["npy", "delta"])
def test_huge_npy_image_refused(encoding):
    hdr = {"descr": "|u1", "fortran_order": False, "shape": (100000, 100000, 3)}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, hdr)
    with pytest.raises(DecodeError, match="100000x100000"):
        decode_image(buf.getvalue(), encoding)


def test_npy_object_array_never_unpickled():
    buf = io.BytesIO()
    np.save(buf, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DecodeError, match="object arrays|float32"):
        decode_z(buf.getvalue())
    with pytest.raises(DecodeError):
        decode_image(buf.getvalue(), "npy")


@pytest.mark.parametrize("encoding", ["npy", "delta"])
def test_npy_wrong_length_refused(encoding):
    data = encode_image(_image(), encoding)
    with pytest.raises(DecodeError, match="data bytes"):
        decode_image(data[:-1], encoding)


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


# ---------------------------------------------------------------------------------------------
# delta images and PBM masks (the default encoding)


def numpy_delta_decode(data: bytes) -> np.ndarray:
    """shardset/FORMAT.md's decoder of image.delta, numpy alone (what a reader without bgw-seg runs)."""
    r = np.load(io.BytesIO(data), allow_pickle=False)
    x = np.cumsum(np.cumsum(r, axis=0, dtype=np.uint8), axis=1, dtype=np.uint8)
    x[..., 0] += x[..., 1]
    x[..., 2] += x[..., 1]
    return x


@given(h=st.integers(1, 40), w=st.integers(1, 40), seed=st.integers(0, 2**32 - 1), smooth=st.booleans())
@settings(max_examples=60, deadline=None)
def test_delta_round_trip_is_bit_exact_for_any_shape(h, w, seed, smooth):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if smooth:  # photo-like: small residuals, and wrap-around at 0 and 255 both ways
        img = np.cumsum(rng.integers(-3, 4, (h, w, 3)), axis=1).astype(np.uint8)
    data = encode_image(img, "delta")
    assert image_size(data, "delta") == (w, h)
    np.testing.assert_array_equal(decode_image(data, "delta"), img)
    np.testing.assert_array_equal(numpy_delta_decode(data), img)


def test_delta_large_image_path_is_the_numpy_recipe(monkeypatch):
    """Images too big for OpenCV's int32 integral image take np.cumsum: the same pixels."""
    import shardset.codec as codec

    img = _image(64, 96, seed=3)
    data = encode_image(img, "delta")
    monkeypatch.setattr(codec, "_INTEGRAL_MAX_PIXELS", 0)
    np.testing.assert_array_equal(decode_image(data, "delta"), img)


def test_delta_member_is_a_plain_npy_of_residuals():
    img = np.full((4, 5, 3), (200, 100, 50), np.uint8)
    r = np.load(io.BytesIO(encode_image(img, "delta")), allow_pickle=False)
    assert r.dtype == np.uint8 and r.shape == (4, 5, 3)
    # subtract-green, then only the corner pixel is not predicted by its neighbours
    assert r[0, 0].tolist() == [100, 100, 206] and not r.reshape(-1, 3)[1:].any()


@pytest.mark.parametrize("h,w", [(1, 1), (5, 7), (16, 16), (9, 17), (128, 128)])
def test_pbm_mask_round_trip_and_what_image_tools_see(h, w):
    from PIL import Image

    mask = (np.random.default_rng(h * w).random((h, w)) > 0.4).astype(np.uint8)
    data = encode_mask_pbm(mask)
    assert data.startswith(b"P4\n%d %d\n" % (w, h)) and len(data) == len(b"P4\n%d %d\n" % (w, h)) + h * ((w + 7) // 8)
    np.testing.assert_array_equal(decode_mask_pbm(data), mask)
    # the foreground is white to every image tool, as in the PNG masks
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), mask.astype(bool))
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), mask * 255)


def test_pbm_header_checked_before_decoding():
    with pytest.raises(DecodeError, match="100000x100000"):
        decode_mask_pbm(b"P4\n100000 100000\n" + b"\0" * 64)
    with pytest.raises(DecodeError, match="data bytes"):
        decode_mask_pbm(encode_mask_pbm(np.ones((4, 9), np.uint8))[:-1])
    for bad in (b"P1\n2 2\n0 1\n1 0\n", b"P4\n# made by hand\n2 2\n\0\0", b"P4 2 2\n\0\0", b"P4\n0 2\n"):
        with pytest.raises(DecodeError, match="binary PBM"):
            decode_mask_pbm(bad)


def test_each_encoding_has_its_mask_member():
    sample = {"image": _image(), "mask": np.zeros((24, 40), np.uint8)}
    assert sorted(encode_sample(sample, "delta")) == ["image.delta", "mask.pbm"]
    for enc in ("png", "webp", "jpg", "npy"):  # unchanged, so their sets stay byte-identical
        assert sorted(encode_sample(sample, enc)) == [f"image.{enc}", "mask.png"]
