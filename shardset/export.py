"""Export a shard set for tools without bgw-seg.

`export_set`: images/<key>.png, masks/<key>.png (0/255), meta.jsonl. meta.jsonl is renamed into
place last, so its presence marks a finished export.

`export_plain_tar`: each shard decompressed to NAME-000123.tar (the same tar bytes `zstd -d` gives),
and NAME.json, a manifest of the plain tars (format `bgw-shardset-plain-tar`: their names, sizes,
sha256, samples and split), renamed into place last. Every shard is checked against its manifest
record and every sample decoded as `shardset verify` decodes it while it streams, so a plain tar
holds only what a shard may hold.

`reencode_set`: the same set (name, shard indices, splits, keys, z, meta, per-shard counts) written
anew with its images in another encoding; the shards' sizes and sha256, and so the manifest and
its fingerprint, are made anew by the writer.

Each export, when it fails (a refused shard, a full disk), removes every file and folder it made,
so nothing half-written is left that looks complete; files that were in --out before are not removed.
"""
from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from core.atomic import atomic_write_text, fsync_dir

from .codec import decode_sample
from .format import (PLAIN_TAR_FORMAT, PLAIN_TAR_VERSION, SPLITS, Limits, ShardSetError,
                     ShardSetExistsError, check_encoding, manifest_filename, plain_tar_filename, plain_tar_glob,
                     shard_glob)
from .manifest import dumps, load_manifest
from .reader import check_sample_count, iter_raw, iter_raw_samples, iter_samples, open_shard
from .urls import ShardSetRef, resolve
from .verify import set_problems
from .writer import ShardSetWriter


class _Made:
    """The files and folders one export created, in creation order, for the clean-up."""

    def __init__(self):
        self.paths: list[Path] = []

    def mkdir(self, folder: Path) -> None:
        if not folder.exists():
            self.mkdir(folder.parent)
            folder.mkdir()
            self.paths.append(folder)

    def file(self, path: Path) -> Path:
        if not path.exists():
            self.paths.append(path)
        return path

    def remove(self) -> None:
        for p in reversed(self.paths):
            try:
                p.rmdir() if p.is_dir() else p.unlink(missing_ok=True)
            except OSError:  # a folder someone else put files into meanwhile: leave it
                pass


def _write_png(path: Path, arr: np.ndarray) -> None:
    ok, enc = cv2.imencode(".png", arr)
    if not ok:
        raise ValueError(f"OpenCV could not encode {path}")
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(enc.tobytes())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def export_set(spec: str | list[str] | ShardSetRef, out: str | os.PathLike, *, limit: int | None = None,
               limits: Limits = Limits(), progress: Callable[[int], None] | None = None) -> int:
    """Write up to `limit` samples as lossless PNG files plus z/<key>.npy when present; returns the count.

    Shards with a manifest record are checked against it while they stream."""
    ref = spec if isinstance(spec, ShardSetRef) else resolve(spec)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ShardSetError(f"--out {out} is a file; name a folder")
    samples = (s for url in ref.urls for s in iter_samples(url, limits=limits, expect=ref.record(url)))
    made = _Made()
    meta_tmp = out / "meta.jsonl.tmp"
    n = 0
    try:
        first = next(samples, None)  # a shard refused at once leaves nothing behind
        for sub in ("images", "masks"):
            made.mkdir(out / sub)
        with open(made.file(meta_tmp), "w", encoding="utf-8") as meta_f:
            todo = itertools.chain([first] if first is not None else [], samples)
            for s in itertools.islice(todo, limit):
                key = s["__key__"]
                _write_png(made.file(out / "images" / f"{key}.png"), np.ascontiguousarray(s["image"][:, :, ::-1]))
                _write_png(made.file(out / "masks" / f"{key}.png"), s["mask"] * np.uint8(255))
                if "z" in s:
                    made.mkdir(out / "z")
                    np.save(made.file(out / "z" / f"{key}.npy"), s["z"], allow_pickle=False)
                meta_f.write(json.dumps({"__key__": key, **s["meta"]}, sort_keys=True) + "\n")
                n += 1
                if progress:
                    progress(1)
        os.replace(meta_tmp, made.file(out / "meta.jsonl"))
    except BaseException:
        made.remove()
        raise
    return n


class _Tee(io.RawIOBase):
    """Bytes read from `raw` are also written to `out` and hashed: the plain tar is exactly what
    the strict parser read, byte for byte, whatever the buffering above."""

    def __init__(self, raw, out):
        self._raw, self._out = raw, out
        self.sha256 = hashlib.sha256()
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self._raw.readinto(b)
        if n:
            view = memoryview(b)[:n]
            self._out.write(view)
            self.sha256.update(view)
            self.count += n
        return n


def _plain_tar(url: str, record: dict, tmp: Path, filename: str, limits: Limits) -> dict:
    """Decompress one shard to `tmp` (written whole, fsynced); its record as plain tar `filename`."""
    with open_shard(url, limits, expect=record) as zs, open(tmp, "xb") as f:
        tee = _Tee(zs, f)
        stream = io.BufferedReader(tee, 1 << 16)
        samples = 0
        for raw in iter_raw(stream, url, limits):
            decode_sample(raw, limits)  # what verify and every reader require of a sample (an image, ...)
            samples += 1
        while stream.read(1 << 20):  # the end-of-archive blocks: a plain tar is the whole stream
            pass
        zs.check()
        f.flush()
        os.fsync(f.fileno())
    check_sample_count(url, samples, record)
    return {"index": record["index"], "file": filename, "split": record["split"], "samples": samples,
            "bytes": tee.count, "sha256": tee.sha256.hexdigest(), "source_file": record["file"],
            "source_sha256": record["sha256"]}


def plain_tar_manifest(name: str, encoding: str, source: dict, records: list[dict]) -> dict:
    """The manifest of a plain-tar export; the same field names as a shard set's where they mean
    the same (`shards[].file/sha256/split/samples/bytes`, `splits`), so one recipe reads both."""
    records = sorted(records, key=lambda r: r["index"])
    return {
        "format": PLAIN_TAR_FORMAT,
        "format_version": PLAIN_TAR_VERSION,
        "name": name,
        "encoding": encoding,
        "source": source,
        "shards": records,
        "splits": {sp: {"shards": [r["index"] for r in records if r["split"] == sp],
                        "samples": sum(r["samples"] for r in records if r["split"] == sp)} for sp in SPLITS},
        "totals": {"shards": len(records), "samples": sum(r["samples"] for r in records),
                   "bytes": sum(r["bytes"] for r in records)},
    }


def export_plain_tar(spec: str | list[str] | ShardSetRef, out: str | os.PathLike, *, limits: Limits = Limits(),
                     progress: Callable[[int], None] | None = None) -> dict:
    """Write every shard `spec` selects as OUT/NAME-000123.tar, then OUT/NAME.json; returns that manifest.

    Needs the set's manifest (the split and the hashes come from it). Refuses an OUT that already
    holds an export of the set."""
    ref = spec if isinstance(spec, ShardSetRef) else resolve(spec)
    m = ref.manifest
    if m is None:
        raise ShardSetError(f"{' '.join(ref.specs)}: no manifest found; --plain-tar takes the split and the "
                            "sha256 of each shard from it: name the set's NAME.json or its folder")
    name = m["name"]
    records = []
    for url in ref.urls:
        rec = ref.record(url)
        if rec is None:
            raise ShardSetError(f"{url} is not listed in {ref.manifest_url}; export only the shards the "
                                "manifest lists (run `shardset verify` to see what is wrong)")
        records.append((url, rec))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ShardSetError(f"--out {out} is a file; name a folder")
    manifest_path = out / manifest_filename(name)
    if manifest_path.exists() or (out.is_dir() and any(out.glob(plain_tar_glob(name)))):
        raise ShardSetExistsError(f"{out} already holds an export of {name!r} ({manifest_path.name} or "
                                  f"{name}-*.tar); choose another --out, or delete those files first")
    made = _Made()
    try:
        made.mkdir(out)
        plain = []
        for url, rec in records:
            dest = out / plain_tar_filename(name, rec["index"])
            tmp = made.file(dest.with_name(f".{dest.name}.{os.getpid()}.tmp"))
            plain.append(_plain_tar(url, rec, tmp, dest.name, limits))
            os.replace(tmp, made.file(dest))
            if progress:
                progress(1)
        fsync_dir(out)
        source = {"fingerprint": m["fingerprint"], "complete": m["complete"], "created": m["created"],
                  "tool": m["tool"], "shards": len(m["shards"])}
        manifest = plain_tar_manifest(name, m["encoding"], source, plain)
        atomic_write_text(made.file(manifest_path), dumps(manifest))
    except BaseException:
        made.remove()
        raise
    return manifest


def reencode_set(spec: str | list[str] | ShardSetRef, out: str | os.PathLike, encoding: str, *,
                 limits: Limits = Limits(), progress: Callable[[int], None] | None = None) -> dict:
    """Write the set `spec` names as OUT/NAME-*.tar.zst + OUT/NAME.json with its images in `encoding`;
    returns the new manifest.

    Samples are decoded as every reader decodes them (each shard checked against its manifest
    record while it streams) and written again by ShardSetWriter: keys, z and meta unchanged, each
    shard's split, drawn and rejected counts carried over, the params kept with `reencoded_from`
    added (the source's encoding, fingerprint, created and tool). Needs the manifest and every shard
    it lists; an incomplete source gives an incomplete copy. A lossy source (jpg) stays as lossy as it
    was; a lossy `encoding` loses detail once more."""
    check_encoding(encoding)
    ref = spec if isinstance(spec, ShardSetRef) else resolve(spec)
    m = ref.manifest
    if m is None:
        raise ShardSetError(f"{' '.join(ref.specs)}: no manifest found; re-encoding carries the split and the "
                            "per-shard counts over from it: name the set's NAME.json or its folder")
    left_out = [p for p in set_problems(ref) if not p.startswith("incomplete")]
    if left_out:
        raise ShardSetError(f"cannot re-encode part of a set: {left_out[0]}; name the whole set (its NAME.json)")
    name = m["name"]
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ShardSetError(f"--out {out} is a file; name a folder")
    if (out / manifest_filename(name)).exists() or (out.is_dir() and any(out.glob(shard_glob(name)))):
        raise ShardSetExistsError(f"{out} already holds a set named {name!r}; choose another --out (the source "
                                  "is never rewritten in place)")
    params = {**m["params"], "reencoded_from": {"encoding": m["encoding"], "fingerprint": m["fingerprint"],
                                                "created": m["created"], "tool": m["tool"]}}
    made = _Made()
    writer = None
    try:
        made.mkdir(out)
        writer = ShardSetWriter(out, name, encoding=encoding, shard_size=m["shard_size"], params=params,
                                seed=m["seed"], mode="new", planned=m.get("planned"))
        for url in ref.urls:
            rec = ref.record(url)
            samples = []
            for raw in iter_raw_samples(url, limits=limits, expect=rec):
                sample = decode_sample(raw, limits)
                if "meta.json" not in raw:  # decode_sample gives {}; the copy holds no meta.json either
                    sample.pop("meta")
                samples.append(sample)
            stats = {**rec.get("stats", {}), "drawn": rec["drawn"], "rejected": rec["rejected"]}
            writer.write_shard(rec["index"], samples, split=rec["split"], stats=stats)
            if progress:
                progress(1)
        # an unfinished source stays unfinished: its manifest as the last write_shard left it
        manifest = writer.finalize(planned=m.get("planned")) if m["complete"] else load_manifest(writer.manifest_path)
        writer.close()
        return manifest
    except BaseException:
        if writer is not None:
            writer.close()
            for p in [*out.glob(shard_glob(name)), *out.glob(f"{name}-*.tar.zst.*.tmp"), out / manifest_filename(name),
                      out / f"{name}.lock", out / f".{name}.lock"]:
                p.unlink(missing_ok=True)
            shutil.rmtree(out / f".{name}.records", ignore_errors=True)
        made.remove()
        raise
