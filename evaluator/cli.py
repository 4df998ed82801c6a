"""`eval-seg`: score U-Net checkpoints or saved probability maps on the paper's benchmarks.

    eval-seg --ckpt runs/cub --dataset cub --data-root /data
    eval-seg --ckpt runs/s0 --ckpt runs/s1 --dataset ecssd --dataset duts-te --out results/
    eval-seg --pred-dir preds/ --dataset folder:../shared/data/ecssd --out results/

The click layer only: it parses the flags into an EvalConfig, adds the progress bar and prints the
table; the evaluation itself is evaluator.evaluation's `evaluate(EvalConfig)`, and errors become
one-line messages at the edge (core.cli).
"""
from __future__ import annotations

from pathlib import Path

import click

from benchdata.datasets import DATASETS, ENV_ROOT
from benchdata.sizing import PAPER_SIZE
from core.cli import Command, common_options, config_option, progress_bar
from segmodel.runtime import NATIVE

from .evaluation import EvalConfig, EvalError, evaluate
from .predict import FG_PROB
from .report import terminal_table

__all__ = ["EvalConfig", "evaluate", "main", "EvalError"]


# --------------------------------------------------------------------------- click


def _check_dataset(ctx, param, values):
    for v in values:
        if not v.startswith(("folder:", "shards:")):
            DATASETS.get(v)  # the registry's one line, with the close names (exit 2)
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
             f"none). {PAPER_SIZE}: the paper's sizing.")
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
