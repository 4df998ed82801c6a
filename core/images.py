"""Read images that users hand us (benchmark folders, `folder:` sets, `shardset import`, the
generator's embedding images): the pixel count in the file's header is checked against a limit
before any pixel is decoded, and a file that does not decode is skipped, never half-decoded.

numpy + OpenCV only. OpenCV cannot read a header without decoding the image (and Pillow is no
dependency), so the sizes come from the headers, parsed here: PNG (IHDR), JPEG (SOFn), WebP
(VP8, VP8L, VP8X), BMP (DIB header) and TIFF/BigTIFF (first IFD; cv2 decodes the first page).
A file of any other kind is skipped: its decoded size cannot be bounded beforehand.

Policy, the same for every reader of user images: an image over the pixel limit, or one that
does not decode (truncated, corrupt, missing), is skipped with a warning and counted, and the
command's summary gives the count. `read_user_image` returns the array or a `Skip` saying why;
callers warn and count.

Decoding uses cv2.imdecode on the file's bytes: a truncated JPEG fails there (cv2.imread would
fill in the missing rows with grey and go on), so a truncated file is never scored in part.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np


# 64 MP = 64,000,000 pixels (8000 x 8000), 400 times the largest ECSSD image (400 x 400, from the
# headers of all 2000 ECSSD files: tests/test_images.py::test_header_sizes_match_decoding_on_ecssd).
# An RGB image at the limit decodes to 192 MB.
DEFAULT_MAX_PIXELS = 64_000_000
SKIP_KINDS = ("too_large", "truncated", "unreadable")
_HEAD = 1 << 16  # header bytes read before anything else; JPEG and TIFF may need more


@dataclass(frozen=True)
class Skip:
    """Why a user image was not read: `kind` (one of SKIP_KINDS, the counter's key) and `reason`
    (one line naming the file)."""

    kind: str
    reason: str


class HeaderError(ValueError):
    """The file's header is not one this module can size (unknown format, corrupt, cut short)."""


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_header(data: bytes) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) from the IHDR chunk."""
    if len(data) < 33 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise HeaderError("not a PNG file (bad signature or missing IHDR)")
    w, h, depth, ctype = struct.unpack(">IIBB", data[16:26])
    return w, h, depth, ctype


def jpeg_size(data: bytes) -> tuple[int, int]:
    if not data.startswith(b"\xff\xd8"):
        raise HeaderError("not a JPEG file (bad SOI marker)")
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise HeaderError("corrupt JPEG marker stream")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01,) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        seglen = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            if i + 9 > n:
                break
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return w, h
        if marker in (0xD9, 0xDA):
            break
        i += 2 + seglen
    raise HeaderError("JPEG has no frame header before its scan data")


def webp_size(data: bytes) -> tuple[int, int]:
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise HeaderError("not a WebP file (bad RIFF header)")
    chunk = data[12:16]
    if chunk == b"VP8X":
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        return w, h
    if chunk == b"VP8L":
        if data[20] != 0x2F:
            raise HeaderError("corrupt lossless WebP header")
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise HeaderError("corrupt lossy WebP header")
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    raise HeaderError(f"unknown WebP chunk {chunk!r}")


def _bmp_size(head: bytes) -> tuple[int, int]:
    if len(head) < 26:
        raise HeaderError("BMP header cut short")
    dib = struct.unpack("<I", head[14:18])[0]
    if dib == 12:  # BITMAPCOREHEADER (OS/2): 16-bit unsigned sides
        return struct.unpack("<HH", head[18:22])
    if dib < 40:
        raise HeaderError(f"BMP with an unknown {dib}-byte DIB header")
    w, h = struct.unpack("<ii", head[18:26])
    return w, abs(h)  # a negative height is a top-down bitmap


def _tiff_size(f: BinaryIO) -> tuple[int, int]:
    """Width and length tags (256, 257) of the first IFD; the IFD may lie anywhere in the file."""

    def at(offset: int, n: int) -> bytes:
        f.seek(offset)
        data = f.read(n)
        if len(data) < n:
            raise HeaderError("TIFF cut short before its first IFD ends")
        return data

    head = at(0, 16)
    order = "<" if head[:2] == b"II" else ">"
    magic = struct.unpack(order + "H", head[2:4])[0]
    if magic == 42:
        ifd, count_fmt, entry, value_at, value_fmt = struct.unpack(order + "I", head[4:8])[0], "H", 12, 8, "I"
    elif magic == 43 and struct.unpack(order + "H", head[4:6])[0] == 8:  # BigTIFF
        ifd, count_fmt, entry, value_at, value_fmt = struct.unpack(order + "Q", head[8:16])[0], "Q", 20, 12, "Q"
    else:
        raise HeaderError("not a TIFF file (bad version)")
    count_size = struct.calcsize(count_fmt)
    n = struct.unpack(order + count_fmt, at(ifd, count_size))[0]
    if not 0 < n <= 4096:
        raise HeaderError(f"TIFF IFD claims {n} entries")
    entries = at(ifd + count_size, n * entry)
    sides = {}
    for i in range(n):
        e = entries[i * entry:(i + 1) * entry]
        tag, typ = struct.unpack(order + "HH", e[:4])
        if tag in (256, 257):
            fmt = {3: "H", 4: "I", 16: "Q"}.get(typ)
            if fmt is None:
                raise HeaderError(f"TIFF tag {tag} has type {typ}, not an integer")
            sides[tag] = struct.unpack(order + fmt, e[value_at:value_at + struct.calcsize(fmt)])[0]
    if len(sides) < 2:
        raise HeaderError("TIFF IFD has no ImageWidth/ImageLength")
    return sides[256], sides[257]


def image_header_size(f: BinaryIO) -> tuple[str, int, int]:
    """(format, width, height) from the header of the open file `f`, decoding no pixel.

    Reads the first 64 KiB; a JPEG whose frame header lies further (large EXIF or ICC segments)
    is read whole (its compressed bytes, never its pixels), a TIFF's IFD is read where it lies."""
    f.seek(0)
    head = f.read(_HEAD)
    try:
        if head.startswith(b"\x89PNG\r\n\x1a\n"):
            w, h, _, _ = png_header(head)
            return "PNG", w, h
        if head.startswith(b"\xff\xd8\xff"):
            try:
                w, h = jpeg_size(head)
            except HeaderError:
                if len(head) < _HEAD:
                    raise
                w, h = jpeg_size(head + f.read())
            return "JPEG", w, h
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            w, h = webp_size(head)
            return "WebP", w, h
        if head[:2] == b"BM":
            w, h = _bmp_size(head)
            return "BMP", w, h
        if head[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):
            w, h = _tiff_size(f)
            return "TIFF", w, h
    except struct.error as exc:
        raise HeaderError(str(exc) or "header cut short") from None
    raise HeaderError("not a PNG, JPEG, WebP, BMP or TIFF file")


def _truncated(fmt: str, data: bytes) -> bool:
    """Whether an undecodable file looks cut short: no end marker where the format has one."""
    if fmt == "JPEG":
        return not data.rstrip(b"\0").endswith(b"\xff\xd9")
    if fmt == "PNG":
        return data[-12:-8] != b"\0\0\0\0" or data[-8:-4] != b"IEND"
    return False


def read_user_image(path: str | os.PathLike, flags: int = cv2.IMREAD_COLOR, *,
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray | Skip:
    """The image at `path` decoded by cv2 with `flags` (BGR order, as cv2.imread gives it), or a
    Skip when it has over `max_pixels` pixels (checked from the header, before decoding), when it
    does not decode (truncated, corrupt), or cannot be read at all."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            fmt, w, h = image_header_size(f)
            if w <= 0 or h <= 0:
                return Skip("unreadable", f"{path}: its {fmt} header claims an empty {w}x{h} image")
            if w * h > max_pixels:
                return Skip("too_large", f"{path}: {w}x{h} = {w * h} pixels, over the limit of {max_pixels} "
                                         "(--max-image-pixels); skipped before decoding")
            f.seek(0)
            data = f.read()
    except HeaderError as exc:
        return Skip("unreadable", f"{path}: {exc}")
    except OSError as exc:
        return Skip("unreadable", f"{path}: cannot read it ({exc.strerror or exc})")
    try:
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as exc:  # OpenCV's own size bounds, or an allocation failure
        return Skip("unreadable", f"{path}: OpenCV refused it ({str(exc).strip().splitlines()[-1]})")
    if arr is None:
        if _truncated(fmt, data):
            return Skip("truncated", f"{path}: truncated {fmt} (the file ends before its image data does)")
        return Skip("unreadable", f"{path}: corrupt {fmt} (OpenCV cannot decode it)")
    if arr.shape[0] * arr.shape[1] != w * h:  # EXIF rotation may swap the sides, never the count
        return Skip("unreadable", f"{path}: decodes to {arr.shape[1]}x{arr.shape[0]}, its header says {w}x{h}")
    return arr
