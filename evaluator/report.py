"""Evaluation outputs: the terminal table, results.json, results.md (the paper's table layout),
the precision-recall plot and the best / median / worst figure (the paper's figure 4).

Input is the plain results dict built by `evaluator.cli.evaluate`: per dataset, every evaluation
protocol's summary and runs under `protocols` (see `write_outputs`). The files of one evaluation
are committed together, results.json last, so a folder holding a results.json holds everything it
describes; a failed write leaves the folder as it was (`OutputError`, one line). Plots use
matplotlib's Agg backend when matplotlib is installed, else cv2; the example figure always uses cv2.
"""
from __future__ import annotations

import io
import json
import logging
import os
import uuid
from pathlib import Path

import cv2
import numpy as np

from core.atomic import atomic_write_bytes
from core.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["HEADLINE", "EXTRA", "COLUMN_NAMES", "PROTOCOL_TAGS", "OutputError", "aggregate", "format_value",
           "terminal_table", "markdown_header", "markdown_row", "append_markdown", "results_json_bytes",
           "pr_curve_png", "examples_png", "write_outputs", "to_jsonable"]

# results.md columns per evaluation protocol (a key a dataset lacks is skipped): the paper's
# tables (1-2: maxF, IoU, accuracy; 3: box accuracy or PxAP) and the saliency papers' usual
# five; then the other numbers each reports (terminal and JSON only).
HEADLINE = {"paper": ("max_f", "iou", "accuracy"),
            "sod-toolkit": ("max_f", "s_measure", "e_mean", "mae", "weighted_f"),
            "wsol": ("max_box_acc", "pxap")}
EXTRA = {"paper": ("mae", "s_measure", "e_max"),
         "sod-toolkit": ("mean_f", "adaptive_f", "e_max", "e_adaptive"),
         "wsol": ("max_box_acc_v2",)}
COLUMN_NAMES = {"max_f": "maxFβ", "mean_f": "meanFβ", "adaptive_f": "adpFβ", "iou": "IoU", "accuracy": "Acc",
                "mae": "MAE", "s_measure": "Sα", "e_max": "maxEξ", "e_mean": "meanEξ", "e_adaptive": "adpEξ",
                "weighted_f": "wFβ", "max_box_acc": "MaxBoxAcc", "max_box_acc_v2": "MaxBoxAccV2", "pxap": "PxAP"}
PROTOCOL_TAGS = {"sod-toolkit": "SOD "}  # results.md: "ecssd SOD maxFβ" beside the paper's "ecssd maxFβ"


class OutputError(UserError):
    """--out could not be written; the message is one line naming the path and the reason."""


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


def results_json_bytes(results: dict) -> bytes:
    text = json.dumps(to_jsonable(results), indent=1, sort_keys=False, allow_nan=False)
    return (text + "\n").encode()


# --------------------------------------------------------------------------- tables


def _keys(protocol: str, extra: bool) -> tuple[str, ...]:
    return HEADLINE.get(protocol, ()) + (EXTRA.get(protocol, ()) if extra else ())


def _columns(results: dict) -> list[tuple[str, str, str]]:
    """(dataset, protocol, metric) of the results.md columns."""
    return [(name, p, k) for name, ds in results["datasets"].items() for p, entry in ds["protocols"].items()
            for k in _keys(p, extra=False) if k in entry["summary"]]


def terminal_table(results: dict) -> str:
    """One row per dataset and evaluation protocol: images scored, input size rule and every
    summary number (mean ± std over runs); then a line per dataset with skipped images (how many,
    and why)."""
    rows = [["dataset", "images", "input", "protocol"]]
    keys: list[str] = []
    for ds in results["datasets"].values():
        for p, entry in ds["protocols"].items():
            keys += [k for k in _keys(p, extra=True) if k in entry["summary"] and k not in keys]
    rows[0] += [COLUMN_NAMES.get(k, k) for k in keys]
    for name, ds in results["datasets"].items():
        for p, entry in ds["protocols"].items():
            rows.append([name, str(ds["n_images"]), ds["protocol"], p] +
                        [format_value(entry["summary"][k]) if k in entry["summary"] else "-" for k in keys])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for name, ds in results["datasets"].items():
        reasons = list((ds.get("skipped") or {}).values())
        if reasons:
            more = f"; {len(reasons) - 3} more" if len(reasons) > 3 else ""
            lines.append(f"{name}: {len(reasons)} image(s) skipped, not scored ({'; '.join(reasons[:3])}{more}); "
                         "results.json lists each under 'skipped'")
    if results.get("fg_prob"):
        lines.append(f"foreground probability: {results['fg_prob']}")
    runs = len(results["sources"])
    if runs > 1:
        lines.append(f"mean ± std (n - 1) over {runs} runs")
    return "\n".join(lines)


def markdown_header(results: dict) -> list[str]:
    cols = _columns(results)
    head = "| Method | fg prob | " + " | ".join(
        f"{ds} {PROTOCOL_TAGS.get(p, '')}{COLUMN_NAMES.get(k, k)}" for ds, p, k in cols) + " |"
    sep = "|---|---|" + "---|" * len(cols)
    return [head, sep]


def markdown_row(results: dict) -> str:
    cells = [format_value(results["datasets"][ds]["protocols"][p]["summary"][k]) for ds, p, k in _columns(results)]
    method = results["method"].replace("|", "\\|")
    return f"| {method} | {results.get('fg_prob') or '-'} | " + " | ".join(cells) + " |"


def markdown_text(old: str, results: dict) -> str:
    """results.md's text with this evaluation's row added.

    Rows of several runs and methods line up under one header: when the file's last table has
    the same columns the row is appended to it; otherwise a new table (header + row) is appended
    below. Existing rows are never rewritten.
    """
    header = markdown_header(results)
    row = markdown_row(results)
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
    return "\n".join(lines) + "\n"


def append_markdown(path: Path, results: dict) -> None:
    """Add this evaluation's row to the results.md at `path` (see `markdown_text`)."""
    path = Path(path)
    atomic_write_bytes(path, markdown_text(path.read_text() if path.exists() else "", results).encode())


# --------------------------------------------------------------------------- figures


def _mean_curve(ds: dict, key: str) -> np.ndarray | None:
    """The mean over runs of a curve of the dataset's first protocol (the paper's for masks)."""
    runs = next(iter(ds["protocols"].values()))["runs"]
    curves = [r["curves"][key] for r in runs if key in r.get("curves", {})]
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
    ax.set_title(f"{results['method']}: precision-recall, paper protocol (thresholds v > k, k = 0..254)",
                 fontsize=8)
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
    """pr_curve.png, examples_<dataset>.png, results.md (a row appended) and results.json in
    `out_dir`, committed as one: every file is first written in full under a staging name, then
    each is renamed into place, results.json last. A write that fails (a file in the way, a
    read-only folder, a full disk) removes the staged files and raises `OutputError`, leaving the
    folder as it was; a folder this call created is removed again.

    `examples` maps a dataset name to `examples_png` rows. Returns the paths written.
    """
    out_dir = Path(out_dir)
    files: list[tuple[Path, bytes]] = []
    png = pr_curve_png(results)
    if png is not None:
        files.append((out_dir / "pr_curve.png", png))
    for name, rows in (examples or {}).items():
        if rows:
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
            files.append((out_dir / f"examples_{safe}.png", examples_png(rows)))
    md = out_dir / "results.md"
    try:
        old_md = md.read_text() if md.is_file() else None
    except (OSError, UnicodeDecodeError) as e:
        raise OutputError(f"cannot read {md} to append a row ({e}); move it away or pick another --out") from e
    files.append((md, markdown_text(old_md or "", results).encode()))
    files.append((out_dir / "results.json", results_json_bytes(results)))  # last: it marks the set complete

    created = _missing_folders(out_dir)
    staged: list[tuple[Path, Path]] = []
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        tag = f"{os.getpid()}.{uuid.uuid4().hex[:8]}"
        for path, data in files:
            tmp = path.with_name(f".{path.name}.{tag}.staged")
            atomic_write_bytes(tmp, data)
            staged.append((tmp, path))
        for i, (tmp, path) in enumerate(staged):
            os.replace(tmp, path)
            staged[i] = (path, path)  # in place: nothing left to remove
    except OSError as e:
        _roll_back(staged, created, out_dir, md, old_md)
        where = e.filename or out_dir
        raise OutputError(f"cannot write the results to --out {out_dir}: {e.strerror or e} ({where}); "
                          "no results.json was written; free space or pick another folder") from e
    for p, _ in files:
        log.info("wrote %s", p)
    return [p for p, _ in files]


def _missing_folders(folder: Path) -> list[Path]:
    """The folders `mkdir(parents=True)` would create for `folder`, deepest first."""
    out = []
    while not folder.exists() and folder.parent != folder:
        out.append(folder)
        folder = folder.parent
    return out


def _roll_back(staged: list[tuple[Path, Path]], created: list[Path], out_dir: Path, md: Path,
               old_md: str | None) -> None:
    """Remove staged files. If some were already renamed into place (a rename failed: rare),
    results.md gets its old text back and results.json goes (whatever it was, it no longer
    describes the pictures beside it). Remove the folders this call created."""
    placed = [path for tmp, path in staged if tmp == path]
    for tmp, path in staged:
        if tmp != path:
            tmp.unlink(missing_ok=True)
    if placed:
        (out_dir / "results.json").unlink(missing_ok=True)
        if md in placed:
            try:
                atomic_write_bytes(md, old_md.encode()) if old_md is not None else md.unlink()
            except OSError:
                log.warning("could not restore %s after the failed write", md)
    for folder in created:
        try:
            folder.rmdir()
        except OSError:
            break
