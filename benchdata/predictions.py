"""A model's probability maps over a dataset's test items under the dataset's inference protocol:
images are read (ahead, in threads), prepared for the model (benchdata.protocols.prepare_image, at
the dataset's size or the model's own), handed to `predict_batch` a window at a time, and each map
is restored to the size the metrics run at (the dataset's, whatever the input size). The trainer's
benchmark validation and eval-seg's checkpoint path share this loop, so their numbers agree; the model
itself stays the caller's (`predict_batch`)."""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, NamedTuple

import numpy as np

from .datasets import Dataset, Item
from .protocols import at_size, eval_gt, eval_shape, prepare_image, restore_map

__all__ = ["ModelMap", "iter_model_maps"]


class ModelMap(NamedTuple):
    """One item's float probability map at the evaluation size, with its ground truth there."""

    item: Item
    prob: np.ndarray  # float32 [H, W] in [0, 1]
    gt: np.ndarray | None  # bool foreground (benchdata.protocols.gt_foreground); None for box-only sets
    gt_map: np.ndarray | None  # the 8-bit mask before binarising (else the bool gt)


def iter_model_maps(dataset: Dataset, items: Iterable[Item],
                    predict_batch: Callable[[list[np.ndarray]], list[np.ndarray]],
                    window: int, workers: int = 1, input_size: int | None = None) -> Iterator[ModelMap]:
    """Maps in `items` order (items whose files are skipped are left out; see Dataset.iter_loaded).

    `predict_batch` turns a list of uint8 RGB model inputs into float probability maps of the same
    sizes; it gets `window` images at a time (fewer at the end). `input_size` feeds the model at
    that size in the dataset's kind of sizing (None: the dataset's own, the paper's 128). The
    evaluation size is the ground truth's (after the dataset's crop for crop sets), or the image's
    for box-only sets."""
    protocol = dataset.protocol
    feed = at_size(protocol, input_size)
    buf: list[tuple[Item, np.ndarray, tuple, tuple[int, int]]] = []

    def flush() -> Iterator[ModelMap]:
        probs = predict_batch([image for _, image, _, _ in buf])
        for (item, _, (gt, gt_map), shape), prob in zip(buf, probs):
            yield ModelMap(item, restore_map(prob, shape), gt, gt_map)
        buf.clear()

    for item, image, raw in dataset.iter_loaded(items, workers=workers):
        gts = eval_gt(raw, protocol)
        shape = gts[0].shape if gts[0] is not None else eval_shape(image.shape, protocol)
        buf.append((item, prepare_image(image, feed), gts, shape))
        if len(buf) >= window:
            yield from flush()
    if buf:
        yield from flush()
