"""gen-synth throughput: the host side per core, and the toy GAN end to end on this machine.

Rows:
- host: mask + filters            masking.rules.process_batch alone
- host: mask + filters + write    the pipeline's host thread (process_batch, sample build, encode,
                                  tar + zstd, atomic write) fed synthetic batches, one core
- toy: render pairs               Gan.generate_pair alone (the accelerator side; here TF on CPU)
- toy: render centred             Gan.generate_shifted over [0, -r/2, r/2]: the three images a latent
                                  costs under --mask-rule background-removal (Voynov & Babenko)
- toy: end to end                 generator.pipeline.run (render overlapped with the host thread)

Host rows use synthetic GAN-like pairs (no TensorFlow) and one thread in cv2/BLAS, so they are
per-core numbers. Each host row runs once to warm up (first-touch page faults, lazy imports and
allocator growth: paid once per gen-synth run, not per sample), then --reps more times; the table
shows the median of those (steady state, what a long run sees) and, as "cold", the warm-up pass.
Targets (issue 3): mask + filters >= 5000/s, + encode + write >= 1500/s per core.
Prints a table, then one JSON line.

    python benchmarks/gen_synth.py            # 2048 host samples, 512 toy samples
    python benchmarks/gen_synth.py --quick    # 512 / 128
    python benchmarks/gen_synth.py --no-toy   # host rows only (no TensorFlow)
    python benchmarks/gen_synth.py --no-toy --zstd-levels   # also: shard bytes and speed per zstd
                                                            # level, mask PNG bytes per zlib level
    python benchmarks/gen_synth.py --no-toy --stages        # also: CPU us per sample of each stage
                                                            # of the npy write path
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # per-core host numbers: set before numpy loads BLAS

import json
import platform
import tempfile
import time

import click
import cv2
import numpy as np

from generator.latents import LatentStream
from masking.rules import FilterConfig, process_batch
from generator.config import GenConfig, make_plan
from generator.render import Host
from generator.views import Views

BATCH = 64


def make_pairs(n: int, size: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """GAN-like pairs float32 [n, size, size, 3] in [-1, 1]: a smooth blob on a smooth coloured
    background; the shifted image lights the blob and darkens the rest, plus pixel noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    x = np.empty((n, size, size, 3), np.float32)
    xs = np.empty_like(x)
    for i in range(n):
        coarse = rng.normal(0, 0.5, (6, 6, 3)).astype(np.float32)
        bg = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
        cx, cy, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.3)
        obj = ((xx - cx) ** 2 + (yy - cy) ** 2 < r * r)[..., None]
        col = rng.uniform(-0.8, 0.8, 3).astype(np.float32)
        img = np.where(obj, col, bg) + rng.normal(0, 0.05, (size, size, 3)).astype(np.float32)
        x[i] = np.clip(img, -1, 1)
        xs[i] = np.clip(np.where(obj, 0.6 * img + 0.45, 0.4 * img - 0.6), -1, 1)
    return x, xs


class Clock:
    """Wall and CPU seconds of this process. On a shared machine the wall clock includes time
    spent waiting for a core; samples per CPU second is the per-core rate (one thread)."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def steady(fn, reps: int) -> tuple[float, float, float]:
    """(median CPU seconds, median wall seconds, warm-up CPU seconds) of fn() run 1 + reps times."""
    with Clock() as cold:
        fn()
    clocks = []
    for _ in range(reps):
        with Clock() as c:
            fn()
        clocks.append(c)
    return (float(np.median([c.cpu for c in clocks])), float(np.median([c.wall for c in clocks])), cold.cpu)


def bench_masks(x: np.ndarray, xs: np.ndarray, filters: FilterConfig, reps: int = 3) -> tuple[float, float, float]:
    """Samples per (median) CPU second, per wall second, and per CPU second of the warm-up pass."""
    def once():
        for s in range(0, len(x), BATCH):
            process_batch(x[s:s + BATCH], xs[s:s + BATCH], filters)

    cpu, wall, cold = steady(once, reps)
    return len(x) / cpu, len(x) / wall, len(x) / cold


def bench_host(x: np.ndarray, xs: np.ndarray, encoding: str, reps: int = 3) -> tuple[float, float, float, float]:
    """(samples per median CPU second, per wall second, per warm-up CPU second, bytes per
    sample) of the pipeline's host thread work, run synchronously on this thread."""
    sizes = []

    def once():
        sizes.append(_host_pass(x, xs, encoding))

    cpu, wall, cold = steady(once, reps)
    return len(x) / cpu, len(x) / wall, len(x) / cold, sizes[-1]


def _host_pass(x: np.ndarray, xs: np.ndarray, encoding: str) -> float:
    """One pass of the host work over fresh output; returns shard bytes per sample."""
    from shardset import ShardSetWriter

    n = len(x)
    with tempfile.TemporaryDirectory() as out:
        cfg = GenConfig(gan="toy", latents="prior", n=n, shard_size=min(n, 1000), name="bench", out=out,
                        encoding=encoding, histogram_filter=False, size_filter=False, val_fraction=0.0,
                        batch_size=BATCH, write_threads=1).resolved()  # synchronous: one core
        plan = make_plan(cfg)
        writer = ShardSetWriter(out, "bench", encoding=encoding, shard_size=cfg.shard_size, params={}, seed=0)
        host = Host(cfg, plan, writer, cfg.filter_config(), None, None)
        for shard in range(plan.num_shards):
            stream = LatentStream(0, shard, 120)
            s0 = shard * cfg.shard_size
            for s in range(s0, s0 + plan.sizes[shard], BATCH):
                e = min(s + BATCH, s0 + plan.sizes[shard])
                host.consume(shard, stream.take(e - s), Views(x[s:e], xs[s:e], x[s:e], None))
        nbytes = sum(p.stat().st_size for p in os.scandir(out) if p.name.endswith(".tar.zst"))
    return nbytes / n


def _best_cpu(fn, reps: int = 3) -> float:
    """Fewest CPU seconds of `reps` calls of fn() (the least disturbed run on a shared machine)."""
    best = float("inf")
    for _ in range(reps):
        c = time.process_time()
        fn()
        best = min(best, time.process_time() - c)
    return best


def bench_levels(x: np.ndarray, xs: np.ndarray) -> list[tuple[str, float, float, float]]:
    """(setting, bytes per sample, encode us per sample, decode us per sample) of the shard's zstd
    level and of the mask PNG's zlib level, on npy shards of the synthetic samples."""
    import zlib

    import zstandard

    from shardset import codec
    from shardset.format import ZSTD_LEVEL
    from shardset.writer import build_tar

    res = process_batch(x, xs, FilterConfig(histogram_rule=None, size_filter=False))
    members = {}
    for i in range(len(x)):
        sample = {"image": np.clip(np.rint((x[i] + 1) * 127.5), 0, 255).astype(np.uint8), "mask": res.masks[i],
                  "z": np.zeros(120, np.float32), "meta": {"i": i, "fg_fraction": float(res.fg_fraction[i])}}
        for field, data in codec.encode_sample(sample, "npy").items():
            members[f"s-{i:06d}.{field}"] = data
    tar = build_tar(members)
    n, rows = len(x), []
    for level in (-1, 1, 3):
        cctx = zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True, threads=0)
        frame = cctx.compress(tar)
        enc = _best_cpu(lambda: cctx.compress(tar))
        dec = _best_cpu(lambda: zstandard.ZstdDecompressor().decompress(frame))
        mark = " (used)" if level == ZSTD_LEVEL else ""
        rows.append((f"shard zstd level {level}{mark}", len(frame) / n, 1e6 * enc / n, 1e6 * dec / n))
    packed = [np.concatenate([np.zeros((m.shape[0], 1), np.uint8), np.packbits(m, axis=1)], axis=1).tobytes()
              for m in res.masks]
    for level in (1, 6, 9):
        mark = " (used)" if level == codec.MASK_ZLIB_LEVEL else ""
        size = sum(len(zlib.compress(p, level)) for p in packed) / n
        enc = _best_cpu(lambda: [zlib.compress(p, level) for p in packed])
        rows.append((f"mask PNG zlib level {level}{mark}", size, 1e6 * enc / n, float("nan")))
    return rows


def bench_stages(x: np.ndarray, xs: np.ndarray) -> list[tuple[str, float]]:
    """(stage, CPU microseconds per sample, best of 3 after a warm-up) along the npy write path."""
    import hashlib

    from generator.render import shard_sample
    from shardset import ShardSetWriter, codec
    from shardset.writer import build_tar, compress

    n, rows = len(x), []

    def stage(name, fn):
        result = fn()  # warm-up; its result feeds the next stage
        rows.append((name, 1e6 * _best_cpu(fn) / n))
        return result

    res = stage("mask + filters (default rules)",
                lambda: [process_batch(x[s:s + BATCH], xs[s:s + BATCH]) for s in range(0, n, BATCH)])
    masks = np.concatenate([r.masks for r in res])
    samples = stage("sample dicts (float -> uint8 image)",
                    lambda: [shard_sample("b", 0, 0, i, x[i], masks[i], np.zeros(120, np.float32), 0, i, 0.3)
                             for i in range(n)])
    enc = stage("encode fields (npy, mask PNG, z, meta)",
                lambda: [codec.encode_sample(smp, "npy") for smp in samples])
    members = {f"b-000000-{i:06d}.{k}": v for i, e in enumerate(enc) for k, v in e.items()}
    tar = stage("tar assembly", lambda: build_tar(members))
    data = stage("zstd compress", lambda: compress(tar))
    stage("sha256 of the shard", lambda: hashlib.sha256(data).hexdigest())
    with tempfile.TemporaryDirectory() as out:
        writer = ShardSetWriter(out, "b", encoding="npy", shard_size=n, params={}, seed=0)
        stage("write_shard (encode..sha256 + fsync)", lambda: writer.write_shard(0, samples))
    return rows


def bench_toy(n: int) -> dict:
    from generator.inputs import cached_gan
    from generator.pipeline import run
    from gans.toy import toy_direction

    gan = cached_gan("toy")
    z = np.random.default_rng(0).standard_normal((BATCH, 120)).astype(np.float32)
    gan.generate_pair(z, toy_direction(), 5.0)  # trace once
    reps = max(1, n // BATCH)
    with Clock() as c:
        for _ in range(reps):
            gan.generate_pair(z, toy_direction(), 5.0)
    out = {"render_cpu": reps * BATCH / c.cpu, "render_wall": reps * BATCH / c.wall}
    centred = [0.0, -2.5, 2.5]  # masking.rules.pair_shifts("background-removal", 5) beside G(z)
    gan.generate_shifted(z, toy_direction(), centred)  # trace once
    with Clock() as c:
        for _ in range(reps):
            gan.generate_shifted(z, toy_direction(), centred)
    out.update(centred_cpu=reps * BATCH / c.cpu, centred_wall=reps * BATCH / c.wall)
    with tempfile.TemporaryDirectory() as folder:
        cfg = GenConfig(gan="toy", latents="prior", n=n, shard_size=min(n, 500), name="bench", out=folder,
                        batch_size=BATCH, histogram_rule="bimodal", val_fraction=0.0)
        with Clock() as c:
            res = run(cfg)
    tot = res.manifest["totals"]
    return {**out, "e2e_cpu": n / c.cpu, "e2e_wall": n / c.wall, "acceptance": tot["samples"] / tot["drawn"],
            "device": gan.device}


@click.command()
@click.option("--n", type=int, default=2048, show_default=True, help="Synthetic samples for the host rows.")
@click.option("--toy-n", type=int, default=512, show_default=True, help="Samples for the toy end-to-end row.")
@click.option("--quick", is_flag=True, help="--n 512 --toy-n 128.")
@click.option("--no-toy", is_flag=True, help="Skip the toy rows (no TensorFlow).")
@click.option("--zstd-levels", is_flag=True, help="Also compare zstd levels (shards) and zlib levels (mask PNG).")
@click.option("--stages", is_flag=True, help="Also time each stage of the npy write path (CPU us per sample).")
@click.option("--reps", type=click.IntRange(1), default=3, show_default=True,
              help="Timed passes per host row after one warm-up pass; the median is reported.")
def main(n: int, toy_n: int, quick: bool, no_toy: bool, zstd_levels: bool, stages: bool, reps: int) -> None:
    if quick:
        n, toy_n = 512, 128
    cv2.setNumThreads(1)
    x, xs = make_pairs(n)
    rows = []  # (measure, per CPU second, per wall second, per CPU second cold, target, note)
    for label, fc in (("bimodal rule, default", FilterConfig()), ("paper rule", FilterConfig(histogram_rule="paper"))):
        rows.append((f"host: mask + filters ({label})", *bench_masks(x, xs, fc, reps), ">= 5000/s/core", ""))
    for enc in ("png", "webp", "npy"):
        cpu, wall, cold, per = bench_host(x, xs, enc, reps)
        rows.append((f"host: mask + filters + {enc} encode + write", cpu, wall, cold, ">= 1500/s/core",
                     f"{per / 1024:.1f} KiB/sample"))
    result = {"bench": "gen_synth", "host_samples": n, "reps": reps, "cpu": platform.processor() or platform.machine(),
              "cores_visible": os.cpu_count(), "numpy": np.__version__, "cv2": cv2.__version__,
              "per_cpu_s": {r[0]: round(r[1], 1) for r in rows}, "per_wall_s": {r[0]: round(r[2], 1) for r in rows},
              "per_cpu_s_cold": {r[0]: round(r[3], 1) for r in rows}}
    if not no_toy:
        toy = bench_toy(toy_n)
        for key, label, note in (("render", "render pairs", "G(z) and G(z+5h): 2 images per pair"),
                                 ("centred", "render centred", "G(z), G(z-2.5h), G(z+2.5h): 3 images per latent"),
                                 ("e2e", "end to end", f"acceptance {100 * toy['acceptance']:.0f}%, {toy_n} samples")):
            name = f"toy: {label} ({toy['device']}, all cores)"
            rows.append((name, toy[key + "_cpu"], toy[key + "_wall"], float("nan"), "", note))
            result["per_cpu_s"][name] = round(toy[key + "_cpu"], 1)
            result["per_wall_s"][name] = round(toy[key + "_wall"], 1)
        import tensorflow as tf

        result["tensorflow"] = tf.__version__
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'/CPU-s':>8}  {'/wall-s':>8}  {'cold':>8}  {'target':<15} note")
    for name, cpu, wall, cold, target, note in rows:
        cold_text = "-" if cold != cold else f"{cold:.0f}"  # NaN: the toy rows run once
        print(f"{name:<{width}}  {cpu:>8.0f}  {wall:>8.0f}  {cold_text:>8}  {target:<15} {note}")
    if zstd_levels:
        levels = bench_levels(x, xs)
        result["levels"] = {r[0]: {"bytes_per_sample": round(r[1], 1), "encode_us": round(r[2], 1),
                                   "decode_us": None if r[3] != r[3] else round(r[3], 1)} for r in levels}
        print(f"\n{'setting':<{width}}  {'B/sample':>8}  {'enc us':>8}  {'dec us':>8}   (per sample, CPU)")
        for name, size, enc, dec in levels:
            dec_text = "-" if dec != dec else f"{dec:.1f}"  # NaN: not measured (masks decode in cv2)
            print(f"{name:<{width}}  {size:>8.0f}  {enc:>8.1f}  {dec_text:>8}")
    if stages:
        per_stage = bench_stages(x, xs)
        result["stages_us"] = {name: round(us, 1) for name, us in per_stage}
        print(f"\n{'stage (npy path)':<{width}}  {'us/sample':>9}   (CPU, best of 3)")
        for name, us in per_stage:
            print(f"{name:<{width}}  {us:>9.1f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
