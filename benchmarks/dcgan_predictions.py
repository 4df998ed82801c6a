"""What a U-Net trained on DCGAN-faces shards predicts: on held-out GAN samples and on photos.

One picture, two blocks of rows. Held-out samples (the set's validation shards, never trained on):
image | the shard's mask | prediction. Photos: image | prediction | the ground truth when a mask
folder beside the images has one. Predictions run through segmodel.runtime, the inference path
of eval-seg and segment, under the short128 protocol, thresholded at 0.5 as the IoU is. It also
prints the IoU of the predictions against the shard masks and, for photos, against the ground truth.

    python benchmarks/dcgan_predictions.py --ckpt runs/dcgan-unet --shards runs/dcgan-shards/faces.json \
        --photos ../shared/data/ecssd --ids 0031,0035 --out docs/img/dcgan-predictions.png
"""
from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import click
import cv2
import numpy as np

TILE = 96


def _tile(a: np.ndarray) -> np.ndarray:
    """uint8 RGB or a [0, 1] / bool map, as a TILE x TILE RGB tile (the aspect is not kept)."""
    if a.ndim == 2:
        a = np.repeat((np.asarray(a, np.float32) * 255).round().clip(0, 255).astype(np.uint8)[..., None], 3, axis=2)
    return cv2.resize(a, (TILE, TILE), interpolation=cv2.INTER_AREA)


def _iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """scoring's IoU of one binary prediction against its ground truth (both bool)."""
    from scoring.metrics import IoU

    metric = IoU()
    metric.update(np.where(pred, 255, 0).astype(np.uint8), gt)
    return metric.compute()["iou"]


def _short_side(im: np.ndarray, side: int) -> np.ndarray:
    h, w = im.shape[:2]
    s = side / min(h, w)
    return cv2.resize(im, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


def _predict(backend, images: list[np.ndarray], side: int | None = None) -> list[np.ndarray]:
    """Foreground probabilities at each image's size: eval-seg's short128 protocol, or (side) the
    short side resized to `side`, e.g. the resolution the U-Net was trained at."""
    from benchdata.sizing import SHORT128, restore_map
    from segmodel.runtime import predict_batch

    inputs = [SHORT128.prepare_image(im) if side is None else _short_side(im, side) for im in images]
    probs = predict_batch(backend, inputs, batch_size=16)
    return [restore_map(p, im.shape[:2]) for p, im in zip(probs, images)]


def _centre_ellipse(shape: tuple[int, ...], f: float) -> np.ndarray:
    h, w = shape[:2]
    yy, xx = np.mgrid[:h, :w]
    return ((yy - h / 2) / (f * h / 2)) ** 2 + ((xx - w / 2) / (f * w / 2)) ** 2 <= 1


@click.command()
@click.option("--ckpt", required=True, type=click.Path(exists=True), help="train-unet run folder.")
@click.option("--shards", required=True, help="The shard set the run trained on (its val shards are used).")
@click.option("--photos", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="A folder with images/ (and masks/ or ground_truth_mask/).")
@click.option("--ids", default="", help="Comma-separated photo ids (file stems) to show.")
@click.option("--n-samples", default=12, show_default=True, help="Held-out GAN samples to show.")
@click.option("--n-score", default=500, show_default=True, help="Held-out samples the IoU is computed on.")
@click.option("--per-row", default=4, show_default=True, help="Triplets per row of the picture.")
@click.option("--side", type=int, default=None,
              help="Predict with the short side resized to this (e.g. the training size) instead of short128.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
def main(ckpt, shards, photos, ids, n_samples, n_score, per_row, side, out):
    from shardset.reader import iter_samples
    from shardset.urls import resolve
    from segmodel.runtime import open_backend

    backend = open_backend(ckpt=ckpt, device="cpu")
    ref = resolve(shards)
    samples = list(islice((s for url in ref.split_urls("val") for s in iter_samples(url)), n_score))
    images = [s["image"] for s in samples]
    masks = [s["mask"].astype(bool) for s in samples]
    preds = _predict(backend, images, side)
    ious = [_iou(p >= 0.5, m) for p, m in zip(preds, masks)]
    report = {"held_out": {"n": len(samples), "mean_iou": float(np.mean(ious)),
                           "mean_fg_mask": float(np.mean([m.mean() for m in masks])),
                           "mean_fg_pred": float(np.mean([(p >= 0.5).mean() for p in preds]))}}
    shown = [[_tile(images[i]), _tile(masks[i]), _tile(preds[i] >= 0.5)] for i in range(min(n_samples, len(samples)))]
    triplets = [shown]
    if photos is not None and ids:
        from benchdata.io import read_gt, read_image
        from scoring import binarize_gt

        mask_dir = next((photos / d for d in ("masks", "ground_truth_mask") if (photos / d).is_dir()), None)
        pics, gts = [], []
        for i in ids.split(","):
            path = next((photos / "images").glob(f"{i}.*"))
            pics.append(read_image(path))
            gt_path = mask_dir / f"{i}.png" if mask_dir else None
            gts.append(binarize_gt(read_gt(gt_path)) if gt_path and gt_path.exists() else None)
        photo_preds = _predict(backend, pics, side)
        report["photos"] = {i: {"iou": None if g is None else _iou(p >= 0.5, g), "fg_pred": float((p >= 0.5).mean())}
                            for i, p, g in zip(ids.split(","), photo_preds, gts)}
        scored = [v["iou"] for v in report["photos"].values() if v["iou"] is not None]
        report["photos_mean_iou"] = float(np.mean(scored)) if scored else None
        # a prior with no model at all: a centred ellipse spanning `f` of the width and height
        report["photos_centre_ellipse_iou"] = {
            f: float(np.mean([_iou(_centre_ellipse(g.shape, f), g) for g in gts if g is not None]))
            for f in (0.5, 0.6, 0.7)} if scored else None
        triplets.append([[_tile(im), _tile(p >= 0.5), _tile(g) if g is not None else _tile(np.zeros(im.shape[:2]))]
                         for im, p, g in zip(pics, photo_preds, gts)])
    from benchdata.sizing import SHORT128
    from finder.rank import image_grid
    from generator.preview import label_band

    how = SHORT128.name if side is None else f"short side {side}"
    titles = [f"held-out GAN samples (val shards): image | shard mask | prediction ({how}, p >= 0.5)",
              f"photos: image | prediction ({how}, p >= 0.5) | ground truth"]

    blocks = []
    for title, block in zip(titles, triplets):
        sheet = image_grid([sum(block[k:k + per_row], []) for k in range(0, len(block), per_row)])
        blocks += [label_band(sheet.shape[1], title), sheet]
    width = max(b.shape[1] for b in blocks)
    blocks = [np.pad(b, ((0, 0), (0, width - b.shape[1]), (0, 0)), constant_values=255) for b in blocks]
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), np.concatenate(blocks, axis=0)[..., ::-1])
    click.echo(f"held-out GAN samples: n={report['held_out']['n']} IoU {report['held_out']['mean_iou']:.3f} "
               f"(mask fg {report['held_out']['mean_fg_mask']:.3f}, predicted fg {report['held_out']['mean_fg_pred']:.3f})")
    if "photos" in report:
        for k, v in report["photos"].items():
            click.echo(f"photo {k}: IoU {v['iou'] if v['iou'] is None else round(v['iou'], 3)} predicted fg {v['fg_pred']:.3f}")
        click.echo(f"photos: mean IoU {report['photos_mean_iou']}; a centred ellipse (no model) spanning "
                   + ", ".join(f"{f:.0%}: {v:.3f}" for f, v in (report["photos_centre_ellipse_iou"] or {}).items()))
    click.echo(f"picture: {out}")
    click.echo(json.dumps(report))


if __name__ == "__main__":
    main()
