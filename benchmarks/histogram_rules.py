"""How many natural images each histogram rule keeps: ECSSD photos lit as a segmenting shift lights them.

No real G(z + h) exists here (no BigBiGAN weights), so a stand-in is made from real photos and their
ground truth: the object is lit and the background darkened by the two affine maps of the paper's
appendix B, A1(c) = (1 - t) c + t and A2(c) = (1 - t) c - t, for a strength t. Each image is resized
to 128 x 128 (as G(z) is) and judged by
  - `bimodal` (the reference code's rule, the default),
  - `paper` (the text's rule, end windows averaging the bins they cover),
  - `paper, zero padding` (an earlier, wrong reading of the text, kept here only for comparison).
The table gives the share kept per rule and strength; then one JSON line.

    python benchmarks/histogram_rules.py                      # all ECSSD images, t = 0.3 0.5 0.7
    python benchmarks/histogram_rules.py --quick              # 100 images
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import click
import cv2
import numpy as np

from masking import rules as M

DEFAULT_DATA = Path(os.environ.get("BGW_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def zero_padded_paper_keeps(counts: np.ndarray) -> np.ndarray:
    """The text's rule with zero padding at the ends: an earlier reading, which was wrong (docs/RULES.md,
    "Histogram rules")."""
    s = M._window3(counts)
    start = (s[..., 1:-1] > s[..., :-2]) & (s[..., 1:-1] >= s[..., 2:])
    flat_next = s[..., :-1] == s[..., 1:]
    flat_to_end = np.logical_and.accumulate(flat_next[..., ::-1], axis=-1)[..., ::-1]
    return ~(start & ~flat_to_end[..., 1:]).any(axis=-1)


def lit(image: np.ndarray, mask: np.ndarray, t: float) -> np.ndarray:
    """x' of appendix B: A1 on the object, A2 on the background; image in [-1, 1]."""
    obj = (1 - t) * image + t
    bg = (1 - t) * image - t
    return np.where(mask[..., None], obj, bg).astype(np.float32)


def load(folder: Path, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    ids = sorted(p.stem for p in (folder / "images").glob("*.jpg"))[:limit]
    images, gts = [], []
    for i in ids:
        bgr = cv2.imread(str(folder / "images" / f"{i}.jpg"), cv2.IMREAD_COLOR)
        gt = cv2.imread(str(folder / "masks" / f"{i}.png"), cv2.IMREAD_GRAYSCALE)
        images.append(cv2.resize(bgr[..., ::-1], (128, 128), interpolation=cv2.INTER_AREA))
        gts.append(cv2.resize(gt, (128, 128), interpolation=cv2.INTER_NEAREST) >= 128)
    return np.stack(images).astype(np.float32) / 127.5 - 1.0, np.stack(gts)


@click.command()
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_DATA / "ecssd",
              show_default=True, help="A folder with images/<id>.jpg and masks/<id>.png.")
@click.option("--strengths", default="0.3,0.5,0.7", show_default=True, help="Light strengths t, comma-separated.")
@click.option("--limit", type=int, default=None, help="Use the first N images only.")
@click.option("--quick", is_flag=True, help="100 images.")
def main(data, strengths, limit, quick):
    if not (data / "images").is_dir():
        raise click.ClickException(f"{data} has no images/ folder; pass --data to an ECSSD-like folder")
    images, gts = load(data, 100 if quick and limit is None else limit)
    rules = {
        "bimodal (default)": lambda xs: M.HISTOGRAM_RULES["bimodal"](xs),
        "paper": lambda xs: M.HISTOGRAM_RULES["paper"](xs),
        "paper, zero padding (wrong)": lambda xs: zero_padded_paper_keeps(M.histogram12(M.gray(xs))),
    }
    ts = [float(t) for t in strengths.split(",")]
    kept = {name: {} for name in rules}
    for t in ts:
        xs = lit(images, gts, t)
        for name, rule in rules.items():
            kept[name][t] = float(np.mean(rule(xs)))
    print(f"share of {len(images)} {data.name} photos kept, object lit and background darkened with strength t")
    print(f"{'rule':30s}" + "".join(f"{f't = {t:g}':>10s}" for t in ts))
    for name in rules:
        print(f"{name:30s}" + "".join(f"{kept[name][t]:10.3f}" for t in ts))
    print(json.dumps({"images": len(images), "data": str(data), "kept": {n: {str(t): v for t, v in d.items()}
                                                                         for n, d in kept.items()}}))


if __name__ == "__main__":
    main()
