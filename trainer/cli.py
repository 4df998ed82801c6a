"""`train-unet`: the click command over trainer.train.train (flags -> TrainConfig).

Bad input ends in one line (click.ClickException), never a traceback. The progress bar (tqdm,
rank 0 only) lives here, not in the library.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import click

from .config import PRECISIONS, TrainConfig

# flag name -> TrainConfig field, for the flags that map one to one
_FLAGS = {"steps": "steps", "batch": "batch", "lr": "lr", "lr_gamma": "lr_gamma", "width": "width",
          "size": "size", "precision": "precision", "compile": "compile", "channels_last": "channels_last",
          "num_workers": "num_workers", "shuffle_buffer": "shuffle_buffer", "seed": "seed",
          "val_every": "val_every", "log_every": "log_every", "ckpt_every": "ckpt_every",
          "val_samples": "val_samples", "device": "device", "eval_dataset": "eval_dataset",
          "data_root": "data_root", "eval_samples": "eval_samples", "cpu_threads": "cpu_threads",
          "round_samples": "round_samples", "allow_incomplete": "allow_incomplete"}

_DEF = TrainConfig()


def _milestones(ctx, param, value):
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of steps, e.g. 8000 or 4000,8000")


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--shards", multiple=True,
              help="shard set: glob, brace range, manifest NAME.json, folder or URL; repeat for several sets "
                   "(with --resume: defaults to the run's)")
@click.option("--allow-incomplete", is_flag=True,
              help="train on a set whose manifest says complete: false (a generator stopped early)")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="run folder")
@click.option("--resume", is_flag=True, help="continue the run in --out from its last checkpoint")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSON of TrainConfig fields (e.g. another run's config.json); flags given here override it")
@click.option("--steps", type=int, default=_DEF.steps, help="optimizer steps")
@click.option("--batch", type=int, default=_DEF.batch, help="samples per step, over all processes")
@click.option("--lr", type=float, default=_DEF.lr, help="Adam learning rate")
@click.option("--lr-milestones", callback=_milestones, default=",".join(map(str, _DEF.lr_milestones)),
              help="steps where the learning rate is multiplied by --lr-gamma (comma-separated)")
@click.option("--lr-gamma", type=float, default=_DEF.lr_gamma, help="learning-rate factor at each milestone")
@click.option("--width", type=int, default=_DEF.width, help="U-Net base width (64 = paper)")
@click.option("--size", type=int, default=_DEF.size, help="training resolution in pixels (square)")
@click.option("--precision", type=click.Choice(PRECISIONS), default=_DEF.precision,
              help="autocast dtype on CUDA (the CPU computes fp32)")
@click.option("--compile/--no-compile", default=_DEF.compile, help="torch.compile the model")
@click.option("--channels-last/--no-channels-last", default=_DEF.channels_last, help="NHWC layout on CUDA")
@click.option("--num-workers", type=int, default=_DEF.num_workers, help="loader processes per rank")
@click.option("--shuffle-buffer", type=int, default=_DEF.shuffle_buffer, help="sample shuffle buffer per worker")
@click.option("--round-samples", type=int, default=_DEF.round_samples,
              help="samples per worker per stream round (0 = 4096); bounds the fast-forward on --resume")
@click.option("--seed", type=int, default=_DEF.seed, help="seeds the model init and the data order")
@click.option("--val-every", type=int, default=_DEF.val_every, help="validate every N steps (0 = at the end)")
@click.option("--val-samples", type=int, default=_DEF.val_samples, help="held-out samples per validation")
@click.option("--log-every", type=int, default=_DEF.log_every, help="log loss/lr every N steps")
@click.option("--ckpt-every", type=int, default=_DEF.ckpt_every, help="checkpoint every N steps")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=_DEF.device)
@click.option("--cpu-threads", type=int, default=_DEF.cpu_threads, help="torch CPU threads (0 = default)")
@click.option("--eval-dataset", default=None, help="also score a real benchmark at each validation (e.g. ecssd)")
@click.option("--data-root", type=click.Path(file_okay=False), default=None, help="folder of --eval-dataset")
@click.option("--eval-samples", type=int, default=_DEF.eval_samples, help="benchmark images per validation")
@click.option("-v", "--verbose", is_flag=True, help="debug logging")
def main(shards, out, resume, config_file, lr_milestones, verbose, **flags):
    """Train the paper's U-Net on a shard set (defaults: 12000 steps, batch 95, Adam 1e-3, x0.2 at 8000).

    \b
    Example:    train-unet --shards 'shards/cub-*' --out runs/cub
    Resume:     train-unet --out runs/cub --resume
    Many GPUs:  torchrun --nproc_per_node 2 -m trainer.cli --shards ... --out ...
    """
    from .checkpoint import CheckpointError
    from .data import DataError, one_line
    from .train import ResumeError, RunExistsError, TrainingDiverged, train

    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(level=logging.DEBUG if verbose else (logging.INFO if rank == 0 else logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx = click.get_current_context()
    values = {field: flags[flag] for flag, field in _FLAGS.items()}
    values["lr_milestones"] = lr_milestones
    values["shards"] = tuple(shards)
    values["out"] = str(out)
    base_file = Path(out) / "config.json" if resume and (Path(out) / "config.json").is_file() else config_file
    if not shards and not base_file:
        raise click.UsageError("missing --shards: name the shard set to train on, e.g. --shards 'shards/cub-*'")
    try:
        if base_file:
            # precedence: defaults < the run's config.json (--resume) or --config < flags given here
            saved = TrainConfig.load(base_file).to_dict()
            for flag, field in list(_FLAGS.items()) + [("lr_milestones", "lr_milestones")]:
                if ctx.get_parameter_source(flag) == click.core.ParameterSource.COMMANDLINE:
                    saved[field] = values[field]
            saved["out"] = str(out)
            if ctx.get_parameter_source("shards") == click.core.ParameterSource.COMMANDLINE:
                saved["shards"] = values["shards"]
            config = TrainConfig.from_dict(saved)
        else:
            config = TrainConfig(**values)
    except (ValueError, TypeError, AttributeError) as e:
        raise click.ClickException(f"{base_file or 'flags'}: {one_line(e)}" if base_file else one_line(e))

    bar = None

    def on_step(step, loss, lr, sps):
        nonlocal bar
        if bar is None:  # made at the first step, so that start-up errors print alone
            from tqdm import tqdm

            # disable=None: no bar when stderr is not a terminal (logs get no \r frames), as gen-synth
            bar = tqdm(total=config.steps, initial=step - 1, unit="step", dynamic_ncols=True, desc="train-unet",
                       disable=None)
        bar.update(1)
        if loss is not None:
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", samples_s=f"{sps:.0f}", refresh=False)

    try:
        summary = train(config, resume=resume, on_step=on_step if rank == 0 else None)
    except (DataError, CheckpointError, RunExistsError, ResumeError, TrainingDiverged, ValueError, OSError) as e:
        # LockHeldError (another train-unet on --out) is an OSError
        if verbose:
            raise  # -v: the full traceback, for bug reports
        raise click.ClickException(one_line(e))
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
