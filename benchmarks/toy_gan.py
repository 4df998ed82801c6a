"""The toy GAN (gans/toy.py, a test fixture): rendering speed and what the paper's filters do to it.

Two tables:
  1. speed: images per wall second of `Gan.generate`, `Gan.generate_pair` (2 images per latent)
     and the raw `generate` signature, best of 3 repeats of `--reps` batches of `--batch-size`;
  2. filters, once per histogram rule (bimodal, the default, and paper):
     `masking.rules.process_batch(G(z), G(z + 5h), preset with that rule)` on `--n` prior latents
     (seed `--seed`) with the shipped direction h = toy_direction(): acceptance, rejections per
     reason, mean IoU of the accepted masks with `toy_true_mask`, and the median saliency
     coordinate s of each group.
Then one JSON line with every number. Wall-clock numbers: on a shared machine run it twice.

    python benchmarks/toy_gan.py            # --n 512, batch 64, 10 reps
    python benchmarks/toy_gan.py --quick    # --n 128, 3 reps
"""
from __future__ import annotations

import json
import os
import platform
import tempfile
import time

import dataclasses

import click
import numpy as np


def _best_rate(fn, images_per_call: int, reps: int) -> float:
    """Best of 3 repeats of `reps` calls, in images per second (after one warm-up call)."""
    fn()
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        best = max(best, images_per_call * reps / (time.perf_counter() - t))
    return best


def per_image_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    inter = (a & b).sum(axis=(1, 2))
    union = (a | b).sum(axis=(1, 2))
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


@click.command()
@click.option("--n", type=click.IntRange(1), default=None, help="prior latents for the filter table [512; quick 128]")
@click.option("--batch-size", "batch", type=click.IntRange(1), default=64, show_default=True, help="latents per call")
@click.option("--reps", type=click.IntRange(1), default=None, help="calls per timing repeat [10; quick 3]")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of the prior latents")
@click.option("--preset", "preset_name", default="default", show_default=True, help="masking.rules preset")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="where the toy module is built [a temp folder]")
@click.option("--quick", is_flag=True, help="small sizes (a smoke run)")
def main(n, batch, reps, seed, preset_name, cache_dir, quick):
    import tensorflow as tf

    from masking import rules as masks
    from gans import toy
    from gans.loader import load_gan

    n = n or (128 if quick else 512)
    reps = reps or (3 if quick else 10)
    cfg = masks.PRESETS.get(preset_name)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        gan = load_gan("toy", cache_dir=cache_dir or tmp)
        load_s = time.perf_counter() - t
        h = toy.toy_direction()
        z = np.random.RandomState(seed).standard_normal((n, toy.LATENT_DIM)).astype(np.float32)
        zb = z[:batch] if len(z) >= batch else np.resize(z, (batch, toy.LATENT_DIM))
        sig = gan.module.signatures["generate"]
        zt = tf.constant(zb)
        speed = {
            f"Gan.generate, batch {batch}": _best_rate(lambda: gan.generate(zb), batch, reps),
            f"Gan.generate_pair, batch {batch} ({2 * batch} images)":
                _best_rate(lambda: gan.generate_pair(zb, h, toy.SHIFT), 2 * batch, reps),
            f"raw signature generate, batch {batch}": _best_rate(lambda: sig(z=zt), batch, reps),
        }

        xs, xss = [], []
        for i in range(0, n, batch):
            a, b = gan.generate_pair(z[i:i + batch], h, toy.SHIFT)
            xs.append(a)
            xss.append(b)
        x, x_shift = np.concatenate(xs), np.concatenate(xss)
        results, filter_s = {}, {}
        for rule in masks.HISTOGRAM_RULES:
            t = time.perf_counter()
            results[rule] = masks.process_batch(x, x_shift, dataclasses.replace(cfg, histogram_rule=rule))
            filter_s[rule] = time.perf_counter() - t

    truth = toy.toy_true_mask(z)
    s = z @ toy._params()["q"][:, toy.TOY_FACTORS["saliency_light"]]

    print(f"toy GAN v{toy.TOY_VERSION} on {gan.device}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()};"
          f" module load (build on first use) {load_s:.1f} s")
    print(f"\n{'rendering':52s} {'images/s':>10s}")
    for name, rate in speed.items():
        print(f"{name:52s} {rate:10.1f}")
    summary = {}
    for rule, res in results.items():
        reason = np.array([r or "accepted" for r in res.reason])
        iou = per_image_iou(res.masks.astype(bool), truth)
        rows = [("accepted", reason == "accepted")] + [(f"rejected: {r}", reason == r) for r in masks.REASONS]
        print(f"\nfilters (preset {preset_name!r}, histogram rule {rule!r}) on {n} prior latents, seed {seed}, "
              f"shift {toy.SHIFT} along toy_direction()")
        print(f"{'group':22s} {'count':>6s} {'fraction':>9s} {'IoU vs truth':>13s} {'median s':>9s}")
        for name, sel in rows:
            k = int(sel.sum())
            mi = f"{iou[sel].mean():.4f}" if k else "-"
            ms = f"{np.median(s[sel]):.2f}" if k else "-"
            print(f"{name:22s} {k:6d} {k / n:9.3f} {mi:>13s} {ms:>9s}")
        print(f"process_batch: {n / filter_s[rule]:.0f} pairs/s")
        summary[rule] = {"accepted": float(res.accepted.mean()),
                         "rejected": {k: v / n for k, v in res.rejected().items()},
                         "iou_accepted": float(iou[res.accepted].mean()) if res.accepted.any() else None}
    print(json.dumps({
        "n": n, "seed": seed, "preset": preset_name, "toy_version": toy.TOY_VERSION, "device": gan.device,
        "images_per_s": {k: round(v, 1) for k, v in speed.items()}, "histogram_rules": summary,
    }))


if __name__ == "__main__":
    main()
