"""Encode and decode one sample's members (image, mask, z, meta) to and from bytes.

Decoding is for data from strangers: image sizes are parsed from the header and checked against
`Limits` before any pixel is decoded, `.npy` headers are parsed without `allow_pickle`, and only
the known member names are accepted. Errors are `ShardError`s naming the sample.
"""
from __future__ import annotations

import io
import json
import math
import re
import struct
import zlib
from typing import Any

import cv2
import numpy as np

from core.images import PNG_SIGNATURE, HeaderError, jpeg_size, png_header, webp_size

from .format import ALLOWED_MEMBERS_HINT, MEMBER_RE, Limits, ShardError, check_encoding, mask_field

_NPY_MAGIC = b"\x93NUMPY"
# Parameters chosen so that encoding is deterministic and fast; see benchmarks/shard_io.py.
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 3]
_WEBP_PARAMS = [cv2.IMWRITE_WEBP_QUALITY, 101]  # quality > 100 selects lossless WebP
_JPG_PARAMS = [cv2.IMWRITE_JPEG_QUALITY, 95]
# The 1-bit mask PNG is assembled here (packbits + zlib): 2x faster than cv2.imencode's libpng
# set-up per call. zlib level 1 is 2x faster than 6 for ~20% more mask bytes, which a 128x128
# mask does not even notice (it stays under one 512-byte tar block); see benchmarks/gen_synth.py.
MASK_ZLIB_LEVEL = 1


class DecodeError(ValueError):
    """One member failed to decode; the reader wraps it into a ShardError naming the shard."""


# ---------------------------------------------------------------------------------------------
# encoding


def check_image(image: Any) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"image must be uint8 [H, W, 3] RGB, got {arr.dtype} {list(arr.shape)}")
    return arr


def check_mask(mask: Any, shape: tuple[int, int] | None = None) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.dtype != np.uint8 or arr.ndim != 2:
        raise ValueError(f"mask must be uint8 [H, W] with values in {{0, 1}}, got {arr.dtype} {list(arr.shape)}")
    if arr.size and arr.max() > 1:
        raise ValueError(f"mask values must be 0 or 1, found {int(arr.max())}; binarise it first")
    if shape is not None and arr.shape != tuple(shape):
        raise ValueError(f"mask shape {list(arr.shape)} differs from image shape {list(shape)}")
    return arr


_NPY_HEADERS: dict[tuple, bytes] = {}  # (shape, dtype) -> the header np.save writes for it


def _npy_bytes(arr: np.ndarray) -> bytes:
    """Exactly `np.save(buf, arr, allow_pickle=False)`'s bytes for a C-contiguous plain array.

    The header depends only on shape and dtype, so it is taken once from np.save itself and
    reused: np.save's header formatting costs more than copying a 128x128 image."""
    key = (arr.shape, arr.dtype.str)
    header = _NPY_HEADERS.get(key)
    if header is None:
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        data = buf.getvalue()
        header = data[: len(data) - arr.nbytes]
        if len(_NPY_HEADERS) < 64:  # a few shapes in practice; never grow without bound
            _NPY_HEADERS[key] = header
        return data
    return header + arr.tobytes()


def delta_residuals(image: np.ndarray) -> np.ndarray:
    """The `delta` encoding's filter: RGB uint8 [H, W, 3] -> residuals uint8 [H, W, 3], mod 256.

    Subtract-green (R - G, B - G: photos' channels move together), then the gradient predictor
    x - left - up + up-left per channel, with zeros outside the image. Both steps are linear mod
    256, so the inverse is two running sums and two adds (`delta_decode`) that numpy alone can do;
    zstd then codes the residuals, which cluster near 0, at about half the raw bytes."""
    y = np.array(image, dtype=np.uint8)
    y[..., 0] -= y[..., 1]
    y[..., 2] -= y[..., 1]
    r = y.copy()
    r[:, 1:] -= y[:, :-1]
    out = r.copy()
    out[1:] -= r[:-1]
    return out


# cv2.integral sums in int32; its low byte is exact while no sum can pass 2**31
_INTEGRAL_MAX_PIXELS = (2**31 - 1) // 255


def delta_decode(residuals: np.ndarray) -> np.ndarray:
    """Inverse of `delta_residuals`: uint8 [H, W, 3] residuals -> the RGB image, exactly.

    The readers' recipe is np.cumsum over axis 0 then axis 1 (dtype uint8, which wraps mod 256),
    then R += G and B += G; OpenCV's integral image gives the same two sums in a third of the time."""
    h, w = residuals.shape[:2]
    if h * w <= _INTEGRAL_MAX_PIXELS:
        y = cv2.integral(residuals, sdepth=cv2.CV_32S)[1:, 1:].astype(np.uint8)
    else:
        y = np.cumsum(np.cumsum(residuals, axis=0, dtype=np.uint8), axis=1, dtype=np.uint8)
    y[..., 0] += y[..., 1]
    y[..., 2] += y[..., 1]
    return y


def encode_image(image: np.ndarray, encoding: str) -> bytes:
    """RGB uint8 [H, W, 3] -> bytes in `encoding` (delta (residuals .npy) | png | webp (lossless) |
    jpg (q95) | npy (raw))."""
    arr = check_image(image)
    check_encoding(encoding)
    if encoding == "npy":
        return _npy_bytes(np.ascontiguousarray(arr))
    if encoding == "delta":
        return _npy_bytes(delta_residuals(arr))
    params = {"png": _PNG_PARAMS, "webp": _WEBP_PARAMS, "jpg": _JPG_PARAMS}[encoding]
    ok, enc = cv2.imencode("." + encoding, np.ascontiguousarray(arr[:, :, ::-1]), params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {list(arr.shape)} image as {encoding}")
    return enc.tobytes()


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(tag)))


_PNG_IEND = _png_chunk(b"IEND", b"")


def encode_mask(mask: np.ndarray) -> bytes:
    """{0,1} uint8 [H, W] -> 1-bit grayscale PNG (lossless, one bit per pixel).

    A plain PNG: IHDR (bit depth 1, colour type 0, no interlace), one IDAT holding the rows, each
    with filter byte 0 and its pixels packed MSB first, zlib level MASK_ZLIB_LEVEL, and IEND."""
    arr = check_mask(mask)
    h, w = arr.shape
    if h == 0 or w == 0:
        raise ValueError(f"cannot encode an empty {list(arr.shape)} mask as PNG")
    rows = np.empty((h, 1 + (w + 7) // 8), np.uint8)
    rows[:, 0] = 0  # each row's filter type byte: none
    rows[:, 1:] = np.packbits(arr, axis=1)
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    return b"".join((PNG_SIGNATURE, _png_chunk(b"IHDR", ihdr),
                     _png_chunk(b"IDAT", zlib.compress(rows.data, MASK_ZLIB_LEVEL)), _PNG_IEND))


def encode_mask_pbm(mask: np.ndarray) -> bytes:
    """{0,1} uint8 [H, W] -> binary PBM (P4): the header `P4\\nW H\\n`, then each row packed MSB
    first and padded to a byte.

    PBM's 1 bit is black, so the foreground is stored as 0 bits: every image tool (PIL, OpenCV,
    webdataset, Hugging Face datasets) shows it white, as it shows the PNG masks' 255."""
    arr = check_mask(mask)
    h, w = arr.shape
    if h == 0 or w == 0:
        raise ValueError(f"cannot encode an empty {list(arr.shape)} mask as PBM")
    return b"P4\n%d %d\n" % (w, h) + np.packbits(arr ^ 1, axis=1).tobytes()


def encode_mask_as(mask: np.ndarray, field: str) -> bytes:
    """The mask as the member `field` holds it: `mask.pbm` or `mask.png`."""
    return encode_mask_pbm(mask) if field == "mask.pbm" else encode_mask(mask)


def encode_z(z: Any) -> bytes:
    arr = np.asarray(z)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"z must be a 1-D float vector, got {arr.dtype} {list(arr.shape)}")
    return _npy_bytes(np.ascontiguousarray(arr, dtype="<f4"))


def encode_meta(meta: dict) -> bytes:
    if not isinstance(meta, dict):
        raise ValueError(f"meta must be a dict, got {type(meta).__name__}")
    # sort_keys and fixed separators: the same dict always gives the same bytes
    try:
        text = json.dumps(meta, sort_keys=True, separators=(",", ":"), allow_nan=False, default=json_default)
    except TypeError as exc:
        raise ValueError(f"meta is not JSON-serialisable: {exc}") from None
    return text.encode("utf-8")


def json_default(obj: Any) -> Any:
    """numpy scalars and arrays in meta become plain JSON numbers and lists."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def encode_sample(sample: dict, encoding: str) -> dict[str, bytes]:
    """Sample dict -> {member field: bytes}, e.g. {"image.png": ..., "mask.png": ...}."""
    missing = [k for k in ("image", "mask") if sample.get(k) is None]
    if missing:
        raise ValueError(f"sample has no {' or '.join(missing)}; every sample needs an image and a mask")
    image = check_image(sample["image"])
    members = {f"image.{encoding}": encode_image(image, encoding)}
    field = mask_field(encoding)
    members[field] = encode_mask_as(check_mask(sample["mask"], image.shape[:2]), field)
    if sample.get("z") is not None:
        members["z.npy"] = encode_z(sample["z"])
    if sample.get("meta") is not None:
        members["meta.json"] = encode_meta(sample["meta"])
    return members


# ---------------------------------------------------------------------------------------------
# header parsing (before decoding): the parsers are core.images', shared with user images


def _header(parse, data: bytes):
    """A core.images header parser, its HeaderError as the DecodeError the reader wraps."""
    try:
        return parse(data)
    except HeaderError as exc:
        raise DecodeError(str(exc)) from None


# The header numpy writes for plain arrays; matched by a regex first because numpy's own
# (equally safe, literal_eval based) parser costs more than decoding a 128x128 sample.
_NPY_FAST_RE = re.compile(
    rb"\{'descr': '(?P<descr>[<>|][uif][1248])', 'fortran_order': False, 'shape': \((?P<shape>[0-9, ]*)\), \} *\n"
)


# header bytes -> what the regex made of them: every image of a set has the same header, and
# parsing it costs a tenth of reading the sample
_NPY_PARSED: dict[bytes, tuple[tuple[int, ...], np.dtype, int]] = {}


def _npy_header(data: bytes, what: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of a .npy file, parsed without unpickling anything."""
    if not data.startswith(_NPY_MAGIC):
        raise DecodeError(f"{what} is not a .npy file (bad magic)")
    if data[6:8] == b"\x01\x00" and len(data) >= 10:
        hlen = int.from_bytes(data[8:10], "little")
        head = data[: 10 + hlen]
        parsed = _NPY_PARSED.get(head)
        if parsed is not None:
            return parsed
        m = _NPY_FAST_RE.fullmatch(data, 10, 10 + hlen)
        if m:
            shape = tuple(int(x) for x in m["shape"].split(b",") if x.strip())
            parsed = shape, np.dtype(m["descr"].decode()), 10 + hlen
            if len(_NPY_PARSED) < 64:  # a set repeats a few headers (image, z); never grow without bound
                _NPY_PARSED[head] = parsed
            return parsed
    fp = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp, max_header_size=4096)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp, max_header_size=4096)
        else:
            raise DecodeError(f"{what}: unsupported .npy version {version}")
    except ValueError as exc:
        raise DecodeError(f"{what}: bad .npy header ({exc})") from None
    if fortran:
        raise DecodeError(f"{what}: Fortran-ordered .npy is not allowed")
    if dtype.hasobject:
        raise DecodeError(f"{what}: object arrays are never loaded (they would need pickle)")
    return tuple(shape), dtype, fp.tell()


def image_size(data: bytes, encoding: str) -> tuple[int, int]:
    """(width, height) read from the encoded header, without decoding pixels."""
    if encoding == "png":
        w, h, _, _ = _header(png_header, data)
        return w, h
    if encoding == "jpg":
        return _header(jpeg_size, data)
    if encoding == "webp":
        return _header(webp_size, data)
    if encoding in ("npy", "delta"):
        shape, _, _ = _npy_header(data, "image")
        if len(shape) != 3:
            raise DecodeError(f"image .{encoding} must be [H, W, 3], got shape {list(shape)}")
        return shape[1], shape[0]
    raise DecodeError(f"unknown image encoding {encoding!r}")


def _check_size(w: int, h: int, limits: Limits, what: str) -> None:
    if w <= 0 or h <= 0:
        raise DecodeError(f"{what} header claims an empty {w}x{h} image")
    if max(w, h) > limits.max_image_side or w * h > limits.max_image_pixels:
        raise DecodeError(
            f"{what} header claims {w}x{h} pixels, over the bound of {limits.max_image_side} per side / "
            f"{limits.max_image_pixels} in all (Limits.max_image_side/max_image_pixels); refused before decoding"
        )


# ---------------------------------------------------------------------------------------------
# decoding


def decode_image(data: bytes, encoding: str, limits: Limits = Limits()) -> np.ndarray:
    """Bytes -> RGB uint8 [H, W, 3], refusing over-size images before decoding them."""
    if encoding in ("npy", "delta"):
        shape, dtype, offset = _npy_header(data, "image")
        if len(shape) != 3:
            raise DecodeError(f"image .{encoding} must be [H, W, 3], got shape {list(shape)}")
        _check_size(shape[1], shape[0], limits, "image")
        if dtype != np.uint8 or shape[2] != 3:
            raise DecodeError(f"image .{encoding} must be uint8 [H, W, 3], got {dtype} {list(shape)}")
        if len(data) - offset != math.prod(shape):
            raise DecodeError(f"image .{encoding} holds {len(data) - offset} data bytes, header says "
                              f"{math.prod(shape)}")
        arr = np.frombuffer(data, np.uint8, offset=offset).reshape(shape)
        return delta_decode(arr) if encoding == "delta" else arr.copy()
    w, h = image_size(data, encoding)
    _check_size(w, h, limits, "image")
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if arr is None:
        raise DecodeError(f"corrupt {encoding} image (OpenCV could not decode it)")
    if arr.shape[:2] != (h, w):
        raise DecodeError(f"{encoding} image decodes to {arr.shape[1]}x{arr.shape[0]}, header says {w}x{h}")
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


def decode_mask(data: bytes, limits: Limits = Limits()) -> np.ndarray:
    """1-bit grayscale PNG -> uint8 [H, W] in {0, 1}."""
    w, h, depth, ctype = _header(png_header, data)
    _check_size(w, h, limits, "mask")
    if depth != 1 or ctype != 0:
        raise DecodeError(f"mask must be a 1-bit grayscale PNG, got bit depth {depth}, colour type {ctype}")
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if arr is None or arr.shape != (h, w):
        raise DecodeError("corrupt mask PNG (OpenCV could not decode it)")
    return (arr > 127).astype(np.uint8)


# The one PBM header the writer makes; comments and other whitespace (legal PBM) are refused.
_PBM_RE = re.compile(rb"P4\n([1-9][0-9]{0,8}) ([1-9][0-9]{0,8})\n")


def decode_mask_pbm(data: bytes, limits: Limits = Limits()) -> np.ndarray:
    """Binary PBM (P4, foreground as 0 bits) -> uint8 [H, W] in {0, 1}."""
    m = _PBM_RE.match(data)
    if m is None:
        raise DecodeError("mask is not a binary PBM with the header P4\\nW H\\n")
    w, h = int(m[1]), int(m[2])
    _check_size(w, h, limits, "mask")
    row = (w + 7) // 8
    if len(data) - m.end() != h * row:
        raise DecodeError(f"mask PBM holds {len(data) - m.end()} data bytes, its {w}x{h} header says {h * row}")
    bits = np.frombuffer(data, np.uint8, offset=m.end()).reshape(h, row)
    return np.unpackbits(bits, axis=1, count=w) ^ np.uint8(1)


def decode_mask_as(data: bytes, field: str, limits: Limits = Limits()) -> np.ndarray:
    """The mask of member `field` (`mask.pbm` or `mask.png`) -> uint8 [H, W] in {0, 1}."""
    return decode_mask_pbm(data, limits) if field == "mask.pbm" else decode_mask(data, limits)


def decode_z(data: bytes, limits: Limits = Limits()) -> np.ndarray:
    shape, dtype, offset = _npy_header(data, "z")
    if dtype != np.dtype("<f4") or len(shape) != 1:
        raise DecodeError(f"z must be a float32 1-D .npy, got {dtype} {list(shape)}")
    if shape[0] > limits.max_z_dim:
        raise DecodeError(f"z has {shape[0]} entries, over the bound {limits.max_z_dim} (Limits.max_z_dim)")
    if len(data) - offset != 4 * shape[0]:
        raise DecodeError(f"z .npy holds {len(data) - offset} data bytes, header says {4 * shape[0]}")
    return np.frombuffer(data, "<f4", offset=offset).astype(np.float32)


def decode_meta(data: bytes, limits: Limits = Limits()) -> dict:
    if len(data) > limits.max_meta_bytes:
        raise DecodeError(f"meta.json is {len(data)} bytes, over the bound {limits.max_meta_bytes}")
    try:
        meta = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DecodeError(f"meta.json is not valid UTF-8 JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise DecodeError(f"meta.json must hold an object, got {type(meta).__name__}")
    return meta


def decode_sample(raw: dict, limits: Limits = Limits()) -> dict:
    """Raw sample {"__key__", "image.png": bytes, "mask.png": bytes, ...} -> decoded sample dict.

    Pure: no I/O. Keys starting with "__" (e.g. WebDataset's "__url__") are carried along
    untouched; any other unknown field is refused, so nothing unexpected is ever decoded.
    """
    url = str(raw.get("__url__", "<sample>"))
    key = raw.get("__key__")
    where = f"sample {key!r}"
    try:
        if not isinstance(key, str) or not MEMBER_RE.fullmatch(f"{key}.meta.json"):
            raise DecodeError("missing or invalid __key__")
        out: dict[str, Any] = {k: v for k, v in raw.items() if k.startswith("__")}
        images = [f for f in raw if f.startswith("image.")]
        masks = [f for f in raw if f.startswith("mask.")]
        for field in raw:
            if field.startswith("__"):
                continue
            if not MEMBER_RE.fullmatch(f"{key}.{field}"):
                raise DecodeError(f"unknown member {key}.{field} (allowed: {ALLOWED_MEMBERS_HINT})")
        if len(images) != 1:
            raise DecodeError(f"needs exactly one image member, found {len(images)}")
        if not masks:
            raise DecodeError("has no mask member (mask.pbm or mask.png)")
        if len(masks) > 1:
            raise DecodeError(f"needs exactly one mask member, found {len(masks)}")
        encoding = images[0].split(".", 1)[1]
        out["image"] = decode_image(raw[images[0]], encoding, limits)
        out["mask"] = decode_mask_as(raw[masks[0]], masks[0], limits)
        if out["mask"].shape != out["image"].shape[:2]:
            raise DecodeError(f"mask {list(out['mask'].shape)} and image {list(out['image'].shape[:2])} differ in size")
        if "z.npy" in raw:
            out["z"] = decode_z(raw["z.npy"], limits)
        out["meta"] = decode_meta(raw["meta.json"], limits) if "meta.json" in raw else {}
        return out
    except DecodeError as exc:
        raise ShardError(url, f"{where}: {exc}") from None


__all__ = [
    "DecodeError",
    "delta_decode",
    "delta_residuals",
    "encode_image",
    "encode_mask",
    "encode_mask_as",
    "encode_mask_pbm",
    "encode_z",
    "encode_meta",
    "encode_sample",
    "decode_image",
    "decode_mask",
    "decode_mask_as",
    "decode_mask_pbm",
    "decode_z",
    "decode_meta",
    "decode_sample",
    "image_size",
]
