"""Peak memory of every reader of user images on an image bomb: a small PNG that decodes to
SIDE x SIDE pixels (default 20000 x 20000: 1.2 GB of RGB from a 1.2 MB file).

    python benchmarks/image_bomb.py [--side 20000] [--quick] [--no-eval-seg]

Builds a folder images/ + masks/ holding the bomb pair and one ordinary 400x300 pair, then runs
each reader in its own process and reads that process's peak resident set size (os.wait4's
ru_maxrss, what `/usr/bin/time -v` prints as "Maximum resident set size"):

    benchdata   get_dataset("folder:DIR").iter_loaded(...) (eval-seg's loader)
    eval-seg    eval-seg --ckpt RUN --dataset folder:DIR (RUN: a 2-step width-4 U-Net)
    import      shardset import --images DIR/images --masks DIR/masks
    embed       generator.embed.read_encoder_input(DIR/images/bomb.png) (gen-synth's embedding reader)

Prints a table, then one JSON line with every number. Run it with PYTHONPATH pointing at another
checkout to measure that one (the commands are the same).
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def write_bomb(path: Path, side: int, channels: int) -> int:
    """A PNG of side x side zero pixels, compressed row by row (never held decoded)."""
    c = zlib.compressobj(9)
    row = b"\0" * (channels * side + 1)
    idat = b"".join([c.compress(row) for _ in range(side)] + [c.flush()])
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2 if channels == 3 else 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))
    return path.stat().st_size


def peak_rss_kb(cmd: list[str], env: dict, cwd: Path) -> tuple[int, int, str]:
    """(peak RSS in KiB, exit code, last output line) of `cmd` run to its end."""
    # cwd outside any checkout: `python -c` puts the working folder first on sys.path
    p = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    lines = [ln for ln in out.splitlines() if ln.strip()]
    return usage.ru_maxrss, p.returncode, lines[-1] if lines else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--side", type=int, default=20000, help="the bomb's side in pixels")
    ap.add_argument("--quick", action="store_true", help="a 10000 x 10000 bomb (still over the 64 MP limit)")
    ap.add_argument("--no-eval-seg", action="store_true", help="skip the eval-seg row (it trains a tiny U-Net)")
    args = ap.parse_args()
    side = 10000 if args.quick else args.side
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.environ.get("PYTHONPATH", str(REPO))}
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "bombset"
        (data / "images").mkdir(parents=True)
        (data / "masks").mkdir()
        image_bytes = write_bomb(data / "images" / "bomb.png", side, 3)
        write_bomb(data / "masks" / "bomb.png", side, 1)
        rng = np.random.default_rng(0)
        cv2.imwrite(str(data / "images" / "a.png"), rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))
        mask = np.zeros((300, 400), np.uint8)
        mask[100:200, 100:300] = 255
        cv2.imwrite(str(data / "masks" / "a.png"), mask)

        runs = {
            "benchdata": [py, "-c", "from benchdata import get_dataset\n"
                          f"ds = get_dataset('folder:{data}')\n"
                          "n = sum(1 for _ in ds.iter_loaded(ds.test_items()))\n"
                          "print(f'{n} loaded, {len(getattr(ds, \"skipped\", {}))} skipped')"],
            "import": [str(BIN / "shardset"), "import", "--images", str(data / "images"), "--masks",
                       str(data / "masks"), "--out", str(tmp / "imported"), "--name", "b"],
            "embed": [py, "-c", "from generator.embed import read_encoder_input\n"
                      f"print('prepared' if read_encoder_input('{data / 'images' / 'bomb.png'}') is not None "
                      "else 'skipped')"],
        }
        if not args.no_eval_seg:
            run = tmp / "run"
            from trainer.toy import write_disc_set

            write_disc_set(tmp / "discs", "discs", n_train=32, n_val=8, size=32, shard_size=8)
            subprocess.run([str(BIN / "train-unet"), "--shards", str(tmp / "discs" / "discs.json"), "--out", str(run),
                            "--size", "32", "--width", "4", "--batch-size", "4", "--steps", "2", "--val-every", "0",
                            "--workers", "0", "--ckpt-every", "2", "--device", "cpu", "--lr-milestones", "1"],
                           env=env, cwd=tmp, check=True, capture_output=True)
            runs["eval-seg"] = [str(BIN / "eval-seg"), "--ckpt", str(run), "--dataset", f"folder:{data}",
                                "--device", "cpu", "--out", str(tmp / "eval")]
        results = {}
        print(f"bomb: {side}x{side} RGB PNG of {image_bytes} bytes (+ a {side}x{side} gray mask), "
              f"one 400x300 pair beside it; PYTHONPATH={env['PYTHONPATH']}")
        print(f"{'reader':10} {'peak RSS MiB':>12} {'exit':>5}  last line")
        for name, cmd in runs.items():
            kb, rc, last = peak_rss_kb(cmd, env, tmp)
            results[name] = {"peak_rss_kib": kb, "exit": rc}
            print(f"{name:10} {kb / 1024:12.0f} {rc:5d}  {last[:90]}")
    print(json.dumps({"side": side, "image_bytes": image_bytes, "results": results}))


if __name__ == "__main__":
    main()
