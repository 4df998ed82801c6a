"""Probability maps for a dataset's test items, from a checkpoint or from saved files.

Two sources, one output: `iter_predictions` yields `Prediction(item, gt, pred, ignore, gt_map)`
with `gt` bool (>= 128), `gt_map` the mask before binarising (each evaluation protocol binarises
it its own way) and `pred` uint8 (v = round(255 p)), all at the size the metrics run at (the
protocol's; see benchdata.protocols).

- `CheckpointSource(path, fg_prob=...)`: a train-unet run folder or .safetensors file, loaded
  with segmodel.checkpoint.load_for_inference (never unpickles). Images are preprocessed per
  protocol and run in batches on the GPU when there is one; segmodel.inference's
  `foreground_probability` turns the logits into the foreground probability by the named rule
  (`FG_PROB`). torch is imported lazily, so importing this module costs nothing for --pred-dir
  evaluations.
- `PredDirSource(folder)`: saved maps `<folder>/<id>.png`, 8-bit grayscale, 255 = certain
  foreground (16-bit PNGs are scaled to 8 bits; colour files keep their red channel), read by
  core.images' reader of user files (over `max_pixels` pixels: refused from the header, before
  decoding). A map of another size is resized bilinearly to the ground truth (under crop128, a
  map at the original image size first gets the ground truth's centre crop). A missing or
  unreadable map is a `PredictionError` naming the id.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import cv2
import numpy as np

from benchdata.datasets import Dataset, Item
from benchdata.predictions import iter_model_maps
from benchdata.protocols import eval_gt, gt_foreground, prepare_gt, prepare_image
from core.errors import UserError, first_line
from core.images import DEFAULT_MAX_PIXELS, Skip, read_user_image
from segmodel.inference import FG_PROB, foreground_probability, probability_to_uint8


log = logging.getLogger(__name__)

__all__ = ["PredictionError", "CheckpointSource", "PredDirSource", "Prediction", "iter_predictions",
           "figure_rows", "resolve_device", "sha256_file", "align_prediction", "FG_PROB", "foreground_probability"]


class PredictionError(UserError):
    """A prediction could not be produced or read; the message is one line with the fix."""


_MAGIC = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
          (b"PK\x03\x04", "a zip archive (a PyTorch .pt/.pth save?)"),
          (b"\x80", "a Python pickle (a PyTorch .pt/.pth save?)"), (b"\x89HDF", "an HDF5 file (Keras weights?)"))


def describe_file(path: Path) -> str:
    """What a file looks like from its first bytes, for messages: 'a PNG image of 1,234 bytes'."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(512)
    kind = next((what for magic, what in _MAGIC if head.startswith(magic)), None)
    if kind is None:
        if not head:
            return "an empty file"
        try:
            head.decode("utf-8")
            kind = "a text file"
        except UnicodeDecodeError:
            kind = "a binary file"
    return f"{kind} of {size:,} bytes"


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def resolve_device(device: str | None) -> str:
    """'auto'/None -> 'cuda' when a GPU is visible, else 'cpu'; anything else is checked."""
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PredictionError(f"device {device!r} asked for, but torch sees no CUDA GPU; use --device cpu")
    try:
        torch.device(device)
    except RuntimeError as e:
        raise PredictionError(f"unknown device {device!r} ({e}); use auto, cpu, cuda or cuda:N") from e
    return device


# --------------------------------------------------------------------------- sources


@dataclass
class CheckpointSource:
    """A U-Net checkpoint; `.fingerprint` is the sha256 of its safetensors file."""

    path: Path
    device: str = "auto"
    batch_size: int = 32
    fg_prob: str = "softmax"  # a FG_PROB rule
    model: object = field(default=None, repr=False)
    meta: dict = field(default_factory=dict, repr=False)
    weights_path: Path | None = None
    fingerprint: str = ""

    def __post_init__(self) -> None:
        try:
            from segmodel.checkpoint import CheckpointError, find_sidecar, load_for_inference
        except ImportError as e:
            raise PredictionError(f"--ckpt needs torch and safetensors ({e}); pip install 'bgw-seg[eval]'") from e
        self.path = Path(self.path)
        if self.fg_prob not in FG_PROB:
            raise PredictionError(f"unknown --fg-prob {self.fg_prob!r}; choose from {', '.join(FG_PROB)}")
        if self.path.is_file() and self.path.suffix not in (".safetensors", ".json"):
            raise PredictionError(f"--ckpt {self.path} is {describe_file(self.path)}, not a train-unet checkpoint; "
                                  "give a run folder or its step-*.safetensors file (with the .json sidecar beside it)")
        try:
            model, meta = load_for_inference(self.path)
            sidecar = find_sidecar(self.path)
        except CheckpointError as e:
            raise PredictionError(first_line(e)) from e
        self.meta = meta
        self.weights_path = sidecar.parent / meta["files"]["weights"]["name"]
        # load_for_inference verified the file against the sidecar's sha256, so it is the file's
        self.fingerprint = meta["files"]["weights"].get("sha256") or sha256_file(self.weights_path)
        self.device = resolve_device(self.device)
        self.model = model.to(self.device).eval()

    @property
    def label(self) -> str:
        """A short name for tables: the run folder's name and the step."""
        run = self.weights_path.parent.parent.name if self.weights_path.parent.name == "checkpoints" else \
            self.weights_path.parent.name
        return f"{run}@{self.meta.get('step', '?')}"

    def describe(self) -> dict:
        return {"kind": "checkpoint", "path": str(self.weights_path), "sha256": self.fingerprint,
                "step": self.meta.get("step"), "model": self.meta.get("model"),
                "shardset": self.meta.get("shardset"), "fg_prob": self.fg_prob}

    def predict_batch(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """float32 foreground probabilities [h, w] for uint8 RGB inputs; equal shapes run as one
        batch (short128 inputs differ in aspect, so they are grouped by shape first)."""
        import torch
        from segmodel.inference import normalize_images

        out: list[np.ndarray | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(im.shape[:2], []).append(i)
        with torch.inference_mode():
            for idx in groups.values():
                for s in range(0, len(idx), self.batch_size):
                    part = idx[s:s + self.batch_size]
                    x = torch.from_numpy(np.stack([images[i] for i in part]))
                    x = normalize_images(x.to(self.device, non_blocking=True))
                    prob = foreground_probability(self.model(x), self.fg_prob).cpu().numpy()
                    for i, p in zip(part, prob):
                        out[i] = p
        return out  # type: ignore[return-value]


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


def align_prediction(pred: np.ndarray, raw_gt_shape: tuple[int, int], eval_shape: tuple[int, int],
                     protocol: str) -> tuple[np.ndarray, bool]:
    """A saved uint8 map at the evaluation size; returns (map, whether it had to be resized).

    Under crop128 a map at the original image size gets the ground truth's crop and resize
    (that is where such a map lives). Any other size mismatch is resized bilinearly.
    """
    if pred.shape == tuple(eval_shape):
        return pred, False
    if protocol == "crop128" and pred.shape == tuple(raw_gt_shape):
        return prepare_gt(pred, protocol), False
    out = cv2.resize(pred, (eval_shape[1], eval_shape[0]), interpolation=cv2.INTER_LINEAR)
    return out, True


# --------------------------------------------------------------------------- iteration


class Prediction(NamedTuple):
    """One scored image at the evaluation size."""

    item: Item
    gt: np.ndarray | None  # bool (>= 128); None for box-only sets (their truth is item.boxes)
    pred: np.ndarray  # uint8, v = round(255 p)
    ignore: np.ndarray | None  # bool pixels PxAP leaves out (OpenImages), or None
    gt_map: np.ndarray | None = None  # 8-bit mask before binarising (else the bool gt)


def _ignore(dataset: Dataset, item: Item) -> np.ndarray | None:
    ign = dataset.load_ignore(item)
    if ign is not None and dataset.protocol == "crop128":
        ign = gt_foreground(prepare_gt(ign, dataset.protocol))
    return ign


def iter_predictions(dataset: Dataset, items: Iterable[Item], source,
                     window: int | None = None, workers: int = 1) -> Iterator[Prediction]:
    """Predictions in `items` order, each at the size its metric runs at: the ground truth's
    (after the protocol's crop for crop128), or the image's for box-only sets.

    For a checkpoint, images are read `window` at a time (default 4 batches) so batches of
    equal-shaped inputs can form; for saved maps no image is decoded unless the set has boxes.
    `workers` threads read and decode files ahead of the model (see Dataset.iter_loaded).
    """
    items = list(items)
    protocol = dataset.protocol
    boxes = dataset.task == "boxes"
    if isinstance(source, PredDirSource):
        for item, image, raw in dataset.iter_loaded(items, images=boxes, workers=workers):
            gt, gt_map = eval_gt(raw, protocol)
            shape = image.shape[:2] if gt is None else gt.shape
            raw_shape = image.shape[:2] if raw is None else raw.shape[:2]
            pred, resized = align_prediction(source.read(item), raw_shape, shape, protocol)
            if resized:
                source.resized += 1
                log.debug("prediction %s resized to the ground truth's %s", item.id, shape)
            yield Prediction(item, gt, pred, _ignore(dataset, item), gt_map)
        if source.resized:
            log.warning("%d of %d predictions had another size than the ground truth and were resized "
                        "bilinearly", source.resized, len(items))
        return
    for m in iter_model_maps(dataset, items, source.predict_batch, window or 4 * source.batch_size, workers):
        yield Prediction(m.item, m.gt, probability_to_uint8(m.prob), _ignore(dataset, m.item), m.gt_map)


def figure_rows(source, dataset: Dataset, items: list[Item]) -> list[tuple[Item, np.ndarray, np.ndarray, np.ndarray]]:
    """(item, image at the evaluation size, gt bool, pred uint8) for a few mask items (the figure)."""
    preds = {p.item.id: p for p in iter_predictions(dataset, items, source)}
    rows = []
    for item, image, _ in dataset.iter_loaded(items):
        p = preds[item.id]
        if dataset.protocol == "crop128":
            image = prepare_image(image, "crop128")
        rows.append((item, image, p.gt, p.pred))
    return rows
