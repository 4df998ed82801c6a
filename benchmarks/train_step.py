"""Trainer throughput: loader samples/s per worker against the step's appetite, and step time.

    python benchmarks/train_step.py --quick                 # CPU: widths 16 and 64 at batch 8
    python benchmarks/train_step.py --batches 8,95          # CPU, paper batch too (slow)
    python benchmarks/train_step.py --device cuda           # GPU: batch 95, fp32 vs bf16 (+ projection)

The loader is measured as one worker would run it (read .tar.zst, shuffle, decode, batch) on a
toy 128x128 disc set written to a temporary folder, once per image encoding (the default first),
in samples per CPU-second: one worker process's rate on one core, whatever else the machine runs.
The step is the training loop's step (uint8 -> device, normalise, autocast forward, fp32
cross-entropy, backward, Adam). Workers needed = step appetite (batch / step time) / one worker's
samples/CPU-s. Prints a table, the default encoding's loader against the fastest row, and one JSON
line; no asserts.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shardset.format import DEFAULT_ENCODING  # noqa: E402
from shardset.select import select_shards  # noqa: E402
from trainer.data import StreamSpec, worker_stream  # noqa: E402
from trainer.toy import write_disc_set  # noqa: E402
from segmodel.inference import normalize_images  # noqa: E402
from segmodel.unet import UNet  # noqa: E402

PAPER_STEPS = 12000


def loader_rate(folder: Path, encoding: str, batch: int, n_batches: int) -> float:
    """Samples/CPU-s of one worker's stream (no DataLoader: what each worker process does)."""
    manifest = write_disc_set(folder / encoding, f"bench{encoding}", n_train=512, n_val=0, size=128,
                              shard_size=128, seed=0, encoding=encoding)
    src = select_shards([str(manifest)])
    spec = StreamSpec(urls=src.train_urls, seed=0, batch=batch, size=128, shuffle_buffer=256, round_samples=4096)
    stream = worker_stream(spec, 0, 1)
    next(stream)  # fill the shuffle buffer outside the timing
    t = time.process_time()
    for _ in itertools.islice(stream, n_batches):
        pass
    return n_batches * batch / (time.process_time() - t)


def step_time(width: int, batch: int, device: str, precision: str, steps: int, channels_last: bool,
              compile_model: bool) -> float:
    """Seconds per optimizer step (median of `steps` timed steps after 2 warm-up steps)."""
    torch.manual_seed(0)
    dev = torch.device(device)
    model = UNet(width=width).to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler("cuda", enabled=(amp is torch.float16 and dev.type == "cuda"))
    fwd = torch.compile(model) if compile_model else model
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (batch, 128, 128, 3), dtype=np.uint8))
    masks = torch.from_numpy(rng.integers(0, 2, (batch, 128, 128), dtype=np.uint8))
    if dev.type == "cuda":
        images, masks = images.pin_memory(), masks.pin_memory()
        torch.backends.cudnn.benchmark = True

    def one():
        x = normalize_images(images.to(dev, non_blocking=True))
        y = masks.to(dev, non_blocking=True).long()
        ctx = torch.autocast(device_type=dev.type, dtype=amp) if amp else contextlib.nullcontext()
        with ctx:
            logits = fwd(x)
        loss = F.cross_entropy(logits.float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        return loss

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(2):
        one()
    sync()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        one()
        sync()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--quick", action="store_true", help="small sizes: batch 8 only, 2 timed steps")
    ap.add_argument("--widths", default="16,64")
    ap.add_argument("--batches", default=None, help="CPU: default 8 (quick) or 8,95; CUDA: 95")
    ap.add_argument("--precisions", default=None, help="default fp32 on CPU, fp32,bf16 on CUDA")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per configuration")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (CUDA)")
    ap.add_argument("--encodings", default=f"{DEFAULT_ENCODING},npy,png",
                    help="shard encodings for the loader rate (the first is compared with the fastest row)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device")
    batches = [int(b) for b in (args.batches or ("95" if cuda else ("8" if args.quick else "8,95"))).split(",")]
    precisions = (args.precisions or ("fp32,bf16" if cuda else "fp32")).split(",")
    widths = [int(w) for w in args.widths.split(",")]
    steps = args.steps or (2 if args.quick else (20 if cuda else 3))

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rates = {enc: loader_rate(Path(tmp), enc, 16, 32) for enc in args.encodings.split(",")}
    for width in widths:
        for batch in batches:
            for prec in precisions:
                for comp in ([False, True] if (args.compile and cuda) else [False]):
                    s = step_time(width, batch, args.device, prec, steps, channels_last=cuda, compile_model=comp)
                    appetite = batch / s
                    rows.append({"width": width, "batch": batch, "precision": prec, "compile": comp,
                                 "step_s": s, "steps_per_s": 1 / s, "samples_per_s": appetite,
                                 "workers_needed": {enc: appetite / r for enc, r in rates.items()},
                                 "paper_schedule_h": PAPER_STEPS * s / 3600 * (95 / batch)})
    dev_name = torch.cuda.get_device_name(0) if cuda else (platform.processor() or platform.machine())
    print(f"device: {args.device} ({dev_name}), torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("loader, one worker, 128x128 toy set: " + ", ".join(f"{e} {r:.0f} samples/CPU-s" for e, r in rates.items()))
    head = f"{'width':>5} {'batch':>5} {'prec':>5} {'comp':>4} {'step s':>9} {'steps/s':>8} {'samples/s':>9} " \
           + " ".join(f"{'wk ' + e:>7}" for e in rates) + f" {'12000x95 (h)':>12}"
    print(head)
    for r in rows:
        print(f"{r['width']:>5} {r['batch']:>5} {r['precision']:>5} {str(r['compile'])[0]:>4} {r['step_s']:>9.4f} "
              f"{r['steps_per_s']:>8.2f} {r['samples_per_s']:>9.1f} "
              + " ".join(f"{r['workers_needed'][e]:>7.2f}" for e in rates) + f" {r['paper_schedule_h']:>12.2f}")
    print("(12000x95 (h): the paper's schedule at this step time, scaled to batch 95 when measured at another)")
    first, fastest = next(iter(rates)), max(rows, key=lambda r: r["samples_per_s"])
    print(f"loader, {first}, one worker: {rates[first]:.0f} samples/CPU-s against {fastest['samples_per_s']:.1f} "
          f"samples/s eaten by the fastest row (width {fastest['width']}, batch {fastest['batch']}, "
          f"{fastest['precision']}): {rates[first] / fastest['samples_per_s']:.1f}x, "
          f"{fastest['workers_needed'][first]:.2f} workers needed")
    result = {"bench": "train_step", "device": args.device, "device_name": dev_name, "torch": torch.__version__,
              "threads": torch.get_num_threads(), "loader_samples_per_s_per_worker": rates, "rows": rows}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
