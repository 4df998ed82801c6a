"""The checkpoint format (docs/ARCHITECTURE.md): safetensors weights + a JSON sidecar, written by
the trainer, read for inference by the evaluator. Nothing here unpickles.

Layout of a run folder's `checkpoints/`:

    step-000500.safetensors   model weights and BatchNorm buffers (unwrapped model), nothing else
    step-000500.json          sidecar: format, model args, step, `input_size` (the training
                              resolution, pixels), shard-set fingerprint, config, `files` (name
                              and sha256 of each data file of the checkpoint)
    last.json                 names the newest complete checkpoint; written last (commit marker)

A checkpoint may carry more data files (the trainer's resume state, `step-000500.state.pt`):
`save_checkpoint(..., extra_files=...)` writes them and lists them in the sidecar's `files`, and
`read_verified` reads one back checked against its sha256. Every file is written to a temporary
name and renamed into place, so a killed run leaves the previous checkpoint intact. A file whose
sha256 differs from its sidecar is refused.

`input_size_of(meta)` is the size a checkpoint learnt at, which inference feeds it at by default;
sidecars written before it was recorded fall back to their config's `size`, else the paper's 128.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from core.atomic import atomic_write_bytes
from core.errors import UserError, first_line

from .inference import DEFAULT_INPUT_SIZE, whole_size
from .unet import UNet

log = logging.getLogger(__name__)

FORMAT = "bgw-unet"
FORMAT_VERSION = 1
CKPT_DIR = "checkpoints"
LAST = "last.json"

__all__ = ["CheckpointError", "FORMAT", "FORMAT_VERSION", "CKPT_DIR", "LAST", "DEFAULT_INPUT_SIZE", "save_checkpoint",
           "find_sidecar", "read_sidecar", "read_verified", "build_model", "load_checkpoint", "load_for_inference",
           "atomic_write_json", "checkpoint_stem", "input_size_of"]


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be used: missing, tampered, or of another architecture."""


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def checkpoint_stem(step: int) -> str:
    return f"step-{step:06d}"


def save_checkpoint(run_dir: str | Path, step: int, model: torch.nn.Module, meta: dict,
                    extra_files: dict[str, tuple[str, bytes]] | None = None) -> Path:
    """Save the weights of `step` (and `extra_files`: key -> (name suffix, bytes), each written as
    `step-XXXXXX{suffix}` and listed under `files[key]`), then the sidecar, then last.json.
    Returns the sidecar path.

    `model` must be the unwrapped UNet (not DDP, not compiled); `meta` holds the sidecar's
    `input_size` (the training resolution), `shardset` and `config` entries and any extra facts
    (e.g. the latest validation numbers).
    """
    if not isinstance(model, UNet):
        raise TypeError(f"save_checkpoint wants the unwrapped UNet, got {type(model).__name__}")
    if meta.get("input_size") is not None and whole_size(meta["input_size"]) is None:
        raise ValueError(f"input_size must be a whole number of pixels >= 1, got {meta['input_size']!r}")
    ckpt_dir = Path(run_dir) / CKPT_DIR
    stem = checkpoint_stem(step)
    # contiguous CPU copies: safetensors refuses shared or strided storage
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    # one metadata entry: safetensors writes its metadata in the order of a Rust HashMap, which
    # differs from process to process, so two entries would make the bytes of the same weights
    # differ between runs (the step is in the sidecar and the file name)
    weights = st_save(tensors, metadata={"format": FORMAT})
    files = {"weights": {"name": f"{stem}.safetensors", "sha256": _sha256(weights)}}
    atomic_write_bytes(ckpt_dir / files["weights"]["name"], weights)
    for key, (suffix, data) in (extra_files or {}).items():
        files[key] = {"name": f"{stem}{suffix}", "sha256": _sha256(data)}
        atomic_write_bytes(ckpt_dir / files[key]["name"], data)
    sidecar = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": model.arch(),
               "step": int(step), "files": files, **meta}
    sidecar_path = ckpt_dir / f"{stem}.json"
    atomic_write_json(sidecar_path, sidecar)
    atomic_write_json(ckpt_dir / LAST, {"step": int(step), "sidecar": sidecar_path.name})
    log.info("saved checkpoint %s", sidecar_path)
    return sidecar_path


def find_sidecar(path: str | Path) -> Path:
    """Sidecar JSON for a run folder, a checkpoints folder, a .safetensors or a sidecar path."""
    path = Path(path)
    if path.is_dir():
        for folder in (path / CKPT_DIR, path):
            last = folder / LAST
            if last.is_file():
                try:
                    name = json.loads(last.read_text())["sidecar"]
                except (ValueError, KeyError, TypeError) as e:
                    raise CheckpointError(f"{last} is unreadable ({e}); point at a step-*.safetensors file instead")
                if Path(name).name != name:
                    raise CheckpointError(f"{last} names {name!r}, which is not a file in {folder}")
                return folder / name
        raise CheckpointError(f"no checkpoint in {path} (no {CKPT_DIR}/{LAST}); train first or give a .safetensors file")
    if path.suffix == ".safetensors":
        sidecar = path.with_suffix(".json")
        if not sidecar.is_file():
            raise CheckpointError(f"{path} has no sidecar {sidecar.name}; a bgw-unet checkpoint is the pair")
        return sidecar
    if path.suffix == ".json" and path.is_file():
        return path
    raise CheckpointError(f"checkpoint {path} not found; give a run folder or a step-*.safetensors file")


def read_sidecar(sidecar_path: str | Path) -> dict:
    """Parse and check a sidecar: right format, a U-Net, sane model arguments."""
    sidecar_path = Path(sidecar_path)
    try:
        meta = json.loads(sidecar_path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint sidecar {sidecar_path} is unreadable ({e})")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{sidecar_path} is not a {FORMAT} checkpoint (format="
                              f"{meta.get('format') if isinstance(meta, dict) else None!r})")
    model = meta.get("model")
    if not isinstance(model, dict) or model.get("arch") != "unet":
        arch = model.get("arch") if isinstance(model, dict) else model
        raise CheckpointError(f"{sidecar_path} holds architecture {arch!r}, not 'unet'; "
                              "use a checkpoint written by train-unet")
    try:
        _model_args(model)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{sidecar_path}: bad model arguments {model} ({e})")
    if meta.get("input_size") is not None and whole_size(meta["input_size"]) is None:
        raise CheckpointError(f"{sidecar_path}: input_size {meta['input_size']!r} is not a size in pixels; "
                              "fix or remove it (the training config's size is used then)")
    return meta


def input_size_of(meta: dict) -> tuple[int, str]:
    """(size in pixels, where it came from) of the images a checkpoint was trained on: the sidecar's
    `input_size` ("recorded"), else its training config's `size` ("config"; sidecars written before
    the size was recorded), else the paper's 128 ("default")."""
    size = whole_size(meta.get("input_size"))
    if size is not None:
        return size, "recorded"
    config = meta.get("config")
    size = whole_size(config.get("size")) if isinstance(config, dict) else None
    if size is not None:
        return size, "config"
    return DEFAULT_INPUT_SIZE, "default"


def _model_args(model_meta: dict) -> dict:
    args = {"in_channels": int(model_meta["in_channels"]), "n_classes": int(model_meta["n_classes"]),
            "width": int(model_meta["width"]), "bilinear": bool(model_meta["bilinear"])}
    if min(args["in_channels"], args["n_classes"], args["width"]) < 1:
        raise ValueError("sizes must be positive")
    return args


def read_verified(folder: Path, entry: dict, what: str) -> bytes:
    """The bytes of the checkpoint file a sidecar's `files` entry names, checked against its sha256."""
    name = entry.get("name", "")
    if Path(name).name != name or not name:
        raise CheckpointError(f"sidecar names {what} file {name!r}, which is not a plain file name")
    path = folder / name
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"checkpoint {what} file {path} is missing ({e.strerror})")
    if _sha256(data) != entry.get("sha256"):
        raise CheckpointError(f"{path} does not match the sha256 in its sidecar (tampered or truncated); "
                              "refusing to load it")
    return data


def build_model(meta: dict, state: dict[str, torch.Tensor], source: str | Path) -> UNet:
    """UNet from sidecar model args, loaded strictly: any other tensor set is another architecture."""
    model = UNet(**_model_args(meta["model"]))
    expected = model.state_dict()
    bad = sorted(set(expected) ^ set(state))
    bad += sorted(k for k in expected if k in state and expected[k].shape != state[k].shape)
    if bad:
        raise CheckpointError(f"{source} does not hold a UNet({_model_args(meta['model'])}) "
                              f"({len(bad)} mismatched tensors, e.g. {bad[0]!r}); another architecture")
    model.load_state_dict(state, strict=True)
    return model


def load_checkpoint(path: str | Path) -> tuple[UNet, dict, Path]:
    """(UNet in train mode on the CPU, sidecar meta, sidecar path), verified against the sidecar."""
    sidecar_path = find_sidecar(path)
    meta = read_sidecar(sidecar_path)
    files = meta.get("files") or {}
    if "weights" not in files:
        raise CheckpointError(f"{sidecar_path} names no weights file")
    raw = read_verified(sidecar_path.parent, files["weights"], "weights")
    try:
        tensors = st_load(raw)
    except Exception as e:  # noqa: BLE001 - the file-reading boundary: safetensors' own error types
        raise CheckpointError(f"{sidecar_path.parent / files['weights']['name']} is not valid safetensors "
                              f"({first_line(e)})")
    model = build_model(meta, tensors, sidecar_path.parent / files["weights"]["name"])
    return model, meta, sidecar_path


def load_for_inference(path: str | Path) -> tuple[UNet, dict]:
    """(UNet in eval mode on the CPU, sidecar meta) from a run folder or a .safetensors file."""
    model, meta, _ = load_checkpoint(path)
    return model.eval(), meta
