"""Export a shard set back to files: images/<key>.png, masks/<key>.png (0/255), meta.jsonl.

meta.jsonl is renamed into place last, so its presence marks a finished export. A failed export
(a refused shard, a full disk) removes every file and folder it made, so nothing half-written is
left that looks complete; files that were in --out before are not removed.
"""
from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from .format import Limits, ShardSetError
from .reader import iter_samples
from .urls import ShardSetRef, resolve


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
