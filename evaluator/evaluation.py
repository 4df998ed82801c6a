"""The evaluation eval-seg runs, one function per step: `evaluate(EvalConfig)` checks the request
(`check_config`, `check_out_writable`), resolves every dataset before any model loads
(`resolve_datasets`), says at what size the checkpoints are fed (`feeding`), scores each source
on each dataset (`open_source`, `score`: the dataset's task's accumulator from scoring.tasks),
gathers the runs into results.json's content (`summarise`) and writes the outputs (evaluator.report).

Mask datasets are scored under every evaluation protocol (scoring.protocols: `paper`, the
authors' reference code, and `sod-toolkit`, the saliency toolkits'); results.json holds each
under its name. Tests call `evaluate` directly; evaluator.cli is the click layer over it.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from benchdata.datasets import Dataset, dataset_names, get_dataset
from benchdata.sizing import PAPER_SIZE
from core.errors import UserError
from core.images import DEFAULT_MAX_PIXELS
from core.version import package_version
from scoring import TASKS, get_task
from segmodel.runtime import NATIVE, feed_size, parse_input_size
from shardset.split import open_split

from .predict import FG_PROB, CheckpointSource, PredDirSource, figure_rows, iter_predictions, training_size
from .report import aggregate, pick_examples, write_outputs

log = logging.getLogger(__name__)

__all__ = ["EvalConfig", "EvalError", "evaluate", "check_config", "check_out_writable", "resolve_datasets", "feeding",
           "open_source", "score", "summarise"]


class EvalError(UserError):
    """A bad evaluation request; one line naming the value and the fix."""


@dataclass(frozen=True)
class EvalConfig:
    """Every setting of an evaluation; eval-seg's options are its fields (core.cli.config_option)."""

    datasets: tuple[str, ...]  # dataset names, folder:PATH or shards:SET
    ckpts: tuple[Path, ...] = ()  # train-unet run folders or .safetensors files; several -> mean ± std
    pred_dir: Path | None = None  # saved maps <id>.png instead of a checkpoint
    data_root: Path | None = None  # where named datasets live (default: $BGW_DATA_ROOT)
    out: Path | None = None  # folder for results.json / results.md / plots (None: terminal only; eval-seg requires it)
    batch_size: int = 32  # images per forward pass
    device: str = "auto"  # auto (cuda when present), cpu, cuda, cuda:N
    limit: int | None = None  # score only the first N test items of each dataset (smoke runs)
    method: str | None = None  # row name in results.md (default: run or folder names)
    figures: bool = True  # best / median / worst example figure per mask dataset
    workers: int = 4  # threads reading and decoding images ahead of the model / metrics
    fg_prob: str | None = None  # checkpoints: a segmodel.inference.FG_PROB rule (None: softmax)
    input_size: int | str = NATIVE  # checkpoints: pixels they are fed at; native: their training size
    max_image_pixels: int = DEFAULT_MAX_PIXELS  # images (and saved maps) over this many pixels are skipped


Progress = Callable[[int, str], object]  # (total, description) -> object with update(n) and close()


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- the request


def check_config(cfg: EvalConfig) -> int | None:
    """Refuse a request that cannot run, in one line, before anything is read; returns the input
    size asked for (None: each checkpoint's own)."""
    if bool(cfg.ckpts) == (cfg.pred_dir is not None):
        raise EvalError("give either --ckpt (one or more) or --pred-dir, not both and not neither")
    if not cfg.datasets:
        raise EvalError(f"no --dataset given; choose from {', '.join(dataset_names())}")
    if cfg.batch_size < 1:
        raise EvalError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    if cfg.workers < 1:
        raise EvalError(f"--workers must be >= 1, got {cfg.workers}")
    if cfg.limit is not None and cfg.limit < 1:
        raise EvalError(f"--limit must be >= 1, got {cfg.limit}")
    if cfg.fg_prob is not None:
        FG_PROB.get(cfg.fg_prob)
    if cfg.fg_prob is not None and cfg.pred_dir is not None:
        raise EvalError("--fg-prob applies to --ckpt; saved --pred-dir maps are probabilities already")
    asked = parse_input_size(cfg.input_size)
    if asked is not None and cfg.pred_dir is not None:
        raise EvalError("--input-size applies to --ckpt; saved --pred-dir maps are scored at the ground truth's size")
    return asked


def check_out_writable(out: Path) -> None:
    """Refuse an --out that cannot become a writable folder, before any scoring: a file in the
    way, or a read-only existing ancestor. Creates nothing."""
    out = Path(out)
    probe = out
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "is a file" if probe == out else f"lies under {probe}, which is a file"
        raise EvalError(f"--out {out} {where}; give a folder path")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise EvalError(f"--out {out}: {probe} is not writable; give a folder you can write to")


def resolve_datasets(cfg: EvalConfig) -> tuple[list[Dataset], dict[str, str], dict[str, list]]:
    """(datasets, spec by dataset name, test items by dataset name), every one resolved before
    any model loads: a typo fails in a second, not after a run."""
    datasets, specs = [], {}
    for spec in dict.fromkeys(cfg.datasets):
        ds = get_dataset(spec, cfg.data_root, max_pixels=cfg.max_image_pixels, shard_sets=open_split)
        if ds.name in specs:  # two folders of one name: fall back to the full spec
            ds.name = spec
        specs[ds.name] = spec
        datasets.append(ds)
    items = {}
    for ds in datasets:
        its = ds.test_items()
        items[ds.name] = its[: cfg.limit] if cfg.limit else its
    return datasets, specs, items


def feeding(ckpts: tuple[Path, ...], asked: int | None) -> tuple[int, str]:
    """(the size every checkpoint is fed at, the line that says so and why), from their sidecars,
    before any is loaded: one size for all, so that their mean ± std compares like with like."""
    sizes = {Path(p): training_size(Path(p)) for p in ckpts}
    natives = sorted({size for size, _ in sizes.values()})
    if len(natives) == 1:
        return feed_size(*next(iter(sizes.values())), asked)
    if asked is None:
        raise EvalError(f"the checkpoints were trained at different sizes ({', '.join(f'{n} px' for n in natives)}); "
                        "give --input-size N to feed them all at one size")
    return asked, (f"feeding the models at {asked} px (--input-size {asked}); they were trained at "
                   f"{', '.join(f'{n} px' for n in natives)}")


# --------------------------------------------------------------------------- scoring


def open_source(kind: str, path: Path, cfg: EvalConfig, fg_prob: str | None, input_size: int | None):
    """A checkpoint ("ckpt") or a folder of saved maps ("pred-dir") to score."""
    if kind == "pred-dir":
        return PredDirSource(path, max_pixels=cfg.max_image_pixels)
    return CheckpointSource(Path(path), device=cfg.device, batch_size=cfg.batch_size, fg_prob=fg_prob,
                            input_size=input_size)


def _split_result(computed: dict) -> tuple[dict, dict, dict]:
    """compute() output -> (scalars, curves, per-image arrays)."""
    scalars, curves, per_image = {}, {}, {}
    for k, v in computed.items():
        if isinstance(v, np.ndarray):
            if k.endswith("_per_image"):
                per_image[k[: -len("_per_image")]] = v
            else:
                curves[k] = v
        else:
            scalars[k] = v
    return scalars, curves, per_image


def score(dataset: Dataset, items, source, progress, workers: int = 1) -> tuple[dict[str, dict], list[str]]:
    """One source on one dataset -> ({evaluation protocol: {"metrics", "curves", "per_image"}},
    ids scored). Items whose files are skipped (dataset.skipped says why) are not scored."""
    task = get_task(dataset.task)
    ids = []
    for p in iter_predictions(dataset, items, source, workers=workers):
        task.update(p.pred, p.truth)
        ids.append(p.item.id)
        progress.update(1)
    if not ids:
        reasons = list(dataset.skipped.values())
        raise EvalError(f"dataset {dataset.name}: none of its {len(items)} test images could be scored "
                        f"({len(reasons)} skipped{', e.g. ' + reasons[0] if reasons else ''})")
    out = {}
    for name, computed in task.compute().items():
        scalars, curves, per_image = _split_result(computed)
        scalars.pop("n_images", None)
        per_image = {"ids": ids, **per_image} if per_image else {}
        out[name] = {"metrics": scalars, "curves": curves, "per_image": per_image}
    return out, ids


# --------------------------------------------------------------------------- results


def _tool_version() -> str:
    return package_version()  # "unknown" when not installed (running from a checkout): no guess


def _default_method(cfg: EvalConfig, labels: list[str], input_size: int | None) -> str:
    if cfg.method:
        return cfg.method
    # results.md rows of one model fed at two sizes must not read alike
    size = f" (input {input_size} px)" if input_size not in (None, PAPER_SIZE) else ""
    if len(labels) <= 3:
        return ", ".join(labels) + size
    return f"{labels[0]} … {labels[-1]} ({len(labels)} runs){size}"


def summarise(ds: Dataset, spec: str, runs: list[dict], n_scored: int, cfg: EvalConfig,
              input_size: int | None) -> dict:
    """results.json's entry of one dataset: its sizing, counts and skipped files, and per
    evaluation protocol the runs and their mean ± std (`summary`: the first protocol's)."""
    protocols = {}
    for name in runs[0]:
        p_runs = [r[name] for r in runs]
        keys = [k for k, v in p_runs[0]["metrics"].items() if isinstance(v, (int, float))]
        protocols[name] = {
            "about": TASKS[ds.task].about[name],
            "summary": {k: aggregate([r["metrics"][k] for r in p_runs]) for k in keys},
            "runs": p_runs,
        }
    return {
        "spec": spec,
        "root": str(ds.root) if ds.root is not None else None,
        **({"info": ds.info} if ds.info else {}),
        "task": ds.task,
        "protocol": ds.sizing.at(input_size).name,  # the sizing images got: crop128, short128, short64 ...
        "input_size": input_size,  # pixels the model was fed at (None: saved maps)
        "n_images": n_scored,  # images scored: the test items less the skipped ones
        "limit": cfg.limit,
        "skipped": dict(sorted(ds.skipped.items())),  # item id -> why it was not scored
        # the first protocol's (the paper's for masks): what the paper's tables quote
        "summary": next(iter(protocols.values()))["summary"],
        "protocols": protocols,  # every evaluation protocol under its name
    }


def examples(datasets, items, results, source) -> dict[str, list]:
    """Best / median / worst images by the paper protocol's IoU (mean over runs) per mask
    dataset, predicted by the first source (the paper's figure 4)."""
    out = {}
    for ds in datasets:
        runs = results["datasets"][ds.name]["protocols"].get("paper", {}).get("runs", [])
        per = [r["per_image"] for r in runs if "iou" in r.get("per_image", {})]
        if ds.task != "mask" or not per:
            continue
        scores = np.mean([p["iou"] for p in per], axis=0)
        picks = pick_examples(per[0]["ids"], scores)
        by_id = {it.id: it for it in items[ds.name]}
        rows = figure_rows(source, ds, [by_id[i] for _, i, _ in picks])
        out[ds.name] = [(label, item.id, image, gt, pred, score)
                        for (label, _, score), (item, image, gt, pred) in zip(picks, rows)]
    return out


# --------------------------------------------------------------------------- the whole


def evaluate(cfg: EvalConfig, progress: Progress | None = None, notify: Callable[[str], object] | None = None) -> dict:
    """Score every source (checkpoint or pred-dir) on every dataset; write `cfg.out` if set.
    `notify` gets the line saying at what size the checkpoints are fed, before any is scored.

    Returns the results dict that results.json holds: tool version, method, fg_prob (the
    checkpoints' foreground-probability rule; None for saved maps), `feeding` (that line; None for
    saved maps), sources (with checkpoint sha256 fingerprints) and, per dataset, its sizing
    (`protocol`, e.g. short128, crop128, short64: the dataset's kind of sizing at the size the
    checkpoints were fed at), `input_size` (that size in pixels; None for saved maps), `n_images`
    (scored) and `skipped` (item id -> why: over --max-image-pixels, truncated, corrupt), `protocols`
    (every evaluation protocol under its name: about, summary with mean, std and per-run values
    of every scalar metric, and each run's metrics, curves and per-image scores) and `summary`
    (the first protocol's: the paper's for mask sets).
    """
    progress = progress or (lambda total, desc: _NoProgress())
    asked = check_config(cfg)
    fg_prob = (cfg.fg_prob or "softmax") if cfg.ckpts else None
    if cfg.out is not None:
        check_out_writable(cfg.out)
    datasets, specs, items = resolve_datasets(cfg)

    if cfg.pred_dir is not None:
        source_specs = [("pred-dir", cfg.pred_dir)]
        input_size, said = None, None
    else:
        source_specs = [("ckpt", p) for p in cfg.ckpts]
        input_size, said = feeding(cfg.ckpts, asked)
        if notify is not None:
            notify(said)
    runs: dict[str, list[dict]] = {ds.name: [] for ds in datasets}
    scored: dict[str, int] = {}
    sources, labels, first_source = [], [], None
    for kind, path in source_specs:
        # one checkpoint in memory at a time (ten paper-size U-Nets would hold ~700 MB)
        src = open_source(kind, path, cfg, fg_prob, input_size)
        first_source = first_source or src
        sources.append(src.describe())
        labels.append(src.label)
        for ds in datasets:
            bar = progress(len(items[ds.name]), f"{src.label} {ds.name}")
            try:
                by_protocol, ids = score(ds, items[ds.name], src, bar, workers=cfg.workers)
                scored[ds.name] = len(ids)
            finally:
                bar.close()
            runs[ds.name].append({name: {"source": src.label, **run} for name, run in by_protocol.items()})

    results: dict = {
        "tool": {"name": "bgw-seg eval-seg", "version": _tool_version()},
        "method": _default_method(cfg, labels, input_size),
        "fg_prob": fg_prob,
        "feeding": said,
        "sources": sources,
        "datasets": {ds.name: summarise(ds, specs[ds.name], runs[ds.name], scored[ds.name], cfg, input_size)
                     for ds in datasets},
    }
    if cfg.out is not None:
        write_outputs(cfg.out, results, examples(datasets, items, results, first_source) if cfg.figures else {})
    return results
