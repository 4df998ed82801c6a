"""Verify a shard set: re-hash every shard against its manifest record and decode every sample.

Set-level checks too (with a manifest): a set whose manifest says `complete: false`, and shards
the manifest lists that are missing on disk or not selected by the spec, fail the verification.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .format import Limits, ShardError
from .manifest import incomplete_reason
from .reader import check_sample_count, iter_samples
from .urls import ShardSetRef, open_url, resolve

log = logging.getLogger(__name__)


@dataclass
class ShardReport:
    url: str
    ok: bool
    samples: int = 0
    reason: str = ""


@dataclass
class VerifyReport:
    shards: list[ShardReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # set-level remarks (e.g. no manifest to hash against)
    problems: list[str] = field(default_factory=list)  # set-level failures: incomplete, listed shards missing

    @property
    def ok(self) -> bool:
        return bool(self.shards) and all(s.ok for s in self.shards) and not self.problems

    @property
    def bad(self) -> list[ShardReport]:
        return [s for s in self.shards if not s.ok]

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)

    def to_dict(self) -> dict:
        """`shardset verify --json`'s output: the verdict, every shard's result, the set-level findings."""
        return {"ok": self.ok, "samples": self.samples, "bad": len(self.bad), "problems": list(self.problems),
                "notes": list(self.notes), "shards": [asdict(s) for s in self.shards]}


def _hash_url(url: str) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    with open_url(url) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def verify_shard(url: str, record: dict | None, *, decode: bool = True, limits: Limits = Limits()) -> ShardReport:
    """Check one shard: size and sha256 against `record` (when given), then decode every sample."""
    try:
        if record is not None:
            digest, size = _hash_url(url)
            if size != record["bytes"]:
                return ShardReport(url, False, reason=f"{size} bytes, manifest says {record['bytes']}")
            if digest != record["sha256"]:
                return ShardReport(url, False, reason="sha256 differs from the manifest (corrupt or tampered)")
        n = 0
        if decode:
            for _ in iter_samples(url, limits=limits):
                n += 1
            check_sample_count(url, n, record)
        return ShardReport(url, True, n if decode else (record or {}).get("samples", 0))
    except ShardError as exc:
        return ShardReport(url, False, reason=exc.reason)


def _names(files: list[str], n: int = 3) -> str:
    return ", ".join(files[:n]) + (f" and {len(files) - n} more" if len(files) > n else "")


def set_problems(ref: ShardSetRef) -> list[str]:
    """What the manifest says is wrong with the set as `ref` selects it (empty without a manifest):
    `complete: false`, and listed shards that are missing on disk or that the spec leaves out."""
    m = ref.manifest
    if m is None:
        return []
    out = []
    if (short := incomplete_reason(m)) is not None:
        out.append(f"incomplete: the manifest says {short}; its writer stopped early or is still running")
    selected = {u.rsplit("/", 1)[-1] for u in ref.urls}
    left_out = [r["file"] for r in m["shards"] if r["file"] not in selected]
    if left_out:
        local = ref.manifest_url and "://" not in ref.manifest_url
        folder = Path(ref.manifest_url).parent if local else None
        gone = [f for f in left_out if folder is not None and not (folder / f).exists()]
        unselected = [f for f in left_out if f not in gone]
        n = len(m["shards"])
        if gone:
            out.append(f"{len(gone)} of the {n} shards the manifest lists are missing on disk: {_names(gone)}")
        if unselected:
            out.append(f"{len(unselected)} of the {n} shards the manifest lists are not selected by "
                       f"{' '.join(ref.specs)}: {_names(unselected)}")
    return out


def verify_set(spec: str | list[str] | ShardSetRef, *, decode: bool = True, limits: Limits = Limits(),
               progress: Callable[[ShardReport], None] | None = None) -> VerifyReport:
    """Verify every shard named by `spec`; without a manifest only decoding can be checked."""
    ref = spec if isinstance(spec, ShardSetRef) else resolve(spec)
    report = VerifyReport(problems=set_problems(ref))
    records = {}
    if ref.manifest is None:
        report.notes.append("no manifest found: shards were decoded but not checked against hashes")
    else:
        records = {r["file"]: r for r in ref.manifest["shards"]}
        if ref.manifest_url and "://" not in ref.manifest_url:
            # shard files beside the manifest that it does not list: left by a writer killed
            # between rename and record, or by hand; harmless, but worth saying
            folder = Path(ref.manifest_url).parent
            listed = set(records)
            orphans = sorted(p.name for p in folder.glob(f"{ref.manifest['name']}-*.tar.zst") if p.name not in listed)
            if orphans:
                report.notes.append(f"{len(orphans)} shard files not listed in the manifest: {', '.join(orphans[:5])}")
    for url in ref.urls:
        rec = records.get(url.rsplit("/", 1)[-1]) if ref.manifest is not None else None
        if ref.manifest is not None and rec is None:
            result = ShardReport(url, False, reason="not listed in the manifest")
        else:
            result = verify_shard(url, rec, decode=decode, limits=limits)
        if not result.ok:
            log.warning("bad shard %s: %s", url, result.reason)
        report.shards.append(result)
        if progress:
            progress(result)
    return report
