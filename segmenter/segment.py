"""`segment(SegmentConfig)`: a mask for every input image at its own size, under the input sizing
eval-seg scores with (docs/RULES.md, "Inference protocols").

One image takes the steps of eval-seg's checkpoint path, each by the same function:
Sizing.prepare_image (benchdata.sizing; short: short side to S; crop: centre square at S x S; S is
the model's training size unless --input-size says otherwise, segmodel.runtime.feed_size) ->
segmodel.runtime.predict_batch (normalise, the U-Net or its exported file, the foreground-probability
rule) -> Sizing.full_size_map (bilinear, back to the image's size; crop's map goes back into its
square, 0 outside) -> segmodel.inference.probability_to_uint8. So the masks `--threshold
none` saves score under `eval-seg --pred-dir` as the checkpoint scores under `eval-seg --ckpt`.

The work is a pipeline: `workers` threads read, decode and prepare the images (at most 4 x workers
ahead) and encode and write the outputs; the main thread runs the model on windows of
4 x batch_size images, as eval-seg does. Resumable: an image whose outputs all exist whole is not
read again, and every file is written atomically. `DIR/segment.json` records the settings the masks
were made with; a run that would mix other settings into the folder is refused.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from benchdata.io import DatasetError
from benchdata.sizing import KINDS, Sizing
from core.atomic import atomic_write_text
from core.errors import UserError
from core.images import DEFAULT_MAX_PIXELS, Skip, read_user_image
from segmodel.inference import probability_to_uint8
from segmodel.runtime import NATIVE, Backend, feed_size, open_backend, parse_input_size, predict_batch

from .inputs import Source, check_out_apart_from_inputs, expand_inputs, read_source
from .outputs import OutputPaths, is_complete, largest_box, mask_of, output_paths, write_outputs

log = logging.getLogger(__name__)

__all__ = ["SegmentConfig", "SegmentError", "segment", "sizing_error", "RECORD", "BOXES"]

RECORD = "segment.json"  # the settings the folder's masks were made with
BOXES = "boxes.jsonl"
_BUFFER_PIXELS = 256_000_000  # originals kept for --overlay / --cutout while a window fills: ~768 MB RGB


class SegmentError(UserError):
    """A segment request that cannot run; one line naming the value and the fix."""


def sizing_error(value: str) -> str:
    """The one line for a --protocol that is not a kind of sizing; a name with a size (short128,
    what --protocol took before the size became --input-size) is told its spelling now."""
    try:
        sizing = Sizing.parse(value)
    except DatasetError:
        return f"unknown --protocol {value!r}; choose from {', '.join(KINDS)}"
    return (f"--protocol {value} is now --protocol {sizing.kind} --input-size {sizing.size} (by default, --input-size "
            f"{NATIVE}, the model is fed at its training size)")


@dataclass(frozen=True)
class SegmentConfig:
    """Every setting of a `segment` run; the command's options are its fields (core.cli.config_option)."""

    inputs: tuple[str, ...]  # image files, folders, globs, @list.txt files, http(s) URLs
    out: Path  # the folder of the outputs
    ckpt: Path | None = None  # a train-unet run folder or .safetensors file
    model: Path | None = None  # an exported .onnx file (export-model), run by onnxruntime
    recursive: bool = False  # folders: their subfolders' images too
    threshold: float | None = 0.5  # binary masks at p >= T (v >= 255 T); None: the 8-bit probability
    overlay: bool = False  # <rel>.overlay.jpg: the mask tinted over the image
    cutout: bool = False  # <rel>.cutout.png: RGBA, the mask as alpha
    boxes: bool = False  # boxes.jsonl: the box of each mask's largest component
    protocol: str = "short"  # a kind of sizing (benchdata.sizing.KINDS): short (eval-seg's for photos) or crop
    input_size: int | str = NATIVE  # S, pixels: native (the model's training size) or a number
    batch_size: int = 32  # images per forward pass (eval-seg's default)
    workers: int = 4  # threads decoding inputs and encoding outputs
    device: str = "auto"  # auto (cuda when present), cpu, cuda, cuda:N
    fg_prob: str | None = None  # --ckpt: a segmodel.inference.FG_PROB rule (None: softmax)
    max_image_pixels: int = DEFAULT_MAX_PIXELS  # inputs with more pixels (from the header) are skipped
    overwrite: bool = False  # redo every image, even those whose outputs exist

    def check(self) -> None:
        if self.protocol not in KINDS:
            raise SegmentError(sizing_error(self.protocol))
        parse_input_size(self.input_size)
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise SegmentError(f"--threshold must lie in [0, 1] (or be 'none'), got {self.threshold}")
        for name, value in (("--batch-size", self.batch_size), ("--workers", self.workers),
                            ("--max-image-pixels", self.max_image_pixels)):
            if value < 1:
                raise SegmentError(f"{name} must be >= 1, got {value}")
        if not self.inputs:
            raise SegmentError("no input given; name image files, folders, globs or @list.txt")


@dataclass
class _Job:
    source: Source
    paths: OutputPaths


def _record(cfg: SegmentConfig, backend: Backend, sizing: Sizing) -> dict:
    model = backend.describe()
    return {"tool": "bgw-seg segment", "model": {k: model.get(k) for k in ("kind", "sha256", "fg_prob", "step")},
            "protocol": sizing.name, "input_size": sizing.size, "threshold": cfg.threshold}


def _check_record(out: Path, record: dict, overwrite: bool) -> None:
    """Refuse to resume into a folder whose masks were made with other settings."""
    path = out / RECORD
    if overwrite or not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # not ours to judge: the record is rewritten below
    # the sizing's name carries the input size (short64): another size is another sizing
    for key, what in (("model", "model"), ("protocol", "sizing"), ("threshold", "--threshold")):
        if old.get(key) != record[key]:
            def show(v):
                return v.get("sha256", "?")[:12] if key == "model" and isinstance(v, dict) else \
                    ("none" if v is None else v)
            raise SegmentError(f"--out {out} holds masks made with {what} {show(old.get(key))}, this run's is "
                               f"{show(record[key])}; give another --out, or --overwrite to redo them all")


def _ahead(pool: Executor, fn: Callable, jobs: list, depth: int) -> Iterator:
    """fn(job) for each job, in order, computed in `pool` at most `depth` ahead."""
    pending: deque[Future] = deque()
    for job in jobs:
        pending.append(pool.submit(fn, job))
        if len(pending) >= depth:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


class _Progress:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def segment(cfg: SegmentConfig, progress: Callable[[int, str], object] | None = None,
            backend: Backend | None = None, notify: Callable[[str], object] | None = None) -> dict:
    """Write the outputs of every input image; returns the run's summary (counts, skipped files and
    why, the size the model was fed at and why, seconds spent decoding, in the model and encoding).
    `backend` replaces the --ckpt/--model loading (the benchmark reuses one); `notify` gets the
    line saying at what size the model is fed, before any image is read."""
    cfg.check()
    sources = expand_inputs(cfg.inputs, cfg.recursive)
    out = Path(cfg.out)
    check_out_apart_from_inputs(out, cfg.inputs, sources)
    if backend is None:
        backend = open_backend(cfg.ckpt, cfg.model, device=cfg.device, fg_prob=cfg.fg_prob)
    size, feeding = feed_size(backend.input_size, backend.input_size_from, parse_input_size(cfg.input_size))
    sizing = Sizing(cfg.protocol, size)
    record = _record(cfg, backend, sizing)
    _check_record(out, record, cfg.overwrite)
    jobs = [_Job(s, output_paths(out, s.rel, cfg.overlay, cfg.cutout)) for s in sources]
    todo = [j for j in jobs if cfg.overwrite or not all(is_complete(p) for p in j.paths.all())]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / RECORD, json.dumps(record, indent=2, sort_keys=True) + "\n")
    if notify is not None:
        notify(feeding)

    seconds = {"decode": 0.0, "model": 0.0, "encode": 0.0}
    lock = threading.Lock()
    skipped: dict[str, Skip] = {}
    boxes: dict[str, dict] = {}
    keep_image = cfg.overlay or cfg.cutout
    window = 4 * cfg.batch_size

    def timed(stage: str, t0: float) -> None:
        with lock:
            seconds[stage] += time.perf_counter() - t0

    def load(job: _Job):
        t0 = time.perf_counter()
        image = read_source(job.source, cfg.max_image_pixels)
        if isinstance(image, Skip):
            timed("decode", t0)
            return job, image, None, None
        model_input = sizing.prepare_image(image)
        timed("decode", t0)
        return job, (image if keep_image else None), image.shape[:2], model_input

    def write(job: _Job, image, hw: tuple[int, int], prob: np.ndarray):
        t0 = time.perf_counter()
        mask = mask_of(probability_to_uint8(sizing.full_size_map(prob, hw)), cfg.threshold)
        write_outputs(job.paths, image, mask)
        box = largest_box(mask) if cfg.boxes else None
        timed("encode", t0)
        return job, hw, box

    bar = (progress or (lambda total, desc: _Progress()))(len(todo), "segment")
    t_start = time.perf_counter()
    try:
        with ThreadPoolExecutor(cfg.workers, thread_name_prefix="bgw-segment") as pool:
            writes: deque[Future] = deque()
            buf: list[tuple] = []

            def drain(limit: int) -> None:
                while len(writes) > limit:
                    job, hw, box = writes.popleft().result()
                    if cfg.boxes:
                        boxes[job.source.location] = {"height": hw[0], "width": hw[1], "box": box}
                    bar.update(1)

            def flush() -> None:
                t0 = time.perf_counter()
                probs = predict_batch(backend, [b[3] for b in buf], cfg.batch_size)
                timed("model", t0)
                for (job, image, hw, _), prob in zip(buf, probs):
                    writes.append(pool.submit(write, job, image, hw, prob))
                buf.clear()
                drain(window)

            buffered = 0
            for job, image, hw, model_input in _ahead(pool, load, todo, 4 * cfg.workers):
                if isinstance(image, Skip):
                    log.info("skipped %s", image.reason)  # the summary shows the first few; -v each
                    skipped[job.source.location] = image
                    bar.update(1)
                    continue
                buf.append((job, image, hw, model_input))
                buffered += hw[0] * hw[1] if keep_image else 0
                if len(buf) >= window or buffered >= _BUFFER_PIXELS:
                    flush()
                    buffered = 0
            if buf:
                flush()
            drain(0)
    finally:
        bar.close()
    wall = time.perf_counter() - t_start

    segmented = len(todo) - len(skipped)
    if todo and not segmented:
        example = next(iter(skipped.values())).reason
        raise SegmentError(f"none of the {len(todo)} images could be read ({len(skipped)} skipped, e.g. {example})")
    if cfg.boxes:
        _write_boxes(out, jobs, skipped, boxes, cfg.max_image_pixels)
    kinds: dict[str, int] = {}
    for s in skipped.values():
        kinds[s.kind] = kinds.get(s.kind, 0) + 1
    return {"out": str(out), "images": len(jobs), "segmented": segmented, "already_done": len(jobs) - len(todo),
            "skipped": kinds, "skipped_files": {k: v.reason for k, v in skipped.items()},
            "boxes": str(out / BOXES) if cfg.boxes else None, "model": backend.describe(),
            "protocol": sizing.name, "input_size": size, "feeding": feeding,
            "seconds": {"wall": wall, **seconds}}


def _write_boxes(out: Path, jobs: list[_Job], skipped: dict[str, Skip], boxes: dict[str, dict],
                 max_pixels: int) -> None:
    """boxes.jsonl, one line per image with a mask, in input order; the boxes of images done by an
    earlier run are drawn again from their saved masks."""
    lines = []
    for job in jobs:
        loc = job.source.location
        if loc in skipped:
            continue
        entry = boxes.get(loc)
        if entry is None:
            mask = read_user_image(job.paths.mask, cv2.IMREAD_UNCHANGED, max_pixels=max_pixels)
            if isinstance(mask, Skip):
                log.warning("no box for %s: %s", loc, mask.reason)
                continue
            entry = {"height": mask.shape[0], "width": mask.shape[1], "box": largest_box(mask)}
        rel = job.paths.mask.relative_to(out).as_posix()
        lines.append(json.dumps({"input": loc, "mask": rel, **entry}))
    atomic_write_text(out / BOXES, "".join(line + "\n" for line in lines))
