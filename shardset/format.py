"""The shard-set format in constants: member names, encodings, keys, bounds and the one error type.

Everything that reads or writes a shard agrees on these names; nothing here does I/O.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

FORMAT_NAME = "bgw-shardset"
FORMAT_VERSION = 1

# Image encodings a shard may carry. The lossless ones round-trip the uint8 image exactly.
ENCODINGS = ("png", "webp", "jpg", "npy")
LOSSLESS_ENCODINGS = frozenset({"png", "webp", "npy"})
# Chosen from benchmarks/shard_io.py (table in shards/README.md): raw uint8 under zstd is lossless
# and the only encoding that reads >= 3x faster than a PNG folder and >= 2000 samples/s per core
# (PNG and lossless WebP decode no faster than the baseline; JPEG is lossy). It costs about a
# third more bytes than PNG.
DEFAULT_ENCODING = "npy"

SPLITS = ("train", "val")

# Set names and sample keys: no dots (the member name splits at the first dot, as WebDataset
# does), no slashes (no path traversal when a shard is untarred).
NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
KEY_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
SHARD_FILE_RE = re.compile(r"(?P<name>[A-Za-z0-9_-]{1,64})-(?P<index>\d{6})\.tar\.zst")

# Member field (the part after the key) -> sample field. Only these are ever decoded.
MEMBER_FIELDS = {
    **{f"image.{enc}": "image" for enc in ENCODINGS},
    "mask.png": "mask",
    "z.npy": "z",
    "meta.json": "meta",
}
MEMBER_RE = re.compile(
    r"(?P<key>[A-Za-z0-9_-]{1,128})\.(?P<field>"
    + "|".join(re.escape(f) for f in MEMBER_FIELDS)
    + r")"
)
ALLOWED_MEMBERS_HINT = "KEY.image.{png,webp,jpg,npy}, KEY.mask.png, KEY.z.npy, KEY.meta.json"

# Tar header fields fixed so that rewriting a shard from the same samples is byte-identical.
TAR_MTIME = 0
TAR_UID = 0
TAR_GID = 0
TAR_UNAME = "bgw"
TAR_GNAME = "bgw"
TAR_MODE = 0o444

# zstd level of the shards, recorded in each shard's manifest record ("zstd_level"). Level 1:
# raw uint8 images barely compress (level 3 saves 3-6% more bytes), and level 1 compresses about
# 2x faster and decompresses about 1.4x faster than 3 (benchmarks/gen_synth.py --zstd-levels).
ZSTD_LEVEL = 1
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def shard_filename(name: str, index: int) -> str:
    """`NAME-000123.tar.zst`: zero-padded so that a sorted listing is the shard order."""
    return f"{name}-{index:06d}.tar.zst"


def manifest_filename(name: str) -> str:
    return f"{name}.json"


def sample_key(name: str, shard: int, i: int) -> str:
    """Globally unique key of sample `i` of shard `shard` in set `name`."""
    return f"{name}-{shard:06d}-{i:06d}"


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValueError(
            f"set name {name!r} is invalid: use 1-64 characters from [A-Za-z0-9_-] (no dots or slashes)"
        )
    return name


def check_encoding(encoding: str) -> str:
    if encoding not in ENCODINGS:
        raise ValueError(f"image encoding {encoding!r} is unknown: choose one of {', '.join(ENCODINGS)}")
    return encoding


@dataclass(frozen=True)
class Limits:
    """Bounds applied when reading shards from strangers (all sizes in bytes, sides in pixels).

    The defaults fit 128x128 to 4096x4096 samples with room to spare; raise them for bigger data.
    """

    max_shard_bytes: int = 2 << 30  # decompressed tar size of one shard (zip-bomb bound)
    max_member_bytes: int = 64 << 20  # one tar member
    max_window_bytes: int = 1 << 27  # zstd window, i.e. decoder memory
    max_image_side: int = 8192  # image/mask width or height, checked from the header before decoding
    max_image_pixels: int = 4096 * 4096  # width * height, checked before decoding
    max_z_dim: int = 1 << 16  # length of the latent vector
    max_meta_bytes: int = 1 << 16  # the per-sample JSON
    max_samples: int = 1 << 20  # samples per shard


class ShardError(Exception):
    """A shard (or one sample of it) is corrupt, truncated, tampered or over a bound.

    `url` names the shard so that every message says which file to look at.
    """

    def __init__(self, url: str, reason: str):
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason

    def __reduce__(self):  # picklable across DataLoader worker processes
        return (ShardError, (self.url, self.reason))


class ShardSetExistsError(FileExistsError):
    """Mode `new` found a set of that name already in the folder."""

    def __str__(self) -> str:  # FileExistsError's default adds errno noise
        return str(self.args[0])
