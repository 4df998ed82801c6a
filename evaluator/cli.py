"""`eval-seg`: score U-Net checkpoints or saved probability maps on the paper's benchmarks.

    eval-seg --ckpt runs/cub --dataset cub --data-root /data
    eval-seg --ckpt runs/s0 --ckpt runs/s1 --dataset ecssd --dataset duts-te --out results/
    eval-seg --pred-dir preds/ --dataset folder:../shared/data/ecssd --out results/

Mask datasets are scored under every evaluation protocol (evaluator.protocols: `paper`, the
authors' reference code, and `sod-toolkit`, the saliency toolkits'); results.json holds each
under its name. `evaluate(EvalConfig)` is the library function (tests call it directly); `main`
is the thin click layer that adds the progress bar and turns errors into one-line messages.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import click
import numpy as np

from benchdata.datasets import DATASETS, ENV_ROOT, Dataset, dataset_names, get_dataset
from benchdata.protocols import PAPER_SIZE, at_size
from core.cli import Command, common_options, config_option, progress_bar
from core.errors import UserError
from core.images import DEFAULT_MAX_PIXELS
from core.version import package_version
from segmodel.runtime import NATIVE, feed_size, parse_input_size
from shardset.split import open_split

from .predict import FG_PROB, CheckpointSource, PredDirSource, figure_rows, iter_predictions, training_size
from .protocols import PROTOCOLS
from .report import aggregate, pick_examples, terminal_table, write_outputs

log = logging.getLogger(__name__)

__all__ = ["EvalConfig", "evaluate", "main", "EvalError"]


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


def _tool_version() -> str:
    return package_version()  # "unknown" when not installed (running from a checkout): no guess


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


def _score(dataset: Dataset, items, source, progress, workers: int = 1) -> tuple[dict[str, dict], list[str]]:
    """One source on one dataset -> ({protocol: {"metrics", "curves", "per_image"}}, ids scored).
    Items whose files are skipped (dataset.skipped says why) are not scored."""
    accs = _accumulators(dataset)
    ids = []
    for p in iter_predictions(dataset, items, source, workers=workers):
        for acc in accs.values():
            if dataset.task == "mask":
                acc.update(p.pred, p.gt_map)  # each protocol binarises the mask its own way
            elif dataset.task == "boxes":
                acc.update(p.pred, p.item.boxes)
            else:
                acc.update(p.pred, p.gt, p.ignore)
        ids.append(p.item.id)
        progress.update(1)
    if not ids:
        reasons = list(dataset.skipped.values())
        raise EvalError(f"dataset {dataset.name}: none of its {len(items)} test images could be scored "
                        f"({len(reasons)} skipped{', e.g. ' + reasons[0] if reasons else ''})")
    out = {}
    for name, acc in accs.items():
        scalars, curves, per_image = _split_result(acc.compute())
        scalars.pop("n_images", None)
        per_image = {"ids": ids, **per_image} if per_image else {}
        out[name] = {"metrics": scalars, "curves": curves, "per_image": per_image}
    return out, ids


class _BoxMetrics:
    """MaxBoxAcc and MaxBoxAccV2 fed together; the v2 entries other than its headline number
    get a `v2_` prefix so the two dicts merge without clashes."""

    def __init__(self, wsol) -> None:
        self.v1, self.v2 = wsol.MaxBoxAcc(), wsol.MaxBoxAccV2()

    def update(self, pred: np.ndarray, boxes) -> None:
        if not len(boxes):
            raise EvalError("an image of a box dataset has no ground-truth box; check localization.txt")
        score = pred.astype(np.float32) / 255.0
        size = (pred.shape[1], pred.shape[0])  # the map is at the image's size: boxes need no scaling
        self.v1.update(score, np.asarray(boxes), size)
        self.v2.update(score, np.asarray(boxes), size)

    def compute(self) -> dict:
        out = self.v1.compute()
        for k, v in self.v2.compute().items():
            out[k if k == self.v2.name else f"v2_{k}"] = v
        return out


class _PxAP:
    def __init__(self, wsol) -> None:
        self.m = wsol.PxAP()

    def update(self, pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None) -> None:
        self.m.update(pred.astype(np.float32) / 255.0, gt, ignore)

    def compute(self) -> dict:
        return self.m.compute()


WSOL_ABOUT = "Choe et al. 2020 (clovaai/wsolevaluation): maps min-max normalised and resized to 224"


def _accumulators(dataset: Dataset) -> dict:
    """{protocol name: metric bundle} of the dataset's task: every evaluator.protocols entry for
    masks, the WSOL protocol (evaluator.wsol) for boxes and PxAP."""
    if dataset.task == "mask":
        from .metrics import SegmentationMetrics

        return {name: SegmentationMetrics(protocol=name) for name in PROTOCOLS}
    try:
        from . import wsol
    except ImportError as e:
        raise EvalError(f"dataset {dataset.name} needs evaluator.wsol, which is not importable ({e})") from e
    return {"wsol": _BoxMetrics(wsol) if dataset.task == "boxes" else _PxAP(wsol)}


def check_out_dir(out: Path) -> None:
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


def _default_method(cfg: EvalConfig, labels: list[str], input_size: int | None) -> str:
    if cfg.method:
        return cfg.method
    # results.md rows of one model fed at two sizes must not read alike
    size = f" (input {input_size} px)" if input_size not in (None, PAPER_SIZE) else ""
    if len(labels) <= 3:
        return ", ".join(labels) + size
    return f"{labels[0]} … {labels[-1]} ({len(labels)} runs){size}"


def _feeding(ckpts: tuple[Path, ...], asked: int | None) -> tuple[int, str]:
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


def evaluate(cfg: EvalConfig, progress: Progress | None = None, notify: Callable[[str], object] | None = None) -> dict:
    """Score every source (checkpoint or pred-dir) on every dataset; write `cfg.out` if set.
    `notify` gets the line saying at what size the checkpoints are fed, before any is scored.

    Returns the results dict that results.json holds: tool version, method, fg_prob (the
    checkpoints' foreground-probability rule; None for saved maps), `feeding` (that line; None for
    saved maps), sources (with checkpoint sha256 fingerprints) and, per dataset, its input
    protocol (e.g. short128, crop128, short64: the sizing at the size the checkpoints were fed
    at), `input_size` (that size in pixels; None for saved maps), `n_images`
    (scored) and `skipped` (item id -> why: over --max-image-pixels, truncated, corrupt), `protocols`
    (every evaluation protocol under its name: about, summary with mean, std and per-run values
    of every scalar metric, and each run's metrics, curves and per-image scores) and `summary`
    (the first protocol's: the paper's for mask sets).
    """
    progress = progress or (lambda total, desc: _NoProgress())
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
    if cfg.fg_prob is not None and cfg.fg_prob not in FG_PROB:
        raise EvalError(f"unknown --fg-prob {cfg.fg_prob!r}; choose from {', '.join(FG_PROB)}")
    if cfg.fg_prob is not None and cfg.pred_dir is not None:
        raise EvalError("--fg-prob applies to --ckpt; saved --pred-dir maps are probabilities already")
    asked = parse_input_size(cfg.input_size)
    if asked is not None and cfg.pred_dir is not None:
        raise EvalError("--input-size applies to --ckpt; saved --pred-dir maps are scored at the ground truth's size")
    fg_prob = (cfg.fg_prob or "softmax") if cfg.ckpts else None
    if cfg.out is not None:
        check_out_dir(cfg.out)
    # resolve every dataset before loading any model: a typo fails in a second, not after a run
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

    if cfg.pred_dir is not None:
        source_specs = [("pred-dir", cfg.pred_dir)]
        input_size, feeding = None, None
    else:
        source_specs = [("ckpt", p) for p in cfg.ckpts]
        input_size, feeding = _feeding(cfg.ckpts, asked)
        if notify is not None:
            notify(feeding)
    runs: dict[str, list[dict]] = {ds.name: [] for ds in datasets}
    scored: dict[str, int] = {}
    sources, labels, first_source = [], [], None
    for kind, path in source_specs:
        # one checkpoint in memory at a time (ten paper-size U-Nets would hold ~700 MB)
        src = PredDirSource(path, max_pixels=cfg.max_image_pixels) if kind == "pred-dir" else CheckpointSource(
            Path(path), device=cfg.device, batch_size=cfg.batch_size, fg_prob=fg_prob, input_size=input_size)
        first_source = first_source or src
        sources.append(src.describe())
        labels.append(src.label)
        for ds in datasets:
            bar = progress(len(items[ds.name]), f"{src.label} {ds.name}")
            try:
                by_protocol, ids = _score(ds, items[ds.name], src, bar, workers=cfg.workers)
                scored[ds.name] = len(ids)
            finally:
                bar.close()
            runs[ds.name].append({name: {"source": src.label, **run} for name, run in by_protocol.items()})

    results: dict = {
        "tool": {"name": "bgw-seg eval-seg", "version": _tool_version()},
        "method": _default_method(cfg, labels, input_size),
        "fg_prob": fg_prob,
        "feeding": feeding,
        "sources": sources,
        "datasets": {},
    }
    for ds in datasets:
        protocols = {}
        for name in runs[ds.name][0]:
            p_runs = [r[name] for r in runs[ds.name]]
            keys = [k for k, v in p_runs[0]["metrics"].items() if isinstance(v, (int, float))]
            protocols[name] = {
                "about": PROTOCOLS[name].about if name in PROTOCOLS else WSOL_ABOUT,
                "summary": {k: aggregate([r["metrics"][k] for r in p_runs]) for k in keys},
                "runs": p_runs,
            }
        results["datasets"][ds.name] = {
            "spec": specs[ds.name],
            "root": str(ds.root) if ds.root is not None else None,
            **({"info": ds.info} if ds.info else {}),
            "task": ds.task,
            "protocol": at_size(ds.protocol, input_size),  # how images are sized: crop128, short128, short64 ...
            "input_size": input_size,  # pixels the model was fed at (None: saved maps)
            "n_images": scored[ds.name],  # images scored: the test items less the skipped ones
            "limit": cfg.limit,
            "skipped": dict(sorted(ds.skipped.items())),  # item id -> why it was not scored
            # the first protocol's (the paper's for masks): what the paper's tables quote
            "summary": next(iter(protocols.values()))["summary"],
            "protocols": protocols,  # every evaluation protocol under its name
        }

    if cfg.out is not None:
        examples = _examples(datasets, items, results, first_source) if cfg.figures else {}
        write_outputs(cfg.out, results, examples)
    return results


def _examples(datasets, items, results, source) -> dict[str, list]:
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


# --------------------------------------------------------------------------- click


def _check_dataset(ctx, param, values):
    for v in values:
        if v not in DATASETS and not v.startswith(("folder:", "shards:")):
            raise click.BadParameter(f"unknown dataset {v!r}; choose from {', '.join(dataset_names())}")
    return tuple(values)


def _tqdm_progress(total: int, desc: str):
    return progress_bar(total=total, desc=desc, unit="img", leave=False)


_DATASET_HELP = "; ".join(f"{k}: {e.layout}" for k, e in sorted(DATASETS.items()))


def _field(name: str, flag: str | None = None, **kwargs):
    return config_option(EvalConfig, name, flag, **kwargs)


@click.command(cls=Command)
@_field("ckpts", "--ckpt", multiple=True, type=click.Path(exists=True, path_type=Path),
        help="train-unet run folder or .safetensors file; repeat for mean ± std over runs.")
@_field("pred_dir", type=click.Path(path_type=Path),
        help="Score saved maps <id>.png (8-bit grayscale, 255 = foreground) instead of a checkpoint.")
@_field("datasets", "--dataset", multiple=True, required=True, callback=_check_dataset,
        help=f"Repeatable. Names (under --data-root): {_DATASET_HELP}; or folder:PATH (images/ + masks/), "
             "or shards:SET (val split of a shard set).")
@_field("data_root", type=click.Path(path_type=Path), envvar=ENV_ROOT, show_envvar=True,
        help="Folder holding the named datasets.")
@_field("out", type=click.Path(file_okay=False, path_type=Path), required=True,
        help="Write results.json, results.md (rows appended), pr_curve.png and examples_*.png here.")
@_field("batch_size", type=int, help="Images per forward pass.")
@_field("device", help="auto, cpu, cuda or cuda:N.")
@_field("limit", type=int, help="Score only the first N test images of each dataset.")
@_field("workers", type=int, help="Threads reading and decoding images ahead of the model.")
@_field("method", help="Row name in results.md (default: run / folder names).")
@_field("fg_prob", type=click.Choice(list(FG_PROB)),
        help="--ckpt only: how the two logits become the foreground probability. "
             + "; ".join(f"{k}: {v}" for k, v in FG_PROB.items()) + ". Default: softmax.")
@_field("input_size", metavar=f"N|{NATIVE}",
        help=f"--ckpt only: the input size in pixels, in each dataset's sizing (short side, or centre square); "
             f"{NATIVE}: the size the checkpoints were trained at ({PAPER_SIZE}, the paper's, when a sidecar records "
             f"none). {PAPER_SIZE}: the paper's protocol.")
@_field("max_image_pixels", type=click.IntRange(min=1),
        help="Images (and --pred-dir maps) with more pixels than this, read from the file header, are "
             "skipped before decoding and listed in results.json.")
@common_options()
def main(**fields):
    """Score segmentation checkpoints or saved maps on the paper's benchmarks.

    Mask datasets are scored under two protocols, both reported: `paper` (maps as they are,
    ground truth >= 128: the paper's maxFβ, IoU, accuracy) and `sod-toolkit` (each map min-max
    normalised, ground truth > 128: the saliency toolkits' maxFβ, Sα, Eξ, MAE, wFβ).
    """
    results = evaluate(EvalConfig(**fields), progress=_tqdm_progress, notify=lambda line: click.echo(line, err=True))
    click.echo(terminal_table(results))
    click.echo(f"wrote {fields['out']}/results.json, results.md and the figures")


if __name__ == "__main__":  # pragma: no cover
    main()
