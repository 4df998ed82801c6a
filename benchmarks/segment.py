"""`segment` end to end on ECSSD on the CPU: images/s, and where the time goes.

    python benchmarks/segment.py --quick            # 16 photos, widths 8 and 64, torch and onnxruntime
    python benchmarks/segment.py                    # all 1,000 ECSSD photos
    python benchmarks/segment.py --widths 64 --backends torch --workers 2 --batch-size 16

Each row runs segmenter.segment.segment (the command's library function: decode threads, the
short128 protocol, batched model calls, PNG encoding and atomic writes) on ECSSD's photos
(../shared/data/ecssd/images, or $BGW_SHARED_DATA/ecssd/images) into a temporary folder, after a
warm-up run on 4 photos. The U-Net has random weights (speed does not depend on them) and is run as
a checkpoint (torch) or as its export-model ONNX file (onnxruntime). Without ECSSD, photos of
ECSSD's typical size (400 x 300) are drawn into a temporary folder and the table says so.

Columns: images/s = images segmented / wall seconds. decode, model and encode are each stage's
share of the three stages' summed seconds (decode: read, decode, resize to the model input, in
worker threads; model: normalise, forward, foreground rule, in the main thread; encode: resize back,
quantise, threshold, PNG encode and write, in worker threads). Decoding and encoding overlap the
model, so the shares say what to speed up, not what adds up to the wall time. Prints a table and
one JSON line; no asserts.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from segmenter.segment import SegmentConfig, segment  # noqa: E402

ECSSD = Path(os.environ.get("BGW_SHARED_DATA", REPO.parent / "shared" / "data")) / "ecssd" / "images"
STAGES = ("decode", "model", "encode")


def photos(folder: Path, n: int | None, tmp: Path) -> tuple[list[Path], str]:
    """The first n ECSSD photos (all with n None), or n drawn stand-ins of 400 x 300 without ECSSD."""
    if folder.is_dir():
        found = sorted(folder.glob("*.jpg"))
        return (found if n is None else found[:n]), f"ECSSD ({folder})"
    n = n or 1000
    rng = np.random.default_rng(0)
    out = tmp / "stand-ins"
    out.mkdir()
    paths = []
    for i in range(n):
        img = cv2.GaussianBlur(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8), (0, 0), 3)
        paths.append(out / f"{i:04d}.jpg")
        cv2.imwrite(str(paths[-1]), img)
    return paths, f"{n} drawn 400x300 JPEGs (ECSSD not found at {folder})"


def backend_for(kind: str, width: int, tmp: Path):
    """A random-weight U-Net of `width` as a checkpoint (torch) or its exported ONNX file."""
    import torch

    from segmodel.checkpoint import save_checkpoint
    from segmodel.runtime import OnnxBackend, TorchBackend
    from segmodel.unet import UNet

    run = tmp / f"w{width}"
    if not run.exists():
        torch.manual_seed(0)
        save_checkpoint(run, 1, UNet(width=width), {"shardset": {"name": "bench", "fingerprint": "0" * 64},
                                                    "config": {}})
    if kind == "torch":
        return TorchBackend(run, "cpu")
    from segmenter.export import ExportConfig, export_onnx

    model = tmp / f"w{width}-onnx" / "model.onnx"
    if not model.exists():
        export_onnx(ExportConfig(ckpt=run, out=model))
    return OnnxBackend(model, "cpu")


def measure(backend, inputs: list[Path], out: Path, batch: int, workers: int) -> dict:
    def cfg(images, folder):
        return SegmentConfig(inputs=tuple(map(str, images)), out=folder, batch_size=batch, workers=workers,
                             device="cpu")

    segment(cfg(inputs[:4], out.with_name(out.name + "-warm-up")), backend=backend)
    summary = segment(cfg(inputs, out), backend=backend)
    sec = summary["seconds"]
    busy = sum(sec[s] for s in STAGES)
    return {"images": summary["segmented"], "wall_s": sec["wall"], "images_per_s": summary["segmented"] / sec["wall"],
            "share": {s: sec[s] / busy for s in STAGES}, "seconds": sec}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="16 photos instead of all of ECSSD's 1,000")
    ap.add_argument("--images", type=int, default=None, help="photos per row (default: 16 quick, else all)")
    ap.add_argument("--widths", default="8,64", help="U-Net widths (64: the paper's)")
    ap.add_argument("--backends", default="torch,onnx", help="torch (a checkpoint) and/or onnx (onnxruntime)")
    ap.add_argument("--batch-size", type=int, default=SegmentConfig.batch_size)
    ap.add_argument("--workers", type=int, default=SegmentConfig.workers, help="decode and encode threads")
    ap.add_argument("--data", type=Path, default=ECSSD, help="a folder of photos (default: ECSSD's)")
    args = ap.parse_args(argv)
    n = args.images or (16 if args.quick else None)
    backends = args.backends.split(",")
    if "onnx" in backends:
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError as e:
            print(f"onnx left out: {e} (pip install onnx onnxruntime)")
            backends.remove("onnx")

    import torch

    rows = []
    with tempfile.TemporaryDirectory(prefix="bgw-bench-segment-") as tmp_name:
        tmp = Path(tmp_name)
        inputs, source = photos(args.data, n, tmp)
        for width in [int(w) for w in args.widths.split(",")]:
            for kind in backends:
                r = measure(backend_for(kind, width, tmp), inputs, tmp / f"out-{kind}-{width}", args.batch_size,
                            args.workers)
                rows.append({"width": width, "backend": kind, **r})
    cpu = platform.processor() or platform.machine()
    print(f"segment on {len(inputs)} photos: {source}")
    print(f"CPU {cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"batch {args.batch_size}, {args.workers} decode/encode threads, protocol short128, binary masks")
    print(f"{'width':>5} {'backend':>7} {'images/s':>9} {'wall s':>7} " + " ".join(f"{s:>7}" for s in STAGES))
    for r in rows:
        print(f"{r['width']:>5} {r['backend']:>7} {r['images_per_s']:>9.1f} {r['wall_s']:>7.1f} "
              + " ".join(f"{r['share'][s]:>7.0%}" for s in STAGES))
    print("(decode / model / encode: each stage's share of the three stages' summed seconds; decode and encode "
          "run in threads beside the model)")
    result = {"bench": "segment", "images": len(inputs), "source": source, "cpu": cpu, "cores": os.cpu_count(),
              "torch": torch.__version__, "threads": torch.get_num_threads(), "batch_size": args.batch_size,
              "workers": args.workers, "rows": rows}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
