"""Shard-set stream for the trainer: small picklable webdataset-style stages, deterministic by step.

Pipeline, per rank and DataLoader worker (each stage a plain generator function of an iterator):

    train shard URLs ─► round_shards (resampled: a seeded permutation per round, split by rank,
    then by worker) ─► cycle_raw (safe tar.zst read via shardset.wds.tar_samples, members stay
    bytes) ─► shuffle (seeded buffer) ─► islice to the round's length ─► skip (resume) ─►
    decode (shardset.decode_sample: known members only, no pickle) ─► fit_size ─► batched (uint8
    numpy) ─► to torch (uint8; normalised on the device by segmodel.inference.normalize_images)

Determinism (how `--resume` continues exactly). The stream is endless and cut into *rounds* of
`round_batches` batches per (rank, worker). Round r of worker w on rank k depends only on
(seed, r, k, w): its shard subset comes from a permutation seeded by (seed, r) and its shuffle
buffer from (seed, r, k, w). A DataLoader with W workers hands out batches round-robin, so after
`step` optimizer steps worker w has delivered ceil((step - w) / W) batches. To resume at `step`
each worker regenerates its current round and drops the raw (undecoded) samples it had already
delivered: at most one round of tar reading, no decoding. The checkpoint stores the step, the
world size and the worker count; a resume with other values is refused, since the order would
differ. Rounds also bound memory and make every shard reachable (resampling) whatever the
number of ranks and workers.

The validation part (manifest split "val") is read by `load_val_samples` in the main process and
never enters the training stream.

Which shards train and which validate is shardset.select's (`select_shards`: the shard-set rules).
Integrity: every shard listed in a manifest is hashed while it streams (shardset's
`open_shard(..., expect=record)`) and a shard whose bytes differ from the manifest's sha256 stops
training with one line naming it, at the end of that shard. A shard cut off at the end of a round
is checked whenever a later round reads it to its end.
"""
from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

import shardset
from core.errors import UserError, first_line
from shardset.urls import ShardConnectionError

log = logging.getLogger(__name__)

DEFAULT_ROUND_SAMPLES = 4096  # samples per (rank, worker) round when the config leaves it at 0


class DataError(UserError, ValueError):
    """Bad data: a corrupt or unreadable shard or sample met while streaming (the message names
    it), a stream with no samples, or an --eval-dataset that cannot be read."""


@dataclass(frozen=True)
class WorkerFailure:
    """What a DataLoader worker hands over in place of a batch when its stream stopped with a
    DataError: the one-line reason, passed as data. (Raised in the worker, the error would reach
    the main process re-built around the worker's whole traceback.) The training loop raises
    DataError(reason) when it receives one."""

    reason: str


# ---------------------------------------------------------------------------------------------
# stages (top-level, picklable)


def round_shards(urls: list[str], seed: int, rnd: int, rank: int, world: int,
                 worker: int, num_workers: int) -> list[str]:
    """The shards worker `worker` of rank `rank` reads in round `rnd`.

    A permutation seeded by (seed, rnd), repeated until every (rank, worker) gets at least one
    shard, split by node (rank) and then by worker; different ranks read different shards
    whenever there are enough of them.
    """
    rng = np.random.default_rng([seed, rnd, 0x5EED])
    perm = [urls[i] for i in rng.permutation(len(urls))]
    need = world * num_workers
    full = perm * math.ceil(need / len(perm))
    by_node = full[rank::world]
    return by_node[worker::num_workers]


def cycle_raw(urls: list[str], read: Callable[[str], Iterator[dict]]) -> Iterator[dict]:
    """Raw samples (member bytes) of `urls`, over and over; an empty pass is an error."""
    while True:
        n = 0
        for url in urls:
            for raw in read(url):
                n += 1
                yield raw
        if n == 0:
            raise DataError(f"shards {urls[:3]} hold no samples")


def shuffle(src: Iterable, bufsize: int, rng: np.random.Generator, initial: int | None = None) -> Iterator:
    """Seeded shuffle buffer: fill to `bufsize`, then emit a random element and refill its slot."""
    buf = []
    for item in src:
        if len(buf) < bufsize:
            buf.append(item)
            continue
        i = int(rng.integers(len(buf)))
        out, buf[i] = buf[i], item
        yield out
    rng.shuffle(buf)
    yield from buf


def decode(src: Iterable[dict], limits=None) -> Iterator[dict]:
    """Raw member bytes -> sample dict via shardset.decode_sample; failures name the shard."""
    lim = limits if limits is not None else shardset.Limits()
    dec = shardset.decode_sample
    for raw in src:
        try:
            sample = dec(raw, lim)
        except Exception as e:  # noqa: BLE001 - the per-sample boundary: say which shard and sample, then stop
            raise DataError(f"corrupt shard {raw.get('__url__', '?')}: sample {raw.get('__key__', '?')}: "
                            f"{first_line(e)}") from None
        yield sample


def fit_size(src: Iterable[dict], size: int) -> Iterator[dict]:
    """Resize samples to size x size when they differ (image: area/linear, mask: nearest)."""
    import cv2

    for s in src:
        img, mask = s["image"], s["mask"]
        if img.shape[:2] != (size, size):
            interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR
            img = cv2.resize(img, (size, size), interpolation=interp)
            mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)
        yield {"__key__": s.get("__key__"), "image": img, "mask": mask}


def batched(src: Iterable[dict], batch: int) -> Iterator[dict]:
    """Full batches only: {'image': uint8 [B,H,W,3], 'mask': uint8 [B,H,W]} numpy arrays."""
    while True:
        chunk = list(itertools.islice(src, batch))
        if len(chunk) < batch:
            return
        yield {"image": np.stack([s["image"] for s in chunk]), "mask": np.stack([s["mask"] for s in chunk])}


def to_torch(src: Iterable[dict]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """uint8 numpy batches -> uint8 torch tensors (pinned by the DataLoader when on CUDA)."""
    for b in src:
        yield torch.from_numpy(b["image"]), torch.from_numpy(b["mask"])


def read_shard_raw(url: str, limits=None, expect: dict | None = None) -> Iterator[dict]:
    """Raw samples of one shard through shardset's safe webdataset stage; errors name the shard.

    With `expect` (the shard's manifest record) the shard is hashed as it streams and a mismatch
    at its end is an error naming it."""
    import shardset.wds

    kwargs = {} if limits is None else {"limits": limits}
    try:
        for raw in shardset.wds.tar_samples(iter([{"url": url, "expect": expect}]), **kwargs):
            raw.setdefault("__url__", url)
            yield raw
    except DataError:
        raise
    except ShardConnectionError as e:  # the network failed, not (as far as anyone knows) the shard
        raise DataError(f"cannot read shard {url}: {e.reason}") from None
    except shardset.ShardError as e:  # its message starts with the URL already
        raise DataError(f"corrupt shard {url}: {e.reason}") from None
    except Exception as e:  # noqa: BLE001 - the per-shard boundary: a shard from strangers fails in any way
        raise DataError(f"corrupt shard {url}: {first_line(e)}") from None


# ---------------------------------------------------------------------------------------------
# the training stream


def worker_batches_done(step: int, worker: int, num_workers: int) -> int:
    """Batches worker `worker` delivered when `step` batches were consumed round-robin."""
    return max(0, -(-(step - worker) // num_workers))


def rank_batch(batch: int, rank: int, world: int) -> int:
    """This rank's share of the global batch (the remainder goes to the low ranks)."""
    return batch // world + (1 if rank < batch % world else 0)


@dataclass(frozen=True)
class StreamSpec:
    urls: tuple[str, ...]
    seed: int
    batch: int               # per-rank batch
    size: int
    shuffle_buffer: int
    round_samples: int
    rank: int = 0
    world: int = 1
    start_step: int = 0      # optimizer steps already done (resume)
    limits: object = None    # shardset.Limits or None for its defaults
    expect: dict | None = None  # url -> manifest record: shards hashed while they stream


def worker_stream(spec: StreamSpec, worker: int, num_workers: int,
                  read: Callable[[str], Iterator[dict]] | None = None,
                  decoder: Callable[[Iterable[dict]], Iterator[dict]] | None = None) -> Iterator[dict]:
    """Endless numpy batches of one (rank, worker); `read`/`decoder` swap in test stand-ins."""
    if read is None:
        read = _Reader(spec.limits, spec.expect)
    if decoder is None:
        decoder = _Decoder(spec.limits)
    per_round = max(1, (spec.round_samples or DEFAULT_ROUND_SAMPLES) // spec.batch)
    done = worker_batches_done(spec.start_step, worker, num_workers)
    rnd, skip = divmod(done, per_round)
    while True:
        shards = round_shards(list(spec.urls), spec.seed, rnd, spec.rank, spec.world, worker, num_workers)
        rng = np.random.default_rng([spec.seed, rnd, spec.rank, worker])
        raw = shuffle(cycle_raw(shards, read), spec.shuffle_buffer, rng)
        raw = itertools.islice(raw, per_round * spec.batch)
        # resume: drop what this worker already delivered, before decoding (cheap)
        raw = itertools.islice(raw, skip * spec.batch, None)
        yield from batched(fit_size(decoder(raw), spec.size), spec.batch)
        rnd, skip = rnd + 1, 0


class _Reader:
    """Picklable `read` callable over shardset (limits and manifest records travel with it)."""

    def __init__(self, limits=None, expect: dict | None = None):
        self.limits, self.expect = limits, expect or {}

    def __call__(self, url: str) -> Iterator[dict]:
        return read_shard_raw(url, self.limits, self.expect.get(url))


class _Decoder:
    def __init__(self, limits=None):
        self.limits = limits

    def __call__(self, src: Iterable[dict]) -> Iterator[dict]:
        return decode(src, self.limits)


class TrainStream(torch.utils.data.IterableDataset):
    """IterableDataset of (image uint8 [B,H,W,3], mask uint8 [B,H,W]) per-rank batches."""

    def __init__(self, spec: StreamSpec, read=None, decoder=None):
        super().__init__()
        self.spec, self.read, self.decoder = spec, read, decoder

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        batches = to_torch(worker_stream(self.spec, worker, num_workers, self.read, self.decoder))
        if info is None:  # read in the main process: errors arrive as they are
            return batches
        return _handing_over_failures(batches)


def _handing_over_failures(batches: Iterator) -> Iterator:
    """A worker's batches; a DataError ends them with a WorkerFailure carrying its reason."""
    try:
        yield from batches
    except DataError as exc:
        yield WorkerFailure(str(exc))


def make_loader(spec: StreamSpec, num_workers: int, pin_memory: bool, read=None, decoder=None):
    """DataLoader over TrainStream; batches are formed in the workers (batch_size=None)."""
    kwargs = {}
    if num_workers > 0:
        # a few batches in flight per worker keep the accelerator fed while it computes
        kwargs = {"prefetch_factor": 4, "persistent_workers": False}
    return torch.utils.data.DataLoader(TrainStream(spec, read, decoder), batch_size=None,
                                       num_workers=num_workers, pin_memory=pin_memory, **kwargs)


# ---------------------------------------------------------------------------------------------
# validation samples


def load_val_samples(urls: Iterable[str], size: int, limit: int, read=None, decoder=None,
                     expect: dict | None = None) -> dict | None:
    """The first `limit` held-out samples in shard order, decoded once: {'image', 'mask'} numpy."""
    if limit <= 0:
        return None
    read = read or _Reader(expect=expect)
    decoder = decoder or _Decoder()
    samples = []
    for url in urls:
        for s in fit_size(decoder(read(url)), size):
            samples.append(s)
            if len(samples) >= limit:
                break
        if len(samples) >= limit:
            break
    if not samples:
        return None
    return {"image": np.stack([s["image"] for s in samples]), "mask": np.stack([s["mask"] for s in samples])}
