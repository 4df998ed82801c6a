"""The images `segment` reads and where each one's outputs go.

Inputs are image files, folders (their images; with `recursive`, those of every subfolder too),
glob patterns (`photos/*.jpg`, `photos/**/*.png`) and `@list.txt` files: one path or http(s) URL a
line, blank lines and `#` comments ignored, relative paths taken from the list file's folder.

Each image gets a relative name, its outputs' path under --out without the suffix: its path inside
the folder or below the glob's fixed part; its own name for a file named directly or an absolute
path in a list; the path as written for a relative path in a list; `host/path` for a URL. Two
images that would share a name are refused before any work, as is an --out that lies in an input
folder (a later run would read the masks as images) or is the folder of an input file.

Reading: local files through benchdata.io.read_image, the reader eval-seg uses (core.images: the
pixel limit checked from the header before decoding); a URL is downloaded into memory (refused as
soon as its header shows more pixels than the limit), then decoded by the same reader.
"""
from __future__ import annotations

import glob
import io
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from benchdata.io import IMAGE_EXTS, ImageSkipped, read_image
from core.errors import UserError
from core.images import HeaderError, Skip, image_header_size
from core.version import package_version

__all__ = ["InputError", "Source", "expand_inputs", "check_out_apart_from_inputs", "read_source", "DOWNLOAD_TIMEOUT_S"]

DOWNLOAD_TIMEOUT_S = 30.0
_HEAD = 1 << 16  # bytes of a download read before its header is checked


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


def _clean(parts) -> PurePosixPath:
    """A relative output path of safe components (no '..', no empty or hidden-making parts)."""
    safe = [re.sub(r"[^A-Za-z0-9._+-]", "_", p).lstrip(".") or "_" for p in parts if p not in ("", ".", "..")]
    return PurePosixPath(*safe) if safe else PurePosixPath("image")


def _stem(rel: PurePosixPath) -> PurePosixPath:
    return rel.with_suffix("") if rel.suffix else rel


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
    return _stem(_clean([parsed.hostname or "host", *parsed.path.split("/")]))


def _from_list(list_file: Path) -> list[Source]:
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"@{list_file}: cannot read the list ({e}); give a text file of paths or URLs, one a line")
    out = []
    for n, line in enumerate(lines, 1):
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
        rel = PurePosixPath(written.name) if written.is_absolute() or ".." in written.parts else \
            PurePosixPath(*written.parts)
        out.append(Source(str(path), _stem(_clean(rel.parts))))
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
            sources += [Source(str(p), _stem(_clean(p.relative_to(base).parts))) for p in files]
        else:
            path = Path(spec)
            if path.is_dir():
                files = _folder_images(path, recursive)
                if not files:
                    hint = "" if recursive else " (add --recursive to read its subfolders)"
                    raise InputError(f"{spec}: no image ({', '.join(IMAGE_EXTS)}) in this folder{hint}")
                sources += [Source(str(p), _stem(_clean(p.relative_to(path).parts))) for p in files]
            elif path.is_file():
                sources.append(Source(str(path), _stem(_clean([path.name]))))
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
            raise InputError(f"{other.location} and {src.location} would both write {src.rel}.png; "
                             "segment them into different --out folders or rename one")
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


def _download(url: str, max_pixels: int, timeout: float) -> bytes | Skip:
    """The bytes at `url`, or a Skip: HTTP or network failure, a header over the pixel limit (the
    rest is not downloaded), or more bytes than an image at the limit can need."""
    max_bytes = 4 * max_pixels + (16 << 20)  # an uncompressed 32-bit image at the limit, plus headers
    request = urllib.request.Request(url, headers={"User-Agent": f"bgw-seg/{package_version()}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > max_bytes:
                return Skip("too_large", f"{url}: {int(length):,} bytes, more than an image of {max_pixels} pixels "
                                         "(--max-image-pixels) can need; not downloaded")
            data = response.read(_HEAD)
            try:
                fmt, w, h = image_header_size(io.BytesIO(data))
            except HeaderError:
                pass  # the reader below says why, once it has the whole file
            else:
                if w * h > max_pixels:
                    return Skip("too_large", f"{url}: {w}x{h} = {w * h} pixels, over the limit of {max_pixels} "
                                             "(--max-image-pixels); not downloaded")
            chunks = [data]
            size = len(data)
            while chunk := response.read(1 << 20):
                size += len(chunk)
                if size > max_bytes:
                    return Skip("too_large", f"{url}: over {max_bytes:,} bytes; not downloaded further")
                chunks.append(chunk)
            return b"".join(chunks)
    except urllib.error.HTTPError as e:
        return Skip("unreadable", f"{url}: HTTP {e.code} {e.reason}")
    except (urllib.error.URLError, OSError, ValueError) as e:  # refused, DNS, timeout, a malformed URL
        reason = getattr(e, "reason", None) or e
        return Skip("unreadable", f"{url}: cannot download it ({reason})")


def read_source(source: Source, max_pixels: int, timeout: float = DOWNLOAD_TIMEOUT_S) -> np.ndarray | Skip:
    """uint8 RGB [H, W, 3] of one input, or a Skip (kind and one-line reason) saying why not."""
    if not source.is_url:
        try:
            return read_image(source.location, max_pixels)
        except ImageSkipped as e:
            return e.skip
    data = _download(source.location, max_pixels, timeout)
    if isinstance(data, Skip):
        return data
    # core.images reads files: the downloaded bytes pass through a private temporary file, so a URL
    # meets the same header check and decoder as a local file
    with tempfile.TemporaryDirectory(prefix="bgw-segment-") as tmp:
        path = Path(tmp) / "download"
        path.write_bytes(data)
        try:
            return read_image(path, max_pixels)
        except ImageSkipped as e:
            return Skip(e.skip.kind, e.skip.reason.replace(str(path), source.location))
