"""`train-unet`: the click command over trainer.train.train (flags -> TrainConfig).

Every setting is a TrainConfig field, and its option is declared from the field
(core.cli.config_option): named as the field, with the field's default and its flag
(`trainer.config.flag_of`), so the command builds its TrainConfig from the options as they come. Bad input ends in
one line (core.cli), never a traceback. The progress bar (tqdm, rank 0 only) lives here, not in
the library.
"""
from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import click

from core.cli import Command, common_options, config_option, progress_bar

from .config import PRECISIONS, TrainConfig

_DEF = TrainConfig()


def _milestones(ctx, param, value):
    if value is None or isinstance(value, tuple):
        return value
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of steps, e.g. 8000 or 4000,8000")


def _field(name: str, flag: str | None = None, **kwargs):
    return config_option(TrainConfig, name, flag, **kwargs)


@click.command(cls=Command)
@click.option("--shards", multiple=True,
              help="shard set: glob, brace range, manifest NAME.json, folder or URL; repeat for several sets "
                   "(with --resume: defaults to the run's)")
@_field("allow_incomplete", is_flag=True,
        help="train on a set whose manifest says complete: false (a generator stopped early)")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="run folder")
@click.option("--resume", is_flag=True, help="continue the run in --out from its last checkpoint")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSON of TrainConfig fields (e.g. another run's config.json); flags given here override it")
@_field("steps", type=int, help="optimizer steps")
@_field("batch", type=int, help="samples per step, over all processes")
@_field("lr", type=float, help="Adam learning rate")
@_field("lr_milestones", callback=_milestones, default=",".join(map(str, _DEF.lr_milestones)),
        help="steps where the learning rate is multiplied by --lr-gamma (comma-separated)")
@_field("lr_gamma", type=float, help="learning-rate factor at each milestone")
@_field("weight_decay", type=float, help="Adam's L2 weight decay (0 = the paper's; Voynov & Babenko's used 1e-5)")
@_field("width", type=int, help="U-Net base width (64 = paper)")
@_field("size", type=int, help="training resolution in pixels (square)")
@_field("precision", type=click.Choice(PRECISIONS), help="autocast dtype on CUDA (the CPU computes fp32)")
@_field("compile", "--compile/--no-compile", help="torch.compile the model")
@_field("channels_last", "--channels-last/--no-channels-last", help="NHWC layout on CUDA")
@_field("num_workers", type=int, help="data-loader processes per rank (0 = read in the main process)")
@_field("shuffle_buffer", type=int, help="sample shuffle buffer per loader process")
@_field("round_samples", type=int,
        help="samples per loader process per stream round (0 = 4096); bounds the fast-forward on --resume")
@_field("seed", type=int, help="seeds the model init and the data order")
@_field("val_every", type=int, help="validate every N steps (0 = at the end)")
@_field("val_samples", type=int, help="held-out samples per validation")
@_field("log_every", type=int, help="log loss/lr every N steps")
@_field("ckpt_every", type=int, help="checkpoint every N steps")
@_field("keep_checkpoints", type=int,
        help="keep the newest N checkpoints and the best by validation IoU; older ones are deleted (0 = keep all)")
@_field("device", type=click.Choice(["auto", "cpu", "cuda"]))
@_field("cpu_threads", type=int, help="torch CPU threads (0 = default)")
@_field("eval_dataset", help="also score a real benchmark at each validation (e.g. ecssd)")
@_field("data_root", type=click.Path(file_okay=False), help="folder of --eval-dataset")
@_field("eval_samples", type=int, help="benchmark images per validation")
@_field("max_image_pixels", type=click.IntRange(min=1),
        help="--eval-dataset images with more pixels than this (read from the header) are skipped, never decoded")
@common_options(fmt="%(asctime)s %(levelname)s %(name)s: %(message)s", expose_verbosity=True)
def main(shards, out, resume, config_file, verbose, **fields):
    """Train the paper's U-Net on a shard set (defaults: 12000 steps, batch 95, Adam 1e-3, x0.2 at 8000).

    \b
    Example:    train-unet --shards 'shards/cub-*' --out runs/cub
    Resume:     train-unet --out runs/cub --resume
    Many GPUs:  torchrun --nproc_per_node 2 -m trainer.cli --shards ... --out ...
    """
    from .train import train

    rank = int(os.environ.get("RANK", 0))
    if rank != 0 and verbose < 2:
        logging.getLogger().setLevel(logging.WARNING)  # one process logs; -vv hears them all
    ctx = click.get_current_context()
    fields.update(shards=tuple(shards), out=str(out))
    base_file = Path(out) / "config.json" if resume and (Path(out) / "config.json").is_file() else config_file
    if not shards and not base_file:
        raise click.UsageError("missing --shards: name the shard set to train on, e.g. --shards 'shards/cub-*'")
    if base_file:
        # precedence: defaults < the run's config.json (--resume) or --config < flags given here
        saved = TrainConfig.load(base_file).to_dict()
        saved.update({k: v for k, v in fields.items()
                      if k != "out" and ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE})
        saved["out"] = str(out)
        config = TrainConfig.from_dict(saved, source=base_file)
    else:
        config = TrainConfig(**fields)

    bar = None

    def on_step(step, loss, lr, sps):
        nonlocal bar
        if bar is None:  # made at the first step, so that start-up errors print alone
            bar = progress_bar(total=config.steps, initial=step - 1, unit="step", desc="train-unet")
        bar.update(1)
        if loss is not None:
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", samples_s=f"{sps:.0f}", refresh=False)

    try:
        summary = train(config, resume=resume, on_step=on_step if rank == 0 else None)
    except OSError as exc:
        if exc.filename is not None or exc.errno != errno.ENOSPC:
            raise
        # metrics.jsonl, tb/ and val-grid.png fail naming no file when the disk fills: name the run
        raise OSError(exc.errno, exc.strerror, config.out) from None
    finally:
        if bar is not None:
            bar.close()
    if rank == 0:
        val = summary.get("val") or {}
        msg = f"done: step {summary['step']}, loss {summary['loss']:.4f}"
        if "val_iou" in val:
            msg += f", val IoU {val['val_iou']:.3f}, val maxF {val['val_max_f']:.3f}"
        click.echo(f"{msg}; checkpoint {summary['checkpoint']}")


if __name__ == "__main__":  # torchrun -m trainer.cli ...
    main()
