"""Summarise a shard set as a table, and draw a contact sheet of image | mask pairs."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import cv2
import numpy as np

from .format import Limits, ShardSetError
from .reader import iter_samples
from .urls import ShardSetRef, resolve


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, str]]:
    rows = []
    for k in sorted(d):
        v = d[k]
        if isinstance(v, dict) and v:
            rows += _flatten(v, f"{prefix}{k}.")
        else:
            rows.append((f"{prefix}{k}", json.dumps(v) if not isinstance(v, str) else v))
    return rows


def summarize(ref: ShardSetRef) -> list[tuple[str, str]]:
    """(field, value) rows describing the set; from the manifest when there is one."""
    m = ref.manifest
    if m is None:
        n = sum(1 for url in ref.urls for _ in iter_samples(url))
        return [("manifest", "none found (counts come from decoding)"), ("shards", str(len(ref.urls))),
                ("samples", str(n))]
    t = m["totals"]
    per = t["bytes"] / t["samples"] if t["samples"] else 0.0
    rows = [
        ("name", m["name"]),
        ("format", f"{m['format']} v{m['format_version']}"),
        ("created", m["created"]),
        ("tool", f"{m['tool'].get('name')} {m['tool'].get('version')} (git {m['tool'].get('git_commit')})"),
        ("complete", "yes" if m["complete"] else "no (still being written, or stopped early)"),
        ("shards", f"{t['shards']} (train {len(m['splits']['train']['shards'])}, "
                   f"val {len(m['splits']['val']['shards'])})"),
        ("samples", f"{t['samples']} (train {m['splits']['train']['samples']}, val {m['splits']['val']['samples']})"),
        ("bytes", f"{t['bytes']} ({t['bytes'] / 2**20:.1f} MiB)"),
        ("bytes/sample", f"{per:.0f}"),
        ("encoding", m["encoding"]),
        ("shard size", str(m["shard_size"])),
        ("seed", str(m["seed"])),
        ("drawn", str(t["drawn"])),
    ]
    rate = t["samples"] / t["drawn"] if t["drawn"] else 0.0
    rows.append(("kept/drawn", f"{rate:.3f}"))
    rows += [(f"rejected.{k}", str(v)) for k, v in t["rejected"].items()] or [("rejected", "none")]
    rows += [(f"params.{k}", v) for k, v in _flatten(m["params"])]
    rows.append(("fingerprint", m["fingerprint"]))
    return rows


def format_table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def contact_sheet(samples: list[dict], cols: int = 4, pad: int = 2) -> np.ndarray:
    """RGB uint8 grid of image | mask pairs (mask drawn white on black). Pure numpy."""
    if not samples:
        raise ShardSetError("no samples to draw")
    h = max(s["image"].shape[0] for s in samples)
    w = max(s["image"].shape[1] for s in samples)
    cols = max(1, min(cols, len(samples)))
    rows = -(-len(samples) // cols)
    cell_w = 2 * w + pad
    sheet = np.full((rows * (h + pad) + pad, cols * (cell_w + pad) + pad, 3), 32, np.uint8)
    for n, s in enumerate(samples):
        r, c = divmod(n, cols)
        y, x = pad + r * (h + pad), pad + c * (cell_w + pad)
        img = s["image"]
        ih, iw = img.shape[:2]
        sheet[y : y + ih, x : x + iw] = img
        sheet[y : y + ih, x + w + pad : x + w + pad + iw] = (s["mask"][..., None] * 255).astype(np.uint8)
    return sheet


def write_preview(spec: str | list[str] | ShardSetRef, out_png: str | Path, *, n: int = 16, cols: int = 4,
                  limits: Limits = Limits()) -> int:
    """Write a contact sheet of the first `n` samples to `out_png` (atomically); returns the count."""
    ref = spec if isinstance(spec, ShardSetRef) else resolve(spec)
    samples = list(itertools.islice((s for url in ref.urls
                                     for s in iter_samples(url, limits=limits, expect=ref.record(url))), n))
    sheet = contact_sheet(samples, cols)
    ok, enc = cv2.imencode(".png", sheet[:, :, ::-1])
    if not ok:
        raise ValueError(f"OpenCV could not encode the contact sheet for {out_png}")
    out = Path(out_png)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(enc.tobytes())
    tmp.replace(out)
    return len(samples)
