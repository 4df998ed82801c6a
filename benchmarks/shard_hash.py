"""What checking shards against the manifest while they stream costs: read samples/CPU-s with and
without `expect=` (the sha256 of the compressed bytes, computed as the decoder pulls them), and
what a separate verification pass (`shardset verify --no-decode`'s re-hash) would cost instead.

    python benchmarks/shard_hash.py [--n 4000] [--quick]

Samples are 128x128 synthetic images (shardset.synthetic) in the default encoding, one thread.
Each mode runs 3 times after a warm-up pass; the table shows the median. Prints a table, then one
JSON line with every number.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from shardset import ShardSetWriter, iter_samples, resolve  # noqa: E402
from shardset.synthetic import make_samples  # noqa: E402
from shardset.verify import _hash_url  # noqa: E402


def cpu_seconds(fn) -> float:
    c0 = time.process_time()
    fn()
    return time.process_time() - c0


def median_cpu(fn, reps: int = 3) -> float:
    fn()  # warm-up: file cache, allocator
    return statistics.median(cpu_seconds(fn) for _ in range(reps))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=4000, help="samples in the set")
    ap.add_argument("--quick", action="store_true", help="500 samples")
    args = ap.parse_args()
    n = 500 if args.quick else args.n
    shard_size = 500
    with tempfile.TemporaryDirectory() as tmp:
        with ShardSetWriter(tmp, "bench", shard_size=shard_size, params={}, seed=0) as w:
            for k, start in enumerate(range(0, n, shard_size)):
                w.write_shard(k, make_samples(min(shard_size, n - start), 128, seed=k, z_dim=120))
            w.finalize(planned={"shards": k + 1})
        ref = resolve(str(Path(tmp) / "bench.json"))
        nbytes = sum(os.path.getsize(u) for u in ref.urls)

        def read(check: bool):
            return lambda: sum(1 for u in ref.urls for _ in iter_samples(u, expect=ref.record(u) if check else None))

        plain = median_cpu(read(False))
        hashed = median_cpu(read(True))
        rehash = median_cpu(lambda: [_hash_url(u) for u in ref.urls])
    rows = {"read, unchecked": plain, "read, hashed while streaming": hashed,
            "read + separate re-hash pass": plain + rehash}
    print(f"{n} samples of 128x128, {nbytes / n:.0f} compressed bytes/sample, one thread")
    print(f"{'mode':32} {'samples/CPU-s':>14} {'CPU vs unchecked':>17}")
    for name, s in rows.items():
        print(f"{name:32} {n / s:14.0f} {s / plain:16.3f}x")
    print(json.dumps({"n": n, "bytes_per_sample": round(nbytes / n), "cpu_s": {k: round(v, 4) for k, v in rows.items()},
                      "python": platform.python_version(), "machine": platform.machine()}))


if __name__ == "__main__":
    main()
