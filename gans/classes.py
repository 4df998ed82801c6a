"""The classes of a class-conditional GAN (BigGAN): which set a run draws from, and how.

The one place these rules live; the generator (`gen-synth --classes`), the finder and the loader's
`Gan.check_classes` all use them. Pure numpy: no TensorFlow.

A class set is written as `all` (every class, the default: GANLatentDiscovery trains BigGAN's
saliency direction on all 1000) or a comma list of class indices and inclusive ranges, e.g.
`239` or `1,5,10-19`. Each sample gets one class drawn uniformly from the set, as
GANLatentDiscovery's `ConditionedBigGAN.mixed_classes` draws `np.random.choice(target_classes)`.
"""
from __future__ import annotations

import re

import numpy as np

from core.errors import UserError

__all__ = ["ClassSpecError", "NotConditionalError", "parse_class_set", "class_set_of", "draw_classes",
           "class_set_record", "DRAW_RULE"]

DRAW_RULE = "uniform over the set, one class per sample"
_INT = re.compile(r"\d+")
_RANGE = re.compile(r"(\d+)\s*-\s*(\d+)")


class ClassSpecError(UserError, ValueError):
    """A class set, or the classes passed to a GAN, break the rules; the message is one line."""


def _valid(num_classes: int) -> str:
    return f"classes are 0-{num_classes - 1}, or 'all'"


def parse_class_set(spec: str | None, num_classes: int) -> np.ndarray:
    """The sorted unique class indices (int64) that `spec` names, out of `num_classes`.

    None or "all" -> every class; otherwise a comma list of integers and inclusive ranges a-b
    ("239", "1,5,10-19"). A class outside [0, num_classes), an empty set or anything unreadable
    raises ClassSpecError naming the bad part and the valid range."""
    num_classes = int(num_classes)
    if num_classes < 1:
        raise ClassSpecError(f"a class set needs a class-conditional model; this one has {num_classes} classes")
    if spec is None or str(spec).strip().lower() == "all":
        return np.arange(num_classes, dtype=np.int64)
    text = str(spec).strip()
    if not text:
        raise ClassSpecError(f"the class set is empty; {_valid(num_classes)}")
    picked: list[np.ndarray] = []
    for part in text.split(","):
        part = part.strip()
        rng = _RANGE.fullmatch(part)
        if _INT.fullmatch(part):
            lo = hi = int(part)
        elif rng:
            lo, hi = int(rng.group(1)), int(rng.group(2))
            if lo > hi:
                raise ClassSpecError(f"class range {part!r} runs backwards (write {hi}-{lo}); {_valid(num_classes)}")
        else:
            raise ClassSpecError(f"cannot read {part!r} in the class set {text!r}: write 'all', or integers and "
                                 f"ranges a-b separated by commas; {_valid(num_classes)}")
        if hi >= num_classes:  # checked before arange, so a huge range costs nothing
            raise ClassSpecError(f"class {part!r} is out of range; {_valid(num_classes)}")
        picked.append(np.arange(lo, hi + 1, dtype=np.int64))
    return np.unique(np.concatenate(picked))


class NotConditionalError(ClassSpecError):
    """A class set given for a model that takes no class: an option it cannot take (exit 2)."""

    exit_code = 2  # core.cli's usage exit code


def class_set_of(spec: str | None, num_classes: int | None, model: str) -> np.ndarray | None:
    """The classes a run on `model` draws from: None for an unconditional model (`num_classes` None),
    which takes no `spec` (NotConditionalError); else `parse_class_set(spec, num_classes)`, all
    classes when `spec` is None. The one rule gen-synth and find-direction check `--classes` by."""
    if not num_classes:
        if spec is not None:
            raise NotConditionalError(f"{model} is not class-conditional (it takes z alone), so a class set "
                                      f"({spec!r}) cannot apply; drop --classes")
        return None
    return parse_class_set(spec, num_classes)


def draw_classes(rng: np.random.Generator, class_set: np.ndarray, n: int) -> np.ndarray:
    """int64 [n]: one class per sample, uniform over `class_set` (the reproducible counterpart of
    GANLatentDiscovery's `np.random.choice(target_classes)`; the same rng state gives the same draw)."""
    class_set = np.asarray(class_set)
    if class_set.ndim != 1 or class_set.size == 0 or not np.issubdtype(class_set.dtype, np.integer):
        raise ClassSpecError(f"a class set is a non-empty 1-D array of class indices, got "
                             f"{class_set.dtype} shape {class_set.shape}")
    return class_set[rng.integers(0, len(class_set), int(n))].astype(np.int64)


def class_set_record(spec: str | None, class_set: np.ndarray | None, num_classes: int) -> dict:
    """How a run chose its classes, for manifests and summaries:
    {"num_classes": C, "set": "all" or the sorted list, "draw": DRAW_RULE}. `class_set` None
    parses `spec`."""
    if class_set is None:
        class_set = parse_class_set(spec, num_classes)
    chosen = sorted(int(c) for c in np.unique(np.asarray(class_set)))
    every = chosen == list(range(int(num_classes)))
    return {"num_classes": int(num_classes), "set": "all" if every else chosen, "draw": DRAW_RULE}
