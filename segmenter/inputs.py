"""The images `segment` reads and where each one's outputs go.

Inputs are image files, folders (their images; with `recursive`, those of every subfolder too),
glob patterns (`photos/*.jpg`, `photos/**/*.png`) and `@list.txt` files: one path or http(s) URL a
line, blank lines and `#` comments ignored, relative paths taken from the list file's folder. A list
is read bounded (a regular UTF-8 text file of at most 16 MB, lines of at most 8192 characters), so
`@/dev/urandom` or a FIFO is refused in one line; a special file (FIFO, device, socket) named as an
image is refused or skipped, never opened: opening a FIFO blocks.

Each image gets a relative name, its outputs' path under --out without the suffix: its path inside
the folder or below the glob's fixed part; its own name for a file named directly or an absolute
path in a list; the path as written for a relative path in a list; `host/path?query` for a URL.
Names are kept as written, Unicode included, and made safe reversibly (`output_name`): `%`, `/`,
control and Windows-reserved characters become %XX (UTF-8), a leading dot %2E, a folder that ends
in an output's extension and a file stem that ends in `.overlay` or `.cutout` have that dot as
%2E, so no input's outputs can take the name of another input's mask, overlay or cutout, and no
folder the name of a file. Two images that would still share a name (x.jpg and x.png) are refused
before any work, as is an --out that lies in an input folder (a later run would read the masks as
images) or is the folder of an input file.

Reading: local files through benchdata.io.read_image, the reader eval-seg uses (core.images: the
pixel limit checked from the header before decoding); a URL is downloaded into a private temporary
file (refused as soon as its header shows more pixels than the limit) under one overall deadline
(`download_timeout`, besides the per-read timeout), following at most 5 redirects and only to
http(s) on the scheme's default port or the URL's own, never from https to http; then decoded by
the same reader. Every reason a download fails is one line. `read_source` calls `admit(cost)`
once the image's size is known and before it is decoded, so the caller can bound the pixels in
flight across images (segmenter.segment).
"""
from __future__ import annotations

import glob
import hashlib
import http.client
import os
import re
import socket
import ssl
import stat
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np

from benchdata.io import IMAGE_EXTS, ImageSkipped, read_image
from core.errors import UserError, first_line
from core.images import HeaderError, Skip, image_header_size
from core.version import package_version
from shardset.urls import RETRY_BACKOFF_S, RETRY_STATUSES

__all__ = ["InputError", "Source", "expand_inputs", "check_out_apart_from_inputs", "read_source", "output_name",
           "special_file", "max_file_bytes", "READ_TIMEOUT_S", "DOWNLOAD_DEADLINE_S", "OUTPUT_TAGS"]

READ_TIMEOUT_S = 30.0  # one read of a download: a server silent this long is given up on
DOWNLOAD_DEADLINE_S = 60.0  # a whole download, redirects included: a server dripping bytes is cut off
MAX_REDIRECTS = 5
# a "not now" (HTTP 408, 425, 429, 5xx; a refused or dropped connection) is tried again, up to this
# many times in all, with waits of RETRY_BACKOFF_S doubling, all inside the one download deadline
DOWNLOAD_ATTEMPTS = 3
LIST_MAX_BYTES = 16 << 20  # 16 MB: some 150,000 URLs; a list longer than that is not a list
LIST_MAX_LINE = 8192
OUTPUT_TAGS = (".overlay", ".cutout")  # the tags of outputs besides the mask: <rel>.overlay.jpg, <rel>.cutout.png
# endings a folder name may not keep: the files of --out (masks, overlays, cutouts, records) end so
_FILE_ENDS = (".png", ".jpg", ".json", ".jsonl")
_NAME_BYTES = 200  # a name's bytes, leaving room under NAME_MAX (255) for the longest tag and a temporary suffix
_UNSAFE = re.compile(r'[\x00-\x1f\x7f%/\\:*?"<>|]')
_CHUNK = 1 << 16


class InputError(UserError):
    """An input that names nothing, or outputs that would collide; one line with the fix."""


@dataclass(frozen=True)
class Source:
    """One image to segment: `location` is a file path or an http(s) URL; `rel` is where its
    outputs go under --out, without a suffix (a POSIX path of plain components)."""

    location: str
    rel: PurePosixPath

    @property
    def is_url(self) -> bool:
        return is_url(self.location)


def is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


def _escape(text: str) -> str:
    return _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode("utf-8")), text)


def _escape_dot_before(name: str, ends: tuple[str, ...]) -> str:
    """`name` with the dot of a reserved ending as %2E (x.cutout -> x%2Ecutout)."""
    lowered = name.lower()  # case-insensitive file systems would merge X.CUTOUT.png with x.cutout.png
    for end in ends:
        if lowered.endswith(end) and len(name) > len(end):
            return name[: -len(end)] + "%2E" + name[-len(end) + 1:]
    return name


def output_name(part: str, *, folder: bool) -> str:
    """One component of an output path, reversible (urllib.parse.unquote gives `part` back) unless
    over _NAME_BYTES, where its head and a hash of the whole keep it unique. `folder`: a folder's
    name, which may not end as a file of --out does; else a file's stem, which may not end in an
    output's tag."""
    name = _escape(part)
    if name.startswith("."):
        name = "%2E" + name[1:]
    name = _escape_dot_before(name, _FILE_ENDS if folder else OUTPUT_TAGS)
    raw = name.encode("utf-8")
    if len(raw) > _NAME_BYTES:
        digest = hashlib.sha256(raw).hexdigest()[:16]
        name = raw[: _NAME_BYTES - 17].decode("utf-8", "ignore") + "~" + digest
    return name


def _rel(folders, name: str, query: str | None = None) -> PurePosixPath:
    """The output path (no suffix) of an image `name` in `folders`: the name's image extension
    dropped (masks are <stem>.png, as eval-seg --pred-dir matches them), a URL's query kept."""
    folders = [f for f in folders if f not in ("", ".", "..")]
    stem = name
    suffix = PurePosixPath(name).suffix if name not in ("", ".", "..") else ""
    if suffix:
        stem = name[: -len(suffix)]
    if query:
        stem += "?" + query
    stem = stem or "image"
    return PurePosixPath(*[output_name(f, folder=True) for f in folders], output_name(stem, folder=False))


def _parts_rel(parts) -> PurePosixPath:
    parts = list(parts)
    return _rel(parts[:-1], parts[-1]) if parts else PurePosixPath("image")


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTS and not path.name.startswith(".")


def _folder_images(folder: Path, recursive: bool) -> list[Path]:
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.is_file() and _is_image(p)
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _glob_base(pattern: str) -> Path:
    """The leading components of a glob pattern that hold no wildcard."""
    parts = []
    for part in Path(pattern).parts:
        if glob.has_magic(part):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def _url_rel(url: str) -> PurePosixPath:
    parsed = urllib.parse.urlsplit(url)
    parts = [urllib.parse.unquote(p) for p in parsed.path.split("/")]
    parts = [p for p in parts if p not in ("", ".", "..")]
    host = parsed.hostname or "host"
    if not parts:
        return _rel([], host, parsed.query)
    return _rel([host, *parts[:-1]], parts[-1], parsed.query)


def special_file(path: Path) -> str | None:
    """What `path` is when it exists and is no regular file nor folder ('a FIFO'), else None."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    for test, what in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return None


def _list_lines(list_file: Path) -> list[str]:
    """The lines of a list file, read bounded: a special file, a file over LIST_MAX_BYTES, binary
    bytes or an over-long line are refused in one line before anything is kept."""
    what = special_file(list_file)
    if what is not None:
        raise InputError(f"@{list_file} is {what}, not a list file; give a text file of paths or URLs, one a line")
    try:
        with open(list_file, "rb") as f:
            data = f.read(LIST_MAX_BYTES + 1)
    except OSError as e:
        raise InputError(f"@{list_file}: cannot read the list ({e.strerror or first_line(e)}); give a text file of "
                         "paths or URLs, one a line") from None
    if len(data) > LIST_MAX_BYTES:
        raise InputError(f"@{list_file} is over {LIST_MAX_BYTES >> 20} MB, not a list of paths; split it into "
                         "several @lists")
    try:
        if b"\0" in data:
            raise UnicodeDecodeError("utf-8", data, data.index(b"\0"), data.index(b"\0") + 1, "a NUL byte")
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"@{list_file} is binary ({e.reason} at byte {e.start}), not a UTF-8 list of paths or URLs, "
                         "one a line") from None
    lines = text.splitlines()
    for n, line in enumerate(lines, 1):
        if len(line) > LIST_MAX_LINE:
            raise InputError(f"@{list_file} line {n} has {len(line):,} characters (at most {LIST_MAX_LINE}); "
                             "give one path or URL a line")
    return lines


def _from_list(list_file: Path) -> list[Source]:
    out = []
    for n, line in enumerate(_list_lines(list_file), 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if is_url(entry):
            out.append(Source(entry, _url_rel(entry)))
            continue
        if "://" in entry:
            raise InputError(f"@{list_file} line {n}: {entry!r} is neither a path nor an http(s) URL")
        written = Path(entry)
        path = written if written.is_absolute() else list_file.parent / written
        rel = (written.name,) if written.is_absolute() or ".." in written.parts else written.parts
        out.append(Source(str(path), _parts_rel(rel)))
    return out


def expand_inputs(specs: list[str] | tuple[str, ...], recursive: bool = False) -> list[Source]:
    """Every image the inputs name, in the order given (a folder's and a glob's sorted), each once."""
    sources: list[Source] = []
    for spec in specs:
        if spec.startswith("@"):
            sources += _from_list(Path(spec[1:]))
        elif is_url(spec):
            sources.append(Source(spec, _url_rel(spec)))
        elif glob.has_magic(spec) and not Path(spec).exists():
            matches = sorted(Path(p) for p in glob.glob(spec, recursive=True))
            files = [p for p in matches if p.is_file() and _is_image(p)]
            if not files:
                raise InputError(f"{spec}: the pattern matches no image ({', '.join(IMAGE_EXTS)}); check it")
            base = _glob_base(spec)
            sources += [Source(str(p), _parts_rel(p.relative_to(base).parts)) for p in files]
        else:
            path = Path(spec)
            if path.is_dir():
                files = _folder_images(path, recursive)
                if not files:
                    hint = "" if recursive else " (add --recursive to read its subfolders)"
                    raise InputError(f"{spec}: no image ({', '.join(IMAGE_EXTS)}) in this folder{hint}")
                sources += [Source(str(p), _parts_rel(p.relative_to(path).parts)) for p in files]
            elif path.is_file():
                sources.append(Source(str(path), _parts_rel([path.name])))
            elif special_file(path):
                raise InputError(f"{spec} is {special_file(path)}, not an image file; give image files, folders, "
                                 "globs or @list.txt")
            else:
                raise InputError(f"{spec}: no such file or folder; give image files, folders, globs or @list.txt")
    unique: dict[str, Source] = {}
    by_rel: dict[PurePosixPath, Source] = {}
    for src in sources:
        key = src.location if src.is_url else os.path.realpath(src.location)
        if key in unique:
            continue
        other = by_rel.get(src.rel)
        if other is not None:
            raise InputError(f"{other.location} and {src.location} would both write {src.rel}.png (names "
                             "differ only in the extension); segment them into different --out folders or rename one")
        unique[key] = by_rel[src.rel] = src
    return list(unique.values())


def check_out_apart_from_inputs(out: Path, specs: list[str] | tuple[str, ...], sources: list[Source]) -> None:
    """Refuse an --out that is or lies inside an input folder (a folder, a glob's fixed part), or
    that is the folder of an input file: its outputs would mix with, or be read as, the inputs."""
    out_real = Path(os.path.realpath(out))
    folders = []
    for spec in specs:
        if spec.startswith("@") or is_url(spec):
            continue
        if Path(spec).is_dir():
            folders.append(Path(spec))
        elif glob.has_magic(spec) and not Path(spec).exists():
            folders.append(_glob_base(spec))
    for folder in folders:
        real = Path(os.path.realpath(folder))
        if out_real == real or real in out_real.parents:
            raise InputError(f"--out {out} lies inside the input folder {folder}; the masks would mix with the "
                             "images (and be read as images next time): give an --out outside it")
    for src in sources:
        if not src.is_url and Path(os.path.realpath(src.location)).parent == out_real:
            raise InputError(f"--out {out} is the folder of the input {src.location}; give an --out of its own")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _reason(e: BaseException) -> str:
    """A one-line, never empty, reason for a failed download."""
    inner = getattr(e, "reason", None)
    text = _one_line(first_line(inner if isinstance(inner, BaseException) else e))
    if isinstance(e, socket.timeout) or isinstance(inner, socket.timeout):
        return f"no byte for {READ_TIMEOUT_S:g} s"
    return text if text and text != type(e).__name__ else f"{type(e).__name__}: the connection failed"


def _port(parts: urllib.parse.SplitResult) -> int:
    return parts.port or (443 if parts.scheme == "https" else 80)


def _redirect_target(current: str, origin: urllib.parse.SplitResult, location: str | None) -> str:
    """The URL a redirect leads to, or DownloadRefused: only http(s), no https -> http, on the
    scheme's default port or the original URL's."""
    if not location:
        raise _DownloadRefused("a redirect without a Location")
    target = urllib.parse.urljoin(current, _one_line(location))
    parts = urllib.parse.urlsplit(target)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _DownloadRefused(f"redirected to {_one_line(target)[:200]}, not an http(s) URL; not followed")
    if urllib.parse.urlsplit(current).scheme == "https" and parts.scheme == "http":
        raise _DownloadRefused(f"redirected from https to {_one_line(target)[:200]}; not followed")
    try:
        port = _port(parts)
    except ValueError:
        raise _DownloadRefused(f"redirected to {_one_line(target)[:200]}, whose port is invalid") from None
    if port not in (443 if parts.scheme == "https" else 80, _port(origin)):
        raise _DownloadRefused(f"redirected to port {port} ({_one_line(target)[:200]}), neither the scheme's default "
                               "nor the URL's own; not followed")
    return target


class _DownloadRefused(Exception):
    """A download given up, its one-line reason the message."""


class _TryAgain(Exception):
    """A download that failed for now (`skip` says how): another try may get it."""

    def __init__(self, skip: Skip):
        super().__init__(skip.reason)
        self.skip = skip


def download(url: str, dest: Path, max_pixels: int, deadline_s: float, read_timeout: float = READ_TIMEOUT_S,
             attempts: int = DOWNLOAD_ATTEMPTS) -> Skip | None:
    """`_download`, tried again after a "not now" (a busy or failing server, a dropped connection),
    up to `attempts` tries with waits of RETRY_BACKOFF_S, doubling; the deadline covers them all,
    and no wait runs past it. The last try's reason says how many there were."""
    start = time.monotonic()
    wait = RETRY_BACKOFF_S
    for attempt in range(1, attempts + 1):
        try:
            return _download(url, dest, max_pixels, deadline_s, read_timeout, start=start)
        except _TryAgain as e:
            skip = e.skip
        if attempt == attempts or time.monotonic() - start + wait >= deadline_s:
            break
        time.sleep(wait)
        wait *= 2
    return Skip(skip.kind, f"{skip.reason} ({attempt} {'try' if attempt == 1 else 'tries'})")


def _download(url: str, dest: Path, max_pixels: int, deadline_s: float, read_timeout: float = READ_TIMEOUT_S,
              start: float | None = None) -> Skip | None:
    """Save the bytes at `url` into `dest`, or a Skip: HTTP or network failure, a redirect not
    followed, the deadline passed, a header over the pixel limit (the rest is not downloaded), or
    more bytes than an image at the limit can need.

    The deadline covers everything after the name lookup: a watchdog shuts the socket down when it
    passes, so neither a server dripping one byte at a time nor one that never answers can hold
    the run (the per-read timeout alone restarts with every byte)."""
    max_bytes = max_file_bytes(max_pixels)
    start = time.monotonic() if start is None else start
    origin = urllib.parse.urlsplit(url)
    current = url
    expired = threading.Event()
    try:
        for _ in range(MAX_REDIRECTS + 1):
            parts = urllib.parse.urlsplit(current)
            left = deadline_s - (time.monotonic() - start)
            if left <= 0:
                raise _DownloadRefused("deadline")
            cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
            kwargs = {"context": ssl.create_default_context()} if parts.scheme == "https" else {}
            conn = cls(parts.hostname, _port(parts), timeout=min(read_timeout, left), **kwargs)

            def cut(conn=conn):
                expired.set()
                sock = conn.sock
                if sock is not None:
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

            watchdog = threading.Timer(left, cut)
            watchdog.daemon = True
            watchdog.start()
            try:
                target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
                conn.request("GET", target, headers={"User-Agent": f"bgw-seg/{package_version()}",
                                                     "Accept-Encoding": "identity"})
                response = conn.getresponse()
                if response.status in (301, 302, 303, 307, 308):
                    current = _redirect_target(current, origin, response.getheader("Location"))
                    continue
                if response.status != 200:
                    skip = Skip("unreadable", f"{url}: HTTP {response.status} {_one_line(response.reason)}".rstrip())
                    if response.status in RETRY_STATUSES:
                        raise _TryAgain(skip)
                    return skip
                return _save(url, response, dest, max_pixels, max_bytes, expired)
            finally:
                watchdog.cancel()
                conn.close()
        return Skip("unreadable", f"{url}: more than {MAX_REDIRECTS} redirects; not followed")
    except _DownloadRefused as e:
        if expired.is_set() or str(e) == "deadline":
            return Skip("unreadable", f"{url}: not downloaded within {deadline_s:g} s (--download-timeout); given up")
        return Skip("unreadable", f"{url}: {e}")
    except (OSError, http.client.HTTPException, ValueError) as e:  # refused, DNS, timeout, a malformed URL
        if expired.is_set():
            return Skip("unreadable", f"{url}: not downloaded within {deadline_s:g} s (--download-timeout); given up")
        skip = Skip("unreadable", f"{url}: cannot download it ({_reason(e)})")
        # refused, reset or hung up on (RemoteDisconnected is a ConnectionResetError): the server may be back
        if isinstance(e, (ConnectionError, http.client.IncompleteRead)):
            raise _TryAgain(skip) from None
        return skip


def _save(url: str, response, dest: Path, max_pixels: int, max_bytes: int, expired: threading.Event) -> Skip | None:
    length = response.getheader("Content-Length")
    if length and length.strip().isdigit() and int(length) > max_bytes:
        return Skip("too_large", f"{url}: {int(length):,} bytes, more than an image of {max_pixels} pixels "
                                 "(--max-image-pixels) can need; not downloaded")
    size, checked = 0, False
    with open(dest, "wb") as f:
        while True:
            chunk = response.read1(_CHUNK)  # what has arrived, not a full buffer: the deadline is checked often
            if expired.is_set():
                raise _DownloadRefused("deadline")
            if not chunk:
                break
            size += len(chunk)
            if size > max_bytes:
                return Skip("too_large", f"{url}: over {max_bytes:,} bytes; not downloaded further")
            f.write(chunk)
            if not checked and size >= _CHUNK:
                checked = True
                f.flush()
                too_big = _over_limit(dest, max_pixels)
                if too_big:
                    return Skip("too_large", f"{url}: {too_big}, over the limit of {max_pixels} (--max-image-pixels); "
                                             "not downloaded")
    return None


def _over_limit(path: Path, max_pixels: int) -> str | None:
    try:
        with open(path, "rb") as f:
            _, w, h = image_header_size(f)
    except (HeaderError, OSError):
        return None  # the reader says why, once it has the whole file
    return f"{w}x{h} = {w * h} pixels" if w * h > max_pixels else None


def max_file_bytes(max_pixels: int) -> int:
    """The most bytes an image file at the pixel limit can need: uncompressed 32-bit, plus headers."""
    return 4 * max_pixels + (16 << 20)


def _header_pixels(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            _, w, h = image_header_size(f)
    except (HeaderError, OSError):
        return 0  # the reader says why
    return max(w, 0) * max(h, 0)


def _read_local(path: Path, shown: str, max_pixels: int, admit: Callable[[int], None]) -> np.ndarray | Skip:
    what = special_file(path)
    if what is not None:
        return Skip("unreadable", f"{shown}: {what}, not an image file; not opened")
    try:
        size = path.stat().st_size
    except OSError as e:
        return Skip("unreadable", f"{shown}: cannot read it ({e.strerror or first_line(e)})")
    if size > max_file_bytes(max_pixels):
        return Skip("too_large", f"{shown}: {size:,} bytes, more than an image of {max_pixels} pixels "
                                 "(--max-image-pixels) can need; not read")
    pixels = _header_pixels(path)
    # what decoding holds at once: the file's bytes and, when the header is under the limit, its pixels
    admit((pixels if pixels <= max_pixels else 0) + size // 4)
    try:
        return read_image(path, max_pixels)
    except ImageSkipped as e:
        return Skip(e.skip.kind, e.skip.reason.replace(str(path), shown))


def read_source(source: Source, max_pixels: int, deadline_s: float = DOWNLOAD_DEADLINE_S,
                admit: Callable[[int], None] = lambda cost: None) -> np.ndarray | Skip:
    """uint8 RGB [H, W, 3] of one input, or a Skip (kind and one-line reason) saying why not.
    `admit(cost)` is called once the image's pixel count is known from its header and before it
    is decoded (cost: the pixels plus a quarter of the file's bytes); it may block."""
    if not source.is_url:
        return _read_local(Path(source.location), source.location, max_pixels, admit)
    # core.images reads files: the download goes to a private temporary file, so a URL meets the
    # same header check and decoder as a local file, and its bytes never sit in memory whole
    with tempfile.TemporaryDirectory(prefix="bgw-segment-") as tmp:
        path = Path(tmp) / "download"
        skip = download(source.location, path, max_pixels, deadline_s)
        if skip is not None:
            return skip
        return _read_local(path, source.location, max_pixels, admit)
