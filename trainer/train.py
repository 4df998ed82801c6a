"""The training loop: `train` reads top to bottom as one loop (nanoGPT style); what comes before
step 1 and what a step decides to do are named functions beside it:

    place_process   device and DDP: torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE; NCCL on
                    GPUs, gloo on CPUs)
    check_inputs    every input checked before anything is written: --out (check_run_dir),
                    --shards (shardset.select), --eval-dataset, the run folder's lock, and on
                    --resume the checkpoint it continues (resume_point)
    open_run        config.json and metrics.jsonl's rows up to the start step (rank 0)
    build_learner   U-Net, Adam + MultiStepLR, GradScaler and autocast, restored on --resume;
                    channels-last on CUDA, torch.compile behind a flag, DDP-wrapped
    make_stream     this rank's share of the batch and its DataLoader (trainer.data)
    train_step      one optimizer step; pixel cross-entropy, in fp32 whatever the autocast dtype
    RunLog          metrics.jsonl and TensorBoard (rank 0)
    validate_now    held-out and benchmark validation (trainer.validate)
    save_now        a checkpoint: weights, sidecar and resume state (trainer.checkpoint)

Rank 0 alone logs and saves. A run folder holds config.json, metrics.jsonl, tb/ (TensorBoard) and
checkpoints/ (segmodel.checkpoint; the resume state: trainer.checkpoint).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from benchdata.datasets import get_dataset
from core.atomic import atomic_write_bytes
from core.errors import UserError, first_line
from core.images import DEFAULT_MAX_PIXELS
from segmodel.inference import normalize_images
from segmodel.unet import UNet
from shardset.select import Selection, select_shards
from shardset.split import open_split

from . import checkpoint as ckpt
from .config import RESULT_FIELDS, ConfigError, TrainConfig
from .data import DataError, StreamSpec, WorkerFailure, load_val_samples, make_loader, rank_batch
from .validate import grid_image, labelled_val_grid, validate, validate_real, write_grid_png

log = logging.getLogger(__name__)


class RunExistsError(UserError, FileExistsError):
    """--out holds another run and --resume was not given."""

    def __str__(self):
        return str(self.args[0])


class TrainingDiverged(UserError, RuntimeError):
    """The loss became NaN or infinite."""


class ResumeError(UserError, ValueError):
    """--resume cannot continue this run (nothing saved, or settings that change the result)."""


def train(config: TrainConfig, *, resume: bool = False,
          on_step: Callable[[int, float | None, float, float], None] | None = None) -> dict:
    """Train the U-Net per `config`; returns a summary (final step, last loss, last validation).

    `on_step(step, loss_or_None, lr, samples_per_s)` is called on rank 0 after every step (the CLI
    drives its progress bar with it); the loss is only given on logging steps, which avoids a
    device sync per step.
    """
    place = place_process(config)
    closing = contextlib.ExitStack()
    try:
        source, start = check_inputs(config, resume, place, closing)
        open_run(config, place, source, start.step)
        learner = build_learner(config, place, start)
        loader, loss_weight = make_stream(config, place, source, start.step)
        val = load_validation(config, place, source)
        run_log = RunLog(Path(config.out), start.step, place.master, closing)

        step, last_good, last_loss = start.step, start.sidecar, None
        last_val: dict = dict(start.meta.get("val") or {}) if start.meta else {}
        meter = LossMeter(place.device)
        learner.net.train()
        batches = iter(loader)
        while step < config.steps:
            loss = train_step(learner, next(batches), place.device, loss_weight)
            step += 1
            meter.add(loss, config.batch)
            log_now = step % config.log_every == 0 or step == config.steps
            val_now = config.val_every and step % config.val_every == 0
            ckpt_now = step % config.ckpt_every == 0 or step == config.steps
            if log_now or val_now or ckpt_now:
                # one device sync per logging interval; it also guards every checkpoint
                last_loss = meter.mean_loss(place)
                if not math.isfinite(last_loss):
                    raise diverged(f"loss became {last_loss} at or before step {step}", last_good)
                if place.master:
                    run_log.train_row(step, last_loss, learner.lr(), meter.samples_per_s)
            if place.master and (val_now or step == config.steps):
                last_val = validate_now(step, learner, val, config, place.device, run_log)
            if ckpt_now:
                # a finite loss can still come with a NaN update: only finite weights are "good"
                if not all(bool(torch.isfinite(p).all()) for p in learner.raw.parameters()):
                    raise diverged(f"weights became non-finite at step {step}", last_good)
                if place.master:
                    last_good = save_now(step, last_val, learner, config, place, source)
                if place.ddp:
                    torch.distributed.barrier()  # no rank runs ahead of a checkpoint
            if place.master and on_step is not None:
                on_step(step, last_loss if log_now else None, learner.lr(), meter.samples_per_s)

        return {"step": step, "loss": last_loss, "val": last_val, "checkpoint": str(last_good) if last_good else None}
    finally:
        closing.close()
        if place.ddp and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


# --------------------------------------------------------------------------- before step 1


@dataclass(frozen=True)
class Placement:
    """Where this process trains: its rank in a world of `world` processes, and its device."""

    rank: int
    local_rank: int
    world: int
    use_cuda: bool
    device: torch.device

    @property
    def ddp(self) -> bool:
        return self.world > 1

    @property
    def master(self) -> bool:
        """Rank 0: the one process that logs and saves."""
        return self.rank == 0


def _dist_env() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def place_process(config: TrainConfig) -> Placement:
    """The device, and under torchrun (WORLD_SIZE > 1) the process group: NCCL on GPUs, gloo on CPUs."""
    rank, local_rank, world = _dist_env()
    use_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but torch sees no CUDA device; use --device cpu")
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if config.cpu_threads:
        torch.set_num_threads(config.cpu_threads)
    return Placement(rank, local_rank, world, use_cuda, device)


RUN_LOCK = "train.lock"


def lock_run_dir(out: Path):
    """The run folder's lock (shardset.lock.FileLock, exclusive), held by rank 0 for the whole
    run: a second train-unet on the same --out fails at once naming the first one's pid and host.
    Without it a run folder that holds no checkpoint could not be told from one being started."""
    from shardset.lock import FileLock

    out.mkdir(parents=True, exist_ok=True)
    return FileLock(out / RUN_LOCK, what=f"--out {out}",
                    hint="wait for that run to finish, or choose another --out")


def check_run_dir(out: Path, resume: bool, announce: bool = True) -> None:
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
    except DataError:
        raise
    except UserError as e:  # an unknown name, no data root, a missing folder: benchdata's one line
        err = DataError(f"--eval-dataset {name}: {first_line(e)}")
        err.exit_code = getattr(e, "exit_code", 1)  # a name not in the list stays a usage error
        raise err from None


@dataclass(frozen=True)
class Start:
    """Where a run starts: step 0, or the checkpoint --resume continues (`sidecar`), with its model,
    sidecar meta and resume state."""

    step: int = 0
    model: UNet | None = None
    meta: dict | None = None
    state: dict | None = None
    sidecar: Path | None = None


def check_inputs(config: TrainConfig, resume: bool, place: Placement,
                 closing: contextlib.ExitStack) -> tuple[Selection, Start]:
    """Every input checked before anything is written and before step 1: --out, --shards,
    --eval-dataset, and on --resume the checkpoint (`resume_point`). Rank 0 takes the run
    folder's lock, held until `closing` closes."""
    out = Path(config.out)
    check_run_dir(out, resume, announce=False)
    source = select_shards(config.shards, allow_incomplete=config.allow_incomplete)
    if place.master:
        check_eval_dataset(config.eval_dataset, config.data_root, config.max_image_pixels)
        closing.callback(lock_run_dir(out).release)
    check_run_dir(out, resume, announce=place.master)  # again under the lock: a run may have started meanwhile
    if place.ddp:
        torch.distributed.barrier()  # every rank has checked --out before rank 0 writes into it
    return source, resume_point(config, out, place.world) if resume else Start()


def resume_point(config: TrainConfig, out: Path, world: int) -> Start:
    """The newest checkpoint of the run in `out`, refused when this run could not continue it
    exactly: a setting of RESULT_FIELDS changed, another process count, or no steps left."""
    model, meta, state = ckpt.load_run_state(out, with_state=True)
    saved = TrainConfig.from_dict(meta["config"])
    changed = [f for f in RESULT_FIELDS if getattr(saved, f) != getattr(config, f)]
    if changed:
        raise ResumeError("--resume cannot change " + ", ".join(
            f"{f} ({getattr(saved, f)!r} -> {getattr(config, f)!r})" for f in changed)
            + "; keep the run's settings or start a new --out")
    pos = state["data"]
    if int(pos["world"]) != world:
        raise ResumeError(f"--resume: the run used {int(pos['world'])} processes, this one {world}; "
                          "the data order depends on it, so use the same torchrun --nproc_per_node")
    step = int(meta["step"])
    if step >= config.steps:
        raise ResumeError(f"--resume: the run is already at step {step} of {config.steps}; "
                          "raise --steps to train further")
    return Start(step, model, meta, state, ckpt.find_sidecar(out))


def _rewrite_metrics(path: Path, upto_step: int) -> None:
    """Drop metric lines past the checkpoint we resume from (the killed run's tail)."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= upto_step]
    atomic_write_bytes(path, ("\n".join(keep) + "\n" if keep else "").encode())


def open_run(config: TrainConfig, place: Placement, source: Selection, start_step: int) -> None:
    """Rank 0 writes config.json and keeps metrics.jsonl's rows up to `start_step`: a fresh start
    drops a failed start's rows, a resume the killed run's tail."""
    if not place.master:
        return
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt.atomic_write_json(out / "config.json", config.to_dict())
    _rewrite_metrics(out / "metrics.jsonl", start_step)
    log.info("run %s: %s, %d train / %d val shards, world %d, device %s", out, source.name,
             len(source.train_urls), len(source.val_urls), place.world, place.device)


@dataclass
class Learner:
    """What a step updates: `net` (the model as trained: compiled and DDP-wrapped when asked) and
    `raw` (the same model unwrapped: what is validated and saved), Adam, its MultiStepLR, the
    GradScaler and the autocast dtype (None: fp32)."""

    net: torch.nn.Module
    raw: UNet
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.MultiStepLR
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    channels_last: bool

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]


def build_learner(config: TrainConfig, place: Placement, start: Start) -> Learner:
    """The model (the resumed one, or a fresh one from config.seed), optimizer, schedule and
    scaler, restored from the resume state, with the RNG states, when there is one."""
    use_cuda, device = place.use_cuda, place.device
    torch.manual_seed(config.seed)  # same init on every rank (DDP also broadcasts it)
    model = start.model
    if model is None:
        model = UNet(in_channels=3, n_classes=2, width=config.width, bilinear=config.bilinear)
    elif model.width != config.width or model.bilinear != config.bilinear:
        raise ResumeError(f"--resume: checkpoint is {model.arch()}, config asks width {config.width}")
    model.to(device)
    channels_last = use_cuda and config.channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(config.lr_milestones),
                                                     gamma=config.lr_gamma)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision) if use_cuda else None
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype is torch.float16)
    if not use_cuda and config.precision != "fp32":
        log.info("precision %s applies on CUDA only; this CPU run computes in fp32", config.precision)
    if start.state is not None:
        state = start.state
        optimizer.load_state_dict(state["optimizer"])
        sd = dict(state["scheduler"])
        sd["milestones"] = Counter({int(k): int(v) for k, v in sd["milestones"].items()})
        scheduler.load_state_dict(sd)
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        if use_cuda and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"], device)

    raw = model
    if use_cuda:
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if config.compile:
        model = torch.compile(model)
    if place.ddp:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[place.local_rank] if use_cuda else None)
    return Learner(model, raw, optimizer, scheduler, scaler, amp_dtype, channels_last)


def make_stream(config: TrainConfig, place: Placement, source: Selection, start_step: int):
    """(this rank's DataLoader from `start_step` on, the weight of its loss)."""
    local_batch = rank_batch(config.batch, place.rank, place.world)
    if local_batch < 1:
        raise ConfigError(f"--batch-size {config.batch} is smaller than the {place.world} processes; raise it")
    # DDP averages gradients over ranks; weight each rank's mean loss by its share so that the
    # step follows the mean loss over the whole global batch even when the split is uneven
    loss_weight = local_batch * place.world / config.batch
    spec = StreamSpec(urls=source.train_urls, seed=config.seed, batch=local_batch, size=config.size,
                      shuffle_buffer=config.shuffle_buffer, round_samples=config.round_samples,
                      rank=place.rank, world=place.world, start_step=start_step, expect=source.expect)
    return make_loader(spec, config.num_workers, pin_memory=place.use_cuda), loss_weight


def load_validation(config: TrainConfig, place: Placement, source: Selection) -> dict | None:
    """Rank 0's held-out samples (the set's 'val' shards), decoded once; None elsewhere or without any."""
    if not place.master:
        return None
    val = load_val_samples(source.val_urls, config.size, config.val_samples, expect=source.expect)
    if val is None:
        log.warning("no validation samples (manifest has no 'val' split); validation is skipped")
    return val


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


class RunLog:
    """metrics.jsonl (one JSON row per log and validation) and TensorBoard (tb/), on rank 0; other
    ranks have neither. Both close when `closing` closes."""

    def __init__(self, out: Path, start_step: int, master: bool, closing: contextlib.ExitStack):
        # purge: TensorBoard hides the events past start_step of a killed run or a failed start
        self.writer = _summary_writer(out / "tb", purge_step=start_step + 1) if master else None
        self.metrics = open(out / "metrics.jsonl", "a") if master else None
        closing.callback(lambda: self.metrics and self.metrics.close())
        closing.callback(lambda: self.writer and self.writer.close())

    def record(self, row: dict) -> None:
        self.metrics.write(json.dumps(row) + "\n")
        self.metrics.flush()

    def train_row(self, step: int, loss: float, lr: float, samples_per_s: float) -> None:
        self.record({"step": step, "kind": "train", "loss": loss, "lr": lr, "samples_per_s": samples_per_s})
        self.writer.add_scalar("train/loss", loss, step)
        self.writer.add_scalar("train/lr", lr, step)
        self.writer.add_scalar("train/samples_per_s", samples_per_s, step)


# --------------------------------------------------------------------------- a step and what follows it


def train_step(learner: Learner, batch, device: torch.device, loss_weight: float) -> torch.Tensor:
    """One optimizer step on a batch from the loader; returns its loss, left on the device (no sync)."""
    if isinstance(batch, WorkerFailure):  # a loader process stopped on bad data
        raise DataError(batch.reason)
    images, masks = batch
    x = normalize_images(images.to(device, non_blocking=True))
    y = masks.to(device, non_blocking=True).long()
    with learner.autocast():
        logits = learner.net(x)
    # the loss in fp32 whatever the autocast dtype: log-softmax over 2 classes is cheap
    loss = F.cross_entropy(logits.float(), y)
    learner.scaler.scale(loss * loss_weight).backward()
    learner.scaler.step(learner.optimizer)
    learner.scaler.update()
    learner.optimizer.zero_grad(set_to_none=True)
    learner.scheduler.step()
    return loss


class LossMeter:
    """The loss summed on the device between logging steps, and the samples seen, for samples/s."""

    def __init__(self, device: torch.device):
        self.total = torch.zeros((), device=device)
        self.steps = 0
        self.samples = 0
        self.since = time.perf_counter()
        self.samples_per_s = 0.0

    def add(self, loss: torch.Tensor, samples: int) -> None:
        self.total += loss.detach()
        self.steps += 1
        self.samples += samples

    def mean_loss(self, place: Placement) -> float:
        """The mean loss since the last call, averaged over ranks so that every rank takes the same
        decision from it (no rank left waiting), and samples/s over the same steps; starts anew."""
        if place.ddp:
            torch.distributed.all_reduce(self.total)
            self.total /= place.world
        mean = float(self.total) / self.steps
        now = time.perf_counter()
        self.samples_per_s = self.samples / max(now - self.since, 1e-9)
        self.total.zero_()
        self.steps, self.samples, self.since = 0, 0, now
        return mean


def diverged(what: str, last_good: Path | None) -> TrainingDiverged:
    where = f"the last good checkpoint {last_good} is kept" if last_good else "no checkpoint was written"
    return TrainingDiverged(f"{what}; stopping ({where}); lower --lr or use --precision fp32/bf16")


def validate_now(step: int, learner: Learner, val: dict | None, config: TrainConfig, device: torch.device,
                 run_log: RunLog) -> dict:
    """Rank 0's validation at `step`: the held-out samples (their grid to TensorBoard and
    val-grid.png) and, with --eval-dataset, the benchmark; returns the numbers it logged."""
    res = {}
    if val is not None:
        v, prob = validate(learner.raw, val, device, learner.autocast, channels_last=learner.channels_last)
        res.update({f"val_{k}": v[k] for k in ("loss", "iou", "max_f", "accuracy")})
        run_log.writer.add_image("val/image|mask|prediction", grid_image(val, prob), step)
        # the newest grid also as a plain picture, for people who do not run TensorBoard
        write_grid_png(Path(config.out) / "val-grid.png", labelled_val_grid(val, prob, step))
    if config.eval_dataset:
        r = validate_real(learner.raw, config.eval_dataset, config.data_root, device, learner.autocast,
                          config.eval_samples, max_pixels=config.max_image_pixels, input_size=config.size)
        # fixed key names ("eval_iou", ...) so scripts need not know the dataset spec
        res.update({f"eval_{k}": r[k] for k in ("iou", "max_f", "accuracy")})
    for k, v in res.items():
        run_log.writer.add_scalar(f"val/{k}", v, step)
    if res:
        run_log.record({"step": step, "kind": "val", **res})
        log.info("step %d validation %s", step, json.dumps(res))
    return res


def _scheduler_state(sched) -> dict:
    # MultiStepLR keeps milestones in a Counter, which torch.load(weights_only=True) refuses
    sd = dict(sched.state_dict())
    sd["milestones"] = dict(sd["milestones"])
    return sd


def save_now(step: int, last_val: dict, learner: Learner, config: TrainConfig, place: Placement,
             source: Selection) -> Path:
    """Rank 0's checkpoint at `step` (trainer.checkpoint): the unwrapped weights, the sidecar and
    the resume state; returns the sidecar's path."""
    train_state = {
        "optimizer": learner.optimizer.state_dict(),
        "scheduler": _scheduler_state(learner.scheduler),
        "scaler": learner.scaler.state_dict(),
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(place.device) if place.use_cuda else None},
        "data": {"step": step, "world": place.world, "num_workers": config.num_workers,
                 "batch": config.batch, "seed": config.seed},
    }
    # input_size: the resolution inference feeds this model at (segmodel.checkpoint.input_size_of)
    meta = {"input_size": config.size, "shardset": {"name": source.name, "fingerprint": source.fingerprint},
            "config": config.to_dict(), "val": last_val}
    return ckpt.save_run_state(Path(config.out), step, learner.raw, meta, train_state, keep=config.keep_checkpoints)
