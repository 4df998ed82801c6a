"""shardset: the shard-set format shared by the generator, the trainer and other teams.

Numpy, zstandard, OpenCV and JSON only: neither TensorFlow nor torch (webdataset lazily, in wds).
It imports `core` (atomic writes, the user-image reader, UserError) and no other package here.

    format.py    member names, encodings, keys, shard file names, Limits, FORMAT_VERSION, the errors
    codec.py     encode/decode one sample's members; image headers checked before decoding
    manifest.py  manifest schema v1: build, validate (check_counts: the one rule for its counts), load,
                 atomic write, fingerprint
    writer.py    ShardSetWriter: atomic shards + per-shard records + manifest; resume; parallel workers
    lock.py      flock on a lock file naming its holder (one writer per set, one trainer per run folder)
    reader.py    safe streaming reader: bounded zstd stream, strict tar parser, iter_samples; shards
                 hashed while they stream and checked against their manifest record
    urls.py      resolve(spec) of globs, brace ranges, manifests, folders, file/http(s)/fsspec URLs
    select.py    select_shards: the shards a training run reads (the shard-set rules: incomplete,
                 missing, mixed and bare sets; train split from val)
    wds.py       webdataset `zstd:` URL scheme and safe pipeline stages
    verify.py    re-hash shards against the manifest and decode every sample
    inspect.py   summary table and image | mask contact sheet
    importer.py  labelled folder -> shard set
    synthetic.py tiny deterministic sets for tests and demos
    export.py    shard set -> image and mask files, plain tar shards + their manifest, or the set re-encoded
    cli.py       the `shardset` command (inspect, verify, import, export; --json for inspect and verify)
"""
from .codec import decode_sample, encode_sample
from .format import (
    DEFAULT_ENCODING,
    ENCODINGS,
    FORMAT_VERSION,
    LOSSLESS_ENCODINGS,
    Limits,
    NothingMatchedError,
    ShardError,
    ShardSetError,
    ShardSetExistsError,
    manifest_filename,
    sample_key,
    shard_filename,
)
from .lock import LockHeldError
from .manifest import (ManifestError, canonical_manifest, check_counts, incomplete_reason, load_manifest,
                       manifest_fingerprint, validate_manifest)
from .reader import iter_raw_samples, iter_samples
from .urls import ShardSetRef, expand_braces, open_url, resolve
from .verify import verify_set
from .writer import ShardSetWriter

__all__ = [
    "DEFAULT_ENCODING",
    "ENCODINGS",
    "FORMAT_VERSION",
    "LOSSLESS_ENCODINGS",
    "Limits",
    "LockHeldError",
    "ManifestError",
    "NothingMatchedError",
    "ShardError",
    "ShardSetError",
    "ShardSetExistsError",
    "ShardSetRef",
    "ShardSetWriter",
    "canonical_manifest",
    "check_counts",
    "decode_sample",
    "encode_sample",
    "expand_braces",
    "incomplete_reason",
    "iter_raw_samples",
    "iter_samples",
    "load_manifest",
    "manifest_filename",
    "manifest_fingerprint",
    "open_url",
    "resolve",
    "sample_key",
    "shard_filename",
    "validate_manifest",
    "verify_set",
]
