"""What `find-direction optimize` finds on the toy GAN, against the toy's planted light and true objects.

Prints the direction's cosine with each of the toy's named factors (the shipped segmenting light is
`saliency_light`), and the IoU of its masks (gen-synth's: lighting rule + connected components) with
`toy_true_mask` at several shifts, overall and by how far the object's centre lies from the image's
centre; the shipped direction's IoU is the reference.

    python benchmarks/optimize_toy.py --direction runs/toy-opt/direction.npy      # a finished optimize run
    python benchmarks/optimize_toy.py --quick                                        # optimise 60 steps first
"""
from __future__ import annotations

import click
import numpy as np
from toy_gan import per_image_iou  # benchmarks/ is on sys.path when run as a script


@click.command()
@click.option("--direction", type=click.Path(exists=True, dir_okay=False), default=None,
              help="optimize's direction.npy (default: optimise now).")
@click.option("--samples", default=256, show_default=True, help="Prior latents scored.")
@click.option("--quick", is_flag=True, help="Optimise only 60 steps of batch 8 (seconds, not minutes).")
@click.option("--cache-dir", default=None, help="Where the toy is built (default: $BGW_CACHE_DIR).")
def main(direction, samples, quick, cache_dir):
    from finder import rank as ds
    from finder import optimize as op
    from gans import toy
    from gans.loader import load_gan
    from masking.rules import FilterConfig, process_batch

    gan = load_gan("toy", cache_dir=cache_dir)
    if direction is None:
        cfg = op.OptimizeConfig(steps=60, batch=8) if quick else op.OptimizeConfig()
        d, _ = op.optimize_direction(gan, cfg)
    else:
        from gans.directions import load_direction

        d, _ = load_direction(direction, dim=gan.latent_dim)
    print("cosine with the toy's factors (|cos| >= 0.05):")
    for name in sorted(toy.TOY_FACTORS):
        c = float(d @ toy.toy_factor_direction(name))
        if abs(c) >= 0.05:
            print(f"  {name:<20} {c:+.3f}")
    z = ds.draw_latents(samples, gan.latent_dim, 99)
    # half of the latents moved along the toy's horizontal-position factor: objects far from the centre,
    # which prior draws almost never give
    z[: samples // 2] += 2.5 * toy.toy_factor_direction("center_x")[None]
    truth = toy.toy_true_mask(z)
    centres = np.array([np.argwhere(t).mean(axis=0) if t.any() else [np.nan, np.nan] for t in truth])
    side = truth.shape[-1]
    dist = np.linalg.norm(centres - (side - 1) / 2, axis=1) / (side / 2)
    bands = [(0.0, 0.25), (0.25, 0.5), (0.5, 2.0)]
    print(f"\nIoU with the true objects over {samples} latents, half of them moved 2.5 along center_x (object "
          f"centre's distance from the image centre, in half-sides):")
    print(f"{'direction':<10} {'shift':>5} {'IoU':>6} {'fg':>6}  " + "  ".join(f"{a:.2f}-{b:.2f} (n)" for a, b in bands))
    unfiltered = FilterConfig(size_filter=False, histogram_rule=None)
    for label, h in (("optimized", d), ("shipped", toy.toy_direction())):
        for shift in ((1.0, 2.0, 3.0, 5.0) if label == "optimized" else (5.0,)):
            x, xs = gan.generate_pair(z, h, shift)
            masks = process_batch(x, xs, unfiltered).masks.astype(bool)
            iou = per_image_iou(masks, truth)
            cells = []
            for a, b in bands:
                sel = (dist >= a) & (dist < b)
                cells.append(f"{iou[sel].mean():.3f} ({sel.sum()})" if sel.any() else "- (0)")
            print(f"{label:<10} {shift:>5g} {iou.mean():6.3f} {masks.mean():6.3f}  " + "  ".join(f"{c:>14}" for c in cells))
    print(f"true objects' foreground: {truth.mean():.3f}")


if __name__ == "__main__":
    main()
