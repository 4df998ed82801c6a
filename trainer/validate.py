"""Validation during training: loss, IoU at 0.5 and maxF (beta^2 = 0.3) on held-out samples.

Metrics follow DESIGN.md on 8-bit maps v = round(255 * prob): maxF thresholds are v > k for
k = 0..254 with per-image F averaged over images before the max; IoU uses v >= 128 per image,
averaged, 1 when prediction and ground truth are both empty. `evaluator.metrics` (MaxFMeasure,
IoU) is used when it is installed; the small numpy versions here are the fallback and the
cross-check. Optionally a real benchmark is scored through `evaluator.datasets`.
"""
from __future__ import annotations

import logging

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from shardset.atomic import atomic_write_bytes

from .unet import foreground_proba, normalize_images

log = logging.getLogger(__name__)

BETA2 = 0.3


def to_u8(prob: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] -> 8-bit maps (round half to even, as np.rint)."""
    return np.rint(np.clip(prob, 0.0, 1.0) * 255.0).astype(np.uint8)


def f_curve(v: np.ndarray, gt: np.ndarray, beta2: float = BETA2) -> np.ndarray:
    """F at thresholds v > k, k = 0..254 (ascending k), for one uint8 map and bool ground truth."""
    gt = gt.astype(bool)
    n_fg = int(gt.sum())
    n_bg = gt.size - n_fg
    hist_fg = np.bincount(v[gt].ravel(), minlength=256)
    hist_bg = np.bincount(v[~gt].ravel(), minlength=256)
    tp = (n_fg - np.cumsum(hist_fg)[:255]).astype(np.float64)  # pixels with v > k inside gt
    fp = (n_bg - np.cumsum(hist_bg)[:255]).astype(np.float64)
    pred = tp + fp
    precision = np.divide(tp, pred, out=np.ones_like(tp), where=pred > 0)  # empty prediction: P = 1
    recall = tp / n_fg if n_fg else np.ones_like(tp)  # empty ground truth: R = 1
    denom = beta2 * precision + recall
    return np.divide((1 + beta2) * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)


def iou_at_half(v: np.ndarray, gt: np.ndarray) -> float:
    pred = v >= 128
    gt = gt.astype(bool)
    union = int((pred | gt).sum())
    return 1.0 if union == 0 else float((pred & gt).sum()) / union


class LocalMetrics:
    """Streaming maxF / IoU / accuracy with the evaluator's interface (update / compute)."""

    def __init__(self, beta2: float = BETA2):
        self.beta2 = beta2
        self.f_sum = np.zeros(255)
        self.iou_sum = 0.0
        self.acc_sum = 0.0
        self.n = 0

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        if pred.dtype != np.uint8 or pred.shape != gt.shape:
            raise ValueError(f"pred must be uint8 of gt's shape {gt.shape}, got {pred.dtype} {pred.shape}")
        self.f_sum += f_curve(pred, gt, self.beta2)
        self.iou_sum += iou_at_half(pred, gt)
        self.acc_sum += float(((pred >= 128) == gt.astype(bool)).mean())
        self.n += 1

    def compute(self) -> dict:
        n = max(self.n, 1)
        return {"max_f": float((self.f_sum / n).max()), "iou": self.iou_sum / n, "accuracy": self.acc_sum / n}


def _evaluator_metrics():
    """(MaxFMeasure(), IoU()) from evaluator.metrics, or None when it is not available."""
    try:
        from evaluator.metrics import IoU, MaxFMeasure
        return MaxFMeasure(), IoU()
    except Exception as e:  # not landed or another interface: fall back, say so once
        log.debug("evaluator.metrics unavailable (%s); using trainer.validate.LocalMetrics", e)
        return None


def _pick(result, *names):
    if isinstance(result, dict):
        for name in names:
            if name in result:
                return float(result[name])
        return None
    try:
        return float(result)
    except (TypeError, ValueError):
        return None


class Scorer:
    """Streams maps into evaluator.metrics when present (else LocalMetrics); compute() -> dict."""

    def __init__(self):
        self.local = LocalMetrics()
        self.external = _evaluator_metrics()

    def update(self, v: np.ndarray, gt: np.ndarray) -> None:
        gt = gt.astype(bool)
        self.local.update(v, gt)
        if self.external is not None:
            for m in self.external:
                m.update(v, gt)

    def compute(self) -> dict:
        out = self.local.compute()
        if self.external is not None:
            try:
                f = _pick(self.external[0].compute(), "max_f", "maxf", "maxF", "max_fbeta")
                i = _pick(self.external[1].compute(), "iou", "IoU", "miou")
            except Exception as e:
                log.warning("evaluator.metrics failed (%s); reporting trainer.validate's numbers", e)
                f = i = None
            if f is not None:
                out["max_f"] = f
            if i is not None:
                out["iou"] = i
            out["source"] = "evaluator.metrics" if (f is not None and i is not None) else "local"
        else:
            out["source"] = "local"
        return out


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
        probs.append(foreground_proba(logits).cpu().numpy())
    return np.concatenate(probs), logits_all


@torch.no_grad()
def validate(model: torch.nn.Module, val: dict, device: torch.device, autocast, batch: int = 64,
             channels_last: bool = False) -> tuple[dict, np.ndarray]:
    """Loss, IoU, maxF, accuracy on the held-out samples; also the probability maps (for the grid)."""
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
    scorer = Scorer()
    for p, gt in zip(to_u8(prob), val["mask"]):
        scorer.update(p, gt.astype(bool))
    out = scorer.compute()
    out["loss"] = loss
    out["n"] = int(len(prob))
    return out, prob


def grid_image(val: dict, prob: np.ndarray, n: int = 4) -> np.ndarray:
    """uint8 [3, n*H, 3*W] rows of image | mask | prediction (for TensorBoard)."""
    rows = []
    for img, mask, p in zip(val["image"][:n], val["mask"][:n], prob[:n]):
        m = np.repeat((mask.astype(np.uint8) * 255)[..., None], 3, axis=2)
        q = np.repeat(to_u8(p)[..., None], 3, axis=2)
        rows.append(np.concatenate([img, m, q], axis=1))
    return np.concatenate(rows, axis=0).transpose(2, 0, 1).copy()


def write_grid_png(path, grid: np.ndarray) -> None:
    """Write a grid_image() result ([3, H, W] RGB) as a PNG, atomically (temp name, then rename)."""
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(grid.transpose(1, 2, 0)[..., ::-1]))
    if not ok:
        raise RuntimeError(f"could not encode {path}")
    atomic_write_bytes(path, buf.tobytes(), fsync=False)


class _ModelSource:
    """The evaluator's prediction-source interface (batch_size, predict_batch) over a live model."""

    def __init__(self, model, device, autocast, batch_size: int = 16):
        self.model, self.device, self.autocast, self.batch_size = model, device, autocast, batch_size

    @torch.no_grad()
    def predict_batch(self, images: list[np.ndarray]) -> list[np.ndarray]:
        out = []
        for im in images:  # short-side-128 inputs differ in aspect: one at a time
            x = normalize_images(torch.from_numpy(np.ascontiguousarray(im))[None].to(self.device))
            with self.autocast():
                out.append(foreground_proba(self.model(x))[0].cpu().numpy())
        return out


def validate_real(model: torch.nn.Module, dataset: str, root: str | None, device: torch.device,
                  autocast, limit: int = 200) -> dict | None:
    """maxF / IoU / accuracy on a real benchmark through the evaluator's own protocol code
    (evaluator.datasets.get_dataset + evaluator.predict.iter_predictions: resize, restore, binarise).

    Returns None, with a logged note, when the evaluator is not installed or lacks these.
    """
    try:
        from evaluator.datasets import get_dataset
        from evaluator.predict import iter_predictions
    except Exception as e:
        log.warning("--eval-dataset %s skipped: the evaluator lacks get_dataset/iter_predictions (%s)", dataset, e)
        return None
    ds = get_dataset(dataset, root=root)
    items = list(ds.test_items())
    items = items[:limit] if limit else items
    was_training = model.training
    model.eval()
    scorer = Scorer()
    try:
        for pred in iter_predictions(ds, items, _ModelSource(model, device, autocast)):
            if pred.gt is not None:
                scorer.update(pred.pred, pred.gt)
    finally:
        model.train(was_training)
    out = scorer.compute()
    out["n"] = len(items)
    return out
