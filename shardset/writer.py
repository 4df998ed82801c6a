"""ShardSetWriter: write shards of a set atomically, record each one, keep the manifest current.

Layout in `out_dir`:

    NAME-000000.tar.zst ...      the shards (tar, one zstd frame, members sorted, fixed tar headers)
    NAME.json                    the manifest, rebuilt from the records after every shard
    .NAME.records/set.json       the set header (name, params, seed, encoding, created, tool, planned)
    .NAME.records/000123.json    one record per finished shard: the commit marker

    NAME.lock                    who writes the set (see "Writers of one set" below)
    .NAME.lock                   short critical sections: header, commits, manifest rebuilds

A shard is written as `NAME-000123.tar.zst.<pid>.tmp`, fsynced and renamed; its record is written
after the rename, and only recorded shards appear in the manifest. So a killed writer leaves
complete shards and a manifest listing exactly the recorded ones, and several processes may
write disjoint shard indices into one folder (the manifest rebuild runs under a file lock).

Writers of one set. Every writer takes `flock` on NAME.lock before it writes anything and holds
it until `close()` (or until it is garbage collected, or its process ends): modes "new" and
"overwrite" exclusively, mode "resume" shared (override with `lock=`). A second writer whose
lock conflicts fails at once with `LockHeldError` naming the holder's pid and host. Shared
holders are the processes of one run (gen-synth --nodes, shardset import --workers):
each joins the set only if its params, seed, encoding and shard size equal the set header's
(compared under .NAME.lock), so sharers compute the same shard for the same index, and a shard's
rename and its record are committed together under .NAME.lock, so a file and its record always
come from one writer even if two sharers write the same index. flock is advisory and, on some
network filesystems, local to one machine: see shardset/lock.py.
"""
from __future__ import annotations

import fcntl
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tarfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import zstandard

from core.hashing import sha256_file

from . import codec
from .format import (
    DEFAULT_ENCODING,
    KEY_RE,
    SPLITS,
    TAR_GID,
    TAR_GNAME,
    TAR_MODE,
    TAR_MTIME,
    TAR_UID,
    TAR_UNAME,
    ZSTD_LEVEL,
    ShardSetError,
    ShardSetExistsError,
    check_encoding,
    check_name,
    key_prefix,
    manifest_filename,
    sample_key,
    shard_filename,
    shard_glob,
)
from .lock import FileLock, LockHeldError  # noqa: F401  (LockHeldError: re-exported for callers)
from .manifest import atomic_write_text, build_manifest, dumps, fsync_dir, tool_info, utc_now, write_manifest

log = logging.getLogger(__name__)

MODES = ("new", "resume", "overwrite")
LOCKS = ("exclusive", "shared")
_TMP_RE = re.compile(r"\.(?P<pid>\d+)\.tmp$")


_BLOCK = 512
_RECORD = 20 * _BLOCK  # tarfile pads the archive to whole records of 20 blocks
_NAME_OK = re.compile(r"[\x21-\x7e]{1,100}")  # printable ASCII without space: one ustar name field


def _ustar_template() -> tuple[bytes, int]:
    """The ustar header of the fixed fields (mode, ids, owner names, mtime, type) with name, size
    and checksum left blank, laid out as tarfile writes it, and its byte sum for the checksum."""
    def num(n: int, digits: int) -> bytes:  # tarfile's itn() for ustar
        return b"%0*o\0" % (digits - 1, n)

    def text(t: str, length: int) -> bytes:  # tarfile's stn()
        return t.encode("ascii").ljust(length, b"\0")

    head = b"".join((
        b"\0" * 100,  # name
        num(TAR_MODE & 0o7777, 8), num(TAR_UID, 8), num(TAR_GID, 8),
        b"\0" * 12,  # size
        num(TAR_MTIME, 12),
        b" " * 8,  # checksum, counted as spaces
        tarfile.REGTYPE, b"\0" * 100, tarfile.POSIX_MAGIC,
        text(TAR_UNAME, 32), text(TAR_GNAME, 32),
        b"\0" * 16,  # devmajor, devminor: empty for regular files
        b"\0" * 155,  # prefix
    )).ljust(_BLOCK, b"\0")
    return head, sum(head)


_USTAR_HEAD, _USTAR_SUM = _ustar_template()


def build_tar(members: dict[str, bytes]) -> bytes:
    """POSIX (ustar) tar of `members`, sorted by name, with fixed headers: same input, same bytes.

    The bytes are exactly those of `tarfile` (USTAR_FORMAT, the TAR_* fields of format.py); the
    headers are filled into a template here because tarfile's per-member header building and
    stream writes cost as much as compressing the shard. Names that do not fit one ustar name
    field go through tarfile itself, which raises its usual error."""
    names = sorted(members)
    if not all(_NAME_OK.fullmatch(n) for n in names):
        return _build_tar_tarfile(members)
    parts: list[bytes] = []
    total = 0
    for name in names:
        data = members[name]
        size = len(data)
        if size >= 8 ** 11:  # over ustar's 11 octal digits: tarfile's error
            return _build_tar_tarfile(members)
        bname, bsize = name.encode("ascii"), b"%011o\0" % size
        head = bytearray(_USTAR_HEAD)
        head[:len(bname)] = bname
        head[124:136] = bsize
        head[148:155] = b"%06o\0" % (_USTAR_SUM + sum(bname) + sum(bsize))
        parts += (head, data, b"\0" * (-size % _BLOCK))
        total += _BLOCK + size + (-size % _BLOCK)
    total += 2 * _BLOCK  # end-of-archive marker
    parts.append(b"\0" * (2 * _BLOCK + (-total % _RECORD)))
    return b"".join(parts)


def _build_tar_tarfile(members: dict[str, bytes]) -> bytes:
    """build_tar through the tarfile module (the reference its fast path reproduces)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(members):
            data = members[name]
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = TAR_MTIME
            info.uid, info.gid = TAR_UID, TAR_GID
            info.uname, info.gname = TAR_UNAME, TAR_GNAME
            info.mode = TAR_MODE
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def compress(tar_bytes: bytes) -> bytes:
    # One frame with its content size and a checksum: readers can refuse an over-size frame from
    # the header alone, and corruption is caught at the frame end. Single-threaded so the output
    # is byte-identical on every machine with the same zstd version.
    return _compressor().compress(tar_bytes)


_CCTX = threading.local()  # a ZstdCompressor is not thread-safe; one per writer thread, reused


def _compressor() -> zstandard.ZstdCompressor:
    cctx = getattr(_CCTX, "cctx", None)
    if cctx is None:
        cctx = _CCTX.cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True,
                                                     write_content_size=True, threads=0)
    return cctx


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def setting_differences(old, new, path: str = "") -> list[str]:
    """'params.filters.min_fg (set 0.1, this run 0.2)' for each leaf where two settings differ,
    by dotted path (list items as [i]); a whole value when the shapes differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            sub = f"{path}.{k}" if path else str(k)
            if k not in new:
                out.append(f"{sub} (set {_short(old[k])}, not in this run)")
            elif k not in old:
                out.append(f"{sub} (not in the set, this run {_short(new[k])})")
            else:
                out += setting_differences(old[k], new[k], sub)
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in setting_differences(a, b, f"{path}[{i}]")]
    if old != new:
        return [f"{path} (set {_short(old)}, this run {_short(new)})"]
    return []


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ShardSetWriter:
    """Writes the shards of set `name` into `out_dir` (see the module docstring for the layout).

    mode: "new" refuses a folder that already holds the set; "resume" keeps every recorded shard
    that re-hashes correctly (and refuses when params/seed/encoding/shard size differ);
    "overwrite" deletes the set first. Parallel workers: the parent opens the set ("new" or
    "overwrite") and `share()`s or `close()`s it, each worker opens it with "resume" and writes
    its own shard indices.

    lock: "exclusive" or "shared" (default: shared for "resume", exclusive otherwise); see the
    module docstring. Use the writer as a context manager, or call `close()`, to release it.

    planned: what the producer plans, e.g. {"shards": 100}, kept in the set header so that every
    manifest says it from the first shard on: a set whose writer stopped early then says how many
    shards it lacks. `finalize(planned)` may still give it at the end instead.
    """

    def __init__(self, out_dir: str | os.PathLike, name: str, *, encoding: str = DEFAULT_ENCODING,
                 shard_size: int = 1000, params: dict | None = None, seed: int = 0, mode: str = "new",
                 lock: str | None = None, planned: dict | None = None):
        self.out_dir = Path(out_dir)
        self.name = check_name(name)
        self.encoding = check_encoding(encoding)
        if not isinstance(shard_size, int) or shard_size <= 0:
            raise ValueError(f"shard_size must be a positive int, got {shard_size!r}")
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is unknown: choose one of {', '.join(MODES)}")
        lock = lock or ("shared" if mode == "resume" else "exclusive")
        if lock not in LOCKS:
            raise ValueError(f"lock {lock!r} is unknown: choose one of {', '.join(LOCKS)}")
        try:  # the params go into JSON; normalise numpy scalars now and fail now, not after a shard
            params = json.loads(json.dumps(dict(params or {}), allow_nan=False, default=codec.json_default))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"params must be JSON-serialisable without NaN: {exc}") from None
        self.shard_size = shard_size
        self.seed = int(seed)
        self.mode = mode
        self.records_dir = self.out_dir / f".{name}.records"
        self.manifest_path = self.out_dir / manifest_filename(name)
        self._verified: dict[str, tuple] = {}  # file -> (size, mtime_ns) already re-hashed OK
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # before anything else is written, and held until close(): see "Writers of one set"
        self._holder = FileLock(self.out_dir / f"{name}.lock", shared=lock == "shared",
                                what=f"shard set {self.manifest_path}",
                                hint="wait for that writer to finish, or write to another name or folder")

        header = {"name": name, "params": params, "seed": self.seed, "shard_size": shard_size,
                  "encoding": encoding}
        if planned is not None:
            header["planned"] = json.loads(dumps(dict(planned)))
        with self._lock():
            if mode == "overwrite":
                self._delete_set()
            existing = self._existing()
            if mode == "new" and existing:
                self.close()
                raise ShardSetExistsError(
                    f"{self.out_dir} already holds shard set {name!r} ({existing}); "
                    f"use mode 'resume' to continue it or 'overwrite' to replace it"
                )
            header_path = self.records_dir / "set.json"
            if header_path.exists():
                self.header = json.loads(header_path.read_text())
                keys = ("params", "seed", "shard_size", "encoding")
                diffs = setting_differences({k: json.loads(dumps(self.header[k])) for k in keys},
                                            {k: json.loads(dumps(header[k])) for k in keys})
                if diffs:
                    more = f" and {len(diffs) - 3} more" if len(diffs) > 3 else ""
                    self.close()
                    raise ShardSetError(f"cannot resume {self.manifest_path}: this run's settings differ from "
                                     f"the set's in {', '.join(diffs[:3])}{more}")
                if planned is not None and self.header.get("planned") != header["planned"]:
                    # a set begun before writers recorded their plan: the header holds this run's
                    self.header["planned"] = header["planned"]
                    atomic_write_text(header_path, dumps(self.header))
            else:
                self.records_dir.mkdir(parents=True, exist_ok=True)
                self.header = {**header, "created": utc_now(), "tool": tool_info()}
                atomic_write_text(header_path, dumps(self.header))
            self._remove_stray_tmp()
        if mode == "resume":
            done = self.completed()
            log.info("resuming %s: %d shards already complete", self.manifest_path, len(done))
        self._rebuild_manifest()

    # -- the writer's lock ----------------------------------------------------------------------

    def share(self) -> None:
        """Let workers join (mode "resume") while this writer still holds the set: its exclusive
        lock becomes a shared one (see FileLock.share)."""
        self._holder.share()

    def close(self) -> None:
        """Release the set's lock; the writer must not write after this. Idempotent."""
        self._holder.release()

    def __enter__(self) -> "ShardSetWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- folder state ---------------------------------------------------------------------------

    @contextmanager
    def _lock(self) -> Iterator[None]:
        lock_path = self.out_dir / f".{self.name}.lock"
        with open(lock_path, "a+") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def _shard_files(self) -> list[Path]:
        return sorted(self.out_dir.glob(shard_glob(self.name)))

    def _existing(self) -> str:
        parts = []
        if self.manifest_path.exists():
            parts.append(self.manifest_path.name)
        n = len(self._shard_files())
        if n:
            parts.append(f"{n} shard files")
        if self.records_dir.exists():
            parts.append(self.records_dir.name)
        return ", ".join(parts)

    def _delete_set(self) -> None:
        for p in self._shard_files() + list(self.out_dir.glob(f"{self.name}-*.tar.zst.*.tmp")):
            p.unlink(missing_ok=True)
        self.manifest_path.unlink(missing_ok=True)
        shutil.rmtree(self.records_dir, ignore_errors=True)

    def _remove_stray_tmp(self) -> None:
        # A tmp file whose writer process is gone is a crash leftover. A live pid may be a sibling
        # worker in the middle of its shard, so its file stays.
        for p in self.out_dir.glob(f"{self.name}-*.tar.zst.*.tmp"):
            m = _TMP_RE.search(p.name)
            if m and not _pid_alive(int(m["pid"])):
                log.info("removing stray temporary file %s", p)
                p.unlink(missing_ok=True)

    def _records(self) -> list[dict]:
        out = []
        for p in sorted(self.records_dir.glob("[0-9]*.json")):
            try:
                out.append(json.loads(p.read_text()))
            except (OSError, json.JSONDecodeError):
                log.warning("ignoring unreadable shard record %s", p)
        return out

    def _record_path(self, index: int) -> Path:
        return self.records_dir / f"{index:06d}.json"

    def completed(self) -> dict[int, dict]:
        """Records of the shards on disk whose size and sha256 match; others are dropped."""
        out, dropped, bad = {}, False, []
        for rec in self._records():
            path = self.out_dir / rec.get("file", "")
            try:
                st = path.stat()
            except OSError:
                st = None
            stamp = (st.st_size, st.st_mtime_ns) if st else None
            ok = st is not None and st.st_size == rec.get("bytes")
            if ok and self._verified.get(rec["file"]) != stamp:
                ok = sha256_file(path) == rec.get("sha256")
                if ok:
                    self._verified[rec["file"]] = stamp
            if ok:
                out[rec["index"]] = rec
            else:
                bad.append((rec, stamp))
        if bad:
            with self._lock():  # a sharer may have committed that index since: drop only what we checked
                for rec, stamp in bad:
                    rp, path = self._record_path(rec["index"]), self.out_dir / rec.get("file", "")
                    try:
                        if json.loads(rp.read_text()) != rec:
                            continue
                    except (OSError, ValueError):  # gone, or replaced meanwhile: nothing to drop
                        continue
                    try:
                        st = path.stat()
                        now = (st.st_size, st.st_mtime_ns)
                    except OSError:
                        now = None
                    if now == stamp:
                        log.warning("shard %s does not match its record; it will be rewritten", path)
                        rp.unlink(missing_ok=True)
                        dropped = True
        if dropped:
            self._rebuild_manifest()
        return out

    def _rebuild_manifest(self, *, planned: dict | None = None, finalized: bool = False) -> dict:
        with self._lock():
            planned = planned if planned is not None else self.header.get("planned")
            manifest = build_manifest(self.header, self._records(), planned=planned, finalized=finalized)
            write_manifest(self.manifest_path, manifest)
        return manifest

    # -- writing --------------------------------------------------------------------------------

    def encode_shard(self, index: int, samples: list[dict]) -> bytes:
        """The compressed bytes of shard `index` (pure: no files touched)."""
        prefix = key_prefix(self.name, index)
        members: dict[str, bytes] = {}
        for i, sample in enumerate(samples):
            key = sample.get("__key__") or sample_key(self.name, index, i)
            if not KEY_RE.fullmatch(key) or not key.startswith(prefix):
                raise ValueError(f"sample {i} of shard {index}: key {key!r} must match {prefix}[A-Za-z0-9_-]+")
            try:
                encoded = codec.encode_sample(sample, self.encoding)
            except (KeyError, ValueError) as exc:
                raise ValueError(f"sample {key}: {exc}") from None
            for field, data in encoded.items():
                member = f"{key}.{field}"
                if member in members:
                    raise ValueError(f"sample key {key!r} appears twice in shard {index}")
                members[member] = data
        return compress(build_tar(members))

    def write_shard(self, index: int, samples: list[dict], *, split: str = "train",
                    stats: dict | None = None) -> dict:
        """Write shard `index` atomically, record it, rewrite the manifest; return its record.

        An empty `samples` list is allowed (a shard whose every draw was rejected): it keeps the
        shard numbering and the rejection counts of a plan intact.
        """
        if not isinstance(index, int) or not 0 <= index <= 999_999:
            raise ValueError(f"shard index must be an int in 0..999999, got {index!r}")
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is unknown: choose one of {', '.join(SPLITS)}")
        if len(samples) > self.shard_size:
            raise ValueError(f"shard {index} has {len(samples)} samples, over shard_size {self.shard_size}")
        stats = dict(stats or {})
        drawn = int(stats.pop("drawn", len(samples)))
        rejected = {str(k): int(v) for k, v in sorted(dict(stats.pop("rejected", {})).items())}
        data = self.encode_shard(index, samples)

        fname = shard_filename(self.name, index)
        final = self.out_dir / fname
        tmp = self.out_dir / f"{fname}.{os.getpid()}.tmp"
        self._record_path(index).unlink(missing_ok=True)  # a rewritten shard is uncommitted until recorded
        record = {"index": index, "file": fname, "split": split, "samples": len(samples), "bytes": len(data),
                  "sha256": hashlib.sha256(data).hexdigest(), "drawn": drawn, "rejected": rejected,
                  "zstd_level": ZSTD_LEVEL}
        if stats:
            record["stats"] = stats
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            with self._lock():  # rename and record together: a sharer's commit of this index comes whole
                os.replace(tmp, final)
                fsync_dir(self.out_dir)
                st = final.stat()
                # the record is the commit marker: written last, atomically
                atomic_write_text(self._record_path(index), dumps(record))
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._verified[fname] = (st.st_size, st.st_mtime_ns)
        self._rebuild_manifest()
        log.debug("wrote %s (%d samples, %d bytes)", final, len(samples), len(data))
        return record

    def finalize(self, planned: dict | None = None) -> dict:
        """Write the final manifest (`complete` true when every planned shard 0..N-1 is present)."""
        manifest = self._rebuild_manifest(planned=planned, finalized=True)
        if not manifest["complete"]:
            log.warning("%s: %d shards written, planned %s", self.manifest_path, len(manifest["shards"]), planned)
        return manifest
