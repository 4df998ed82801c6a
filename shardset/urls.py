"""Name a shard set: resolve globs, brace ranges, manifest paths, folders and URLs to shard URLs.

`resolve(spec)` returns a `ShardSetRef` (shard URLs plus the manifest when one is found), and
`open_url(url)` opens one shard or manifest for reading: local paths and `file://` directly,
`http(s)://` through urllib, anything else with a scheme (`s3://`, `gs://`, ...) through fsspec
when it is installed.

An http(s) read survives the network (teams share sets from ordinary web servers): a body cut
short (the connection closed, reset or timed out before Content-Length) is taken up again where it
stopped, with a Range request when the server honours it (206 and a Content-Range starting there),
else with a plain request whose first bytes, already delivered, are skipped; up to RETRY_ATTEMPTS
tries in a row that deliver nothing, waiting RETRY_BACKOFF_S, then twice that, and so on. When
they are spent the read fails with `ShardConnectionError`, which says the connection dropped: a
shard is called changed only when its complete bytes differ from its manifest record.
"""
from __future__ import annotations

import glob
import http.client
import io
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from core.errors import first_line

from .format import SHARD_FILE_RE, NothingMatchedError, ShardError, ShardSetError
from .manifest import ManifestError, is_manifest_file, parse_manifest

log = logging.getLogger(__name__)

HTTP_TIMEOUT_S = 60.0
RETRY_ATTEMPTS = 5  # tries in a row that deliver nothing before a read gives up
RETRY_BACKOFF_S = 0.5  # the wait before the first try; it doubles with each try in a row
MAX_RECONNECTS = 100  # tries of one stream in all: a server that dribbles a byte per connection ends too
# answers that say "not now" rather than "not there": worth another try
RETRY_STATUSES = (408, 425, 429, 500, 502, 503, 504)
_BRACE_RE = re.compile(r"\{([^{}]*)\}")
_RANGE_RE = re.compile(r"(-?\d+)\.\.(-?\d+)")
_MAX_EXPANSION = 1_000_000


def expand_braces(spec: str) -> list[str]:
    """`a-{000000..000002}.tar.zst` -> three names; `{a,b}` -> two. Zero padding follows the
    wider bound, as in bash and WebDataset's braceexpand."""
    m = _BRACE_RE.search(spec)
    if not m:
        return [spec]
    body = m.group(1)
    rng = _RANGE_RE.fullmatch(body)
    if rng:
        lo_s, hi_s = rng.groups()
        lo, hi = int(lo_s), int(hi_s)
        if hi < lo:
            raise ShardSetError(f"brace range {{{body}}} in {spec!r} runs backwards; write {{{lo_s}..{hi_s}}} low..high")
        if hi - lo >= _MAX_EXPANSION:
            raise ShardSetError(f"brace range {{{body}}} in {spec!r} names over {_MAX_EXPANSION} shards")
        width = max(len(lo_s), len(hi_s)) if (lo_s.startswith("0") or hi_s.startswith("0")) else 0
        choices = [str(i).zfill(width) for i in range(lo, hi + 1)]
    elif "," in body:
        choices = body.split(",")
    else:
        raise ShardSetError(f"brace group {{{body}}} in {spec!r} is neither a range {{000..099}} nor a list {{a,b}}")
    head, tail = spec[: m.start()], spec[m.end() :]
    return [out for c in choices for out in expand_braces(head + c + tail)]


def _scheme(url: str) -> str:
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", url)
    return m.group(1).lower() if m else ""


def _file_url_to_path(url: str) -> str:
    return urllib.request.url2pathname(urllib.parse.urlparse(url).path)


class ShardConnectionError(ShardError):
    """The connection to a remote shard or manifest dropped and could not be taken up again: the
    network or the server failed, not (as far as anyone can tell) the shard."""

    def __reduce__(self):  # picklable across DataLoader worker processes, as its own class
        return (type(self), (self.url, self.reason))


class _Retry(Exception):
    """A try that failed in a way another try may not: the reason, for the final message."""


def _why(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)  # URLError wraps the socket's error
    inner = reason if isinstance(reason, BaseException) else exc
    return f"{type(inner).__name__}: {first_line(inner)}" if str(inner).strip() else type(inner).__name__


def _content_length(resp) -> int | None:
    value = resp.headers.get("Content-Length")
    return int(value) if value is not None and value.isdigit() else None


def _validator(resp) -> str | None:
    """What names this version of the resource, to tell a resumed body from another file's."""
    return resp.headers.get("ETag") or resp.headers.get("Last-Modified")


class _ResumingHTTPStream(io.RawIOBase):
    """The body of an http(s) GET that is taken up again where it stopped when the connection
    drops (see the module's docstring). `pos` counts the bytes delivered to the reader."""

    def __init__(self, url: str):
        self.url = url
        self.pos = 0
        self._failures = 0  # tries in a row that delivered nothing
        self._tries = 0
        self._ranges = True  # until the server answers a Range request with something else
        self._length: int | None = None  # None: chunked, the end is the server's word
        self._version: str | None = None
        self._opened = False
        self._resp = self._connect(first=True)
        self._opened = True
        self._length = _content_length(self._resp)
        self._version = _validator(self._resp)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if not len(b):
            return 0
        while True:
            try:
                n = self._resp.readinto(b)
            except (OSError, http.client.HTTPException) as exc:
                why = _why(exc)
            else:
                if n:
                    self.pos += n
                    self._failures = 0
                    return n
                if self._length is None or self.pos >= self._length:
                    return 0
                # http.client reports a body cut short as a plain end: Content-Length tells them apart
                why = "the server closed the connection before the end"
            self._resp.close()
            self._resp = self._connect(first=False, why=why)

    def _connect(self, *, first: bool, why: str = ""):
        while True:
            if not first:
                self._failures += 1
                self._tries += 1
                if self._failures > RETRY_ATTEMPTS or self._tries > MAX_RECONNECTS:
                    raise self._gave_up(why)
                time.sleep(RETRY_BACKOFF_S * 2 ** (self._failures - 1))
            try:
                return self._request(first)
            except _Retry as exc:
                why, first = str(exc), False

    def _gave_up(self, why: str) -> ShardConnectionError:
        if not self._opened:
            return ShardConnectionError(self.url, f"cannot open ({why}), and {RETRY_ATTEMPTS} more tries failed; "
                                                  "the server or the network failed: rerun when it answers")
        of = f" of {self._length}" if self._length is not None else ""
        tries = (f"{RETRY_ATTEMPTS} tries in a row to take it up again failed" if self._failures > RETRY_ATTEMPTS
                 else f"it was taken up again {MAX_RECONNECTS} times")
        return ShardConnectionError(self.url, f"the connection dropped after {self.pos}{of} bytes and {tries} "
                                              f"(last: {why}); the server or the network failed, not necessarily "
                                              "the shard: rerun when it answers")

    def _request(self, first: bool):
        """One GET: the whole body, or (after a drop) the body from `pos` on, checked to be the same file."""
        start = 0 if first else self.pos
        headers = {"Range": f"bytes={start}-"} if start and self._ranges else {}
        try:
            resp = urllib.request.urlopen(urllib.request.Request(self.url, headers=headers), timeout=HTTP_TIMEOUT_S)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code in RETRY_STATUSES:
                raise _Retry(f"HTTP {exc.code} {exc.reason}") from None
            if not self._opened:
                raise ShardError(self.url, f"HTTP {exc.code} {exc.reason}") from None
            raise ShardError(self.url, f"HTTP {exc.code} {exc.reason} when taking up the read again after "
                                       f"{start} bytes") from None
        except (OSError, http.client.HTTPException) as exc:
            # a first connection refused or a name not found is a wrong address, not a drop
            refused = isinstance(getattr(exc, "reason", exc), (ConnectionRefusedError, socket.gaierror))
            if first and refused:
                raise ShardError(self.url, f"cannot open ({exc})") from None
            raise _Retry(_why(exc)) from None
        if not self._opened:
            return resp
        try:
            self._check_same(resp)
            if not start:
                return resp
            if resp.status == 206:
                return self._ranged(resp, start)
            # no Range support: the body again from its first byte; what was delivered is skipped
            self._skip(resp, start)
            return resp
        except BaseException:
            resp.close()
            raise

    def _check_same(self, resp) -> None:
        version = _validator(resp)
        if self._version and version and version != self._version:
            raise self._changed(f"{self._version} -> {version}")
        total = _content_length(resp) if resp.status == 200 else None
        if total is not None and self._length is not None and total != self._length:
            raise self._changed(f"{self._length} bytes, now {total}")

    def _changed(self, detail: str) -> ShardError:
        # the bytes delivered and those to come are of two versions: no reader should join them
        return ShardError(self.url, f"changed on the server while it was read ({detail}); read it again")

    def _ranged(self, resp, start: int):
        content_range = resp.headers.get("Content-Range", "")
        m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", content_range.strip())
        if m is None or int(m.group(1)) != start:
            self._ranges = False  # a server that cannot be trusted with ranges gets whole requests
            raise _Retry(f"asked for bytes {start}- the server answered Content-Range {content_range!r}")
        if m.group(3) != "*" and self._length is not None and int(m.group(3)) != self._length:
            raise self._changed(f"{self._length} bytes, now {m.group(3)}")
        if m.group(3) != "*" and self._length is None:  # a chunked first answer: now the end is known
            self._length = int(m.group(3))
        return resp

    def _skip(self, resp, n: int) -> None:
        left = n
        try:
            while left:
                chunk = resp.read(min(left, 1 << 16))
                if not chunk:
                    raise _Retry(f"the connection closed {n - left} bytes into the {n} already read")
                left -= len(chunk)
        except (OSError, http.client.HTTPException) as exc:
            raise _Retry(_why(exc)) from None

    def close(self) -> None:
        try:
            self._resp.close()
        finally:
            super().close()


def open_url(url: str) -> BinaryIO:
    """Open a shard or manifest for binary reading; failures are ShardErrors naming the URL."""
    scheme = _scheme(url)
    try:
        if scheme == "":
            return open(url, "rb")
        if scheme == "file":
            return open(_file_url_to_path(url), "rb")
        if scheme in ("http", "https"):
            return io.BufferedReader(_ResumingHTTPStream(url), 1 << 16)
    except FileNotFoundError:
        raise ShardError(url, "no such file") from None
    except OSError as exc:
        raise ShardError(url, f"cannot open ({exc})") from None
    try:
        import fsspec
    except ImportError:
        raise ShardError(url, f"reading {scheme}:// URLs needs fsspec: pip install 'bgw-seg[remote]'") from None
    try:
        return fsspec.open(url, "rb").open()
    except (OSError, ValueError, ImportError) as exc:
        raise ShardError(url, f"cannot open through fsspec ({exc})") from None


def _read_text(url: str, limit: int = 64 << 20) -> bytes:
    with open_url(url) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ManifestError(f"{url}: manifest is over {limit} bytes")
    return data


def _join(base: str, name: str) -> str:
    """URL of `name` next to the manifest at `base`."""
    if _scheme(base) == "":
        return str(Path(base).parent / name)
    return base.rsplit("/", 1)[0] + "/" + name


@dataclass
class ShardSetRef:
    """Shard URLs of a set, in order, and its manifest when one was found."""

    urls: list[str]
    manifest: dict | None = None
    manifest_url: str | None = None
    specs: list[str] = field(default_factory=list)
    _records: dict | None = field(default=None, init=False, repr=False, compare=False)

    def split_urls(self, split: str) -> list[str]:
        """URLs of the shards in `split` ("train" or "val"), by the manifest.

        Without a manifest every shard counts as train (there is no record of a split).
        """
        if split not in ("train", "val"):
            raise ShardSetError(f"split {split!r} is unknown: choose train or val")
        if self.manifest is None:
            log.warning("no manifest for %s: treating every shard as train", self.specs)
            return list(self.urls) if split == "train" else []
        splits = {r["file"]: r["split"] for r in self.manifest["shards"]}
        return [u for u in self.urls if splits.get(u.rsplit("/", 1)[-1]) == split]

    def record(self, url: str) -> dict | None:
        """The manifest's record of the shard at `url` (its "sha256" and "bytes" let readers check
        it while streaming: `iter_samples(url, expect=ref.record(url))`), or None."""
        if self.manifest is None:
            return None
        if self._records is None:
            self._records = {r["file"]: r for r in self.manifest["shards"]}
        return self._records.get(url.rsplit("/", 1)[-1])

    @property
    def name(self) -> str | None:
        return self.manifest["name"] if self.manifest else None


def load_manifest_url(url: str) -> dict:
    return parse_manifest(_read_text(url), url)


def _from_manifest(url: str) -> ShardSetRef:
    manifest = load_manifest_url(url)
    urls = [_join(url, r["file"]) for r in manifest["shards"]]
    return ShardSetRef(urls=urls, manifest=manifest, manifest_url=url, specs=[url])


def _from_folder(folder: Path, spec: str) -> ShardSetRef:
    manifests = sorted(p for p in folder.glob("*.json") if is_manifest_file(p))
    if len(manifests) == 1:
        return _from_manifest(str(manifests[0]))
    if len(manifests) > 1:
        names = ", ".join(str(p) for p in manifests)
        raise ShardSetError(f"{spec} holds several shard sets ({names}); name one manifest")
    shards = sorted(str(p) for p in folder.glob("*.tar.zst"))
    if not shards:
        raise NothingMatchedError(f"{spec} holds no shard set (no NAME.json and no *.tar.zst)")
    return ShardSetRef(urls=shards, specs=[spec])


def _attach_manifest(urls: list[str], spec: str) -> ShardSetRef:
    """Local shard files of one set: attach NAME.json beside them when it exists."""
    names = {(str(Path(u).parent), m["name"]) for u in urls if (m := SHARD_FILE_RE.fullmatch(Path(u).name))}
    if len(names) == 1 and all(SHARD_FILE_RE.fullmatch(Path(u).name) for u in urls):
        folder, name = names.pop()
        path = Path(folder) / f"{name}.json"
        if path.exists():
            manifest = parse_manifest(path.read_bytes(), str(path))
            return ShardSetRef(urls=urls, manifest=manifest, manifest_url=str(path), specs=[spec])
    return ShardSetRef(urls=urls, specs=[spec])


def _resolve_one(spec: str) -> ShardSetRef:
    scheme = _scheme(spec)
    if scheme == "file":
        return _resolve_one(_file_url_to_path(spec))
    if scheme:
        expanded = expand_braces(spec)
        if len(expanded) == 1 and spec.endswith(".json"):
            return _from_manifest(spec)
        if any(ch in spec for ch in "*?[") and scheme not in ("http", "https"):
            try:
                import fsspec
            except ImportError:
                raise ShardSetError(f"globbing {scheme}:// URLs needs fsspec: pip install 'bgw-seg[remote]'") from None
            urls = []
            for s in expanded:
                fs, _, paths = fsspec.get_fs_token_paths(s)
                urls += sorted(fs.unstrip_protocol(p) for p in paths)
            return ShardSetRef(urls=urls, specs=[spec])
        return ShardSetRef(urls=expanded, specs=[spec])
    path = Path(spec)
    if path.is_dir():
        return _from_folder(path, spec)
    if spec.endswith(".json") and path.is_file():
        return _from_manifest(spec)
    urls: list[str] = []
    for s in expand_braces(spec):
        if any(ch in s for ch in "*?["):
            matches = sorted(m for m in glob.glob(s) if m.endswith(".tar.zst"))
            if not matches:
                raise NothingMatchedError(f"{s!r} matches no *.tar.zst files; check the path, or name a folder or NAME.json")
            urls += matches
        elif os.path.isfile(s):
            urls.append(s)
        else:
            raise NothingMatchedError(f"{s!r} does not exist (expected a shard, a manifest NAME.json, a folder or a glob)")
    return _attach_manifest(urls, spec)


def resolve(spec: str | list[str] | tuple[str, ...]) -> ShardSetRef:
    """Shard URLs (and manifest, when found) named by `spec`: a glob (`shards/cub-*`), a brace range
    (`cub-{000000..000099}.tar.zst`), a manifest path or URL, a folder holding one set, `file://`,
    `http(s)://` or an fsspec URL; or a list of any of these (concatenated, duplicates dropped)."""
    if isinstance(spec, (str, os.PathLike)):
        return _resolve_one(os.fspath(spec))
    refs = [_resolve_one(os.fspath(s)) for s in spec]
    if not refs:
        raise NothingMatchedError("empty shard-set spec: name at least one shard, glob, folder or manifest")
    urls = list(dict.fromkeys(u for r in refs for u in r.urls))
    manifests = {r.manifest_url for r in refs}
    if len(manifests) == 1 and refs[0].manifest is not None:
        return ShardSetRef(urls=urls, manifest=refs[0].manifest, manifest_url=refs[0].manifest_url,
                           specs=[s for r in refs for s in r.specs])
    return ShardSetRef(urls=urls, specs=[s for r in refs for s in r.specs])
