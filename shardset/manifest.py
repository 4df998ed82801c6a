"""The manifest `NAME.json`: schema v1, building it from shard records, validating, loading,
writing it atomically, and the fingerprint that checkpoints cite.

The schema is documented in shardset/FORMAT.md. The manifest is a pure function of the set's
header (`set.json`: name, params, seed, ...) and its shard records, so the same shards give the
same manifest whatever order, or how many workers, wrote them.
"""
from __future__ import annotations

import copy
import datetime as _dt
import functools
import hashlib
import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Any, Iterable

from core.atomic import atomic_write_text, fsync_dir  # noqa: F401  (re-exported: writer imports them here)
from core.version import package_version

from .format import (ENCODINGS, FORMAT_NAME, FORMAT_VERSION, NAME_RE, PLAIN_TAR_FORMAT, SHARD_FILE_RE, SPLITS,
                     Limits, ShardSetError, shard_filename)

log = logging.getLogger(__name__)

TOOL_NAME = "bgw-seg"


class ManifestError(ShardSetError):
    """A manifest is missing, not JSON, or breaks the schema; the message names the file and field."""


@functools.lru_cache(maxsize=1)
def tool_info() -> dict:
    """{"name", "version", "git_commit"}; the commit is best effort ("unknown" outside a checkout)."""
    ver = package_version(missing="0+unknown")  # not installed: running from a source tree
    commit = "unknown"
    try:
        res = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        if res.returncode == 0 and len(res.stdout.strip()) == 40:
            commit = res.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return {"name": TOOL_NAME, "version": ver, "git_commit": commit}


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def dumps(obj: Any) -> str:
    """The one JSON spelling used for manifests and records: sorted keys, no NaN."""
    return json.dumps(obj, sort_keys=True, indent=1, allow_nan=False, ensure_ascii=False) + "\n"


def _sum_rejected(records: Iterable[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for rec in records:
        for k, v in rec.get("rejected", {}).items():
            out[k] = out.get(k, 0) + int(v)
    return dict(sorted(out.items()))


def build_manifest(header: dict, records: Iterable[dict], *, planned: dict | None = None,
                   finalized: bool = False) -> dict:
    """Manifest from the set header and the shard records (order of `records` does not matter)."""
    shards = sorted((dict(r) for r in records), key=lambda r: r["index"])
    splits = {s: {"shards": [r["index"] for r in shards if r["split"] == s],
                  "samples": sum(r["samples"] for r in shards if r["split"] == s)} for s in SPLITS}
    complete = finalized
    if planned and "shards" in planned:
        complete = finalized and [r["index"] for r in shards] == list(range(int(planned["shards"])))
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "name": header["name"],
        "tool": header["tool"],
        "created": header["created"],
        "params": header["params"],
        "seed": header["seed"],
        "shard_size": header["shard_size"],
        "encoding": header["encoding"],
        "shards": shards,
        "splits": splits,
        "totals": {
            "shards": len(shards),
            "samples": sum(r["samples"] for r in shards),
            "bytes": sum(r["bytes"] for r in shards),
            "drawn": sum(r["drawn"] for r in shards),
            "rejected": _sum_rejected(shards),
        },
        "planned": planned,
        "complete": bool(complete),
    }
    manifest["fingerprint"] = manifest_fingerprint(manifest)
    return manifest


def manifest_fingerprint(manifest: dict) -> str:
    """sha256 of the canonical shard list (file, split, samples, sha256 per shard, in index order).

    Independent of creation time, tool version and JSON layout: two manifests with the same
    fingerprint name byte-identical data.
    """
    shards = sorted(manifest.get("shards", []), key=lambda r: r["index"])
    canon = [{"file": r["file"], "split": r["split"], "samples": r["samples"], "sha256": r["sha256"]}
             for r in shards]
    blob = json.dumps(canon, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


def canonical_manifest(manifest: dict) -> dict:
    """A copy without the fields that legitimately differ between identical reruns (`created`)."""
    out = copy.deepcopy(manifest)
    out.pop("created", None)
    return out


_SHARD_FIELDS = {"index": int, "file": str, "split": str, "samples": int, "bytes": int, "sha256": str,
                 "drawn": int, "rejected": dict}
_TOP_FIELDS = {"format": str, "format_version": int, "name": str, "tool": dict, "created": str,
               "params": dict, "seed": int, "shard_size": int, "encoding": str, "shards": list,
               "splits": dict, "totals": dict, "complete": bool, "fingerprint": str}


def validate_manifest(manifest: Any, where: str = "manifest") -> dict:
    """Check schema v1; raise ManifestError naming the first bad field. Returns the manifest."""

    def fail(msg: str):
        raise ManifestError(f"{where}: {msg}")

    if not isinstance(manifest, dict):
        fail("top level must be a JSON object")
    if manifest.get("format") == PLAIN_TAR_FORMAT:
        fail(f"this is the manifest of a plain-tar export (`shardset export --plain-tar`), for tools that read "
             f"plain tar (shardset/FORMAT.md); bgw-seg reads the .tar.zst set it was exported from")
    if manifest.get("format") != FORMAT_NAME:
        fail(f"'format' is {manifest.get('format')!r}, expected {FORMAT_NAME!r} (not a shard-set manifest)")
    if manifest.get("format_version") != FORMAT_VERSION:
        fail(f"format_version {manifest.get('format_version')!r} is not supported (this tool reads "
             f"{FORMAT_VERSION}); upgrade bgw-seg")
    for key, typ in _TOP_FIELDS.items():
        if not isinstance(manifest.get(key), typ) or (typ is int and isinstance(manifest.get(key), bool)):
            fail(f"field {key!r} must be {typ.__name__}, got {type(manifest.get(key)).__name__}")
    if not NAME_RE.fullmatch(manifest["name"]):
        fail(f"name {manifest['name']!r} is invalid")
    if manifest["encoding"] not in ENCODINGS:
        fail(f"encoding {manifest['encoding']!r} is not one of {ENCODINGS}")
    seen = set()
    for i, rec in enumerate(manifest["shards"]):
        if not isinstance(rec, dict):
            fail(f"shards[{i}] must be an object")
        for key, typ in _SHARD_FIELDS.items():
            if not isinstance(rec.get(key), typ):
                fail(f"shards[{i}].{key} must be {typ.__name__}")
        m = SHARD_FILE_RE.fullmatch(rec["file"])
        if not m or m["name"] != manifest["name"] or int(m["index"]) != rec["index"]:
            fail(f"shards[{i}].file {rec['file']!r} does not match {shard_filename(manifest['name'], rec['index'])}")
        if rec["split"] not in SPLITS:
            fail(f"shards[{i}].split {rec['split']!r} is not one of {SPLITS}")
        if len(rec["sha256"]) != 64:
            fail(f"shards[{i}].sha256 is not a sha256 hex digest")
        if rec["index"] in seen:
            fail(f"shard index {rec['index']} is listed twice")
        seen.add(rec["index"])
    check_counts(manifest, where)
    if manifest["fingerprint"] != manifest_fingerprint(manifest):
        fail("fingerprint does not match the shard list (edited by hand?)")
    return manifest


def _is_count(value) -> bool:
    return type(value) is int and value >= 0


def check_counts(manifest: dict, where: str = "manifest", limits: Limits = Limits()) -> None:
    """The one rule for a manifest's counts; ManifestError names the first field that breaks it.

    Every reader of a manifest gets it through `validate_manifest` (verify, export, the trainer's
    and benchdata's shard resolution) and every writer through `write_manifest` (gen-synth,
    import), so no tool acts on a count another refuses. Each shard holds 0..shard_size samples,
    and shard_size is at most `limits.max_samples`, which the reader enforces per shard anyway;
    counts are non-negative integers; a shard draws at least the samples it keeps; totals and
    splits are the sums of the shard list; a plan covers every listed index; a complete set holds
    exactly its planned shards. (That a shard really holds its record's count is checked when it
    is read to its end: `reader.check_sample_count`.)"""

    def fail(msg: str):
        raise ManifestError(f"{where}: {msg}; the manifest is corrupt or was edited: get an intact copy of the set")

    shard_size, shards = manifest["shard_size"], manifest["shards"]
    if not _is_count(shard_size) or not 1 <= shard_size <= limits.max_samples:
        fail(f"shard_size {shard_size!r} is not a whole number in 1..{limits.max_samples} (Limits.max_samples)")
    for i, rec in enumerate(shards):
        for key in ("samples", "bytes", "drawn"):
            if not _is_count(rec[key]):
                fail(f"shards[{i}].{key} {rec[key]!r} is not a count")
        if rec["samples"] > shard_size:
            fail(f"shards[{i}] ({rec['file']}) claims {rec['samples']} samples, over the set's shard_size {shard_size}")
        if rec["drawn"] < rec["samples"]:
            fail(f"shards[{i}] ({rec['file']}) keeps {rec['samples']} samples of {rec['drawn']} drawn")
        if not all(isinstance(k, str) and _is_count(v) for k, v in rec["rejected"].items()):
            fail(f"shards[{i}].rejected is not a table of counts")
    totals = manifest["totals"]
    sums = {"shards": len(shards), "samples": sum(r["samples"] for r in shards),
            "bytes": sum(r["bytes"] for r in shards), "drawn": sum(r["drawn"] for r in shards),
            "rejected": _sum_rejected(shards)}
    for key, value in sums.items():
        if totals.get(key) != value:
            fail(f"totals.{key} is {totals.get(key)!r}, the shard list sums to {value!r}")
    splits = manifest["splits"]
    for split in SPLITS:
        mine = [r for r in shards if r["split"] == split]
        want = {"shards": sorted(r["index"] for r in mine), "samples": sum(r["samples"] for r in mine)}
        got = splits.get(split) if isinstance(splits.get(split), dict) else {}
        if sorted(got.get("shards") or []) != want["shards"] or got.get("samples") != want["samples"]:
            fail(f"splits.{split} does not match the shard list ({len(mine)} shards, {want['samples']} samples)")
    planned = manifest.get("planned")
    if planned is not None and not isinstance(planned, dict):
        fail("planned must be an object or null")
    planned_shards = (planned or {}).get("shards")
    if planned_shards is not None:
        if not _is_count(planned_shards):
            fail(f"planned.shards {planned_shards!r} is not a count")
        beyond = [r["index"] for r in shards if r["index"] >= planned_shards]
        if beyond:
            fail(f"shard {beyond[0]} is listed, past the {planned_shards} planned")
        if manifest["complete"] and len(shards) != planned_shards:
            fail(f"complete is true with {len(shards)} of {planned_shards} planned shards")
    planned_samples = (planned or {}).get("samples")
    if planned_samples is not None and (not _is_count(planned_samples) or sums["samples"] > planned_samples):
        fail(f"planned.samples {planned_samples!r} is not a count of at least the {sums['samples']} samples listed")


def incomplete_reason(manifest: dict) -> str | None:
    """How an incomplete set falls short, e.g. "complete: false, 5 of 8 planned shards written";
    None for a complete set. Used by `shardset verify` and the trainer alike."""
    if manifest["complete"]:
        return None
    n = len(manifest["shards"])
    planned = (manifest.get("planned") or {}).get("shards")
    if planned is None:
        return f"complete: false, {n} shards written; its writer recorded no plan, so how many are missing is unknown"
    return f"complete: false, {n} of {planned} planned shards written"


def parse_manifest(text: str | bytes, where: str = "manifest") -> dict:
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{where}: not valid JSON ({exc})") from None
    return validate_manifest(data, where)


def load_manifest(path: str | os.PathLike) -> dict:
    """Read and validate a local manifest file (see urls.resolve for remote ones)."""
    try:
        text = Path(path).read_bytes()
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such manifest") from None
    return parse_manifest(text, str(path))


def write_manifest(path: str | os.PathLike, manifest: dict) -> None:
    atomic_write_text(path, dumps(validate_manifest(manifest, str(path))))


def is_manifest_file(path: Path) -> bool:
    """Cheap check: a `.json` whose start names the shard-set format."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return FORMAT_NAME.encode() in head
