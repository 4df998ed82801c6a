"""How long must `find-direction discover` run on the toy GAN before `rank` finds a segmenting direction?

Trains Voynov & Babenko's directions on `--gan toy` (finder.discover, the code behind
`find-direction discover`), stopping at each of `--steps` (one run, resumed from its checkpoint
at each stop), and after each stop prints one row:

- time: wall seconds of training so far (this machine, all cores);
- accuracy: the reconstructor's direction accuracy over the last 100 steps;
- |cos| saliency: the largest |cos| between a learned direction and the toy's saliency light
  (the shipped segmenting direction, which discovery knows nothing of), and that direction's
  position in `rank`'s order (with `--rank`);
- the IoU with the toy's true object masks of the masks that rank's top three give, each
  oriented as `rank` orients its winner
  (lighting rule + connected components, shift 5, `--iou-samples` prior latents): a direction
  "segments" when this mean IoU is >= 0.9, the bar of the issue's rank criterion;
- geo leak: the weight of the best-aligned direction on the toy's geometric coordinates (centre,
  size, aspect, rotation, roundness, wobble): at shift 5 even 0.1 moves the object a few pixels.

The toy's factors are known (gans/toy.py), so the table also gives the best |cos| with a few
other factors. Ends with one JSON line. Slow on a CPU (about 0.16 s per step on 2 cores, and
about 100 s per ranking of 120 directions x 2 signs); a GPU is the place for long runs.

    python benchmarks/discover_toy.py --steps 500,1000,2000 --rank             # K = 120
    python benchmarks/discover_toy.py --out RUN --steps 16000 --picture p.png  # picture of a finished run
    python benchmarks/discover_toy.py --leak-table                             # IoU of hand-made directions
    python benchmarks/discover_toy.py --quick                                  # smoke run (make bench)
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

import click
import numpy as np
from toy_gan import per_image_iou  # per-image IoU of boolean masks (benchmarks/ is on sys.path when run as a script)

FACTORS_SHOWN = ("saliency_light", "light", "size", "center_y", "object_color", "background_color")
# coordinates of u = z @ Q that move or reshape the object: a direction's weight on these, times
# the shift, is what spoils its masks (the light alone leaves the object where it is)
GEOMETRIC = ("center_x", "center_y", "size", "aspect", "rotation", "roundness", "wobble")


def _coords(name: str) -> tuple[int, ...]:
    """The coordinates of u = z @ Q that a toy factor owns (TOY_FACTORS holds an int or a tuple)."""
    from gans import toy

    idx = toy.TOY_FACTORS[name]
    return idx if isinstance(idx, tuple) else (idx,)


def geometric_leak(h: np.ndarray) -> float:
    """Norm of the unit direction h's components on the toy's geometric coordinates."""
    from gans import toy

    u = np.asarray(h, np.float64) @ toy._params()["q"].astype(np.float64)
    idx = [i for f in GEOMETRIC for i in _coords(f)]
    return float(np.linalg.norm(u[idx]) / np.linalg.norm(u))


def factor_alignment(dirs: np.ndarray) -> dict[str, float]:
    """Best |cos| of any learned direction with each toy factor (multi-coordinate factors: any
    of their coordinates)."""
    from gans import toy

    c = np.abs(dirs @ toy._params()["q"])
    out = {}
    for name in toy.TOY_FACTORS:
        out[name] = float(max(c[:, i].max() for i in _coords(name)))
    return out


def lighting_masks(gan, z: np.ndarray, x: np.ndarray, h: np.ndarray, shift: float = 5.0):
    """G(z + shift h) and the lighting-rule masks (gray brightens, large components) of x = G(z)."""
    from masking.rules import keep_large_components, lighting_mask

    xs = gan.generate(z + shift * h[None])
    return xs, keep_large_components(lighting_mask(x, xs)).astype(bool)


def mask_iou(gan, z: np.ndarray, x: np.ndarray, truth: np.ndarray, h: np.ndarray, shift: float = 5.0) -> float:
    """Mean IoU with `truth` of the lighting-rule masks of x = G(z) and G(z + shift h)."""
    return float(per_image_iou(lighting_masks(gan, z, x, h, shift)[1], truth).mean())


def print_leak_table(gan, z: np.ndarray, x: np.ndarray, truth: np.ndarray, seed: int = 5) -> None:
    """How much leak the IoU bar allows: directions c * light + sqrt(1 - c^2) * (a random unit
    vector orthogonal to it), three per c; prints each one's geometric leak and mask IoU."""
    from gans import toy

    light = toy.toy_direction().astype(np.float64)
    rng = np.random.default_rng(seed)
    print(f"{'|cos|':>6}  (geometric leak, mask IoU) of three hand-made directions")
    for c in (0.97, 0.98, 0.99, 0.995):
        cells = []
        for _ in range(3):
            r = rng.standard_normal(light.shape)
            r -= (r @ light) * light
            h = (c * light + np.sqrt(1 - c * c) * r / np.linalg.norm(r)).astype(np.float32)
            cells.append(f"({geometric_leak(h):.3f}, {mask_iou(gan, z, x, truth, h):.3f})")
        print(f"{c:>6}  " + "  ".join(cells), flush=True)


def write_picture(path: str, gan, z: np.ndarray, x: np.ndarray, truth: np.ndarray, h: np.ndarray) -> None:
    """Rows = samples; columns: G(z), G(z + 5h) and its mask for the discovered direction h, the
    same for the toy's shipped direction, and the true object mask."""
    from finder import rank as ds
    from gans import toy

    def tile(img):
        return ds.unit_to_uint8(ds.to_unit_range(img))

    xs_d, m_d = lighting_masks(gan, z, x, h)
    xs_s, m_s = lighting_masks(gan, z, x, toy.toy_direction())
    rows = [[tile(x[i]), tile(xs_d[i]), ds.unit_to_uint8(m_d[i]), tile(xs_s[i]), ds.unit_to_uint8(m_s[i]),
             ds.unit_to_uint8(truth[i])] for i in range(len(z))]
    ds.write_png(path, ds.image_grid(rows))


@click.command()
@click.option("--steps", default="500,1000,2000", show_default=True,
              help="Comma-separated step counts at which to stop and measure (one run, resumed).")
@click.option("--directions", default=120, show_default=True, type=int, help="K (120 = the latent size).")
@click.option("--lr", default=1e-4, show_default=True, type=float, help="Adam lr of the reconstructor.")
@click.option("--lr-directions", default=1e-3, show_default=True, type=float, help="Adam lr of the directions.")
@click.option("--lr-directions-milestones", "milestones", default="",
              help="Steps (comma-separated) at which the directions' lr is multiplied by 0.1.")
@click.option("--init", type=click.Choice(["identity", "random"]), default="identity", show_default=True,
              help="Start of the directions (identity: the runs in the README's table).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--rank/--no-rank", default=True, show_default=True, help="Rank the directions at every stop.")
@click.option("--iou-samples", default=200, show_default=True, type=int)
@click.option("--out", type=click.Path(), default=None, help="Keep the run here (default: a temp folder).")
@click.option("--picture", type=click.Path(dir_okay=False), default=None,
              help="PNG of rank's first direction at the last stop against the shipped one (6 samples).")
@click.option("--leak-table", is_flag=True,
              help="Only print the mask IoU of hand-made directions with a known leak (no training).")
@click.option("--quick", is_flag=True, help="Smoke run for `make bench`: --steps 10,20 --directions 8 --iou-samples 20.")
def main(steps: str, directions: int, lr: float, lr_directions: float, milestones: str, init: str, seed: int,
         rank: bool, iou_samples: int, out: str | None, picture: str | None, leak_table: bool, quick: bool) -> None:
    from finder import rank as ds
    from gans import toy
    from finder.discover import DiscoverConfig, discover
    from generator.inputs import cached_gan

    if quick:
        steps, directions, iou_samples = "10,20", 8, 20
    stops = sorted({int(s) for s in steps.split(",") if s.strip()})
    if not stops or stops[0] < 1:
        raise click.BadParameter("give positive step counts, e.g. 500,1000", param_hint="--steps")
    gan = cached_gan("toy")
    q = toy._params()["q"]
    z = ds.draw_latents(iou_samples, gan.latent_dim, seed=99)
    truth = toy.toy_true_mask(z)
    x = gan.generate(z)
    if leak_table:
        print_leak_table(gan, z, x, truth)
        return
    run_dir = out or tempfile.mkdtemp(prefix="bgw-discover-toy-")
    rows, t_train = [], 0.0
    print(f"{'steps':>6} {'time s':>7} {'acc':>5} {'|cos| sal':>9} {'geo leak':>8} {'its rank':>8}  top-3 mask IoU   "
          + " ".join(f"{f[:10]:>10}" for f in FACTORS_SHOWN[1:]))
    for stop in stops:
        cfg = DiscoverConfig(directions=directions, steps=stop, lr=lr, lr_directions=lr_directions, seed=seed, init=init,
                             lr_directions_milestones=tuple(int(m) for m in milestones.split(",") if m.strip()),
                             checkpoint_every=10**9, picture_samples=1)
        accs: list[float] = []
        t = time.perf_counter()
        discover(gan, run_dir, cfg, resume=os.path.exists(os.path.join(run_dir, "config.json")),
                 progress=lambda s, m: accs.append(m["accuracy"]))
        t_train += time.perf_counter() - t
        dirs = ds.unit_rows(np.load(os.path.join(run_dir, "directions.npy")))
        align = factor_alignment(dirs)
        sal = dirs @ q[:, toy.TOY_FACTORS["saliency_light"]]
        best = int(np.argmax(np.abs(sal)))
        row = {"steps": stop, "train_s": round(t_train, 1),
               "accuracy": float(np.mean(accs[-100:])) if accs else None,
               "saliency_cos": float(abs(sal[best])), "geometric_leak": geometric_leak(dirs[best]),
               "alignment": align}
        if rank:
            with tempfile.TemporaryDirectory() as rank_dir:
                t = time.perf_counter()
                report = ds.rank_directions(gan, dirs, rank_dir, ds.FitConfig())
                row["rank_s"] = round(time.perf_counter() - t, 1)
            n = len(dirs)
            order = report["order"]
            entry = best if sal[best] > 0 else best + n  # the sign that lights the object
            row["saliency_rank"] = order.index(entry) + 1 if entry in order else None
            row["top3"] = []
            for e in order[:3]:  # each oriented as `rank` orients its winner
                h, o_sign, _ = ds.orient(gan, z, (1 if e < n else -1) * dirs[e % n], 5.0)
                if not row["top3"]:
                    shown = h  # the picture shows rank's first direction
                row["top3"].append({"candidate": e % n, "sign": (1 if e < n else -1) * o_sign,
                                    "iou": mask_iou(gan, z, x, truth, h)})
        else:
            shown = np.sign(sal[best]) * dirs[best]
        rows.append(row)
        top = " ".join(f"{r['iou']:.2f}" for r in row.get("top3", [])) or "-"
        acc = "-" if row["accuracy"] is None else f"{row['accuracy']:.2f}"  # None: the stop trained no step
        print(f"{stop:>6} {t_train:>7.0f} {acc:>5} {row['saliency_cos']:>9.2f} {row['geometric_leak']:>8.2f} "
              f"{str(row.get('saliency_rank', '-')):>8}  {top:<15} "
              + " ".join(f"{align[f]:>10.2f}" for f in FACTORS_SHOWN[1:]), flush=True)
    if picture:
        write_picture(picture, gan, z[:6], x[:6], truth[:6], shown)
        print(f"wrote {picture}: G(z), G(z + 5h), mask for rank's first direction, the same for the shipped one, truth")
    segmenting = any(t["iou"] >= 0.9 for t in rows[-1].get("top3", []))
    print(f"last stop: a segmenting direction (mask IoU >= 0.9) among rank's top three: "
          f"{'yes' if segmenting else 'no' if rank else 'not ranked'}")
    print(json.dumps({"bench": "discover_toy", "directions": directions, "lr": lr, "lr_directions": lr_directions,
                      "lr_directions_milestones": milestones, "init": init,
                      "seed": seed, "device": gan.device, "rows": rows}))
    if out is None:
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
