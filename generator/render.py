"""The accelerator/host overlap of a gen-synth run.

The main thread renders batches on the accelerator (the TF call releases the GIL) while a host
thread runs masks + filters and builds the samples, and a small pool of threads
(``write_threads``) encodes and writes full shards (cv2 and zstd release the GIL too). A
bounded queue, at most MAX_OPEN_SHARDS shards filling and ``write_threads`` shards writing at
once keep memory flat whatever ``n`` is. The renderer moves on to the next shard as soon as the
batches in flight are expected to fill the current one (a running acceptance estimate) and comes
back if they do not, so about one partial batch per shard is rendered and dropped.

Public: `render_shards` (a run's shards, rendered and written), `render_preview` (a few batches
for the preview when a run rendered nothing), `Host` (the host thread; `Host.consume` is its work
on one batch), `shard_sample` (one sample as it goes into a shard), `STOP` (set by Ctrl-C).
"""
from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Callable

import numpy as np

from masking.rules import REASONS, FilterConfig, process_batch
from shardset.format import sample_key

from .config import GIVE_UP_EMPTY, GenConfig, GenerationError, Plan
from .inputs import Inputs
from .latents import LatentBatch, LatentStream
from .preview import PreviewCollector, signed_to_uint8
from .views import Shifts, Views, render_views

log = logging.getLogger(__name__)


class _ShardFill:
    """Accepted samples and counts of one shard while it fills (host thread only)."""

    def __init__(self, index: int, target: int):
        self.index = index
        self.target = target
        self.samples: list[dict] = []
        self.drawn = 0  # draws used (up to the last accepted one)
        self.processed = 0  # draws the host has seen, including those past the shard's end
        self.rejected = {r: 0 for r in REASONS}

    @property
    def full(self) -> bool:
        return len(self.samples) >= self.target


def shard_sample(name: str, seed: int, shard: int, i: int, x, mask, z, source: int, draw: int,
                 frac: float, *, cls: int | None = None, image_shift: float | None = None) -> dict:
    """Sample `i` of shard `shard` as the writer takes it: image x in [-1, 1] as uint8, its mask, z,
    and the meta that traces it to its draw in the shard's latent stream; `cls` (a class-conditional
    GAN's class) and `image_shift` (the latent shift of the stored image, with --shifted-images)
    join the meta only when given, so other sets' samples keep their bytes."""
    meta = {"source_index": int(source), "fg_fraction": float(frac), "stream": [seed, shard, int(draw)]}
    if cls is not None:
        meta["class"] = int(cls)
    if image_shift is not None:
        meta["image_shift"] = float(image_shift)
    return {
        "__key__": sample_key(name, shard, i),
        "image": signed_to_uint8(x),
        "mask": np.ascontiguousarray(mask, dtype=np.uint8),
        "z": np.ascontiguousarray(z, dtype=np.float32),
        "meta": meta,
    }


class Host(threading.Thread):
    """Consumes rendered batches: masks + filters, fills shards, writes them.

    Several shards may be open at once (the renderer moves on to the next shard as soon as the
    batches in flight are expected to fill the current one); each shard's batches arrive in its
    stream order, so which draws a shard accepts never depends on that interleaving."""

    def __init__(self, cfg: GenConfig, plan: Plan, writer, filters: FilterConfig,
                 progress: Callable[[int, int], None] | None, collector: PreviewCollector | None):
        super().__init__(name="gen-synth-host", daemon=True)
        self.cfg, self.plan, self.writer, self.filters = cfg, plan, writer, filters
        self.progress, self.collector = progress, collector
        self.inbox: queue.Queue = queue.Queue(maxsize=cfg.queue_depth)
        self.filled: set[int] = set()  # shards with all their samples (read by the main thread)
        self.done: set[int] = set()  # shards written and recorded
        self.fills: dict[int, _ShardFill] = {}  # open shards (read by the main thread)
        self.accepted_total = 0  # over all shards: the renderer's acceptance estimate
        self.drawn_total = 0
        self.changed = threading.Event()  # set after every batch, so a waiting renderer wakes up
        self.error: BaseException | None = None
        self.stop = threading.Event()
        # PNG encoding costs ~1 ms per image; cv2 and zstd release the GIL, so full shards are
        # encoded and written on a small pool while this thread filters the next batches.
        self._pool = ThreadPoolExecutor(cfg.write_threads, thread_name_prefix="gen-synth-write") \
            if cfg.write_threads > 1 else None
        self._writing: dict[int, Future] = {}

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                item = self.inbox.get()
                if item is None:
                    break
                self.consume(*item)
                self.changed.set()
            if not self.stop.is_set():
                self._reap(wait_all=True)
        except BaseException as exc:  # handed to the main thread, which re-raises it
            self.error = exc
        finally:
            if self._pool is not None:  # no write may still run when the main thread cleans up
                self._pool.shutdown(wait=True, cancel_futures=True)
            self.changed.set()

    def _write(self, shard: int, fill: "_ShardFill") -> None:
        self.writer.write_shard(shard, fill.samples, split=self.plan.split(shard),
                                stats={"drawn": fill.drawn, "rejected": dict(fill.rejected)})
        self.done.add(shard)

    def _reap(self, *, wait_all: bool = False, limit: int | None = None) -> None:
        """Collect finished writes (re-raising their errors); block until at most `limit` remain,
        or until none remain with `wait_all`."""
        while self._writing:
            for shard, fut in list(self._writing.items()):
                if fut.done():
                    del self._writing[shard]
                    fut.result()
            if not self._writing or (not wait_all and (limit is None or len(self._writing) <= limit)):
                return
            wait(list(self._writing.values()), return_when=FIRST_COMPLETED)

    def consume(self, shard: int, lat: LatentBatch, views: Views) -> None:
        """One rendered batch of `shard`: masks and filters on the mask rule's pair, accepted samples
        (their stored image) into the shard, and the shard written once full (on the pool when there
        is one)."""
        self._reap(limit=self.cfg.write_threads)
        if shard in self.filled:
            return  # a batch rendered past the shard's end
        fill = self.fills.get(shard)
        if fill is None:
            fill = self.fills[shard] = _ShardFill(shard, self.plan.sizes[shard])
        res = process_batch(views.a, views.b, self.filters)
        if self.collector is not None and not self.collector.full:
            self.collector.add(views.a, views.b, res.masks, res.reason, images=views.image)
        accepted = drawn = 0
        for j in range(len(lat)):
            if fill.full:
                break
            fill.drawn += 1
            drawn += 1
            if res.accepted[j]:
                fill.samples.append(shard_sample(
                    self.cfg.name, self.cfg.seed, shard, len(fill.samples), views.image[j], res.masks[j], lat.z[j],
                    lat.source_index[j], lat.draw_index[j], res.fg_fraction[j],
                    cls=None if lat.classes is None else lat.classes[j],
                    image_shift=None if views.image_shift is None else views.image_shift[j]))
                accepted += 1
            else:
                fill.rejected[res.reason[j]] += 1
        fill.processed += len(lat)
        self.accepted_total += accepted
        self.drawn_total += drawn
        if self.progress is not None:
            self.progress(accepted, drawn)
        if fill.full:
            self.filled.add(shard)
            del self.fills[shard]
            if self._pool is None:
                self._write(shard, fill)
            else:
                self._writing[shard] = self._pool.submit(self._write, shard, fill)
        elif fill.drawn >= self.cfg.max_draws_per_sample * fill.target or (
                fill.drawn >= GIVE_UP_EMPTY and not fill.samples):
            rejected = ", ".join(f"{k} {v}" for k, v in fill.rejected.items())
            raise GenerationError(
                f"shard {shard}: only {len(fill.samples)} of {fill.target} samples accepted in {fill.drawn} draws "
                f"(rejected: {rejected}); the filters reject nearly everything: check --direction/--shift or "
                f"relax the filters (--histogram-rule bimodal, --no-histogram-filter, --no-size-filter)")

    def finish(self, *, abandon: bool) -> None:
        """End the thread and wait for it: after the batches queued and the writes under way, or
        at once with `abandon` (the queue dropped: after a failure or an interrupt)."""
        if abandon:
            self.stop.set()
            _drain(self.inbox)
        while self.is_alive():  # the end marker, however full the queue
            try:
                self.inbox.put(None, timeout=0.2)
                break
            except queue.Full:
                if self.stop.is_set():
                    _drain(self.inbox)
        self.join()

    def acceptance(self) -> float:
        """Running acceptance estimate (optimistic before any evidence)."""
        return (self.accepted_total + 1) / (self.drawn_total + 1)

    def needs_more(self, shard: int, rendered: int) -> bool:
        """Whether shard may still need draws beyond the `rendered` ones sent so far."""
        if shard in self.filled:
            return False
        fill = self.fills.get(shard)
        have, processed = (len(fill.samples), fill.processed) if fill else (0, 0)
        expected = have + (rendered - processed) * self.acceptance()
        return expected < self.plan.sizes[shard]


MAX_OPEN_SHARDS = 3  # shards filling at once: bounds host memory (each holds <= shard_size samples)

# Set by gen-synth's Ctrl-C handler. The render loop checks it before every batch, so a Ctrl-C stops
# the run even when its KeyboardInterrupt lands inside TensorFlow and is lost there.
STOP = threading.Event()


def render_shards(inputs: Inputs, cfg: GenConfig, plan: Plan, writer, filters: FilterConfig, shards: list[int],
                  progress: Callable[[int, int], None] | None = None,
                  collector: PreviewCollector | None = None) -> tuple[set[int], BaseException | None]:
    """Render `shards` on this thread while a Host masks, filters and writes them through `writer`.
    Returns (the shards written, the host's error or None); an error of the rendering itself (a
    Ctrl-C) propagates once the host has stopped."""
    host = Host(cfg, plan, writer, filters, progress, collector)
    host.start()
    rendered_all = False
    try:
        _render(inputs, cfg, shards, host)
        rendered_all = True
    finally:
        # Stop the host whatever happened; on success it drains the queue and the writes first.
        host.finish(abandon=not (rendered_all and host.error is None))
    return host.done, host.error


def _render(inputs: Inputs, cfg: GenConfig, shards: list[int], host: Host) -> None:
    """Main thread: render fixed-size batches of the shards' streams until the host has them all.

    Batch j of shard k is always draws [j B, (j + 1) B) of k's stream, whatever the timing. The
    next batch goes to the oldest open shard whose batches in flight may not fill it; when
    every open shard looks covered, a new shard opens; when none may open, wait for the host.
    So few batches are rendered past a shard's end (the waste is about one partial batch)."""
    pending = list(shards)
    shifts = Shifts.of(host.filters.mask_rule, cfg.shift)
    streams: dict[int, LatentStream] = {}
    rendered: dict[int, int] = {}
    while True:
        if STOP.is_set():
            raise KeyboardInterrupt
        if host.error is not None or not host.is_alive():
            return
        open_ = [k for k in streams if k not in host.filled]
        for k in [k for k in streams if k in host.filled]:
            del streams[k]
        shard = next((k for k in open_ if host.needs_more(k, rendered[k])), None)
        if shard is None and pending and len(open_) < MAX_OPEN_SHARDS:
            shard = pending.pop(0)
            streams[shard] = inputs.stream(cfg, shard)
            rendered[shard] = 0
        if shard is None:
            if not open_ and not pending:
                return
            host.changed.wait(0.05)
            host.changed.clear()
            continue
        lat = streams[shard].take(cfg.batch_size)
        item = (shard, lat, render_views(inputs.gan, lat, inputs.direction, shifts, cfg.image_size))
        rendered[shard] += len(lat)
        while True:  # put, but notice a host thread that died instead of blocking forever
            try:
                host.inbox.put(item, timeout=0.2)
                break
            except queue.Full:
                if host.error is not None or not host.is_alive():
                    return


def render_preview(inputs: Inputs, cfg: GenConfig, filters: FilterConfig, collector: PreviewCollector) -> None:
    """Render a few batches of shard 0's stream for the preview when the run rendered nothing."""
    stream = inputs.stream(cfg, 0)
    shifts = Shifts.of(filters.mask_rule, cfg.shift)
    for _ in range(8):
        views = render_views(inputs.gan, stream.take(cfg.batch_size), inputs.direction, shifts, cfg.image_size)
        res = process_batch(views.a, views.b, filters)
        collector.add(views.a, views.b, res.masks, res.reason, images=views.image)
        if collector.full:
            return


def _drain(q: queue.Queue) -> None:
    try:
        while True:
            q.get_nowait()
    except queue.Empty:
        pass
