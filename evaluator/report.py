"""Evaluation outputs: the terminal table, results.json, results.md (the paper's table layout),
the precision-recall plot and the best / median / worst figure (the paper's figure 4).

Input is the plain results dict built by `evaluator.cli.evaluate` (see `write_outputs`). Every
file is written atomically (temporary name, then os.replace). Plots use matplotlib's Agg
backend when matplotlib is installed, else cv2; the example figure always uses cv2.
"""
from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import cv2
import numpy as np

from shardset.atomic import atomic_write_bytes

log = logging.getLogger(__name__)

__all__ = ["HEADLINE", "COLUMN_NAMES", "aggregate", "format_value", "terminal_table", "markdown_header",
           "markdown_row", "append_markdown", "write_json", "pr_curve_png", "examples_png", "write_outputs",
           "atomic_write_bytes", "to_jsonable"]

# The columns of the paper's tables per task (tables 1-2: maxF, IoU, accuracy; table 3: box
# accuracy or PxAP), then the other numbers the field reports (terminal and JSON only).
HEADLINE = {"mask": ("max_f", "iou", "accuracy"), "boxes": ("max_box_acc",), "pxap": ("pxap",)}
EXTRA = {"mask": ("mae", "s_measure", "e_max"), "boxes": ("max_box_acc_v2",), "pxap": ()}
COLUMN_NAMES = {"max_f": "maxFβ", "iou": "IoU", "accuracy": "Acc", "mae": "MAE", "s_measure": "Sm",
                "e_max": "Em", "max_box_acc": "MaxBoxAcc", "max_box_acc_v2": "MaxBoxAccV2", "pxap": "PxAP"}


# --------------------------------------------------------------------------- numbers


def aggregate(values: list[float]) -> dict:
    """mean and std over runs; std is the sample standard deviation (n - 1), 0 for one run."""
    a = np.asarray(values, dtype=np.float64)
    std = float(a.std(ddof=1)) if a.size > 1 else 0.0
    return {"mean": float(a.mean()), "std": std, "n": int(a.size), "runs": [float(v) for v in a]}


def format_value(agg: dict, digits: int = 3) -> str:
    """'0.713' for one run, '0.713 ± 0.004' for several (the paper's three decimals)."""
    if agg["n"] > 1:
        return f"{agg['mean']:.{digits}f} ± {agg['std']:.{digits}f}"
    return f"{agg['mean']:.{digits}f}"


def to_jsonable(obj):
    """numpy arrays and scalars -> lists and Python numbers (recursively)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None  # JSON has no NaN/inf; a missing number reads as null
    return obj


# --------------------------------------------------------------------------- files


def write_json(path: Path, results: dict) -> None:
    text = json.dumps(to_jsonable(results), indent=1, sort_keys=False, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode())


# --------------------------------------------------------------------------- tables


def _columns(results: dict, extra: bool) -> list[tuple[str, str]]:
    cols = []
    for name, ds in results["datasets"].items():
        keys = HEADLINE[ds["task"]] + (EXTRA[ds["task"]] if extra else ())
        cols += [(name, k) for k in keys if k in ds["summary"]]
    return cols


def terminal_table(results: dict) -> str:
    """One row per dataset: images, protocol and every summary number (mean ± std over runs)."""
    rows = [["dataset", "images", "protocol"]]
    keys: list[str] = []
    for ds in results["datasets"].values():
        for k in HEADLINE[ds["task"]] + EXTRA[ds["task"]]:
            if k in ds["summary"] and k not in keys:
                keys.append(k)
    rows[0] += [COLUMN_NAMES.get(k, k) for k in keys]
    for name, ds in results["datasets"].items():
        rows.append([name, str(ds["n_images"]), ds["protocol"]] +
                    [format_value(ds["summary"][k]) if k in ds["summary"] else "-" for k in keys])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    runs = len(results["sources"])
    if runs > 1:
        lines.append(f"mean ± std (n - 1) over {runs} runs")
    return "\n".join(lines)


def markdown_header(results: dict) -> list[str]:
    cols = _columns(results, extra=False)
    head = "| Method | " + " | ".join(f"{ds} {COLUMN_NAMES.get(k, k)}" for ds, k in cols) + " |"
    sep = "|---|" + "---|" * len(cols)
    return [head, sep]


def markdown_row(results: dict) -> str:
    cols = _columns(results, extra=False)
    cells = [format_value(results["datasets"][ds]["summary"][k]) for ds, k in cols]
    method = results["method"].replace("|", "\\|")
    return f"| {method} | " + " | ".join(cells) + " |"


def append_markdown(path: Path, results: dict) -> None:
    """Add this evaluation's row to results.md.

    Rows of several runs and methods line up under one header: when the file's last table has
    the same columns the row is appended to it; otherwise a new table (header + row) is appended
    below. Existing rows are never rewritten.
    """
    path = Path(path)
    header = markdown_header(results)
    row = markdown_row(results)
    old = path.read_text() if path.exists() else ""
    lines = old.rstrip("\n").split("\n") if old.strip() else []
    last_header = None
    for i, line in enumerate(lines):
        if line.startswith("| Method |") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            last_header = line
    if last_header == header[0] and lines and lines[-1].startswith("|"):
        lines.append(row)
    else:
        if lines:
            lines.append("")
        lines += header + [row]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


# --------------------------------------------------------------------------- figures


def _mean_curve(ds: dict, key: str) -> np.ndarray | None:
    curves = [r["curves"][key] for r in ds["runs"] if key in r.get("curves", {})]
    return np.mean(np.asarray(curves, dtype=np.float64), axis=0) if curves else None


def pr_curve_png(results: dict) -> bytes | None:
    """PNG of the precision-recall curve of each mask dataset (mean over runs); None if none."""
    curves = []
    for name, ds in results["datasets"].items():
        p, r = _mean_curve(ds, "precision_curve"), _mean_curve(ds, "recall_curve")
        if p is not None and r is not None:
            f = _mean_curve(ds, "f_curve")
            best = int(np.nanargmax(f)) if f is not None else int(np.nanargmax(np.nan_to_num(p) + r))
            curves.append((name, r, p, best))
    if not curves:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: never open a window
        import matplotlib.pyplot as plt
    except ImportError:
        return _pr_curve_cv2(curves)
    fig, ax = plt.subplots(figsize=(5, 4.5), dpi=100)
    for name, r, p, best in curves:
        line, = ax.plot(r, p, label=name)
        # the maxF operating point; also what shows when the curve collapses to one point
        ax.plot([r[best]], [p[best]], "o", color=line.get_color(), markersize=5)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(f"{results['method']}: precision-recall (thresholds v > k, k = 0..254)", fontsize=8)
    ax.legend(loc="lower left")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


_COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def _pr_curve_cv2(curves) -> bytes:
    size, pad = 400, 40
    img = np.full((size + 2 * pad, size + 2 * pad, 3), 255, np.uint8)
    cv2.rectangle(img, (pad, pad), (pad + size, pad + size), (0, 0, 0), 1)
    for i, (name, r, p, best) in enumerate(curves):
        pts = np.stack([pad + np.asarray(r) * size, pad + (1 - np.asarray(p)) * size], axis=1)
        color = _COLORS[i % len(_COLORS)][::-1]
        ok = np.isfinite(pts).all(axis=1)
        cv2.polylines(img, [np.round(pts[ok]).astype(np.int32)], False, color, 2, cv2.LINE_AA)
        if ok[best]:
            cv2.circle(img, tuple(int(v) for v in np.round(pts[best])), 4, color, -1, cv2.LINE_AA)
        cv2.putText(img, name, (pad + 8, pad + size - 10 - 18 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.5, color, 1)
    cv2.putText(img, "recall", (pad + size // 2 - 20, pad + size + 28), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    cv2.putText(img, "precision", (2, pad - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    return cv2.imencode(".png", img)[1].tobytes()


def _tile(a: np.ndarray, height: int) -> np.ndarray:
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    w = max(1, int(round(a.shape[1] * height / a.shape[0])))
    return cv2.resize(a, (w, height), interpolation=cv2.INTER_AREA)


def examples_png(rows: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, float]], height: int = 160) -> bytes:
    """image | ground truth | prediction, one row per (label, id, image RGB, gt bool, pred uint8, iou)."""
    gap = 4
    lines = []
    for label, item_id, image, gt, pred, iou in rows:
        tiles = [_tile(image, height), _tile(gt, height), _tile(pred, height)]
        strip = []
        for t in tiles:
            strip += [t, np.full((height, gap, 3), 255, np.uint8)]
        line = np.concatenate(strip[:-1], axis=1)
        caption = np.full((22, line.shape[1], 3), 255, np.uint8)
        cv2.putText(caption, f"{label}: IoU {iou:.3f}  ({item_id})", (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1,
                    cv2.LINE_AA)
        lines.append(np.concatenate([caption, line], axis=0))
    width = max(x.shape[1] for x in lines)
    lines = [np.pad(x, ((0, gap), (0, width - x.shape[1]), (0, 0)), constant_values=255) for x in lines]
    canvas = np.concatenate(lines, axis=0)
    return cv2.imencode(".png", cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))[1].tobytes()


def pick_examples(ids: list[str], scores: np.ndarray) -> list[tuple[str, str, float]]:
    """(label, id, score) for the best, median and worst image by score (ties: first in order)."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")  # best first
    picks = [("best", order[0]), ("median", order[len(order) // 2]), ("worst", order[-1])]
    return [(label, ids[i], float(scores[i])) for label, i in picks]


# --------------------------------------------------------------------------- all outputs


def write_outputs(out_dir: Path, results: dict, examples: dict[str, list] | None = None) -> list[Path]:
    """results.json, results.md (appended), pr_curve.png and examples_<dataset>.png in `out_dir`.

    `examples` maps a dataset name to `examples_png` rows. Returns the paths written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "results.json", out_dir / "results.md"]
    write_json(written[0], results)
    append_markdown(written[1], results)
    png = pr_curve_png(results)
    if png is not None:
        written.append(out_dir / "pr_curve.png")
        atomic_write_bytes(written[-1], png)
    for name, rows in (examples or {}).items():
        if rows:
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
            written.append(out_dir / f"examples_{safe}.png")
            atomic_write_bytes(written[-1], examples_png(rows))
    for p in written:
        log.info("wrote %s", p)
    return written
