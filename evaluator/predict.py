"""Probability maps for a dataset's test items, from a checkpoint or from saved files.

Two sources, one output: `iter_predictions` yields `Prediction(item, pred, truth)` with `pred`
uint8 (v = round(255 p)) and `truth` its ground truth (scoring.Truth: the mask as read, not
binarised, since each evaluation protocol binarises it its own way; the boxes; PxAP's ignore
region), all at the size the metrics run at (the dataset's sizing's; see benchdata.sizing).

- `CheckpointSource(path, fg_prob=...)`: a train-unet run folder or .safetensors file, run by
  segmodel.runtime's TorchBackend (loaded with segmodel.checkpoint.load_for_inference, which never
  unpickles; on the GPU when there is one). Images are prepared by the dataset's sizing at `input_size`
  (benchdata.predictions; by default the size the checkpoint was trained at, set by evaluator.cli)
  and go through segmodel.runtime.predict_batch, the model step `segment` runs too, so a
  checkpoint's scores and the maps `segment` saves from it agree. torch is imported lazily, so
  importing this module costs nothing for --pred-dir evaluations.
- `PredDirSource(folder)`: saved maps `<folder>/<id>.png`, 8-bit grayscale, 255 = certain
  foreground (16-bit PNGs are scaled to 8 bits; colour files keep their red channel), read by
  core.images' reader of user files (over `max_pixels` pixels: refused from the header, before
  decoding). A map of another size is resized bilinearly to the ground truth (under crop, a map
  at the original image size first gets the ground truth's centre crop: Sizing.saved_map). A
  missing or unreadable map is a `PredictionError` naming the id.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import cv2
import numpy as np

from benchdata.datasets import Dataset, Item
from benchdata.predictions import iter_model_maps
from core.errors import UserError, first_line
from core.hashing import sha256_file
from core.images import DEFAULT_MAX_PIXELS, Skip, read_user_image
from core.maps import probability_to_uint8
from scoring import Truth, binarize_gt
from segmodel.inference import FG_PROB, foreground_probability
from segmodel.runtime import BackendError, checkpoint_input_size, predict_batch, resolve_device


log = logging.getLogger(__name__)

__all__ = ["PredictionError", "CheckpointSource", "PredDirSource", "Prediction", "iter_predictions", "training_size",
           "figure_rows", "resolve_device", "sha256_file", "FG_PROB", "foreground_probability"]


class PredictionError(UserError):
    """A prediction could not be produced or read; the message is one line with the fix."""


# --------------------------------------------------------------------------- sources


def training_size(path: Path) -> tuple[int, str]:
    """(size, how it is known) a checkpoint was trained at, from its sidecar alone
    (segmodel.runtime.checkpoint_input_size), with its errors as PredictionErrors."""
    try:
        from segmodel.checkpoint import CheckpointError
    except ImportError as e:
        raise PredictionError(f"--ckpt needs torch and safetensors ({e}); pip install 'bgw-seg[eval]'") from e
    try:
        return checkpoint_input_size(path)
    except CheckpointError as e:
        raise PredictionError(first_line(e)) from e



@dataclass
class CheckpointSource:
    """A U-Net checkpoint; `.fingerprint` is the sha256 of its safetensors file."""

    path: Path
    device: str = "auto"
    batch_size: int = 32
    fg_prob: str = "softmax"  # a FG_PROB rule
    input_size: int | None = None  # pixels the model is fed at; None: the dataset's (the paper's 128)
    backend: object = field(default=None, repr=False)  # segmodel.runtime.TorchBackend

    def __post_init__(self) -> None:
        try:
            from segmodel.checkpoint import CheckpointError
            from segmodel.runtime import TorchBackend
        except ImportError as e:
            raise PredictionError(f"--ckpt needs torch and safetensors ({e}); pip install 'bgw-seg[eval]'") from e
        self.path = Path(self.path)
        try:
            self.backend = TorchBackend(self.path, self.device, self.fg_prob)
        except (CheckpointError, BackendError) as e:
            raise PredictionError(first_line(e)) from e
        self.device = self.backend.device

    @property
    def meta(self) -> dict:
        return self.backend.meta

    @property
    def model(self):
        return self.backend.model

    @property
    def weights_path(self) -> Path:
        return self.backend.weights_path

    @property
    def fingerprint(self) -> str:
        return self.backend.fingerprint

    @property
    def label(self) -> str:
        return self.backend.label

    def describe(self) -> dict:
        return self.backend.describe()

    def predict_batch(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """float32 foreground probabilities [h, w] for uint8 RGB model inputs (segmodel.runtime.predict_batch)."""
        return predict_batch(self.backend, images, self.batch_size)


@dataclass
class PredDirSource:
    """Saved 8-bit maps `<folder>/<id>.png` (255 = certain foreground)."""

    folder: Path
    resized: int = 0  # maps of another size than the ground truth (counted, logged once at the end)
    max_pixels: int = DEFAULT_MAX_PIXELS  # maps with more pixels are refused before decoding

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        if not self.folder.is_dir():
            raise PredictionError(f"--pred-dir {self.folder} is not a folder of <id>.png maps")

    @property
    def label(self) -> str:
        return self.folder.name or str(self.folder)

    def describe(self) -> dict:
        return {"kind": "pred-dir", "path": str(self.folder)}

    def read(self, item: Item) -> np.ndarray:
        path = self.folder / f"{item.id}.png"
        data = read_user_image(path, cv2.IMREAD_UNCHANGED, max_pixels=self.max_pixels)
        if isinstance(data, Skip):
            if data.kind == "too_large":
                raise PredictionError(f"prediction for {item.id!r} is refused: {data.reason}")
            what = "missing" if not path.exists() else "not a readable PNG"
            raise PredictionError(f"prediction for {item.id!r} is {what}: expected {path} "
                                  "(8-bit grayscale, 255 = foreground)")
        if data.ndim == 3:  # gray saved as colour: channels are equal; keep red (cv2 is BGR), as read_gt
            data = data[..., 2] if data.shape[2] >= 3 else data[..., 0]
        if data.dtype == np.uint16:
            data = np.rint(data.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
        elif data.dtype != np.uint8:
            raise PredictionError(f"prediction {path} has dtype {data.dtype}; save 8-bit grayscale PNGs")
        return data


# --------------------------------------------------------------------------- iteration


class Prediction(NamedTuple):
    """One scored image at the evaluation size."""

    item: Item
    pred: np.ndarray  # uint8, v = round(255 p)
    truth: Truth  # its ground truth there: the mask as read (None for box-only sets), boxes, ignore


def _truth(dataset: Dataset, item: Item, gt: np.ndarray | None) -> Truth:
    ignore = dataset.load_ignore(item)
    return Truth(gt, item.boxes, None if ignore is None else dataset.sizing.prepare_gt(ignore))


def iter_predictions(dataset: Dataset, items: Iterable[Item], source,
                     window: int | None = None, workers: int = 1) -> Iterator[Prediction]:
    """Predictions in `items` order, each at the size its metric runs at: the ground truth's
    (after the dataset's crop for crop sets), or the image's for box-only sets.

    For a checkpoint, images are read `window` at a time (default 4 batches) so batches of
    equal-shaped inputs can form; for saved maps no image is decoded unless the set has boxes.
    `workers` threads read and decode files ahead of the model (see Dataset.iter_loaded).
    """
    items = list(items)
    sizing = dataset.sizing
    boxes = dataset.task == "boxes"
    if isinstance(source, PredDirSource):
        for item, image, raw in dataset.iter_loaded(items, images=boxes, workers=workers):
            gt = None if raw is None else sizing.prepare_gt(raw)
            raw_shape = image.shape[:2] if raw is None else raw.shape[:2]
            shape = sizing.eval_shape(gt, raw_shape)
            pred, resized = sizing.saved_map(source.read(item), raw_shape, shape)
            if resized:
                source.resized += 1
                log.debug("prediction %s resized to the ground truth's %s", item.id, shape)
            yield Prediction(item, pred, _truth(dataset, item, gt))
        if source.resized:
            log.warning("%d of %d predictions had another size than the ground truth and were resized "
                        "bilinearly", source.resized, len(items))
        return
    for m in iter_model_maps(dataset, items, source.predict_batch, window or 4 * source.batch_size, workers,
                             input_size=source.input_size):
        yield Prediction(m.item, probability_to_uint8(m.prob), _truth(dataset, m.item, m.gt))


def figure_rows(source, dataset: Dataset, items: list[Item]) -> list[tuple[Item, np.ndarray, np.ndarray, np.ndarray]]:
    """(item, image at the evaluation size, gt bool, pred uint8) for a few mask items (the figure)."""
    preds = {p.item.id: p for p in iter_predictions(dataset, items, source)}
    return [(item, dataset.sizing.eval_image(image), binarize_gt(preds[item.id].truth.mask), preds[item.id].pred)
            for item, image, _ in dataset.iter_loaded(items)]
