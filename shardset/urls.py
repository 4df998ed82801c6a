"""Name a shard set: resolve globs, brace ranges, manifest paths, folders and URLs to shard URLs.

`resolve(spec)` returns a `ShardSetRef` (shard URLs plus the manifest when one is found), and
`open_url(url)` opens one shard or manifest for reading: local paths and `file://` directly,
`http(s)://` through urllib, anything else with a scheme (`s3://`, `gs://`, ...) through fsspec
when it is installed.
"""
from __future__ import annotations

import glob
import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from .format import SHARD_FILE_RE, NothingMatchedError, ShardError, ShardSetError
from .manifest import ManifestError, is_manifest_file, parse_manifest

log = logging.getLogger(__name__)

HTTP_TIMEOUT_S = 60.0
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


def open_url(url: str) -> BinaryIO:
    """Open a shard or manifest for binary reading; failures are ShardErrors naming the URL."""
    scheme = _scheme(url)
    try:
        if scheme == "":
            return open(url, "rb")
        if scheme == "file":
            return open(_file_url_to_path(url), "rb")
        if scheme in ("http", "https"):
            return urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S)
    except FileNotFoundError:
        raise ShardError(url, "no such file") from None
    except urllib.error.HTTPError as exc:
        raise ShardError(url, f"HTTP {exc.code} {exc.reason}") from None
    except (OSError, urllib.error.URLError) as exc:
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
