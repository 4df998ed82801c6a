"""Safe streaming reader of one shard: bounded zstd stream -> strict ustar parser -> samples.

Built for shards from strangers. The zstd frame header is checked before inflating (declared size
and window), the inflated byte count is bounded while streaming, every tar header is checked
(checksum, regular files only, known member names only, bounded sizes), and each sample is
decoded by `codec.decode_sample`. Every failure is a `ShardError` naming the shard.

Integrity: `open_shard(url, expect=record)` (a manifest shard record, `ShardSetRef.record(url)`)
hashes the compressed bytes as the decoder pulls them, so no extra pass over the file; when the
stream reaches its end, a size or sha256 that differs from the record is a `ShardError`, and so
is (in `iter_raw_samples`) a sample count that differs. A shard
read only in part (a reader that stops early) is not checked; one without a record never is.
"""
from __future__ import annotations

import hashlib
import io
from typing import BinaryIO, Iterator

import zstandard

from .codec import decode_sample
from .format import ALLOWED_MEMBERS_HINT, MEMBER_RE, ZSTD_MAGIC, Limits, ShardError

_BLOCK = 512


class _Prefixed(io.RawIOBase):
    """`prefix` followed by the rest of `raw`: lets us inspect a header without seeking."""

    def __init__(self, prefix: bytes, raw: BinaryIO):
        self._prefix, self._raw = prefix, raw

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self._prefix:
            n = min(len(b), len(self._prefix))
            b[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        data = self._raw.read(len(b))
        b[: len(data)] = data
        return len(data)


class HashingReader(io.RawIOBase):
    """The compressed bytes of one shard, hashed as they are read and checked against the
    manifest's record (`sha256`, `bytes`) at the end of the stream.

    This is the one place shard bytes are checked while streaming: every reader (iter_samples,
    the webdataset stages, the trainer, eval-seg's shards:SET, export) opens shards through
    `open_shard`. The check runs when a read returns end-of-file, and again (a no-op by then)
    from `check()`, which iter_raw_samples calls after the last tar member. The bytes it judges
    are complete: a remote read cut short is taken up again by `open_url`, or fails there saying
    the connection dropped, so "changed" is said only of a whole shard that differs.
    """

    def __init__(self, raw: BinaryIO, url: str, expect: dict):
        self._raw, self.url = raw, url
        self._sha256, self._bytes = str(expect["sha256"]), int(expect["bytes"])
        self._hash = hashlib.sha256()
        self.count = 0
        self._checked = False

    def readable(self) -> bool:
        return True

    def _take(self, data: bytes) -> bytes:
        if data:
            self._hash.update(data)
            self.count += len(data)
            if self.count > self._bytes:
                raise ShardError(self.url, f"is longer than the {self._bytes} bytes its manifest record says: "
                                           "changed since it was written; run `shardset verify`")
        else:
            self.check()
        return data

    def read(self, size: int = -1) -> bytes:
        return self._take(self._raw.read(size))

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def check(self) -> None:
        """Hash what is left unread (nothing, normally) and compare with the record, once."""
        if self._checked:
            return
        self._checked = True
        while chunk := self._raw.read(1 << 16):
            self._hash.update(chunk)
            self.count += len(chunk)
        if self.count != self._bytes:
            raise ShardError(self.url, f"is {self.count} bytes, its manifest record says {self._bytes}: "
                                       "changed since it was written; run `shardset verify`")
        if self._hash.hexdigest() != self._sha256:
            raise ShardError(self.url, "sha256 differs from its manifest record: the shard changed (corrupt or "
                                       "tampered) since it was written; run `shardset verify`")

    def close(self) -> None:
        try:
            self._raw.close()
        finally:
            super().close()


class BoundedZstdReader(io.RawIOBase):
    """Decompressed view of a zstd stream that refuses to inflate past `limits.max_shard_bytes`."""

    def __init__(self, raw: BinaryIO, url: str, limits: Limits = Limits()):
        self.url, self.limits, self._raw = url, limits, raw
        head = _read_exact_raw(raw, 18)
        if not head.startswith(ZSTD_MAGIC):
            raise ShardError(url, "not a zstd stream (bad magic number); shards are NAME-NNNNNN.tar.zst")
        try:
            params = zstandard.get_frame_parameters(head)
        except zstandard.ZstdError as exc:
            raise ShardError(url, f"corrupt zstd frame header ({exc})") from None
        if params.content_size != zstandard.CONTENTSIZE_UNKNOWN and params.content_size > limits.max_shard_bytes:
            raise ShardError(
                url,
                f"zstd frame declares {params.content_size} decompressed bytes, over the bound of "
                f"{limits.max_shard_bytes} (Limits.max_shard_bytes); refused before inflating",
            )
        if params.window_size > limits.max_window_bytes:
            raise ShardError(url, f"zstd window of {params.window_size} bytes exceeds Limits.max_window_bytes")
        dctx = zstandard.ZstdDecompressor(max_window_size=limits.max_window_bytes)
        self._stream = dctx.stream_reader(_Prefixed(head, raw), read_across_frames=True, closefd=False)
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        try:
            n = self._stream.readinto(b)
        except zstandard.ZstdError as exc:
            raise ShardError(self.url, f"corrupt zstd data ({exc})") from None
        self.count += n
        if n == 0:
            self.check()
        if self.count > self.limits.max_shard_bytes:
            raise ShardError(
                self.url,
                f"decompresses past the bound of {self.limits.max_shard_bytes} bytes (Limits.max_shard_bytes): "
                "a zip bomb or an over-size shard; refused",
            )
        return n

    def check(self) -> None:
        """At the end of the stream: the manifest check of the compressed bytes, when asked for."""
        if isinstance(self._raw, HashingReader):
            self._raw.check()

    def close(self) -> None:
        try:
            self._raw.close()
        finally:
            super().close()


def _read_exact_raw(f: BinaryIO, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        chunk = f.read(n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _parse_octal(field: bytes, url: str, what: str) -> int:
    text = field.rstrip(b"\0 ").lstrip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise ShardError(url, f"corrupt tar header ({what} field {field!r} is not octal)") from None


def iter_members(stream: BinaryIO, url: str, limits: Limits = Limits()) -> Iterator[tuple[str, bytes]]:
    """(name, data) of each member of a ustar stream, strictly checked. Refuses links, folders,
    pax/GNU extension headers, unknown names and over-size members."""
    while True:
        header = _read_exact_raw(stream, _BLOCK)
        if len(header) < _BLOCK:
            raise ShardError(url, "truncated tar stream (ended inside a header); the shard is incomplete")
        if header == b"\0" * _BLOCK:
            # end of archive; whatever follows must be zero padding
            while rest := stream.read(1 << 16):
                if rest.count(0) != len(rest):
                    raise ShardError(url, "data after the end of the tar archive")
            return
        stored = _parse_octal(header[148:156], url, "checksum")
        computed = sum(header[:148]) + 8 * 32 + sum(header[156:])
        if stored != computed:
            raise ShardError(url, "corrupt tar header (checksum mismatch)")
        name = header[0:100].split(b"\0", 1)[0]
        prefix = header[345:500].split(b"\0", 1)[0] if header[257:263] == b"ustar\0" else b""
        if prefix:
            name = prefix + b"/" + name
        try:
            name_s = name.decode("ascii")
        except UnicodeDecodeError:
            raise ShardError(url, f"tar member name {name!r} is not ASCII") from None
        typeflag = header[156:157]
        if typeflag not in (b"0", b"\0"):
            raise ShardError(url, f"tar member {name_s!r} has type {typeflag!r}; only regular files are allowed")
        if not MEMBER_RE.fullmatch(name_s):
            raise ShardError(url, f"unexpected tar member {name_s!r}; only {ALLOWED_MEMBERS_HINT} are allowed")
        size = _parse_octal(header[124:136], url, "size")
        if size > limits.max_member_bytes:
            raise ShardError(url, f"tar member {name_s!r} is {size} bytes, over Limits.max_member_bytes "
                                  f"({limits.max_member_bytes})")
        padded = -(-size // _BLOCK) * _BLOCK
        data = _read_exact_raw(stream, padded)
        if len(data) < padded:
            raise ShardError(url, f"truncated tar stream (ended inside member {name_s!r})")
        yield name_s, data[:size]


def iter_raw(stream: BinaryIO, url: str, limits: Limits = Limits()) -> Iterator[dict]:
    """Group members by key into raw samples {"__key__", "__url__", field: bytes}."""
    current: dict | None = None
    seen: set[str] = set()
    count = 0
    for name, data in iter_members(stream, url, limits):
        key, field = name.split(".", 1)
        if current is not None and key != current["__key__"]:
            yield current
            current = None
        if current is None:
            if key in seen:
                raise ShardError(url, f"sample key {key!r} appears in two places (members must be grouped by key)")
            count += 1
            if count > limits.max_samples:
                raise ShardError(url, f"more than Limits.max_samples={limits.max_samples} samples")
            seen.add(key)
            current = {"__key__": key, "__url__": url}
        if field in current:
            raise ShardError(url, f"tar member {name!r} appears twice")
        current[field] = data
    if current is not None:
        yield current


def open_shard(url: str, limits: Limits = Limits(), expect: dict | None = None) -> BoundedZstdReader:
    """Decompressed, bounded stream of the shard at `url` (local path, file://, http(s)://, fsspec).

    With `expect` (the shard's manifest record: "sha256" and "bytes") the compressed bytes are
    hashed while they stream and checked at the end of the stream (see HashingReader)."""
    from .urls import open_url

    raw = open_url(url)
    try:
        if expect is not None:
            raw = HashingReader(raw, url, expect)
        return BoundedZstdReader(raw, url, limits)
    except BaseException:
        raw.close()
        raise


def check_sample_count(url: str, count: int, expect: dict | None) -> None:
    """A shard read to its end holds the number of samples its manifest record says (no check
    without a record). Its bytes matched the record's sha256 by then, so a different count means
    the manifest's count was edited: every reader refuses to go on, as `shardset verify` does."""
    if expect is not None and count != expect.get("samples", count):
        raise ShardError(url, f"holds {count} samples, its manifest record says {expect['samples']}: the "
                              "manifest does not describe this shard; run `shardset verify`")


def iter_raw_samples(url: str, *, limits: Limits = Limits(), expect: dict | None = None) -> Iterator[dict]:
    """Raw (undecoded) samples of one shard; with `expect`, checked against its manifest record
    (bytes, sha256, sample count) once the last member is read (before the last sample is handed out)."""
    with open_shard(url, limits, expect) as zs:
        last, count = None, 0
        for raw in iter_raw(io.BufferedReader(zs, 1 << 16), url, limits):
            if last is not None:
                yield last
            last, count = raw, count + 1
        zs.check()
        check_sample_count(url, count, expect)
        if last is not None:
            yield last


def iter_samples(url: str, *, limits: Limits = Limits(), expect: dict | None = None) -> Iterator[dict]:
    """Decoded samples of one shard, streamed; raises ShardError(url, reason) naming the shard."""
    for raw in iter_raw_samples(url, limits=limits, expect=expect):
        sample = decode_sample(raw, limits)
        sample.pop("__url__", None)
        yield sample
