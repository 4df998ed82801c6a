"""A model's probability maps over a dataset's test items under the dataset's sizing: images are
read (ahead, in threads), prepared for the model (Sizing.prepare_image, at the dataset's size or
the model's own), handed to `predict_batch` a window at a time, and each map is restored to the
size the metrics run at (the dataset's, whatever the input size). The trainer's benchmark
validation and eval-seg's checkpoint path share this loop, so their numbers agree; the model
itself stays the caller's (`predict_batch`)."""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, NamedTuple

import numpy as np

from .datasets import Dataset, Item
from .sizing import restore_map

__all__ = ["ModelMap", "iter_model_maps"]


class ModelMap(NamedTuple):
    """One item's float probability map at the evaluation size, with its ground truth there."""

    item: Item
    prob: np.ndarray  # float32 [H, W] in [0, 1]
    gt: np.ndarray | None  # the ground truth at [H, W] as read, not binarised (Sizing.prepare_gt); None: box-only sets


def iter_model_maps(dataset: Dataset, items: Iterable[Item],
                    predict_batch: Callable[[list[np.ndarray]], list[np.ndarray]],
                    window: int, workers: int = 1, input_size: int | None = None) -> Iterator[ModelMap]:
    """Maps in `items` order (items whose files are skipped are left out; see Dataset.iter_loaded).

    `predict_batch` turns a list of uint8 RGB model inputs into float probability maps of the same
    sizes; it gets `window` images at a time (fewer at the end). `input_size` feeds the model at
    that size in the dataset's kind of sizing (None: the dataset's own, the paper's 128). The
    evaluation size is the ground truth's (after the dataset's crop for crop sets), or the image's
    for box-only sets."""
    sizing = dataset.sizing
    feed = sizing.at(input_size)
    buf: list[tuple[Item, np.ndarray, np.ndarray | None, tuple[int, int]]] = []

    def flush() -> Iterator[ModelMap]:
        probs = predict_batch([image for _, image, _, _ in buf])
        for (item, _, gt, shape), prob in zip(buf, probs):
            yield ModelMap(item, restore_map(prob, shape), gt)
        buf.clear()

    for item, image, raw in dataset.iter_loaded(items, workers=workers):
        gt = None if raw is None else sizing.prepare_gt(raw)
        buf.append((item, feed.prepare_image(image), gt, sizing.eval_shape(gt, image.shape)))
        if len(buf) >= window:
            yield from flush()
    if buf:
        yield from flush()
