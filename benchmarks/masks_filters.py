"""Host-side throughput of mask rule + filters (masking.rules.process_batch) per CPU core.

Pairs are synthetic but shaped like the GAN's: a smooth random blob (the object) on a smooth
coloured background, the shifted image brighter on the object and darker elsewhere, plus pixel
noise (which makes the stray components the clean-up removes). One thread everywhere (cv2 and
BLAS), so the numbers are per core. Prints a table, then one JSON line.

    python benchmarks/masks_filters.py            # --n 4096 samples per configuration
    python benchmarks/masks_filters.py --quick    # --n 512
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # per-core numbers: set before numpy loads BLAS

import json
import platform
import time

import click
import cv2
import numpy as np

from masking import rules as M


def smooth_field(rng: np.random.Generator, n: int, size: int, cells: int, channels: int = 1) -> np.ndarray:
    """n smooth random fields [n, size, size(, channels)] in about [-1, 1]: coarse noise, upsampled."""
    coarse = rng.normal(0, 1, (n, cells, cells, channels)).astype(np.float32)
    out = np.stack([cv2.resize(c, (size, size), interpolation=cv2.INTER_CUBIC).reshape(size, size, channels)
                    for c in coarse])
    return np.clip(out * 0.5, -1, 1)[..., 0] if channels == 1 else np.clip(out * 0.5, -1, 1)


def make_pairs(n: int, size: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n (x, x') pairs float32 [n, size, size, 3] in [-1, 1], GAN-like as the module docstring says."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    cy, cx, r = rng.uniform(0.3, 0.7, n), rng.uniform(0.3, 0.7, n), rng.uniform(0.15, 0.55, n)
    dist = np.hypot(yy[None] - cy[:, None, None], xx[None] - cx[:, None, None]) / r[:, None, None]
    obj = (dist + 0.6 * smooth_field(rng, n, size, 5) < 1.0).astype(np.float32)[..., None]
    bg = smooth_field(rng, n, size, 4, 3) * 0.8
    fg = smooth_field(rng, n, size, 6, 3) * 0.6 + rng.uniform(-0.4, 0.4, (n, 1, 1, 3)).astype(np.float32)
    x = obj * fg + (1 - obj) * bg
    # the segmenting direction: objects brighten and backgrounds darken, by a varying amount
    gain = rng.uniform(0.4, 1.0, (n, 1, 1, 1)).astype(np.float32)
    light = obj * (1 - x) - (1 - obj) * (1 + x)  # gain 1 would send objects to 1, backgrounds to -1
    x_shift = x + gain * light
    x = x + rng.normal(0, 0.06, x.shape).astype(np.float32)
    x_shift = x_shift + rng.normal(0, 0.06, x.shape).astype(np.float32)
    return np.clip(x, -1, 1).astype(np.float32), np.clip(x_shift, -1, 1).astype(np.float32)


def _rate(fn, pool_x, pool_xs, n: int, batch: int) -> tuple[float, float]:
    """(samples per CPU second, samples per wall second) of fn(x, x') over n samples, in batches
    drawn cyclically from the pool. With one thread, CPU seconds are one core's seconds, and they
    stay meaningful on a shared machine where wall time does not."""
    done, spent, cpu = 0, 0.0, 0.0
    while done < n:
        s = done % len(pool_x)
        k = min(batch, n - done, len(pool_x) - s)
        xb, xsb = pool_x[s:s + k], pool_xs[s:s + k]
        t0, c0 = time.perf_counter(), time.process_time()
        fn(xb, xsb)
        spent += time.perf_counter() - t0
        cpu += time.process_time() - c0
        done += k
    return n / cpu, n / spent


CONFIGS = {
    "default (lighting, 4-conn, size, bimodal)": M.PRESETS["default"],
    "reference (lighting, 8-conn, size, bimodal)": M.FilterConfig(connectivity=8, histogram_rule="bimodal"),
    "paper's text (lighting, 4-conn, size, paper)": M.FilterConfig(histogram_rule="paper"),
    "flowers (mean, 4-conn, no size, bimodal)": M.PRESETS["flowers"],
    "no histogram (lighting, 4-conn, size)": M.FilterConfig(histogram_rule=None),
}


@click.command()
@click.option("--n", type=click.IntRange(min=1), default=4096, show_default=True, help="samples per configuration")
@click.option("--quick", is_flag=True, help="small run: --n 512")
@click.option("--batch-size", "batch", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--size", type=click.IntRange(min=8), default=128, show_default=True, help="image side")
def main(n: int, quick: bool, batch: int, size: int):
    cv2.setNumThreads(1)
    if quick:
        n = 512
    pool = min(n, 256)
    x, xs = make_pairs(pool, size)

    rows = []
    for name, cfg in CONFIGS.items():
        M.process_batch(x[:8], xs[:8], cfg)  # warm-up (builds the histogram table once)
        cpu_rate, wall_rate = _rate(lambda a, b: M.process_batch(a, b, cfg), x, xs, n, batch)
        res = M.process_batch(x, xs, cfg)
        rej = res.rejected()
        rows.append({"config": name, "samples_per_cpu_s": round(cpu_rate), "samples_per_wall_s": round(wall_rate),
                     "accepted": float(res.accepted.mean()),
                     "rej_size": rej["size"] / pool, "rej_hist": rej["histogram"] / pool})

    g = M.gray(xs)
    m = M.lighting_mask(x, xs, g)
    cc = M.keep_large_components(m)
    stages = {
        "gray(x')": lambda a, b: M.gray(b),
        "lighting mask (2 grays + compare)": lambda a, b: M.lighting_mask(a, b),
        "components, 4-conn": lambda a, b: M.keep_large_components(m[:len(a)]),
        "components, 8-conn": lambda a, b: M.keep_large_components(m[:len(a)], connectivity=8),
        "size filter": lambda a, b: M.passes_size_filter(cc[:len(a)]),
        "histogram paper (of a given gray)": lambda a, b: M.HISTOGRAM_RULES["paper"](b, g[:len(b)]),
        "histogram bimodal (3 channels)": lambda a, b: M.HISTOGRAM_RULES["bimodal"](b),
    }
    stage_rows = [{"stage": k, "samples_per_cpu_s": round(_rate(f, x, xs, n, batch)[0])} for k, f in stages.items()]

    print(f"mask + filters, {size}x{size}, {n} samples per row, batch {batch}, 1 thread, samples per "
          f"CPU second (= per core) and per wall second "
          f"({platform.processor() or platform.machine()}, numpy {np.__version__}, cv2 {cv2.__version__})")
    print(f"{'configuration':46s} {'/cpu-s':>8s} {'/wall-s':>8s} {'accepted':>9s} {'rej size':>9s} {'rej hist':>9s}")
    for r in rows:
        print(f"{r['config']:46s} {r['samples_per_cpu_s']:8d} {r['samples_per_wall_s']:8d} {r['accepted']:9.1%} "
              f"{r['rej_size']:9.1%} {r['rej_hist']:9.1%}")
    print(f"\n{'stage':46s} {'/cpu-s':>8s} {'cpu-us/sample':>14s}")
    for r in stage_rows:
        print(f"{r['stage']:46s} {r['samples_per_cpu_s']:8d} {1e6 / r['samples_per_cpu_s']:14.1f}")
    print(json.dumps({"bench": "masks_filters", "size": size, "n": n, "batch": batch, "threads": 1,
                      "configs": rows, "stages": stage_rows, "cpu": platform.processor() or platform.machine(),
                      "numpy": np.__version__, "cv2": cv2.__version__}))


if __name__ == "__main__":
    main()
