"""`export_onnx(ExportConfig)`: a checkpoint as an ONNX file that runs anywhere onnxruntime does,
with its provenance in the file and a model card beside it.

The graph is the U-Net followed by the foreground-probability rule (segmodel.inference.
foreground_probability): one input `image_rgb_nchw_pm1`, float32 [N, 3, H, W] RGB in [-1, 1], one
output `foreground_prob_nhw`, float32 [N, H, W] in [0, 1]; batch, height and width are dynamic.

Exporter: PyTorch's TorchScript-based exporter (`dynamo=False`), which works offline with torch and
onnx alone (the torch.export-based default of torch >= 2.9 needs the onnxscript package). It traces
the model once, so the example input is 143 x 143: odd at every level of the U-Net (143, 71, 35,
17), so the padding of each up-step (segmodel.unet.Up) is part of the graph and every input size
gets it. Before the file is written, onnxruntime runs it on inputs of two other sizes and its output
must equal PyTorch's to 1e-4 (PARITY_ATOL); the file is refused otherwise.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.atomic import atomic_write_bytes, atomic_write_text
from core.errors import UserError, first_line
from core.version import package_version
from segmodel.inference import FG_PROB
from benchdata.io import DatasetError
from benchdata.sizing import KINDS, Sizing
from segmodel.runtime import CARD, META_INPUT_SIZE, ONNX_FORMAT, ONNX_INPUT, ONNX_OUTPUT, BackendError

from .card import find_results, model_card, provenance

log = logging.getLogger(__name__)

__all__ = ["ExportConfig", "ExportError", "export_onnx", "FORMATS", "PARITY_ATOL", "OPSET", "CARD"]

FORMATS = ("onnx",)
OPSET = 17
PARITY_ATOL = 1e-4
_TRACE_HW = (143, 143)  # odd at every U-Net level: the up-steps' padding is traced (module docstring)
_CHECK_SHAPES = ((2, 128, 171), (1, 160, 128))  # (N, H, W) the exported file is checked on


class ExportError(UserError):
    """A model that cannot be exported as asked; one line."""


@dataclass(frozen=True)
class ExportConfig:
    """Every setting of `export-model`; its options are the fields."""

    ckpt: Path  # a train-unet run folder or .safetensors file
    out: Path  # the .onnx file to write; MODEL.md goes beside it
    format: str = "onnx"
    fg_prob: str = "softmax"  # the segmodel.inference.FG_PROB rule the graph ends with
    protocol: str = "short"  # the sizing the card and the metadata name, at the model's training size
    results: Path | None = None  # eval-seg's results.json to quote (default: found in the run folder)
    about: Path | None = None  # a markdown file: what the model is for and its limits, the card's first section


def _metadata(prov: dict) -> dict[str, str]:
    """metadata_props: flat strings for tools that show them, and the whole provenance as JSON."""
    gen, direction, ss = prov.get("generator") or {}, prov.get("direction") or {}, prov["shardset"]
    flat = {
        "bgw.format": ONNX_FORMAT,
        "bgw.tool_version": package_version(),
        "bgw.input": f"{ONNX_INPUT}: float32 [N, 3, H, W], RGB, x = uint8 / 127.5 - 1",
        "bgw.output": f"{ONNX_OUTPUT}: float32 [N, H, W], foreground probability in [0, 1]",
        "bgw.fg_prob": prov["fg_prob"],
        "bgw.protocol": prov["protocol"],
        META_INPUT_SIZE: prov["input_size"],
        "bgw.step": prov["checkpoint"]["step"],
        "bgw.checkpoint_sha256": prov["checkpoint"]["sha256"],
        "bgw.shardset_name": ss.get("name"),
        "bgw.shardset_fingerprint": ss.get("fingerprint"),
        "bgw.gan_handle": gen.get("handle"),
        "bgw.gan_fingerprint": gen.get("fingerprint"),
        "bgw.direction_sha256": direction.get("sha256"),
        "bgw.provenance": json.dumps(prov, sort_keys=True),
    }
    return {k: str(v) for k, v in flat.items() if v is not None}


def _trace(model, fg_prob: str) -> bytes:
    """The ONNX bytes of the U-Net followed by the rule `fg_prob`."""
    import torch

    from segmodel.inference import foreground_probability

    class Segmenter(torch.nn.Module):
        def __init__(self, unet):
            super().__init__()
            self.unet = unet

        def forward(self, x):
            return foreground_probability(self.unet(x), fg_prob)

    buf = io.BytesIO()
    axes = {ONNX_INPUT: {0: "batch", 2: "height", 3: "width"}, ONNX_OUTPUT: {0: "batch", 1: "height", 2: "width"}}
    with warnings.catch_warnings():
        # the legacy exporter is deprecated (see the module docstring for why it is used), and the
        # tracer warns about the up-steps' size test, which the example size makes take the padding branch
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(Segmenter(model).eval(), (torch.zeros(1, 3, *_TRACE_HW),), buf, dynamo=False,
                          input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT], dynamic_axes=axes,
                          opset_version=OPSET, do_constant_folding=True)
    return buf.getvalue()


def _check_parity(data: bytes, backend) -> float:
    """Max |onnxruntime - PyTorch| over random inputs of _CHECK_SHAPES; refused above PARITY_ATOL."""
    from segmodel.runtime import OnnxBackend

    rng = np.random.default_rng(0)
    worst = 0.0
    with tempfile.TemporaryDirectory(prefix="bgw-export-") as tmp:  # onnxruntime loads from a path
        path = Path(tmp) / "model.onnx"
        path.write_bytes(data)
        onnx_backend = OnnxBackend(path, device="cpu")
        for n, h, w in _CHECK_SHAPES:
            batch = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
            diff = np.abs(onnx_backend.probabilities(batch) - backend.probabilities(batch)).max()
            worst = max(worst, float(diff))
    if not worst <= PARITY_ATOL:
        raise ExportError(f"the exported graph differs from PyTorch by {worst:.2e} (> {PARITY_ATOL}); not written. "
                          "Report it with your torch and onnxruntime versions")
    return worst


def export_onnx(cfg: ExportConfig) -> dict:
    """Write cfg.out (the ONNX file) and MODEL.md beside it; returns what was written and the parity."""
    if cfg.format not in FORMATS:
        raise ExportError(f"unknown --format {cfg.format!r}; choose from {', '.join(FORMATS)}")
    FG_PROB.get(cfg.fg_prob)
    if cfg.protocol not in KINDS:
        try:
            kind = Sizing.parse(cfg.protocol).kind  # a name with a size: what --protocol took before
        except DatasetError:
            kind = None
        hint = f"; give --protocol {kind}: the size is the model's training size" if kind else ""
        raise ExportError(f"--protocol {cfg.protocol!r} is not a sizing ({', '.join(KINDS)}){hint}")
    out = Path(cfg.out)
    if out.suffix != ".onnx":
        raise ExportError(f"--out {out} should end in .onnx (MODEL.md is written beside it)")
    if out.is_dir():
        raise ExportError(f"--out {out} is a folder; give the path of the .onnx file to write")
    try:
        import onnx

        from segmodel.checkpoint import CheckpointError
        from segmodel.runtime import TorchBackend
    except ImportError as e:
        raise ExportError(f"export-model needs torch, safetensors, onnx and onnxruntime ({e}); "
                          "pip install 'bgw-seg[eval,onnx]'") from e
    try:
        backend = TorchBackend(cfg.ckpt, device="cpu", fg_prob=cfg.fg_prob)
    except (CheckpointError, BackendError) as e:
        raise ExportError(first_line(e)) from e
    prov = provenance(backend, cfg.fg_prob, cfg.protocol)
    metadata = _metadata(prov)

    model = onnx.load_from_string(_trace(backend.model, cfg.fg_prob))
    model.doc_string = (f"bgw-seg U-Net segmenter: {ONNX_INPUT} float32 [N, 3, H, W] RGB in [-1, 1] -> "
                        f"{ONNX_OUTPUT} float32 [N, H, W] foreground probability")
    model.producer_name, model.producer_version = "bgw-seg export-model", package_version()
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    worst = _check_parity(data, backend)

    results = find_results(backend.run_dir, backend.fingerprint, cfg.results)
    about = None
    if cfg.about is not None:
        try:
            about = Path(cfg.about).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ExportError(f"--about {cfg.about}: cannot read it as UTF-8 text ({first_line(e)})") from None
    card = model_card(out.stem, prov, metadata, results, ONNX_INPUT, ONNX_OUTPUT, package_version(),
                      model_sha256=hashlib.sha256(data).hexdigest(), about=about)
    atomic_write_bytes(out, data)
    atomic_write_text(out.parent / CARD, card)
    log.info("wrote %s and %s", out, out.parent / CARD)
    return {"model": str(out), "card": str(out.parent / CARD), "bytes": len(data), "parity_max_abs_diff": worst,
            "results": str(results[0]) if results else None, "provenance": prov}
