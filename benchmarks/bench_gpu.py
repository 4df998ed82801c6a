"""bench-gpu: how long the paper's scale takes, measured through the tools' own functions.

    make bench-gpu                                  # one CUDA GPU: under 8 minutes, writes bench-gpu.json
    python benchmarks/bench_gpu.py --cpu-tiny       # the tiny CPU form, every row (bench-gpu-cpu.json)
    python benchmarks/bench_gpu.py --parts train-bf16,eval --ecssd ../shared/data/ecssd

Without a GPU visible to torch it runs the tiny CPU form by itself. Rows, each measured by what
the tool itself runs (nothing re-implemented here):

  train-unet fp32 / bf16 / bf16 channels-last / bf16 channels-last --compile
      trainer.train.train(TrainConfig(...)) on a local shard set: the samples/s that train-unet
      logs in metrics.jsonl (one device sync per logging interval), over the intervals after the
      warm-up; peak GPU memory; the paper's 12,000 steps at that rate (steps only: validation and
      checkpoints not counted).
  loader, W workers
      trainer.data.make_loader over the same set, as train() builds it, at TrainConfig's default
      worker count and at the train rows' count: samples/s. It keeps up when it delivers more
      than the fastest train row eats.
  gen-synth toy: render / host
      generator.pipeline.run(GenConfig(gan="toy", ...)) with the toy on the accelerator TF sees.
      The Gan's generate_shifted (what the renderer calls: G(z) and the mask rule's pair in one
      call) is wrapped with a clock (the instance's attribute; the pipeline is
      untouched), so one run gives both sides at the same time: pairs per second of rendering
      (and the share of the run the renderer was busy) and the samples per second the host thread
      filtered and wrote. A renderer busy most of the run means the accelerator is the bottleneck.
  find-direction discover
      finder.discover.discover(toy, K 120, batch 32): steps/s after the warm-up, projected to
      the authors' 100,000 steps.
  eval-seg
      evaluator.cli.evaluate(EvalConfig(...)) on ECSSD (--ecssd, default ../shared/data/ecssd;
      without it the shard set's val split) with a width-64 checkpoint in segmodel's format
      (untrained: speed only): images/s, reading and metrics included.
  train-unet DDP 2 GPUs
      torchrun --standalone --nproc_per_node 2 -m trainer.cli --config ... when two GPUs are
      visible (the CPU form runs it with 2 gloo processes, so that it stays tested).

On the GPU each part runs in a process of its own: a clean peak-memory count, TensorFlow and torch
never share a GPU process, and a part that hangs costs its rows only. The CPU form runs the torch
parts in one process and the TensorFlow parts in another (a framework's import costs more than a
tiny part). A part that raises costs its rows only; the GPU form gives each part at most what is
left of its 450 s budget, so `make bench-gpu` ends within 8 minutes whatever the GPU. Prints one
table, writes bench-gpu.json (the rows, the GPU's name, the driver, torch, TF and CUDA versions)
and ends with the same JSON on one line. The CPU form's sizes are tiny: its numbers show that every row runs,
its projections only exercise the arithmetic.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import click

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SHARED_DATA = Path(os.environ.get("BGW_SHARED_DATA", REPO.parent / "shared" / "data"))
PAPER_TRAIN_STEPS = 12_000  # paper sec. 3.4 (TrainConfig's default)
DISCOVER_STEPS = 100_000  # Voynov & Babenko's n_steps (DiscoverConfig's default)
GEN_SAMPLES = 1_000_000  # the recipes' n

# train rows: (part id, label, TrainConfig fields)
TRAIN_VARIANTS = (
    ("train-fp32", "train-unet fp32", {"precision": "fp32", "channels_last": False, "compile": False}),
    ("train-bf16", "train-unet bf16", {"precision": "bf16", "channels_last": False, "compile": False}),
    ("train-bf16-cl", "train-unet bf16 channels-last", {"precision": "bf16", "channels_last": True, "compile": False}),
    ("train-compile", "train-unet bf16 channels-last --compile",
     {"precision": "bf16", "channels_last": True, "compile": True}),
)


@dataclass(frozen=True)
class Form:
    """The sizes of one form of the benchmark."""

    name: str  # "gpu" | "cpu-tiny"
    device: str  # torch device of the train, loader, eval and DDP rows
    batch: int
    width: int
    size: int
    warm: int  # train steps before the timed ones (a multiple of log_every)
    timed: int  # timed train steps (a multiple of log_every)
    log_every: int
    workers: int  # loader workers of the train rows
    set_train: int  # samples in the local shard set's train split
    set_val: int
    shard_size: int
    loader_batches: int  # timed batches of the loader rows
    gen_n: int
    gen_shard: int
    gen_batch: int
    disc_k: int
    disc_batch: int
    disc_warm: int
    disc_timed: int
    eval_limit: int | None
    eval_batch: int
    compile_backend: str  # torch.compile's backend for the --compile row
    cpu_threads: int  # torch intra-op threads (TrainConfig.cpu_threads; 0 = torch's default)
    timeout: int  # seconds per part (the --compile part gets twice this)
    budget: int  # seconds for the whole run: a part gets at most what is left of it
    shared_process: bool  # parts of one framework run in one child process


def gpu_form(cores: int) -> Form:
    return Form("gpu", "cuda", batch=95, width=64, size=128, warm=20, timed=200, log_every=10,
                workers=max(2, min(8, cores - 4)), set_train=8192, set_val=512, shard_size=256,
                loader_batches=200, gen_n=8192, gen_shard=1024, gen_batch=64,
                disc_k=120, disc_batch=32, disc_warm=50, disc_timed=1000,
                eval_limit=None, eval_batch=32, compile_backend="inductor", cpu_threads=0, timeout=150,
                budget=450, shared_process=False)


def cpu_tiny_form() -> Form:
    # Inductor's C++ build of the U-Net takes minutes on 2 cores, so the CPU form's --compile row
    # goes through Dynamo with the eager backend: it checks the compiled model trains, not its speed.
    # One torch thread: on a shared 2-core machine OpenMP's threads wait on each other (measured
    # 0.9 samples/s with 2 threads against 36 with 1, width 8, batch 4, load average 9).
    return Form("cpu-tiny", "cpu", batch=4, width=8, size=64, warm=2, timed=6, log_every=1,
                workers=1, set_train=192, set_val=64, shard_size=64,
                loader_batches=20, gen_n=96, gen_shard=48, gen_batch=16,
                disc_k=16, disc_batch=32, disc_warm=2, disc_timed=3,
                eval_limit=4, eval_batch=4, compile_backend="eager", cpu_threads=1, timeout=200,
                budget=600, shared_process=True)


# ------------------------------------------------------------------------------ pure helpers


def rate_after_warmup(rows: list[dict], warm: int) -> float:
    """Samples/s over the logged training intervals that end after step `warm`: train-unet logs
    `samples_per_s` per interval of log_every steps (equal sample counts), so the rate over their
    whole time is the harmonic mean of theirs. Raises ValueError when no interval qualifies."""
    rates = [float(r["samples_per_s"]) for r in rows if r.get("kind") == "train" and r["step"] > warm]
    if not rates or min(rates) <= 0:
        raise ValueError(f"no positive training rate logged after step {warm}")
    return len(rates) / sum(1.0 / r for r in rates)


def bottleneck(render_busy_s: float, wall_s: float, busy_share: float = 0.8) -> str:
    """Which side limits a gen-synth run: the renderer waits on a full queue when the host is
    slower, so a renderer busy for at least `busy_share` of the run means the accelerator."""
    return "accelerator" if render_busy_s >= busy_share * wall_s else "host"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def row(label: str, part: str, setting: str, value: float | None, unit: str, *, projection_s: float | None = None,
        projection_of: str = "", peak_gpu_bytes: int | None = None, device: str = "", note: str = "",
        status: str = "ok", **extra) -> dict:
    return {"row": label, "part": part, "setting": setting, "value": value, "unit": unit,
            "projection_s": projection_s, "projection_of": projection_of, "peak_gpu_bytes": peak_gpu_bytes,
            "device": device, "note": note, "status": status, **extra}


def _dir_bytes(folder: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in folder.glob(pattern))


# ------------------------------------------------------------------------------ the parts
# Each runs in its own process (`--part ID`) and returns a list of rows.


def _peak_cuda(device: str) -> int | None:
    import torch

    return int(torch.cuda.max_memory_allocated()) if device == "cuda" else None


def _train_config(form: Form, work: Path, out: str, **fields):
    from trainer.config import TrainConfig

    return TrainConfig(shards=(str(work / "set" / "set.json"),), out=str(work / "runs" / out), device=form.device,
                       steps=form.warm + form.timed + form.log_every, batch=form.batch, width=form.width,
                       size=form.size, num_workers=form.workers, log_every=form.log_every, val_every=0,
                       val_samples=0, ckpt_every=10 ** 9, seed=0, cpu_threads=form.cpu_threads, **fields)


def part_train(form: Form, work: Path, variant: str) -> list[dict]:
    import torch

    from trainer.train import train

    _, label, fields = next(v for v in TRAIN_VARIANTS if v[0] == variant)
    if fields["compile"] and form.compile_backend != "inductor":
        if not hasattr(torch.compiler, "set_default_backend"):
            raise RuntimeError(f"torch {torch.__version__} cannot set torch.compile's default backend "
                               f"({form.compile_backend!r} asked for); torch >= 2.13 can")
        torch.compiler.set_default_backend(form.compile_backend)
    cfg = _train_config(form, work, variant, **fields)
    if form.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    train(cfg)
    wall = time.perf_counter() - t
    rows = [json.loads(line) for line in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    sps = rate_after_warmup(rows, form.warm)
    steps_s = sps / form.batch
    ckpt = Path(cfg.out) / "checkpoints"
    setting = f"batch {form.batch}, width {form.width}, {form.size}x{form.size}, {form.workers} loader workers"
    if fields["compile"]:
        setting += f", backend {form.compile_backend}"
    if form.device == "cuda" and fields["precision"] == "fp32":
        setting += ", TF32 matmuls (train() allows them)"
    return [row(label, variant, setting, steps_s, "steps/s", projection_s=PAPER_TRAIN_STEPS / steps_s,
                projection_of=f"{PAPER_TRAIN_STEPS:,} steps", peak_gpu_bytes=_peak_cuda(form.device),
                device=form.device, note=f"{sps:.0f} samples/s; run {wall:.0f} s with warm-up",
                samples_per_s=sps, run_s=wall,
                checkpoint_bytes={"weights": _dir_bytes(ckpt, "*.safetensors"),
                                  "state": _dir_bytes(ckpt, "*.state.pt")})]


def part_loader(form: Form, work: Path, workers: int) -> list[dict]:
    from trainer.config import TrainConfig
    from shardset.select import select_shards
    from trainer.data import StreamSpec, WorkerFailure, make_loader

    defaults = TrainConfig()
    source = select_shards([str(work / "set" / "set.json")])
    spec = StreamSpec(urls=source.train_urls, seed=0, batch=form.batch, size=form.size,
                      shuffle_buffer=defaults.shuffle_buffer, round_samples=defaults.round_samples,
                      expect=source.expect)
    batches = iter(make_loader(spec, workers, pin_memory=form.device == "cuda"))
    # the warm-up starts the workers, fills their shuffle buffers and drains the batches they
    # prefetched meanwhile (4 per worker), so the timed ones are made while we wait
    for _ in range(5 * max(workers, 1) + 2):
        next(batches)
    t = time.perf_counter()
    for _ in range(form.loader_batches):
        b = next(batches)
        if isinstance(b, WorkerFailure):
            raise RuntimeError(b.reason)
    sps = form.loader_batches * form.batch / (time.perf_counter() - t)
    which = "TrainConfig's default" if workers == defaults.num_workers else "the train rows'"
    label = f"loader, {workers} worker{'s' if workers != 1 else ''}"
    return [row(label, f"loader-{workers}", f"batch {form.batch}, {form.size}x{form.size}, {which} worker count",
                sps, "samples/s", device=form.device, workers=workers)]


def part_ddp(form: Form, work: Path) -> list[dict]:
    import torch

    label = "train-unet DDP 2 GPUs" if form.device == "cuda" else "train-unet DDP 2 CPU processes (gloo)"
    if form.device == "cuda" and torch.cuda.device_count() < 2:
        return [row("train-unet DDP 2 GPUs", "ddp", "", None, "steps/s", status="skipped", device="cuda",
                    note=f"{torch.cuda.device_count()} GPU visible; the row needs 2")]
    workers = max(1, form.workers // 2) if form.device == "cuda" else 0
    cfg = _train_config(form, work, "ddp", precision="bf16", channels_last=True, compile=False).replace(
        num_workers=workers)
    config_file = work / "ddp-config.json"
    config_file.write_text(json.dumps(cfg.to_dict()))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "trainer.cli", "--config", str(config_file), "--out", cfg.out]
    t = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=_child_env(), capture_output=True, text=True,
                          timeout=form.timeout)
    wall = time.perf_counter() - t
    if done.returncode:
        raise RuntimeError(f"torchrun exited {done.returncode}: {_last_line(done.stderr)}")
    rows = [json.loads(line) for line in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    sps = rate_after_warmup(rows, form.warm)
    steps_s = sps / form.batch
    return [row(label, "ddp", f"global batch {form.batch} bf16 channels-last, {workers} workers per rank",
                steps_s, "steps/s", projection_s=PAPER_TRAIN_STEPS / steps_s,
                projection_of=f"{PAPER_TRAIN_STEPS:,} steps", device=form.device,
                note=f"{sps:.0f} samples/s; run {wall:.0f} s with start-up", samples_per_s=sps, run_s=wall)]


def part_eval(form: Form, work: Path, ecssd: Path | None) -> list[dict]:
    import torch

    from evaluator.cli import EvalConfig, evaluate
    from segmodel.checkpoint import save_checkpoint
    from segmodel.unet import UNet

    if form.cpu_threads:
        torch.set_num_threads(form.cpu_threads)
    torch.manual_seed(0)
    run = work / "eval-ckpt"
    save_checkpoint(run, 0, UNet(width=64), {"shardset": None, "config": {"note": "untrained: bench_gpu speed"}})
    if ecssd is not None:
        spec, what = f"folder:{ecssd}", "ECSSD"
    else:
        spec, what = f"shards:{work / 'set' / 'set.json'}", "the shard set's val split (ECSSD not found)"
    cfg = EvalConfig(datasets=(spec,), ckpts=(run,), device=form.device, batch_size=form.eval_batch,
                     limit=form.eval_limit, figures=False)
    if form.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    results = evaluate(cfg)
    wall = time.perf_counter() - t
    n = next(iter(results["datasets"].values()))["n_images"]
    rate = n / wall
    return [row("eval-seg", "eval", f"{what}, {n} images, width-64 U-Net, batch {form.eval_batch}, "
                f"{cfg.workers} reader threads", rate, "images/s", projection_s=1000 / rate,
                projection_of="1,000 images (ECSSD's size)", peak_gpu_bytes=_peak_cuda(form.device),
                device=form.device, note="short128 inference + every metric at the mask's size",
                images=n, dataset=what)]


def _tf_info() -> dict:
    import tensorflow as tf

    build = tf.sysconfig.get_build_info()
    gpus = tf.config.list_physical_devices("GPU")
    return {"version": tf.__version__, "cuda_build": build.get("cuda_version"), "cudnn_build": build.get("cudnn_version"),
            "gpus": len(gpus)}


def _tf_threads(form: Form) -> None:
    """The CPU form's thread count for TensorFlow too (before TF starts its pools)."""
    if form.cpu_threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(form.cpu_threads)


def _tf_peak(gan) -> int | None:
    import tensorflow as tf

    if not gan.device.startswith("GPU"):
        return None
    return int(tf.config.experimental.get_memory_info(gan.device)["peak"])


def part_gen(form: Form, work: Path) -> list[dict]:
    import numpy as np

    from generator.config import GenConfig
    from generator.inputs import cached_gan
    from generator.pipeline import run
    from gans.toy import toy_direction

    _tf_threads(form)
    cfg = GenConfig(gan="toy", latents="prior", n=form.gen_n, shard_size=form.gen_shard, batch_size=form.gen_batch,
                    out=str(work / "gen"), name="toy")
    gan = cached_gan(cfg.gan, cfg.cache_dir)  # the instance the pipeline's load_inputs returns
    z = np.zeros((form.gen_batch, gan.latent_dim), np.float32)
    gan.generate_pair(z, toy_direction(), cfg.shift, cfg.image_size)  # trace once, outside the timing
    render = {"s": 0.0, "pairs": 0}
    plain = gan.generate_shifted  # the renderer's one call per batch (generator.views.render_views)

    def timed_pair(z, *args, **kwargs):
        t = time.perf_counter()
        out = plain(z, *args, **kwargs)  # returns numpy: the accelerator's work is done
        render["s"] += time.perf_counter() - t
        render["pairs"] += len(z)
        return out

    host = {"accepted": 0, "drawn": 0}

    def progress(accepted: int, drawn: int) -> None:
        host["accepted"] += accepted
        host["drawn"] += drawn

    gan.generate_shifted = timed_pair
    try:
        t = time.perf_counter()
        res = run(cfg, progress=progress)
        wall = time.perf_counter() - t
    finally:
        del gan.generate_shifted
    if not render["pairs"]:  # the renderer no longer calls what is clocked: say so, not divide by zero
        raise RuntimeError("gen-synth rendered nothing through Gan.generate_shifted; the clock wraps the wrong call")
    samples = res.manifest["totals"]["samples"]
    per_sample = _dir_bytes(work / "gen", "*.tar.zst") / samples
    render_rate = render["pairs"] / render["s"]
    host_rate = samples / wall
    side = bottleneck(render["s"], wall)
    busy = 100 * render["s"] / wall
    setting = f"n {samples}, batch {form.gen_batch}, default filters and encoding ({cfg.encoding})"
    common = {"device": gan.device, "peak_gpu_bytes": _tf_peak(gan)}
    return [
        row("gen-synth toy: render", "gen", setting, render_rate, "pairs/s", note=f"renderer busy {busy:.0f}% "
            f"of the run; bottleneck: {side}", render_s=render["s"], pairs=render["pairs"], wall_s=wall,
            bottleneck=side, tensorflow=_tf_info(), **common),
        row("gen-synth toy: host", "gen", setting, host_rate, "samples/s",
            projection_s=GEN_SAMPLES / host_rate, projection_of=f"{GEN_SAMPLES:,} samples at this rate",
            note=f"{host['drawn'] / wall:.0f} draws/s filtered, acceptance {samples / max(host['drawn'], 1):.0%}; "
                 f"{per_sample / 1024:.1f} KiB/sample on disk", bytes_per_sample=per_sample, drawn=host["drawn"],
            samples=samples, wall_s=wall, bottleneck=side, **common),
    ]


def part_discover(form: Form, work: Path) -> list[dict]:
    from finder.discover import DiscoverConfig, discover
    from generator.inputs import cached_gan

    _tf_threads(form)
    gan = cached_gan("toy")
    first, last = form.disc_warm, form.disc_warm + form.disc_timed
    cfg = DiscoverConfig(directions=form.disc_k, batch=form.disc_batch, steps=last + 1, checkpoint_every=10 ** 9,
                         picture_samples=1, seed=0)
    marks: dict[int, float] = {}

    def progress(step: int, metrics: dict) -> None:
        if step in (first, last):  # each step ends with a host read of its metrics: synced
            marks[step] = time.perf_counter()

    t = time.perf_counter()
    discover(gan, work / "discover", cfg, progress=progress)
    wall = time.perf_counter() - t
    rate = form.disc_timed / (marks[last] - marks[first])
    return [row("find-direction discover", "discover", f"toy, K {form.disc_k}, batch {form.disc_batch}", rate,
                "steps/s", projection_s=DISCOVER_STEPS / rate, projection_of=f"{DISCOVER_STEPS:,} steps",
                peak_gpu_bytes=_tf_peak(gan), device=gan.device, note=f"run {wall:.0f} s with tracing and pictures",
                run_s=wall)]


# ------------------------------------------------------------------------------ the driver


def _child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no output"


def plan(form: Form) -> list[str]:
    """The part ids in the order they run."""
    from trainer.config import TrainConfig

    loaders = sorted({TrainConfig().num_workers, form.workers})
    return [f"loader-{w}" for w in loaders] + [v[0] for v in TRAIN_VARIANTS] + ["ddp", "eval", "gen", "discover"]


PART_FUNCS = {"train": part_train, "loader": part_loader, "ddp": part_ddp, "eval": part_eval, "gen": part_gen,
              "discover": part_discover}


def _func_of(part: str):
    return PART_FUNCS[part.split("-")[0]]


def expected_labels(part: str, form: Form) -> list[str]:
    """The row labels a part gives (for the rows of a part that failed)."""
    kind = part.split("-")[0]
    if kind == "train":
        return [next(v[1] for v in TRAIN_VARIANTS if v[0] == part)]
    if kind == "loader":
        w = int(part.split("-")[1])
        return [f"loader, {w} worker{'s' if w != 1 else ''}"]
    if kind == "ddp":
        return ["train-unet DDP 2 GPUs" if form.device == "cuda" else "train-unet DDP 2 CPU processes (gloo)"]
    if kind == "gen":
        return ["gen-synth toy: render", "gen-synth toy: host"]
    return {"eval": ["eval-seg"], "discover": ["find-direction discover"]}[kind]


def failed_rows(part: str, form: Form, why: str, status: str = "failed") -> list[dict]:
    return [row(label, part, "", None, "", status=status, note=why) for label in expected_labels(part, form)]


def run_in_child(parts: list[str], form: Form, work: Path, ecssd: Path | None, out: Path) -> None:
    """The child's side: run `parts` in order, rewriting `out` (every row so far) after each, so
    that a group killed by its timeout keeps the rows of the parts that finished."""
    from core.atomic import atomic_write_text
    from core.errors import first_line

    rows: list[dict] = []
    for part in parts:
        kind = part.split("-")[0]
        args = {"form": form, "work": work}
        if kind == "train":
            args["variant"] = part
        elif kind == "loader":
            args["workers"] = int(part.split("-")[1])
        elif kind == "eval":
            args["ecssd"] = ecssd
        t = time.perf_counter()
        try:
            got = _func_of(part)(**args)
        except ModuleNotFoundError as exc:
            if exc.name != "tensorflow":
                raise
            got = failed_rows(part, form, "TensorFlow is not installed here (pip install 'bgw-seg[gen]')", "skipped")
        except Exception as exc:  # boundary: a part that fails in any way costs its own rows only
            logging.getLogger("bench_gpu").exception("part %s failed", part)
            got = failed_rows(part, form, f"{type(exc).__name__}: {first_line(exc)}")
        for r in got:
            r["part_s"] = round(time.perf_counter() - t, 1)
        rows += got
        atomic_write_text(out, json.dumps(rows))


def groups(parts: list[str], form: Form) -> list[list[str]]:
    """The child processes' part lists: one part each on the GPU; on the CPU one process per
    framework (gen and discover are TensorFlow's, the rest torch's), in the plan's order."""
    if not form.shared_process:
        return [[p] for p in parts]
    tf_parts = [p for p in parts if p.split("-")[0] in ("gen", "discover")]
    return [g for g in ([p for p in parts if p not in tf_parts], tf_parts) if g]


def run_group(parts: list[str], form: Form, work: Path, ecssd: Path | None, deadline: float) -> list[dict]:
    """Run `parts` in one child process; a part that did not report (the child died or ran out of
    time, or the budget was spent before it started) gets rows that say so."""
    left = deadline - time.perf_counter()
    if left < 10:
        return [r for p in parts for r in failed_rows(p, form, f"not run: the {form.budget} s budget was spent",
                                                      "skipped")]
    out = work / f"rows-{parts[0]}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--part", ",".join(parts), "--form-json",
           json.dumps(dataclasses.asdict(form)), "--work", str(work), "--part-out", str(out)]
    if ecssd is not None:
        cmd += ["--ecssd", str(ecssd)]
    timeout = min(left, sum(form.timeout * (2 if p == "train-compile" else 1) for p in parts))
    try:
        done = subprocess.run(cmd, cwd=REPO, env=_child_env(), capture_output=True, text=True, timeout=timeout)
        why = f"the part's process exited {done.returncode}: {_last_line(done.stderr)}"
    except subprocess.TimeoutExpired:
        why = f"timed out ({timeout:.0f} s{' left of the budget' if timeout == left else ''})"
    rows = json.loads(out.read_text()) if out.is_file() else []
    reported = {r["part"] for r in rows}
    return rows + [r for p in parts if p not in reported for r in failed_rows(p, form, why)]


def find_ecssd(path: str | None) -> Path | None:
    p = Path(path) if path else SHARED_DATA / "ecssd"
    return p if (p / "images").is_dir() else None


def nvidia_driver() -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().splitlines()[0] if out.strip() else None


def environment(form: Form) -> dict:
    import torch

    try:
        from importlib.metadata import PackageNotFoundError, version

        tf_version = version("tensorflow")
    except PackageNotFoundError:
        tf_version = None
    cuda = form.device == "cuda"
    return {"device": form.device, "gpu": torch.cuda.get_device_name(0) if cuda else None,
            "gpu_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
            "gpu_memory_bytes": torch.cuda.get_device_properties(0).total_memory if cuda else None,
            "driver": nvidia_driver(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if cuda else None, "tensorflow": tf_version,
            "python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count()}


def print_table(result: dict) -> None:
    env = result["environment"]
    head = (f"bench-gpu, {result['form']} form on {env['gpu'] or 'CPU'} ({env['cores']} CPU cores): "
            f"torch {env['torch']} (CUDA {env['torch_cuda'] or '-'}), TensorFlow {env['tensorflow'] or '-'}"
            + (f" (CUDA {env['tf_cuda']})" if env.get("tf_cuda") else "") + f", driver {env['driver'] or '-'}")
    print(head)
    if result["form"] != "gpu":
        print("CPU form: tiny sizes; its numbers show every row runs, its projections only exercise the arithmetic")
    cols = ("row", "device", "rate", "projection", "peak GPU", "setting / note")
    lines = []
    for r in result["rows"]:
        rate = f"{r['value']:,.1f} {r['unit']}" if r["value"] is not None else r["status"]
        proj = f"{r['projection_of']}: {fmt_duration(r['projection_s'])}" if r["projection_s"] else "-"
        text = "; ".join(t for t in (r["setting"], r["note"]) if t)
        lines.append((r["row"], r["device"] or "-", rate, proj, fmt_bytes(r["peak_gpu_bytes"]), text))
    widths = [max(len(c), *(len(ln[i]) for ln in lines)) for i, c in enumerate(cols[:-1])]
    print("  ".join(c.ljust(w) for c, w in zip(cols[:-1], widths)) + "  " + cols[-1])
    for ln in lines:
        print("  ".join(v.ljust(w) for v, w in zip(ln[:-1], widths)) + "  " + ln[-1])
    for verdict in result["verdicts"]:
        print(verdict)


def verdicts(rows: list[dict]) -> list[str]:
    """The loader against the train rows' appetite; gen-synth's bottleneck."""
    out = []
    train = [r for r in rows if r["part"].startswith("train-") and r["value"] is not None]
    loaders = [r for r in rows if r["part"].startswith("loader-") and r["value"] is not None]
    if train and loaders:
        fastest = max(train, key=lambda r: r["samples_per_s"])
        for ld in loaders:
            ratio = ld["value"] / fastest["samples_per_s"]
            out.append(f"{ld['row']}: {ld['value']:,.0f} samples/s against {fastest['samples_per_s']:,.0f} eaten by "
                       f"{fastest['row']}: {'keeps up' if ratio >= 1 else 'does NOT keep up'} ({ratio:.2f}x)")
    gen = [r for r in rows if r["row"] == "gen-synth toy: render" and r["value"] is not None]
    if gen:
        out.append(f"gen-synth toy: the {gen[0]['bottleneck']} is the bottleneck ({gen[0]['note']})")
    return out


@click.command(help=__doc__.split("\n\n")[0])
@click.option("--cpu-tiny", is_flag=True, help="The tiny CPU form even when a GPU is visible.")
@click.option("--quick", is_flag=True, help="Same as --cpu-tiny (what `make bench` runs).")
@click.option("--parts", default="", help="Comma-separated part ids to run (default: all), e.g. train-bf16,eval.")
@click.option("--ecssd", type=click.Path(file_okay=False), default=None,
              help="ECSSD folder (images/ + masks/); default $BGW_SHARED_DATA/ecssd or ../shared/data/ecssd.")
@click.option("--eval-limit", type=click.IntRange(1), default=None, help="Score only the first N images.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Where the rows and versions go [default: bench-gpu.json, the CPU form bench-gpu-cpu.json, "
                   "--quick none].")
@click.option("--work", type=click.Path(file_okay=False), default=None,
              help="Working folder (shard sets, runs); default a temporary one, removed at the end.")
@click.option("--part", default=None, hidden=True)
@click.option("--form-json", default=None, hidden=True)
@click.option("--part-out", default=None, hidden=True)
def main(cpu_tiny, quick, parts, ecssd, eval_limit, json_path, work, part, form_json, part_out):
    if part is not None:  # a child process: its parts' rows as JSON
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        run_in_child(part.split(","), Form(**json.loads(form_json)), Path(work), Path(ecssd) if ecssd else None,
                     Path(part_out))
        return
    try:
        import torch

        from core.atomic import atomic_write_text
        from trainer.toy import write_disc_set
    except ImportError as exc:  # a machine without the project's dependencies
        raise click.ClickException(f"bench-gpu needs the project's dependencies ({exc.name} is missing): "
                                   "run `make install` (or pip install -e '.[all]') first") from None
    cores = os.cpu_count() or 1
    gpu = torch.cuda.is_available() and not (cpu_tiny or quick)
    form = gpu_form(cores) if gpu else cpu_tiny_form()
    if eval_limit:
        form = dataclasses.replace(form, eval_limit=eval_limit)
    if not gpu and not (cpu_tiny or quick):
        print(f"torch {torch.__version__} sees no CUDA GPU: running the tiny CPU form", file=sys.stderr)
    steps = plan(form)
    wanted = [p.strip() for p in parts.split(",") if p.strip()]
    unknown = sorted(set(wanted) - set(steps))
    if unknown:
        raise click.BadParameter(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(steps)}",
                                 param_hint="--parts")
    steps = [p for p in steps if not wanted or p in wanted]
    ecssd_dir = find_ecssd(ecssd)
    t0 = time.perf_counter()
    folder = Path(work) if work else Path(tempfile.mkdtemp(prefix="bgw-bench-gpu-"))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "set" / "set.json").is_file():
            write_disc_set(folder / "set", "set", n_train=form.set_train, n_val=form.set_val, size=128,
                           shard_size=form.shard_size, seed=0, encoding=_default_encoding())
        rows = []
        for group in groups(steps, form):
            print(f"[bench-gpu] {', '.join(group)} ...", file=sys.stderr, flush=True)
            rows += run_group(group, form, folder, ecssd_dir, deadline=t0 + form.budget)
    finally:
        if not work:
            shutil.rmtree(folder, ignore_errors=True)
    env = environment(form)
    tf_rows = [r for r in rows if "tensorflow" in r]
    if tf_rows:
        tf = tf_rows[0].pop("tensorflow")
        env.update(tf_cuda=tf["cuda_build"], tf_cudnn=tf["cudnn_build"], tf_gpus=tf["gpus"])
    result = {"bench": "bench_gpu", "form": form.name, "environment": env, "settings": dataclasses.asdict(form),
              "ecssd": str(ecssd_dir) if ecssd_dir else None, "rows": rows, "verdicts": verdicts(rows),
              "wall_s": round(time.perf_counter() - t0, 1)}
    print_table(result)
    if json_path is None and not quick:
        json_path = "bench-gpu.json" if gpu else "bench-gpu-cpu.json"  # a CPU run never overwrites a GPU table
    if json_path:
        atomic_write_text(json_path, json.dumps(result, indent=1) + "\n")
        print(f"wrote {json_path} ({result['wall_s']:.0f} s in all)")
    print(json.dumps(result))


def _default_encoding() -> str:
    from shardset.format import DEFAULT_ENCODING

    return DEFAULT_ENCODING


if __name__ == "__main__":
    main()
