"""A fingerprint of what the tools produce, to show that a restructuring changed no behaviour.

    python tests/behaviour_snapshot.py OUT.json [--part gen|train|all]

`gen`: a fixed toy gen-synth set (prior latents, seed 7, 300 samples in 3 shards, png encoding): the
sha256 of every shard and the manifest's fields that do not record time or tool version.
`train`: a fixed train-unet run on that set (CPU, 1 thread, width 4, 40 steps) and eval-seg on its
validation shard and on 50 ECSSD images: the checkpoint's sha256 and every number of results.json.
Run it before and after a change and diff the two JSON files; `--compare A B` does the diff and
lists what differs. Not a test (its numbers move whenever the toy or a default changes by design)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BGW_SHARED_DATA", REPO.parent / "shared" / "data"))
VOLATILE = {"created", "updated", "tool", "version", "commit", "host", "elapsed_s", "time", "seconds",
            "path", "out", "timestamp", "started", "finished", "duration_s", "images_per_s", "samples_per_s"}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _strip(obj):
    """Drop fields that record time, place or tool version; keep every number and setting."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _run(*args: str) -> None:
    res = subprocess.run([str(REPO / ".venv" / "bin" / args[0]), *args[1:]], capture_output=True, text=True,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{res.stdout}\n{res.stderr[-3000:]}")


def snapshot_gen(work: Path, cache: Path) -> dict:
    out = work / "set"
    _run("gen-synth", "--gan", "toy", "--latents", "prior", "--n", "300", "--shard-size", "100", "--val-shards", "1",
         "--seed", "7", "--encoding", "png", "--out", str(out), "--name", "snap", "--cache-dir", str(cache))
    manifest = json.loads((out / "snap.json").read_text())
    return {"files": {p.name: _sha(p) for p in sorted(out.glob("snap-*.tar.zst"))}, "manifest": _strip(manifest)}


def snapshot_train(work: Path) -> dict:
    run = work / "run"
    _run("train-unet", "--shards", str(work / "set" / "snap.json"), "--out", str(run), "--size", "64", "--width", "4",
         "--steps", "40", "--lr", "3e-3", "--val-every", "20", "--ckpt-every", "40", "--seed", "1",
         "--device", "cpu", "--cpu-threads", "1", *_loader_flag())
    ckpts = sorted((run / "checkpoints").glob("*.safetensors"))
    datasets = ["--dataset", f"shards:{work / 'set' / 'snap.json'}"]
    if (SHARED / "ecssd").is_dir():
        datasets += ["--dataset", f"folder:{SHARED / 'ecssd'}"]
    _run("eval-seg", "--ckpt", str(run), *datasets, "--limit", "50", "--out", str(work / "eval"), "--device", "cpu")
    results = json.loads((work / "eval" / "results.json").read_text())
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {"checkpoint": {p.name: _sha(p) for p in ckpts}, "metrics": _strip(metrics), "results": _strip(results)}


def _loader_flag() -> list[str]:
    """The loader-process flag under the name this checkout's train-unet knows (it was renamed)."""
    res = subprocess.run([str(REPO / ".venv" / "bin" / "train-unet"), "--help"], capture_output=True, text=True)
    return ["--workers", "0"] if "--workers" in res.stdout else ["--num-workers", "0"]


def compare(a: dict, b: dict, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{path}.{k}: only in {'second' if k not in a else 'first'}")
            else:
                out += compare(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in compare(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {str(a)[:80]} != {str(b)[:80]}"]


def main(argv: list[str]) -> None:
    if argv[:1] == ["--compare"]:
        diffs = compare(json.loads(Path(argv[1]).read_text()), json.loads(Path(argv[2]).read_text()))
        print("\n".join(diffs) if diffs else "identical")
        raise SystemExit(1 if diffs else 0)
    out = Path(argv[0])
    part = argv[argv.index("--part") + 1] if "--part" in argv else "all"
    with tempfile.TemporaryDirectory() as tmp:
        work, snap = Path(tmp), {}
        snap["gen"] = snapshot_gen(work, work / "cache")
        if part in ("train", "all"):
            snap["train"] = snapshot_train(work)
    out.write_text(json.dumps(snap, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
