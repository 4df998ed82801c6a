"""Summarise a shard set as a table, and draw a contact sheet of image | mask pairs."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import cv2
import numpy as np

from .format import SPLITS, Limits, ShardSetError
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


def summary(ref: ShardSetRef) -> dict:
    """The facts `shardset inspect` shows, as JSON-ready values; from the manifest when there is one."""
    m = ref.manifest
    if m is None:
        n = sum(1 for url in ref.urls for _ in iter_samples(url))
        return {"manifest": None, "urls": list(ref.urls), "shards": len(ref.urls), "samples": n}
    t, splits = m["totals"], m["splits"]
    return {
        "manifest": ref.manifest_url,
        "urls": list(ref.urls),
        **{k: m[k] for k in ("name", "format", "format_version", "created", "tool", "complete", "planned", "encoding",
                             "shard_size", "seed", "params", "fingerprint")},
        "shards": {"total": t["shards"], **{sp: len(splits[sp]["shards"]) for sp in SPLITS}},
        "samples": {"total": t["samples"], **{sp: splits[sp]["samples"] for sp in SPLITS}},
        "bytes": t["bytes"],
        "bytes_per_sample": t["bytes"] / t["samples"] if t["samples"] else 0.0,
        "drawn": t["drawn"],
        "kept_per_drawn": t["samples"] / t["drawn"] if t["drawn"] else 0.0,
        "rejected": t["rejected"],
    }


def rows_of(s: dict) -> list[tuple[str, str]]:
    """(field, value) rows of a `summary` for the table."""
    if s["manifest"] is None:
        return [("manifest", "none found (counts come from decoding)"), ("shards", str(s["shards"])),
                ("samples", str(s["samples"]))]
    tool, sh, sa = s["tool"], s["shards"], s["samples"]
    rows = [
        ("name", s["name"]),
        ("format", f"{s['format']} v{s['format_version']}"),
        ("created", s["created"]),
        ("tool", f"{tool.get('name')} {tool.get('version')} (git {tool.get('git_commit')})"),
        ("complete", "yes" if s["complete"] else "no (still being written, or stopped early)"),
        ("shards", f"{sh['total']} (train {sh['train']}, val {sh['val']})"),
        ("samples", f"{sa['total']} (train {sa['train']}, val {sa['val']})"),
        ("bytes", f"{s['bytes']} ({s['bytes'] / 2**20:.1f} MiB)"),
        ("bytes/sample", f"{s['bytes_per_sample']:.0f}"),
        ("encoding", s["encoding"]),
        ("shard size", str(s["shard_size"])),
        ("seed", str(s["seed"])),
        ("drawn", str(s["drawn"])),
        ("kept/drawn", f"{s['kept_per_drawn']:.3f}"),
    ]
    rows += [(f"rejected.{k}", str(v)) for k, v in s["rejected"].items()] or [("rejected", "none")]
    rows += [(f"params.{k}", v) for k, v in _flatten(s["params"])]
    rows.append(("fingerprint", s["fingerprint"]))
    return rows


def summarize(ref: ShardSetRef) -> list[tuple[str, str]]:
    """The table's rows for `ref`."""
    return rows_of(summary(ref))


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
