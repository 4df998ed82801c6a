"""The shard-set format in constants: member names, encodings, keys, bounds and the one error type.

Everything that reads or writes a shard agrees on these names; nothing here does I/O.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from core.errors import UserError

FORMAT_NAME = "bgw-shardset"
FORMAT_VERSION = 1
# `shardset export --plain-tar`: the shards decompressed, for tools that read only plain tar
PLAIN_TAR_FORMAT = "bgw-shardset-plain-tar"
PLAIN_TAR_VERSION = 1

# Image encodings a shard may carry. The lossless ones round-trip the uint8 image exactly.
ENCODINGS = ("delta", "png", "webp", "jpg", "npy")
LOSSLESS_ENCODINGS = frozenset({"delta", "png", "webp", "npy"})
# Chosen from benchmarks/shard_io.py (table in shardset/FORMAT.md): `delta` (the image's gradient
# residuals after subtract-green, as .npy, entropy-coded by the shard's zstd) is lossless, takes
# about 0.8x the bytes of a PNG folder on photos and reads 3.5-4x faster per core, and numpy
# alone decodes it. `npy` (raw uint8) reads a little faster but costs 1.45x the PNG folder's bytes.
DEFAULT_ENCODING = "delta"
# The mask member of each encoding. `delta` sets store the mask as a binary PBM (bit-packed rows,
# zstd-compressed with the shard: a third smaller than the 1-bit PNG, and it decodes ten times
# faster); the older encodings keep the 1-bit PNG, so their shards stay byte-identical.
MASK_FIELDS = {"delta": "mask.pbm"}
DEFAULT_MASK_FIELD = "mask.png"


def mask_field(encoding: str) -> str:
    """The member field (`mask.pbm` or `mask.png`) that holds the mask in a set of `encoding`."""
    return MASK_FIELDS.get(encoding, DEFAULT_MASK_FIELD)


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
    "mask.pbm": "mask",
    "z.npy": "z",
    "meta.json": "meta",
}
MEMBER_RE = re.compile(
    r"(?P<key>[A-Za-z0-9_-]{1,128})\.(?P<field>"
    + "|".join(re.escape(f) for f in MEMBER_FIELDS)
    + r")"
)
ALLOWED_MEMBERS_HINT = "KEY.image.{delta,png,webp,jpg,npy}, KEY.mask.{pbm,png}, KEY.z.npy, KEY.meta.json"

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


def plain_tar_filename(name: str, index: int) -> str:
    """`NAME-000123.tar`: shard `index` of a plain-tar export (the .tar.zst shard, decompressed)."""
    return f"{name}-{index:06d}.tar"


def plain_tar_glob(name: str) -> str:
    return f"{name}-" + "[0-9]" * 6 + ".tar"


def manifest_filename(name: str) -> str:
    return f"{name}.json"


def key_prefix(name: str, shard: int) -> str:
    """`NAME-000123-`: what every sample key of shard `shard` of set `name` starts with."""
    return f"{name}-{shard:06d}-"


def sample_key(name: str, shard: int, i: int) -> str:
    """Globally unique key of sample `i` of shard `shard` in set `name`."""
    return f"{key_prefix(name, shard)}{i:06d}"


def shard_glob(name: str) -> str:
    """The glob pattern matching exactly the shard files of set `name` (fnmatch syntax)."""
    return f"{name}-" + "[0-9]" * 6 + ".tar.zst"


def parse_shard_filename(filename: str) -> tuple[str, int] | None:
    """(set name, shard index) of a shard file name `NAME-000123.tar.zst`; None for any other name."""
    m = SHARD_FILE_RE.fullmatch(filename)
    return (m["name"], int(m["index"])) if m else None


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ShardSetError(
            f"set name {name!r} is invalid: use 1-64 characters from [A-Za-z0-9_-] (no dots or slashes)"
        )
    return name


def check_encoding(encoding: str) -> str:
    if encoding not in ENCODINGS:
        raise ShardSetError(f"image encoding {encoding!r} is unknown: choose one of {', '.join(ENCODINGS)}")
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


class ShardSetError(UserError, ValueError):
    """A shard set named or used wrongly: a bad set name or encoding, a spec that names no set,
    settings that differ from the set's on resume. The message says what to change."""


class NothingMatchedError(ShardSetError):
    """A shard-set spec that names no shard: a glob matching nothing, a path that does not exist,
    a folder holding no set."""


class ShardError(UserError):
    """A shard (or one sample of it) is corrupt, truncated, tampered or over a bound.

    `url` names the shard so that every message says which file to look at.
    """

    def __init__(self, url: str, reason: str):
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason

    def __reduce__(self):  # picklable across DataLoader worker processes
        return (ShardError, (self.url, self.reason))


class ShardSetExistsError(UserError, FileExistsError):
    """Mode `new` found a set of that name already in the folder."""

    def __str__(self) -> str:  # FileExistsError's default adds errno noise
        return str(self.args[0])
