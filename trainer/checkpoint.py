"""Training checkpoints: segmodel's checkpoint (weights + sidecar) plus the resume state.

`save_run_state` / `load_run_state`: a checkpoint of a training run, i.e. segmodel's checkpoint
(`save_checkpoint` / `load_checkpoint`: weights and sidecar) with the resume state. The resume
state is one more file of the checkpoint, `step-000500.state.pt`: optimizer,
scheduler, GradScaler, RNG states and the data position, tensors and plain containers only,
written with torch.save and read with torch.load(weights_only=True), checked against the sha256
its sidecar lists. Only the newest checkpoint keeps it (2x the weights' size, with Adam): older
ones keep their weights for evaluation. The format itself (layout, sidecar, loading for
inference) is segmodel.checkpoint's.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from core.errors import first_line
from segmodel.checkpoint import (  # noqa: F401  (CKPT_DIR, LAST, find_sidecar: the run folder's layout)
    CKPT_DIR,
    LAST,
    CheckpointError,
    atomic_write_json,
    checkpoint_stem,
    find_sidecar,
    read_verified,
)
from segmodel.checkpoint import load_checkpoint as load_weights
from segmodel.checkpoint import save_checkpoint as save_weights

STATE_SUFFIX = ".state.pt"


def save_run_state(run_dir: str | Path, step: int, model: torch.nn.Module, meta: dict,
                   train_state: dict | None = None, keep: int = 0) -> Path:
    """Save weights and sidecar (segmodel.checkpoint) with the resume state `train_state`, then
    drop the resume state of older checkpoints and, with `keep` > 0, every checkpoint but the
    `keep` newest and the best (`prune_checkpoints`); returns the sidecar path."""
    extra = {}
    if train_state is not None:
        buf = io.BytesIO()
        torch.save(train_state, buf)
        extra["state"] = (STATE_SUFFIX, buf.getvalue())
    try:
        sidecar_path = save_weights(run_dir, step, model, meta, extra)
    except OSError as exc:
        if exc.filename is not None:
            raise
        # a write that fails (a full disk) names no file; every file of this checkpoint has this stem
        raise OSError(exc.errno, exc.strerror, f"{Path(run_dir) / CKPT_DIR / checkpoint_stem(step)}.*") from None
    if train_state is not None:
        _prune_states(sidecar_path.parent, keep=sidecar_path.name)
    if keep:
        prune_checkpoints(sidecar_path.parent, keep)
    return sidecar_path


def _val_iou(meta: dict) -> float | None:
    value = (meta.get("val") or {}).get("val_iou")
    return float(value) if isinstance(value, (int, float)) else None


def prune_checkpoints(ckpt_dir: Path, keep: int) -> list[str]:
    """Delete every checkpoint but the `keep` newest and the best by validation IoU (its sidecar's
    `val.val_iou`; the newer one wins a tie). A checkpoint is 69 MB at width 64: a 12,000-step run
    saving every 1,000 steps would otherwise keep 830 MB. Each goes sidecar first, so a
    half-deleted checkpoint is never named by a sidecar; last.json only names the newest, which
    stays. Returns the deleted sidecars' names."""
    sidecars = sorted(ckpt_dir.glob("step-*.json"))
    metas = {}
    for sidecar in sidecars:
        try:
            metas[sidecar.name] = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            metas[sidecar.name] = {}
    kept = {s.name for s in sidecars[-keep:]}
    scored = [(_val_iou(m), name) for name, m in metas.items() if _val_iou(m) is not None]
    if scored:
        kept.add(max(scored)[1])
    deleted = []
    for sidecar in sidecars:
        if sidecar.name in kept:
            continue
        files = [f.get("name", "") for f in (metas[sidecar.name].get("files") or {}).values()]
        sidecar.unlink(missing_ok=True)
        for name in files:
            if name and Path(name).name == name:
                (ckpt_dir / name).unlink(missing_ok=True)
        deleted.append(sidecar.name)
    return deleted


def _prune_states(ckpt_dir: Path, keep: str) -> None:
    """Drop the resume state of older checkpoints (2x the weights' size each, with Adam): only the
    newest is ever resumed from. Their weights stay for evaluation; each sidecar is rewritten
    without its `state` entry before the file goes, so no sidecar names a missing file."""
    for sidecar in sorted(ckpt_dir.glob("step-*.json")):
        if sidecar.name == keep:
            continue
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            continue
        state = (meta.get("files") or {}).pop("state", None)
        if state is None:
            continue
        atomic_write_json(sidecar, meta)
        name = state.get("name", "")
        if name and Path(name).name == name:
            (ckpt_dir / name).unlink(missing_ok=True)


def load_run_state(path: str | Path, *, with_state: bool = False):
    """(model in train mode, sidecar meta, train_state or None), all verified against the sidecar."""
    model, meta, sidecar_path = load_weights(path)
    train_state = None
    if with_state:
        files = meta.get("files") or {}
        if "state" not in files:
            raise CheckpointError(f"{sidecar_path} has no training state; it cannot be resumed")
        data = read_verified(sidecar_path.parent, files["state"], "state")
        # weights_only: tensors and plain containers only; never unpickle arbitrary objects
        try:
            train_state = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        except Exception as e:  # noqa: BLE001 - the file-reading boundary: UnpicklingError and kin
            raise CheckpointError(f"{sidecar_path.parent / files['state']['name']} holds more than tensors and "
                                  f"plain values; refusing to unpickle it ({first_line(e)[:120]})")
    return model, meta, train_state


__all__ = ["CheckpointError", "save_run_state", "load_run_state", "prune_checkpoints", "STATE_SUFFIX"]
