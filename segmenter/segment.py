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
ahead), `workers` more encode and write the outputs; the main thread runs the model on windows of
4 x batch_size images, as eval-seg does.

Memory is bounded across images, not only per image: an image is admitted to the pipeline (in
input order) once its header gives its pixel count and before it is decoded, and only while the
pixels in flight (admitted, not yet written; a file's bytes count a quarter pixel each) stay
within PIXEL_BUDGET_FACTOR x --max-image-pixels (2 x 64 MP = 128 M pixels by default; one image
alone is always admitted). When the next image waits for room, the model runs on the window
gathered so far, which frees its images. An image in flight holds about 25 bytes a pixel at its
peak with --overlay and --cutout (the RGB image, the full-size probability map, the mask, the
encoded files; the overlay's float arithmetic runs on 1 MP bands), so the run's images take at most
about 3.2 GB at the defaults (12 bytes a pixel, 1.5 GB, without them), besides the model and the
prepared inputs of the window (3 x S x S' bytes each); `--max-image-pixels` scales it.

Resumable: an image is done when the journal (segmenter.outputs.DONE) says its files were made from
this input (path, size and mtime, or URL) with this model and these settings and the files still
hold those bytes; an output name an earlier run used for another input is refused before anything
is written (give another --out, or --overwrite). Every file is written atomically.
`DIR/segment.json` records the settings the masks were made with; a run that would mix other
settings into the folder is refused.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
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
from core.registry import did_you_mean
from segmodel.inference import probability_to_uint8
from segmodel.runtime import NATIVE, Backend, feed_size, open_backend, parse_input_size, predict_batch

from .inputs import DOWNLOAD_DEADLINE_S, Source, check_out_apart_from_inputs, expand_inputs, read_source
from .outputs import DONE, Journal, OutputPaths, file_sha256, largest_box, mask_of, output_paths, write_outputs

log = logging.getLogger(__name__)

__all__ = ["SegmentConfig", "SegmentError", "segment", "sizing_error", "RECORD", "BOXES", "PIXEL_BUDGET_FACTOR"]

RECORD = "segment.json"  # the settings the folder's masks were made with
BOXES = "boxes.jsonl"
PIXEL_BUDGET_FACTOR = 2  # pixels in flight across images: this many times --max-image-pixels


class SegmentError(UserError):
    """A segment request that cannot run; one line naming the value and the fix."""


def sizing_error(value: str) -> str:
    """The one line for a --protocol that is not a kind of sizing; a name with a size (short128,
    what --protocol took before the size became --input-size) is told its spelling now."""
    try:
        sizing = Sizing.parse(value)
    except DatasetError:
        return f"unknown --protocol {value!r}{did_you_mean(value, KINDS)}; choose from {', '.join(KINDS)}"
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
    download_timeout: float = DOWNLOAD_DEADLINE_S  # seconds a URL's whole download may take
    overwrite: bool = False  # redo every image, even those whose outputs exist

    def check(self) -> None:
        if self.protocol not in KINDS:
            err = SegmentError(sizing_error(self.protocol))
            err.exit_code = 2  # a value chosen from a list: a usage error, as in every tool
            raise err
        parse_input_size(self.input_size)
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise SegmentError(f"--threshold must lie in [0, 1] (or be 'none'), got {self.threshold}")
        for name, value in (("--batch-size", self.batch_size), ("--workers", self.workers),
                            ("--max-image-pixels", self.max_image_pixels)):
            if value < 1:
                raise SegmentError(f"{name} must be >= 1, got {value}")
        if not self.inputs:
            raise SegmentError("no input given; name image files, folders, globs or @list.txt")
        if not 0 < self.download_timeout <= 86400:
            raise SegmentError(f"--download-timeout must be a number of seconds in (0, 86400], got {self.download_timeout}")


@dataclass
class _Job:
    source: Source
    paths: OutputPaths
    identity: dict | None = None


def _identity(source: Source) -> dict:
    """What names this input's bytes for resume: its URL, or its real path with size and mtime."""
    if source.is_url:
        return {"url": source.location}
    real = os.path.realpath(source.location)
    try:
        st = os.stat(real)
    except OSError:
        return {"path": real}
    return {"path": real, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _settings_key(record: dict) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:32]


def _is_done(job: _Job, entry: dict | None, key: str) -> bool:
    if entry is None or entry.get("input") != job.identity or entry.get("settings") != key:
        return False
    files = entry.get("files") or {}
    return all(files.get(kind) is not None and file_sha256(path) == files[kind]
               for kind, path in job.paths.named().items())


def _check_paths(out: Path, jobs: list[_Job], journal: Journal, overwrite: bool) -> None:
    """Refuse, before anything is written, an output name that an earlier run's journal gives to
    another input, and an output path that a folder or a file in the way makes unwritable."""
    for job in jobs:
        mask = job.paths.mask.relative_to(out).as_posix()
        entry = journal.entries.get(mask)
        if entry is not None and not overwrite and job.paths.mask.exists():
            was = entry.get("input") or {}
            now = job.identity or {}
            if (was.get("url"), was.get("path")) != (now.get("url"), now.get("path")):
                raise SegmentError(f"{out / mask} holds the mask of {was.get('url') or was.get('path')} (an earlier "
                                   f"run); {job.source.location} would replace it: give another --out, or --overwrite")
        for path in job.paths.all():
            if os.path.lexists(path) and not path.is_file():
                raise SegmentError(f"{path} is in --out but is no file (a folder?); {job.source.location}'s output "
                                   "goes there: move it away or give another --out")
            for parent in path.relative_to(out).parents:
                where = out / parent
                if str(parent) != "." and os.path.lexists(where) and not where.is_dir():
                    raise SegmentError(f"{where} is a file in --out where {job.source.location}'s outputs need a "
                                       "folder: move it away or give another --out")


class _PixelBudget:
    """Pixels in flight across images (module docstring): `admit` takes room in ticket order
    (input order, so a large image is not starved by small ones behind it) and blocks while the
    room is taken; `release` gives it back. One image alone is always admitted."""

    def __init__(self, limit: int):
        self.limit, self.used, self.serving = limit, 0, 0
        self.waiting = False  # the next ticket waits for room: the caller should free some
        self.aborted = False
        self.cond = threading.Condition()

    def admit(self, ticket: int, cost: int) -> None:
        with self.cond:
            while True:
                if self.aborted:
                    raise _Aborted()
                if self.serving == ticket:
                    if not self.used or self.used + cost <= self.limit:
                        break
                    self.waiting = True  # set and cleared by the serving ticket alone
                self.cond.wait()
            self.waiting = False
            self.used += cost
            self.serving += 1
            self.cond.notify_all()

    def release(self, cost: int) -> None:
        with self.cond:
            self.used -= cost
            self.cond.notify_all()

    def abort(self) -> None:
        with self.cond:
            self.aborted = True
            self.cond.notify_all()


class _Aborted(Exception):
    """The run stopped (an error in the main thread): waiting loads give up."""


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
    key = _settings_key(record)
    jobs = [_Job(s, output_paths(out, s.rel, cfg.overlay, cfg.cutout), _identity(s)) for s in sources]
    journal = Journal(out, fresh=cfg.overwrite)
    _check_paths(out, jobs, journal, cfg.overwrite)
    todo = [j for j in jobs if cfg.overwrite or not _is_done(j, journal.entries.get(_mask_key(out, j)), key)]
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
    budget = _PixelBudget(PIXEL_BUDGET_FACTOR * cfg.max_image_pixels)

    def timed(stage: str, t0: float) -> None:
        with lock:
            seconds[stage] += time.perf_counter() - t0

    def load(ticket: int, job: _Job):
        t0 = time.perf_counter()
        held = []

        def admit(cost: int) -> None:
            budget.admit(ticket, cost)
            held.append(cost)

        try:
            image = read_source(job.source, cfg.max_image_pixels, cfg.download_timeout, admit)
            if not held:
                admit(0)  # a refusal before the header: the ticket passes on
            model_input = None if isinstance(image, Skip) else sizing.prepare_image(image)
        except BaseException:
            if held:
                budget.release(held[0])
            elif not budget.aborted:
                admit(0)
            raise
        if isinstance(image, Skip):
            budget.release(held[0])
            timed("decode", t0)
            return job, image, None, None, 0
        timed("decode", t0)
        return job, (image if keep_image else None), image.shape[:2], model_input, held[0]

    def write(job: _Job, image, hw: tuple[int, int], prob: np.ndarray, cost: int):
        t0 = time.perf_counter()
        try:
            mask = mask_of(probability_to_uint8(sizing.full_size_map(prob, hw)), cfg.threshold)
            files = write_outputs(job.paths, image, mask)
            box = largest_box(mask) if cfg.boxes else None
        finally:
            del image
            budget.release(cost)
        timed("encode", t0)
        return job, hw, box, files

    bar = (progress or (lambda total, desc: _Progress()))(len(todo), "segment")
    t_start = time.perf_counter()
    loads = ThreadPoolExecutor(cfg.workers, thread_name_prefix="bgw-segment-read")
    writers = ThreadPoolExecutor(cfg.workers, thread_name_prefix="bgw-segment-write")
    journal.start()
    try:
        writes: deque[Future] = deque()
        buf: list[tuple] = []

        def drain(limit: int) -> None:
            while len(writes) > limit:
                job, hw, box, files = writes.popleft().result()
                journal.add({"mask": _mask_key(out, job), "input": job.identity, "settings": key, "files": files})
                if cfg.boxes:
                    boxes[job.source.location] = {"height": hw[0], "width": hw[1], "box": box}
                bar.update(1)

        def flush() -> None:
            t0 = time.perf_counter()
            probs = predict_batch(backend, [b[3] for b in buf], cfg.batch_size)
            timed("model", t0)
            for (job, image, hw, _, cost), prob in zip(buf, probs):
                writes.append(writers.submit(write, job, image, hw, prob, cost))
            buf.clear()
            drain(window)

        pending: deque[Future] = deque()
        queue = iter(enumerate(todo))
        depth = 4 * cfg.workers
        while True:
            while len(pending) < depth:
                nxt = next(queue, None)
                if nxt is None:
                    break
                pending.append(loads.submit(load, *nxt))
            if not pending:
                break
            fut = pending.popleft()
            while not wait([fut], timeout=0.05).done:
                if buf and budget.waiting:
                    flush()  # the next image waits for room that the window's images hold
                elif writes and writes[0].done():
                    drain(len(writes) - 1)
            job, image, hw, model_input, cost = fut.result()
            if isinstance(image, Skip):
                log.info("skipped %s", image.reason)  # the summary shows the first few; -v each
                skipped[job.source.location] = image
                bar.update(1)
                continue
            buf.append((job, image, hw, model_input, cost))
            if len(buf) >= window:
                flush()
        if buf:
            flush()
        drain(0)
    finally:
        budget.abort()
        loads.shutdown(wait=True, cancel_futures=True)
        writers.shutdown(wait=True, cancel_futures=True)
        journal.close()
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


def _mask_key(out: Path, job: _Job) -> str:
    return job.paths.mask.relative_to(out).as_posix()


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
