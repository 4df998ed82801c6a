"""Collect finished recipe runs into results.md: per table, one row per recipe, each metric as
mean ± std over seeds beside the paper's own number."""
from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

# the metric names the recipes' [paper] sections use, as the paper's tables label them
LABELS = {"max_f": "maxFβ", "iou": "IoU", "acc": "Acc", "max_box_acc": "MaxBoxAcc", "pxap": "PxAP"}


def extract_metrics(results: dict) -> dict[str, dict[str, float]]:
    """eval-seg's results.json -> {dataset: {metric: value}} for the metrics in LABELS.

    eval-seg names accuracy `accuracy`; the recipes use the paper's column name `acc`."""
    rename = {"accuracy": "acc"}
    out: dict[str, dict[str, float]] = {}
    for name, entry in results.get("datasets", {}).items():
        summary = entry.get("summary", {})
        out[name] = {rename.get(k, k): float(v["mean"]) for k, v in summary.items() if rename.get(k, k) in LABELS}
    return out


def summarise(record: dict) -> dict[str, dict[str, tuple[float, float, int]]]:
    """{dataset: {metric: (mean, std, n_seeds)}} over a recipe's seeds."""
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for seed in record["seeds"]:
        for ds, metrics in extract_metrics(seed["results"]).items():
            for k, v in metrics.items():
                values[ds][k].append(v)
    return {ds: {k: (float(np.mean(v)), float(np.std(v)), len(v)) for k, v in m.items()} for ds, m in values.items()}


def render(records: list[dict]) -> str:
    by_table: dict[str, list[dict]] = defaultdict(list)
    for rec in records:
        by_table[rec["table"]].append(rec)
    lines = ["# Results", "", "Each cell: ours as mean ± std over seeds (n), then the paper's number in brackets.", ""]
    for table in sorted(by_table, key=lambda t: (len(t), t)):
        recs = by_table[table]
        summaries = [summarise(r) for r in recs]
        # the paper's column order first (dicts keep the recipe's order), then anything else evaluated
        datasets = list(dict.fromkeys([ds for r in recs for ds in r.get("paper", {})]
                                      + sorted(ds for s in summaries for ds in s)))
        cols = [(ds, m) for ds in datasets for m in LABELS
                if any(m in r.get("paper", {}).get(ds, {}) or m in s.get(ds, {}) for r, s in zip(recs, summaries))]
        lines += [f"## Table {table}", "", "| recipe | row | " + " | ".join(f"{ds} {LABELS[m]}" for ds, m in cols) + " |",
                  "|---|---|" + "---|" * len(cols)]
        for rec, summ in zip(recs, summaries):
            cells = []
            for ds, m in cols:
                ours = summ.get(ds, {}).get(m)
                paper = rec.get("paper", {}).get(ds, {}).get(m)
                cell = f"{ours[0]:.3f} ± {ours[1]:.3f} ({ours[2]})" if ours else "—"
                if paper is not None:
                    cell += f" [{paper:.3f}]"
                cells.append(cell)
            tag = " (tiny)" if rec.get("tiny") else ""
            lines.append(f"| {rec['recipe']}{tag} | {rec['row']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def collect(work: Path) -> list[dict]:
    """One record per recipe from results/RECIPE/seed-K.json: whatever seeds have finished, on
    this machine or on others that share the work folder. A recipe run both in full and --tiny
    keeps the two apart."""
    by_recipe: dict[tuple[str, bool], dict] = {}
    for path in sorted((Path(work) / "results").glob("*/seed-*.json")):
        rec = json.loads(path.read_text())
        key = (rec["recipe"], bool(rec.get("tiny")))
        entry = by_recipe.setdefault(key, {k: rec[k] for k in ("recipe", "table", "row", "tiny", "paper")}
                                     | {"seeds": []})
        entry["seeds"].append({"seed": rec["seed"], "results": rec["results"]})
    for entry in by_recipe.values():
        entry["seeds"].sort(key=lambda s: s["seed"])
    return [by_recipe[k] for k in sorted(by_recipe)]


def write_table(work: Path, out: Path) -> Path:
    records = collect(work)
    text = render(records) if records else "# Results\n\nNo finished recipe yet: run `python -m experiments run RECIPE`.\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
    return out
