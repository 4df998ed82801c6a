"""The training loop: one readable function, top to bottom (nanoGPT style).

DDP through torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE; NCCL on GPUs, gloo on CPUs);
rank 0 alone logs and saves. Adam + MultiStepLR, pixel cross-entropy, bf16 autocast and
channels-last on CUDA, torch.compile behind a flag. A run folder holds config.json,
metrics.jsonl, tb/ (TensorBoard) and checkpoints/ (segmodel.checkpoint; the resume state: trainer.checkpoint).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from benchdata.datasets import get_dataset
from benchdata.io import DatasetError
from core.atomic import atomic_write_bytes
from core.errors import UserError, first_line
from core.images import DEFAULT_MAX_PIXELS
from segmodel.inference import normalize_images
from segmodel.unet import UNet
from shardset.split import open_split

from . import checkpoint as ckpt
from .config import RESULT_FIELDS, ConfigError, TrainConfig
from .data import (DataError, StreamSpec, WorkerFailure, load_val_samples, make_loader, rank_batch, resolve_shards)
from .validate import grid_image, validate, validate_real, write_grid_png

log = logging.getLogger(__name__)


class RunExistsError(UserError, FileExistsError):
    """--out holds another run and --resume was not given."""

    def __str__(self):
        return str(self.args[0])


class TrainingDiverged(UserError, RuntimeError):
    """The loss became NaN or infinite."""


class ResumeError(UserError, ValueError):
    """--resume cannot continue this run (nothing saved, or settings that change the result)."""


def _dist_env() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


RUN_LOCK = "train.lock"


def lock_run_dir(out: Path):
    """The run folder's lock (shardset.lock.FileLock, exclusive), held by rank 0 for the whole
    run: a second train-unet on the same --out fails at once naming the first one's pid and host.
    Without it a run folder that holds no checkpoint could not be told from one being started."""
    from shardset.lock import FileLock

    out.mkdir(parents=True, exist_ok=True)
    return FileLock(out / RUN_LOCK, what=f"--out {out}",
                    hint="wait for that run to finish, or choose another --out")


def check_out_dir(out: Path, resume: bool, announce: bool = True) -> None:
    """Refuse a folder that holds another run (a checkpoint) unless resuming; refuse resuming one
    without a checkpoint. A folder whose run stopped before its first checkpoint (a failed start:
    config.json and perhaps metrics, no checkpoint) is started afresh: nothing in it can be resumed."""
    has_ckpt = (out / ckpt.CKPT_DIR / ckpt.LAST).is_file()
    if has_ckpt and not resume:
        raise RunExistsError(f"--out {out} already holds a run (checkpoints/{ckpt.LAST}); "
                             "pass --resume to continue it or choose another --out")
    if resume and not has_ckpt:
        raise ResumeError(f"--resume: {out} holds no checkpoint ({ckpt.CKPT_DIR}/{ckpt.LAST}); "
                          "start it afresh: the same command without --resume")
    if not resume and announce and (out / "config.json").exists():
        log.warning("--out %s holds a run that stopped before its first checkpoint; starting it afresh", out)


def check_eval_dataset(name: str | None, root: str | None, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Fail before step 1 when --eval-dataset cannot be found (unknown name, no --data-root,
    missing folders), instead of at the first validation."""
    if not name:
        return
    try:
        if not get_dataset(name, root=root, max_pixels=max_pixels, shard_sets=open_split).test_items():
            raise DataError(f"--eval-dataset {name}: the dataset has no test images")
    except DatasetError as e:
        raise DataError(f"--eval-dataset {name}: {first_line(e)}") from None


def _summary_writer(folder: Path, purge_step: int | None):
    """TensorBoard writer that never imports TensorFlow.

    tensorboard.compat imports TensorFlow whenever it is installed, unless a module named
    `tensorboard.compat.notf` exists (its own switch to the bundled stub); a trainer-only
    process must stay free of TF (seconds of import, GBs of memory), so provide that marker.
    """
    import sys
    import types

    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    from torch.utils.tensorboard import SummaryWriter  # lazy: only rank 0 writes events

    return SummaryWriter(str(folder), purge_step=purge_step)


def _scheduler_state(sched) -> dict:
    # MultiStepLR keeps milestones in a Counter, which torch.load(weights_only=True) refuses
    sd = dict(sched.state_dict())
    sd["milestones"] = dict(sd["milestones"])
    return sd


def _rewrite_metrics(path: Path, upto_step: int) -> None:
    """Drop metric lines past the checkpoint we resume from (the killed run's tail)."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= upto_step]
    atomic_write_bytes(path, ("\n".join(keep) + "\n" if keep else "").encode())


def train(config: TrainConfig, *, resume: bool = False,
          on_step: Callable[[int, float | None, float, float], None] | None = None) -> dict:
    """Train the U-Net per `config`; returns a summary (final step, last loss, last validation).

    `on_step(step, loss_or_None, lr, samples_per_s)` is called on rank 0 after every step (the CLI
    drives its progress bar with it); the loss is only given on logging steps, which avoids a
    device sync per step.
    """
    # ---- distributed setup -----------------------------------------------------------------
    rank, local_rank, world = _dist_env()
    ddp = world > 1
    use_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but torch sees no CUDA device; use --device cpu")
    if ddp and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    master = rank == 0
    out = Path(config.out)
    if config.cpu_threads:
        torch.set_num_threads(config.cpu_threads)

    closing = contextlib.ExitStack()
    try:
        # ---- run folder, config ------------------------------------------------------------
        # every input is checked before anything is written and before step 1
        check_out_dir(out, resume, announce=False)
        source = resolve_shards(config.shards, allow_incomplete=config.allow_incomplete)
        if master:
            check_eval_dataset(config.eval_dataset, config.data_root, config.max_image_pixels)
            closing.callback(lock_run_dir(out).release)
        check_out_dir(out, resume, announce=master)  # again under the lock: a run may have started meanwhile
        if ddp:
            torch.distributed.barrier()  # every rank has checked --out before rank 0 writes into it
        start_step, state, meta_prev = 0, None, None
        model = None
        if resume:
            model, meta_prev, state = ckpt.load_checkpoint(out, with_state=True)
            saved = TrainConfig.from_dict(meta_prev["config"])
            changed = [f for f in RESULT_FIELDS if getattr(saved, f) != getattr(config, f)]
            if changed:
                raise ResumeError("--resume cannot change " + ", ".join(
                    f"{f} ({getattr(saved, f)!r} -> {getattr(config, f)!r})" for f in changed)
                    + "; keep the run's settings or start a new --out")
            pos = state["data"]
            if int(pos["world"]) != world:
                raise ResumeError(f"--resume: the run used {int(pos['world'])} processes, this one {world}; "
                                  "the data order depends on it, so use the same torchrun --nproc_per_node")
            start_step = int(meta_prev["step"])
            if start_step >= config.steps:
                raise ResumeError(f"--resume: the run is already at step {start_step} of {config.steps}; "
                                  "raise --steps to train further")

        if master:
            out.mkdir(parents=True, exist_ok=True)
            ckpt.atomic_write_json(out / "config.json", config.to_dict())
            # a fresh start drops a failed start's rows; a resume drops the killed run's tail
            _rewrite_metrics(out / "metrics.jsonl", start_step)
            log.info("run %s: %s, %d train / %d val shards, world %d, device %s", out, source.name,
                     len(source.train_urls), len(source.val_urls), world, device)

        # ---- model, optimizer, schedule ------------------------------------------------------
        torch.manual_seed(config.seed)  # same init on every rank (DDP also broadcasts it)
        if model is None:
            model = UNet(in_channels=3, n_classes=2, width=config.width, bilinear=config.bilinear)
        elif model.width != config.width or model.bilinear != config.bilinear:
            raise ResumeError(f"--resume: checkpoint is {model.arch()}, config asks width {config.width}")
        model.to(device)
        channels_last = use_cuda and config.channels_last
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(config.lr_milestones),
                                                         gamma=config.lr_gamma)
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision) if use_cuda else None
        scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype is torch.float16)
        if not use_cuda and config.precision != "fp32":
            log.info("precision %s applies on CUDA only; this CPU run computes in fp32", config.precision)
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            sd = dict(state["scheduler"])
            sd["milestones"] = Counter({int(k): int(v) for k, v in sd["milestones"].items()})
            scheduler.load_state_dict(sd)
            scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["rng"]["torch"])
            if use_cuda and state["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state(state["rng"]["cuda"], device)

        def autocast():
            if amp_dtype is None:
                return contextlib.nullcontext()
            return torch.autocast(device_type="cuda", dtype=amp_dtype)

        raw_model = model  # unwrapped: what we validate and save
        if use_cuda:
            torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if config.compile:
            model = torch.compile(model)
        if ddp:
            model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if use_cuda else None)

        # ---- data -----------------------------------------------------------------------------
        local_batch = rank_batch(config.batch, rank, world)
        if local_batch < 1:
            raise ConfigError(f"--batch-size {config.batch} is smaller than the {world} processes; raise it")
        # DDP averages gradients over ranks; weight each rank's mean loss by its share so that the
        # step follows the mean loss over the whole global batch even when the split is uneven
        loss_weight = local_batch * world / config.batch
        spec = StreamSpec(urls=source.train_urls, seed=config.seed, batch=local_batch, size=config.size,
                          shuffle_buffer=config.shuffle_buffer, round_samples=config.round_samples,
                          rank=rank, world=world, start_step=start_step, expect=source.expect)
        loader = make_loader(spec, config.num_workers, pin_memory=use_cuda)
        val = (load_val_samples(source.val_urls, config.size, config.val_samples, expect=source.expect)
               if master else None)
        if master and val is None:
            log.warning("no validation samples (manifest has no 'val' split); validation is skipped")
        writer = None
        if master:
            # purge: TensorBoard hides the events past start_step of a killed run or a failed start
            writer = _summary_writer(out / "tb", purge_step=start_step + 1)
        metrics_f = open(out / "metrics.jsonl", "a") if master else None
        closing.callback(lambda: metrics_f and metrics_f.close())
        closing.callback(lambda: writer and writer.close())

        def record(row: dict) -> None:
            metrics_f.write(json.dumps(row) + "\n")
            metrics_f.flush()

        def run_validation(step: int) -> dict:
            res = {}
            if val is not None:
                v, prob = validate(raw_model, val, device, autocast, channels_last=channels_last)
                res.update({f"val_{k}": v[k] for k in ("loss", "iou", "max_f", "accuracy")})
                grid = grid_image(val, prob)
                writer.add_image("val/image|mask|prediction", grid, step)
                # the newest grid also as a plain picture, for people who do not run TensorBoard
                write_grid_png(out / "val-grid.png", grid)
            if config.eval_dataset:
                r = validate_real(raw_model, config.eval_dataset, config.data_root, device, autocast,
                                  config.eval_samples, max_pixels=config.max_image_pixels, input_size=config.size)
                # fixed key names ("eval_iou", ...) so scripts need not know the dataset spec
                res.update({f"eval_{k}": r[k] for k in ("iou", "max_f", "accuracy")})
            for k, v in res.items():
                writer.add_scalar(f"val/{k}", v, step)
            if res:
                record({"step": step, "kind": "val", **res})
                log.info("step %d validation %s", step, json.dumps(res))
            return res

        def save(step: int, last_val: dict) -> Path:
            train_state = {
                "optimizer": optimizer.state_dict(),
                "scheduler": _scheduler_state(scheduler),
                "scaler": scaler.state_dict(),
                "rng": {"torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state(device) if use_cuda else None},
                "data": {"step": step, "world": world, "num_workers": config.num_workers,
                         "batch": config.batch, "seed": config.seed},
            }
            # input_size: the resolution inference feeds this model at (segmodel.checkpoint.input_size_of)
            meta = {"input_size": config.size, "shardset": {"name": source.name, "fingerprint": source.fingerprint},
                    "config": config.to_dict(), "val": last_val}
            return ckpt.save_checkpoint(out, step, raw_model, meta, train_state, keep=config.keep_checkpoints)

        # ---- the loop -------------------------------------------------------------------------
        step = start_step
        last_val: dict = dict(meta_prev.get("val") or {}) if meta_prev else {}
        last_good = ckpt.find_sidecar(out) if resume else None
        loss_acc = torch.zeros((), device=device)
        n_acc = 0
        last_loss = None
        t_log, samples_log = time.perf_counter(), 0
        samples_per_s = 0.0
        model.train()
        batches = iter(loader)
        while step < config.steps:
            batch = next(batches)
            if isinstance(batch, WorkerFailure):  # a loader process stopped on bad data
                raise DataError(batch.reason)
            images, masks = batch
            x = normalize_images(images.to(device, non_blocking=True))
            y = masks.to(device, non_blocking=True).long()
            with autocast():
                logits = model(x)
            # the loss in fp32 whatever the autocast dtype: log-softmax over 2 classes is cheap
            loss = F.cross_entropy(logits.float(), y)
            scaler.scale(loss * loss_weight).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            loss_acc += loss.detach()
            n_acc += 1
            samples_log += config.batch

            log_now = step % config.log_every == 0 or step == config.steps
            val_now = config.val_every and step % config.val_every == 0
            ckpt_now = step % config.ckpt_every == 0 or step == config.steps
            if log_now or val_now or ckpt_now:
                # one device sync per logging interval; it also guards every checkpoint. All ranks
                # take the same decision from the loss averaged over ranks (no rank left waiting).
                if ddp:
                    torch.distributed.all_reduce(loss_acc)
                    loss_acc /= world
                mean_loss = float(loss_acc) / n_acc
                if not math.isfinite(mean_loss):
                    where = f"the last good checkpoint {last_good} is kept" if last_good else "no checkpoint was written"
                    raise TrainingDiverged(f"loss became {mean_loss} at or before step {step}; stopping "
                                           f"({where}); lower --lr or use --precision fp32/bf16")
                last_loss = mean_loss
                lr = scheduler.get_last_lr()[0]
                now = time.perf_counter()
                samples_per_s = samples_log / max(now - t_log, 1e-9)
                if master:
                    record({"step": step, "kind": "train", "loss": mean_loss, "lr": lr,
                            "samples_per_s": samples_per_s})
                    writer.add_scalar("train/loss", mean_loss, step)
                    writer.add_scalar("train/lr", lr, step)
                    writer.add_scalar("train/samples_per_s", samples_per_s, step)
                loss_acc.zero_()
                n_acc, t_log, samples_log = 0, now, 0
            if master and (val_now or step == config.steps):
                last_val = run_validation(step)
            if ckpt_now:
                # a finite loss can still come with a NaN update: only finite weights are "good"
                if not all(bool(torch.isfinite(p).all()) for p in raw_model.parameters()):
                    where = f"the last good checkpoint {last_good} is kept" if last_good else "no checkpoint was written"
                    raise TrainingDiverged(f"weights became non-finite at step {step}; stopping ({where}); "
                                           "lower --lr or use --precision fp32/bf16")
                if master:
                    last_good = save(step, last_val)
                if ddp:
                    torch.distributed.barrier()  # no rank runs ahead of a checkpoint
            if master and on_step is not None:
                on_step(step, last_loss if log_now else None, scheduler.get_last_lr()[0], samples_per_s)

        return {"step": step, "loss": last_loss, "val": last_val, "checkpoint": str(last_good) if last_good else None}
    finally:
        closing.close()
        if ddp and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
