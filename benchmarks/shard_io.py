"""Shard I/O benchmark: bytes/sample, write and read samples/s per image encoding, one core.

    python benchmarks/shard_io.py [--n 2000] [--quick]

Samples are 128x128: DUTS-TR images centre-cropped to 128 (../shared/data/duts-tr-3000) when
present, else synthetic textured images. Read = stream a shard and decode image and mask to uint8
arrays. The baseline is what a user would otherwise pick: a folder of PNG files read with PIL.
Prints a table, then one JSON line with every number. "read samples/s" is wall clock; "read
samples/CPU-s" divides by the process's CPU time, i.e. the per-core rate, which stays meaningful
on a machine shared with other jobs (everything here runs on one thread).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

# one core: set before numpy/OpenCV start their thread pools
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from shardset import ShardSetWriter, iter_samples  # noqa: E402
from shardset.format import DEFAULT_ENCODING, ENCODINGS  # noqa: E402
from shardset.importer import find_pairs, load_pair  # noqa: E402

DUTS = Path(os.environ.get("BGW_SHARED_DATA", REPO.parent / "shared" / "data")) / "duts-tr-3000"
SIZE = 128


def load_samples(n: int) -> tuple[list[dict], str]:
    if (DUTS / "images").is_dir():
        pairs, _, _ = find_pairs(DUTS / "images", DUTS / "masks")
        base = []
        for _, ip, mp in pairs[: min(n, len(pairs))]:
            got = load_pair(ip, mp, SIZE)
            if not isinstance(got, str):
                base.append({"image": got[0], "mask": got[1]})
        source = f"DUTS-TR ({len(base)} distinct images, centre-cropped to {SIZE})"
    else:
        rng = np.random.default_rng(0)
        base = []
        yy, xx = np.mgrid[0:SIZE, 0:SIZE]
        for i in range(min(n, 500)):
            noise = cv2.GaussianBlur(rng.normal(128, 60, (SIZE, SIZE, 3)), (0, 0), 2.0)
            wave = 40 * np.sin((xx + i) / 7.0)[..., None] * np.array([1, 0.5, -0.7])
            img = np.clip(noise + wave, 0, 255).astype(np.uint8)
            mask = (((yy - 64) ** 2 + (xx - 64 - i % 20) ** 2) < 40 ** 2).astype(np.uint8)
            base.append({"image": img, "mask": mask})
        source = "synthetic textured images (DUTS not found)"
    samples = [dict(base[i % len(base)], z=np.zeros(120, np.float32), meta={"i": i}) for i in range(n)]
    return samples, source


def bench_encoding(samples: list[dict], encoding: str, tmp: Path, shard_size: int) -> dict:
    out = tmp / encoding
    t0 = time.perf_counter()
    w = ShardSetWriter(out, "bench", encoding=encoding, shard_size=shard_size, params={}, seed=0)
    for k, s in enumerate(range(0, len(samples), shard_size)):
        w.write_shard(k, samples[s : s + shard_size])
    write_s = time.perf_counter() - t0
    urls = sorted(str(p) for p in out.glob("bench-*.tar.zst"))
    nbytes = sum(os.path.getsize(u) for u in urls)
    t0, c0 = time.perf_counter(), time.process_time()
    n = 0
    for u in urls:
        for s in iter_samples(u):
            n += 1
    read_s, read_cpu = time.perf_counter() - t0, time.process_time() - c0
    assert n == len(samples)
    return {"encoding": encoding, "bytes_per_sample": nbytes / n, "write_sps": n / write_s, "read_sps": n / read_s,
            "read_sps_cpu": n / read_cpu}


def bench_png_folder(samples: list[dict], tmp: Path) -> dict:
    out = tmp / "pngfolder"
    (out / "images").mkdir(parents=True)
    (out / "masks").mkdir()
    t0 = time.perf_counter()
    for i, s in enumerate(samples):
        Image.fromarray(s["image"]).save(out / "images" / f"{i:06d}.png")
        Image.fromarray(s["mask"] * np.uint8(255)).save(out / "masks" / f"{i:06d}.png")
    write_s = time.perf_counter() - t0
    nbytes = sum(p.stat().st_size for p in out.rglob("*.png"))
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(len(samples)):
        img = np.asarray(Image.open(out / "images" / f"{i:06d}.png").convert("RGB"))
        mask = np.asarray(Image.open(out / "masks" / f"{i:06d}.png").convert("L")) >= 128
        assert img.shape == (SIZE, SIZE, 3) and mask.shape == (SIZE, SIZE)
    read_s, read_cpu = time.perf_counter() - t0, time.process_time() - c0
    n = len(samples)
    return {"encoding": "PNG folder + PIL (baseline)", "bytes_per_sample": nbytes / n, "write_sps": n / write_s,
            "read_sps": n / read_s, "read_sps_cpu": n / read_cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="samples per encoding")
    ap.add_argument("--quick", action="store_true", help="300 samples (smoke run)")
    ap.add_argument("--shard-size", type=int, default=1000)
    args = ap.parse_args()
    n = 300 if args.quick else args.n
    cv2.setNumThreads(1)
    try:  # torch is not used here; pinned anyway so a torch-linked OpenMP pool cannot run wide
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    samples, source = load_samples(n)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = bench_png_folder(samples, Path(tmp))
        for enc in ENCODINGS:
            rows.append(bench_encoding(samples, enc, Path(tmp), args.shard_size))
    rows.append(base)
    print(f"# {n} samples of {SIZE}x{SIZE}: {source}; one process, cv2.setNumThreads(1), {platform.processor() or platform.machine()}")
    print(f"| {'encoding':<28} | {'bytes/sample':>12} | {'write samples/s':>15} | {'read samples/s':>14} "
          f"| {'read samples/CPU-s':>18} | {'read vs PNG folder (CPU)':>24} |")
    print(f"|{'-' * 30}|{'-' * 13}:|{'-' * 16}:|{'-' * 15}:|{'-' * 19}:|{'-' * 25}:|")
    for r in rows:
        label = r["encoding"] + (" (default)" if r["encoding"] == DEFAULT_ENCODING else "")
        print(f"| {label:<28} | {r['bytes_per_sample']:>12.0f} | {r['write_sps']:>15.0f} | {r['read_sps']:>14.0f} "
              f"| {r['read_sps_cpu']:>18.0f} | {r['read_sps_cpu'] / base['read_sps_cpu']:>23.2f}x |")
    print(json.dumps({"benchmark": "shard_io", "n": n, "source": source, "default": DEFAULT_ENCODING, "rows": rows,
                      "python": platform.python_version(), "opencv": cv2.__version__, "numpy": np.__version__}))


if __name__ == "__main__":
    main()
