"""Validation during training: loss, and maxF (beta^2 = 0.3), IoU at 0.5 and accuracy on held-out
samples, computed by scoring.SegmentationMetrics (the ground floor's scoring, which eval-seg scores
with too) under a named evaluation protocol (`paper` by default: the numbers the paper's tables
use; see scoring.protocols). There is no second copy of the metrics here. Optionally a real
benchmark is scored through benchdata's datasets and input sizing, as eval-seg scores it: the model
fed at its training size, as eval-seg feeds a checkpoint by default (the held-out samples are at
that size already).
"""
from __future__ import annotations

import logging

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from benchdata.datasets import get_dataset
from benchdata.io import DatasetError
from benchdata.predictions import iter_model_maps
from core.atomic import atomic_write_bytes
from core.images import DEFAULT_MAX_PIXELS
from core.pictures import labelled_grid
from scoring import SegmentationMetrics
from segmodel.inference import foreground_probability, normalize_images, probability_to_uint8
from shardset.split import open_split


log = logging.getLogger(__name__)

VAL_METRICS = ("max_f", "iou", "accuracy")


def _scores(metrics: SegmentationMetrics) -> dict:
    r = metrics.compute()
    return {**{k: r[k] for k in VAL_METRICS}, "protocol": metrics.protocol.name}


@torch.no_grad()
def predict_proba(model: torch.nn.Module, images_u8: np.ndarray, device: torch.device,
                  autocast, batch: int = 64, channels_last: bool = False) -> tuple[np.ndarray, list]:
    """Foreground probabilities [N, H, W] (float32 numpy) and per-batch logits on the CPU."""
    probs, logits_all = [], []
    for i in range(0, len(images_u8), batch):
        x = normalize_images(torch.from_numpy(images_u8[i:i + batch]).to(device))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            logits = model(x)
        logits = logits.float()
        logits_all.append(logits)
        probs.append(foreground_probability(logits).cpu().numpy())
    return np.concatenate(probs), logits_all


@torch.no_grad()
def validate(model: torch.nn.Module, val: dict, device: torch.device, autocast, batch: int = 64,
             channels_last: bool = False, protocol: str = "paper") -> tuple[dict, np.ndarray]:
    """Loss, IoU, maxF, accuracy on the held-out samples under `protocol`; also the probability
    maps (for the grid)."""
    was_training = model.training
    model.eval()
    try:
        prob, logits = predict_proba(model, val["image"], device, autocast, batch, channels_last)
        masks = torch.from_numpy(val["mask"]).long()
        loss_sum = 0.0
        for j, lg in enumerate(logits):
            y = masks[j * batch:(j + 1) * batch].to(device)
            loss_sum += float(F.cross_entropy(lg, y, reduction="sum"))
        loss = loss_sum / masks.numel()
    finally:
        model.train(was_training)
    metrics = SegmentationMetrics(VAL_METRICS, protocol=protocol)
    for p, gt in zip(probability_to_uint8(prob), val["mask"]):
        metrics.update(p, gt.astype(bool))
    out = _scores(metrics)
    out["loss"] = loss
    out["n"] = int(len(prob))
    return out, prob


def _val_rows(val: dict, prob: np.ndarray, n: int) -> list[list[np.ndarray]]:
    rows = []
    for img, mask, p in zip(val["image"][:n], val["mask"][:n], prob[:n]):
        m = np.repeat((mask.astype(np.uint8) * 255)[..., None], 3, axis=2)
        q = np.repeat(probability_to_uint8(p)[..., None], 3, axis=2)
        rows.append([img, m, q])
    return rows


def grid_image(val: dict, prob: np.ndarray, n: int = 4) -> np.ndarray:
    """uint8 [3, n*H, 3*W] rows of image | mask | prediction (for TensorBoard, whose tag names them)."""
    rows = [np.concatenate(r, axis=1) for r in _val_rows(val, prob, n)]
    return np.concatenate(rows, axis=0).transpose(2, 0, 1).copy()


VAL_COLUMNS = ["image", "mask", "prediction"]


def labelled_val_grid(val: dict, prob: np.ndarray, step: int, n: int = 4) -> np.ndarray:
    """uint8 [H, W, 3] RGB: the rows of grid_image() with the step in a title, the columns named
    and the tiles enlarged so the text reads beside them: val-grid.png is opened without the
    docs (and without TensorBoard's tag) at hand."""
    title = f"step {step}: {min(n, len(prob))} held-out samples"
    return labelled_grid(_val_rows(val, prob, n), [], title=title, columns=VAL_COLUMNS, min_tile=128)


def write_grid_png(path, rgb: np.ndarray) -> None:
    """Write an RGB uint8 [H, W, 3] picture as a PNG, atomically (temp name, then rename)."""
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise RuntimeError(f"could not encode {path}")
    atomic_write_bytes(path, buf.tobytes(), fsync=False)


class _ModelPredictor:
    """`predict_batch` over a live model: one image at a time (short-side inputs differ in aspect)."""

    def __init__(self, model, device, autocast):
        self.model, self.device, self.autocast = model, device, autocast

    @torch.no_grad()
    def __call__(self, images: list[np.ndarray]) -> list[np.ndarray]:
        out = []
        for im in images:
            x = normalize_images(torch.from_numpy(np.ascontiguousarray(im))[None].to(self.device))
            with self.autocast():
                out.append(foreground_probability(self.model(x))[0].cpu().numpy())
        return out


def validate_real(model: torch.nn.Module, dataset: str, root: str | None, device: torch.device,
                  autocast, limit: int = 200, protocol: str = "paper",
                  max_pixels: int = DEFAULT_MAX_PIXELS, input_size: int | None = None) -> dict:
    """maxF / IoU / accuracy on a real benchmark under `protocol`, through the code eval-seg uses:
    benchdata.get_dataset and benchdata.predictions.iter_model_maps (the dataset's sizing: resize
    to `input_size`, the training size, or the dataset's 128 when None; restore), the one
    quantisation, and the evaluation protocol's own binarisation of the mask.
    Images over `max_pixels` pixels, or that do not decode, are skipped and counted (`skipped`);
    `n` counts the images scored; `input_size` is the size the model was fed at."""
    ds = get_dataset(dataset, root=root, max_pixels=max_pixels, shard_sets=open_split)
    items = list(ds.test_items())
    items = items[:limit] if limit else items
    was_training = model.training
    model.eval()
    metrics = SegmentationMetrics(VAL_METRICS, protocol=protocol)
    try:
        for m in iter_model_maps(ds, items, _ModelPredictor(model, device, autocast), window=64,
                                 input_size=input_size):
            if m.gt is not None:
                metrics.update(probability_to_uint8(m.prob), m.gt)
    finally:
        model.train(was_training)
    if metrics.n_images == 0:
        raise DatasetError(f"--eval-dataset {dataset}: none of its {len(items)} test images could be read "
                           f"({len(ds.skipped)} skipped, e.g. {next(iter(ds.skipped.values()), '-')})")
    out = _scores(metrics)
    out["n"] = metrics.n_images
    out["skipped"] = len(ds.skipped)
    out["input_size"] = input_size or ds.sizing.size
    return out
