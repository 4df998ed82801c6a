"""Which shards a training run reads: the shard-set rules for one or more --shards specs.

`select_shards(specs)` resolves each spec (shardset.resolve), checks each set and the sets
together, and splits train from val:

- a set whose manifest says `complete: false` is refused unless `allow_incomplete` (a WARNING
  then); a shard its manifest lists but the disk lacks is refused; a spec selecting only some of
  a manifest's shards gets a WARNING with the counts; bare shards (no manifest) get a WARNING
  that they are unverified, and all of them train (no split is known);
- one spec over the shards of several sets with no manifest is refused (its val split is unknown);
- sets trained on together must agree in format, encoding and image size (`check_compatible`);
- the val shards never train; a shard named twice is refused.

The result, a `Selection`, names the train and val URLs, the set's name and fingerprint (for
checkpoints), and the manifest record of every shard it can verify (readers hash each shard
while it streams). Errors are one-line `SelectionError`s naming the spec; the messages name
train-unet's flags, the one tool that trains.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from core.errors import UserError, first_line

from .format import NothingMatchedError, ShardError, ShardSetError, parse_shard_filename
from .manifest import incomplete_reason, manifest_fingerprint
from .reader import iter_samples
from .urls import ShardConnectionError, ShardSetRef, resolve

log = logging.getLogger(__name__)

__all__ = ["Selection", "SelectionError", "select_shards", "check_set", "check_compatible", "manifest_facts",
           "first_image_size"]


class SelectionError(ShardSetError):
    """Shards that cannot be trained on (as named): nothing matched, an incomplete or mixed set, a
    missing or unreadable shard. The message names the spec and what to do."""


@dataclass(frozen=True)
class Selection:
    """The shards of a run: train and val URLs plus what identifies the set(s)."""

    train_urls: tuple[str, ...]
    val_urls: tuple[str, ...]
    name: str
    fingerprint: str
    image_size: tuple[int, int] | None  # (H, W) from the first shard, None when unknown
    encoding: str | None
    manifests: tuple[dict | None, ...] = ()
    expect: dict | None = None  # url -> manifest record ({"sha256", "bytes", ...}) of every verifiable shard


def manifest_facts(manifest: dict | None) -> dict:
    """The manifest entries that must agree between sets trained on together."""
    if not manifest:
        return {}
    facts = {}
    if manifest.get("format") is not None:
        facts["format"] = f"{manifest['format']} v{manifest.get('format_version', '?')}"
    if manifest.get("encoding") is not None:
        facts["encoding"] = manifest["encoding"]
    return facts


def first_image_size(url: str) -> tuple[int, int]:
    """(H, W) of the first sample of a shard; reading it also fails early on an unreadable shard."""
    try:
        with contextlib.closing(iter_samples(url)) as samples:
            for sample in samples:
                return tuple(int(v) for v in sample["image"].shape[:2])
    except ShardConnectionError as e:  # the network failed, not (as far as anyone knows) the shard
        raise SelectionError(f"cannot read shard {url}: {e.reason}") from None
    except ShardError as e:
        raise SelectionError(f"corrupt shard {url}: {e.reason}") from None
    raise SelectionError(f"corrupt shard {url}: it holds no samples")


def check_compatible(named_facts: list[tuple[str, dict]]) -> dict:
    """Refuse sets of different formats, encodings or image sizes (one line naming both specs);
    returns the first set's facts."""
    first_spec, first = None, None
    for spec, facts in named_facts:
        if first is None:
            first_spec, first = spec, facts
            continue
        for key in ("format", "encoding", "image_size"):
            if key in facts and key in first and facts[key] != first[key]:
                raise SelectionError(f"--shards {spec!r} has {key} {facts[key]} but {first_spec!r} has {first[key]}: "
                                     "mixed shard sets; train on one kind at a time (or re-import one to match)")
    return first or {}


def check_set(spec: str, ref: ShardSetRef, allow_incomplete: bool) -> None:
    """Refuse an incomplete set (unless allowed) and listed shards missing on disk; warn when the
    spec selects a subset of its manifest's shards, or when there is no manifest to verify against."""
    m = ref.manifest
    if m is None:
        log.warning("--shards %r has no manifest (no NAME.json beside the shards): its %d shards are unverified "
                    "(no sha256 to check them against), and all train, none validate", spec, len(ref.urls))
        return
    if (short := incomplete_reason(m)) is not None:
        what = f"--shards {spec!r} is an incomplete set (its manifest says {short})"
        if not allow_incomplete:
            raise SelectionError(f"{what}; finish it (e.g. gen-synth --resume) or pass --allow-incomplete to train "
                                 "on the shards it has")
        log.warning("%s; training on it (--allow-incomplete)", what)
    selected = {u.rsplit("/", 1)[-1] for u in ref.urls}
    listed = [r["file"] for r in m["shards"]]
    k = sum(f in selected for f in listed)
    if k < len(listed):
        log.warning("--shards %r selects %d of the %d shards its manifest %s lists; training on that subset",
                    spec, k, len(listed), ref.manifest_url)
    for u in ref.urls:
        if "://" not in u and not Path(u).is_file():
            raise SelectionError(f"--shards {spec!r}: shard {u} (listed in {ref.manifest_url}) does not exist; "
                                 "run `shardset verify` on the set")


def _resolve_one(spec: str) -> ShardSetRef:
    try:
        ref = resolve(spec)
    except NothingMatchedError as e:
        raise SelectionError(f"no shard matched --shards {spec!r}: {first_line(e)}") from None
    except UserError as e:  # a bad brace range, an unreadable manifest, a shard that will not open
        raise SelectionError(f"--shards {spec!r}: {first_line(e)}") from None
    if not ref.urls:
        raise SelectionError(f"no shard matched --shards {spec!r}; check the path or glob (e.g. shards/NAME-*.tar.zst)")
    if ref.manifest is None:
        sets = sorted({p[0] for u in ref.urls if (p := parse_shard_filename(u.rsplit("/", 1)[-1]))})
        if len(sets) > 1:
            # without one manifest the val split is unknown: refuse rather than train on it
            raise SelectionError(f"--shards {spec!r} matches shards of several sets ({', '.join(sets)}); "
                                 "name each set on its own, e.g. --shards DIR/NAME.json, once per set")
    return ref


def select_shards(specs: Iterable[str], allow_incomplete: bool = False) -> Selection:
    """The shards one or more --shards specs name, checked (module docstring), train split from val."""
    specs = list(specs)
    if not specs:
        raise SelectionError("no --shards given: pass a glob, brace range, manifest, folder or URL of a shard set")
    refs = []
    for spec in specs:
        ref = _resolve_one(spec)
        check_set(spec, ref, allow_incomplete)
        refs.append((spec, ref))
    named_facts = []
    for spec, ref in refs:
        facts = manifest_facts(ref.manifest)
        size = first_image_size(ref.urls[0])
        facts["image_size"] = f"{size[0]}x{size[1]}"
        named_facts.append((spec, facts))
    facts = check_compatible(named_facts)
    train, val, names, prints, expect = [], [], [], [], {}
    for spec, ref in refs:
        expect.update({u: rec for u in ref.urls if (rec := ref.record(u)) is not None})
        if ref.manifest:
            t, v = list(ref.split_urls("train")), list(ref.split_urls("val"))
            names.append(str(ref.manifest.get("name", spec)))
            prints.append(manifest_fingerprint(ref.manifest))
        else:
            # bare shards: no split is known, so none is held out (check_set said so)
            t, v = list(ref.urls), []
            names.append(spec)
            prints.append(hashlib.sha256("\n".join(sorted(ref.urls)).encode()).hexdigest())
        vset = set(v)
        train += [u for u in t if u not in vset]  # never train on the validation part
        val += v
    if not train:
        raise SelectionError(f"--shards {' '.join(specs)} matched only validation shards; nothing to train on")
    if len(set(train)) != len(train):
        raise SelectionError(f"--shards {' '.join(specs)} name some shards twice; give each set once")
    if len(refs) == 1:
        name, fingerprint = names[0], prints[0]
    else:
        name = "+".join(names)
        fingerprint = hashlib.sha256("\n".join(prints).encode()).hexdigest()
    h, w = (int(v) for v in facts["image_size"].split("x"))
    return Selection(tuple(train), tuple(val), name, fingerprint, (h, w), facts.get("encoding"),
                     tuple(ref.manifest for _, ref in refs), expect)
