"""Collect finished recipe runs into results.md: per table, one row per recipe and foreground-probability
rule, each metric as mean ± std over seeds beside the paper's own number (and its std, where the
paper gives one: then the row says whether our mean is within it)."""
from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from experiments.recipe import paper_std

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


def seed_results(seed: dict, fg_prob: str | None = None) -> dict:
    """One seed's results.json for a foreground-probability rule (None: the recipe's own)."""
    if fg_prob is None or seed["results"].get("fg_prob") == fg_prob:
        return seed["results"]
    return seed.get("by_fg_prob", {}).get(fg_prob, {})


def fg_rules(record: dict) -> list[str | None]:
    """The rules a record's seeds were scored with, the recipe's own first; [None] for a record
    scored once (no by_fg_prob, or saved maps)."""
    rules: list[str] = []
    for seed in record["seeds"]:
        own = seed["results"].get("fg_prob")
        for rule in [own, *seed.get("by_fg_prob", {})]:
            if rule and rule not in rules:
                rules.append(rule)
    return rules or [None]


def summarise(record: dict, fg_prob: str | None = None) -> dict[str, dict[str, tuple[float, float, int]]]:
    """{dataset: {metric: (mean, std, n_seeds)}} over a recipe's seeds, for one fg-prob rule."""
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for seed in record["seeds"]:
        for ds, metrics in extract_metrics(seed_results(seed, fg_prob)).items():
            for k, v in metrics.items():
                values[ds][k].append(v)
    return {ds: {k: (float(np.mean(v)), float(np.std(v)), len(v)) for k, v in m.items()} for ds, m in values.items()}


def within_std(ours: float, paper: float, std) -> bool:
    """Our mean is within the paper's std of the paper's mean; a bound "<x" counts as x. Rounded to
    the paper's three digits first, so 0.8785 against 0.878 ± 0.001 is not lost to float noise."""
    bound, _ = paper_std(std)
    return round(abs(ours - paper), 6) <= bound


def paper_cell(paper: float, std) -> str:
    if std is None:
        return f"[{paper:.3f}]"
    value, exact = paper_std(std)
    return f"[{paper:.3f} ± {value:.3f}]" if exact else f"[{paper:.3f} ± <{value:.3f}]"


def render(records: list[dict]) -> str:
    by_table: dict[str, list[dict]] = defaultdict(list)
    for rec in records:
        by_table[rec["table"]].append(rec)
    lines = ["# Results", "",
             "Each cell: ours as mean ± std over seeds (n), then the paper's number in brackets, with the "
             "paper's std where it gives one (Table 1, its best model). \"within std\": every such metric's "
             "mean is within the paper's std of the paper's mean (✓/✗ per cell). One row per foreground-"
             "probability rule the run was scored with, the recipe's own first.", ""]
    for table in sorted(by_table, key=lambda t: (len(t), t)):
        recs = by_table[table]
        rows = [(rec, rule, summarise(rec, rule)) for rec in recs for rule in fg_rules(rec)]
        # the paper's column order first (dicts keep the recipe's order), then anything else evaluated
        datasets = list(dict.fromkeys([ds for r in recs for ds in r.get("paper", {})]
                                      + sorted(ds for _, _, s in rows for ds in s)))
        cols = [(ds, m) for ds in datasets for m in LABELS
                if any(m in r.get("paper", {}).get(ds, {}) or m in s.get(ds, {}) for r, _, s in rows)]
        has_std = any(numbers.get("std") for r in recs for numbers in r.get("paper", {}).values())
        lines += [f"## Table {table}", "",
                  "| recipe | row | fg prob | " + " | ".join(f"{ds} {LABELS[m]}" for ds, m in cols)
                  + (" | within std" if has_std else "") + " |",
                  "|---|---|---|" + "---|" * (len(cols) + has_std)]
        for rec, rule, summ in rows:
            cells, verdicts = [], []
            for ds, m in cols:
                ours = summ.get(ds, {}).get(m)
                numbers = rec.get("paper", {}).get(ds, {})
                paper, std = numbers.get(m), numbers.get("std", {}).get(m)
                cell = f"{ours[0]:.3f} ± {ours[1]:.3f} ({ours[2]})" if ours else "—"
                if paper is not None:
                    cell += f" {paper_cell(paper, std)}"
                    if ours and std is not None:
                        verdicts.append(within_std(ours[0], paper, std))
                        cell += " ✓" if verdicts[-1] else " ✗"
                cells.append(cell)
            if has_std:
                cells.append("—" if not verdicts else "yes" if all(verdicts) else "no")
            tag = " (tiny)" if rec.get("tiny") else ""
            lines.append(f"| {rec['recipe']}{tag} | {rec['row']} | {rule or '—'} | " + " | ".join(cells) + " |")
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
        entry["seeds"].append({"seed": rec["seed"], "results": rec["results"],
                               "by_fg_prob": rec.get("by_fg_prob", {})})
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
