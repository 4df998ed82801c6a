"""Export a shard set back to files: images/<key>.png, masks/<key>.png (0/255), meta.jsonl."""
from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from .format import Limits
from .reader import iter_samples
from .urls import ShardSetRef, resolve


def _write_png(path: Path, arr: np.ndarray) -> None:
    ok, enc = cv2.imencode(".png", arr)
    if not ok:
        raise ValueError(f"OpenCV could not encode {path}")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(enc.tobytes())
    os.replace(tmp, path)


def export_set(spec: str | list[str] | ShardSetRef, out: str | os.PathLike, *, limit: int | None = None,
               limits: Limits = Limits(), progress: Callable[[int], None] | None = None) -> int:
    """Write up to `limit` samples as lossless PNG files plus z/<key>.npy when present; returns the count."""
    ref = spec if isinstance(spec, ShardSetRef) else resolve(spec)
    out = Path(out)
    for sub in ("images", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    samples = (s for url in ref.urls for s in iter_samples(url, limits=limits))
    n = 0
    meta_tmp = out / "meta.jsonl.tmp"
    with open(meta_tmp, "w", encoding="utf-8") as meta_f:
        for s in itertools.islice(samples, limit):
            key = s["__key__"]
            _write_png(out / "images" / f"{key}.png", np.ascontiguousarray(s["image"][:, :, ::-1]))
            _write_png(out / "masks" / f"{key}.png", s["mask"] * np.uint8(255))
            if "z" in s:
                (out / "z").mkdir(exist_ok=True)
                np.save(out / "z" / f"{key}.npy", s["z"], allow_pickle=False)
            meta_f.write(json.dumps({"__key__": key, **s["meta"]}, sort_keys=True) + "\n")
            n += 1
            if progress:
                progress(1)
    os.replace(meta_tmp, out / "meta.jsonl")
    return n
