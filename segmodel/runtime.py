"""A trained U-Net as a function of numpy arrays: the one model step of every inference path
(eval-seg --ckpt, the trainer's benchmark validation through benchdata.predictions, segment --ckpt
and --model, export-model's own check).

A `Backend` turns a batch of model inputs, uint8 RGB [N, h, w, 3] already sized by the input
sizing (benchdata.sizing.Sizing.prepare_image), into foreground probabilities, float32 [N, h, w]
in [0, 1]:

- `TorchBackend`: a train-unet checkpoint (segmodel.checkpoint.load_for_inference, which never
  unpickles) on a torch device. The uint8 batch goes to the device and is normalised there
  (inference.normalize_images); the two logits become the probability by a FG_PROB rule
  (inference.foreground_probability).
- `OnnxBackend`: a model file written by `export-model`, run by onnxruntime with no torch. The
  batch is normalised by inference.normalize_images_numpy (the same float32 arithmetic, bit for
  bit); the graph holds the U-Net and the FG_PROB rule it was exported with.

`predict_batch(backend, images, batch_size)` runs a list of inputs of any sizes: inputs of equal
shape go through together, `batch_size` at a time (short-side inputs differ in aspect). torch and
onnxruntime are imported inside the backends, so importing this module loads neither.

A model is fed at the size it learnt by default: each backend knows its `input_size` (a
checkpoint's sidecar, an exported file's `bgw.input_size`; older ones fall back to the training
config's size, else the paper's 128), and `feed_size(native, native_from, asked)` says at what size
the tools feed it and why, in one line (`asked`: `--input-size N`, parsed by `parse_input_size`).
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np

from core.errors import UserError, first_line
from core.hashing import sha256_file

from .inference import DEFAULT_INPUT_SIZE, FG_PROB, normalize_images_numpy, whole_size

log = logging.getLogger(__name__)

__all__ = ["Backend", "BackendError", "TorchBackend", "OnnxBackend", "open_backend", "predict_batch",
           "resolve_device", "describe_file", "ONNX_INPUT", "ONNX_OUTPUT", "ONNX_FORMAT",
           "META_INPUT_SIZE", "NATIVE", "INPUT_SIZE_RANGE", "whole_size", "parse_input_size", "feed_size",
           "checkpoint_input_size", "check_card_sha256", "CARD"]

# The exported model's contract, named by layout and range so that a caller needs no manual:
# float32 [N, 3, H, W] RGB scaled to [-1, 1] in, float32 [N, H, W] foreground probability out.
ONNX_INPUT = "image_rgb_nchw_pm1"
ONNX_OUTPUT = "foreground_prob_nhw"
ONNX_FORMAT = "bgw-unet-onnx"  # the value of the model's `bgw.format` metadata entry
META_INPUT_SIZE = "bgw.input_size"  # the exported model's training size, pixels
NATIVE = "native"  # --input-size native: the model's training size
INPUT_SIZE_RANGE = (16, 4096)  # the U-Net halves its input 4 times; the top keeps a typo from eating memory


class BackendError(UserError):
    """A model that cannot be run (a file of the wrong kind, an unknown device); one line."""


_MAGIC = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
          (b"PK\x03\x04", "a zip archive (a PyTorch .pt/.pth save?)"),
          (b"\x80", "a Python pickle (a PyTorch .pt/.pth save?)"), (b"\x89HDF", "an HDF5 file (Keras weights?)"))


def describe_file(path: Path) -> str:
    """What a file looks like from its first bytes, for messages: 'a PNG image of 1,234 bytes'."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(512)
    kind = next((what for magic, what in _MAGIC if head.startswith(magic)), None)
    if kind is None:
        if not head:
            return "an empty file"
        try:
            head.decode("utf-8")
            kind = "a text file"
        except UnicodeDecodeError:
            kind = "a binary file"
    return f"{kind} of {size:,} bytes"


def resolve_device(device: str | None) -> str:
    """torch's device: 'auto'/None -> 'cuda' when a GPU is visible, else 'cpu'; anything else is checked."""
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendError(f"device {device!r} asked for, but torch sees no CUDA GPU; use --device cpu")
    try:
        torch.device(device)
    except RuntimeError as e:
        raise BackendError(f"unknown device {device!r} ({e}); use auto, cpu, cuda or cuda:N") from e
    return device


def parse_input_size(value) -> int | None:
    """`--input-size`: a size in pixels (an int or its digits), or None for `native`."""
    if value is None or (isinstance(value, str) and value.strip().lower() == NATIVE):
        return None
    lo, hi = INPUT_SIZE_RANGE
    size = whole_size(value.strip() if isinstance(value, str) else value)
    if size is None or not lo <= size <= hi:
        raise BackendError(f"--input-size {value!r}: give a size in pixels from {lo} to {hi}, or {NATIVE} "
                           "(the model's training size)")
    return size


class Backend:
    """A model that maps uint8 RGB [N, h, w, 3] inputs to float32 [N, h, w] foreground probabilities.
    `input_size` is the size it was trained at; `input_size_from` says how that is known: "recorded",
    "config" (an older record's training config) or "default" (nothing recorded: the paper's)."""

    kind = ""
    fg_prob = "softmax"
    input_size = DEFAULT_INPUT_SIZE
    input_size_from = "default"

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> dict:
        """JSON facts naming the model (kind, path, sha256, rule)."""
        raise NotImplementedError


def _check_checkpoint_file(path: Path) -> None:
    """Refuse, naming what it is, a --ckpt file that is no checkpoint (a .pt save, an image)."""
    from .checkpoint import CheckpointError

    if path.is_file() and path.suffix not in (".safetensors", ".json"):
        raise CheckpointError(f"--ckpt {path} is {describe_file(path)}, not a train-unet checkpoint; "
                              "give a run folder or its step-*.safetensors file (with the .json sidecar beside it)")


def checkpoint_input_size(path: str | Path) -> tuple[int, str]:
    """(size, how it is known: Backend.input_size_from) a checkpoint was trained at, from its sidecar
    alone: no weights are read, so several checkpoints can be compared before any is loaded."""
    from .checkpoint import find_sidecar, input_size_of, read_sidecar

    _check_checkpoint_file(Path(path))
    return input_size_of(read_sidecar(find_sidecar(path)))


class TorchBackend(Backend):
    """A train-unet checkpoint on a torch device; `.fingerprint` is the sha256 of its weights file."""

    kind = "checkpoint"

    def __init__(self, path: str | Path, device: str = "auto", fg_prob: str = "softmax"):
        from .checkpoint import find_sidecar, input_size_of, load_for_inference

        path = Path(path)
        FG_PROB.get(fg_prob)
        _check_checkpoint_file(path)
        model, self.meta = load_for_inference(path)
        self.sidecar = find_sidecar(path)
        self.weights_path = self.sidecar.parent / self.meta["files"]["weights"]["name"]
        # load_for_inference checked the file against the sidecar's sha256, so it is the file's
        self.fingerprint = self.meta["files"]["weights"].get("sha256") or sha256_file(self.weights_path)
        self.fg_prob = fg_prob
        self.input_size, self.input_size_from = input_size_of(self.meta)
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()

    @property
    def run_dir(self) -> Path:
        """The run folder (the weights' folder when they lie outside a run's checkpoints/)."""
        folder = self.weights_path.parent
        return folder.parent if folder.name == "checkpoints" else folder

    @property
    def label(self) -> str:
        """A short name for tables: the run folder's name and the step."""
        return f"{self.run_dir.name}@{self.meta.get('step', '?')}"

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        import torch

        from .inference import foreground_probability, normalize_images

        with torch.inference_mode():
            x = normalize_images(torch.from_numpy(np.ascontiguousarray(batch)).to(self.device, non_blocking=True))
            return foreground_probability(self.model(x), self.fg_prob).cpu().numpy()

    def describe(self) -> dict:
        return {"kind": self.kind, "path": str(self.weights_path), "sha256": self.fingerprint,
                "step": self.meta.get("step"), "model": self.meta.get("model"),
                "shardset": self.meta.get("shardset"), "fg_prob": self.fg_prob, "input_size": self.input_size}


def onnx_providers(device: str | None) -> list[str]:
    """onnxruntime's execution providers for a --device: auto takes CUDA when this onnxruntime has it."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device in (None, "", "auto"):
        return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise BackendError(f"device {device!r} asked for, but this onnxruntime has no CUDA provider "
                               "(pip install onnxruntime-gpu); use --device cpu")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise BackendError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")


class OnnxBackend(Backend):
    """A model file written by export-model, run by onnxruntime; `.metadata` holds its metadata_props."""

    kind = "onnx"

    def __init__(self, path: str | Path, device: str = "auto"):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BackendError(f"--model needs onnxruntime ({e}); pip install onnxruntime") from e
        self.path = Path(path)
        if not self.path.is_file():
            raise BackendError(f"--model {self.path} not found; give a .onnx file written by export-model")
        providers = onnx_providers(device)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: its warnings are about graph fusions, not the user's data
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as e:  # noqa: BLE001 - a user's model file: onnxruntime's errors have no common class
            raise BackendError(f"--model {self.path} ({describe_file(self.path)}) is not a model onnxruntime "
                               f"can load ({first_line(e)}); export one with export-model") from e
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != [ONNX_INPUT] or ONNX_OUTPUT not in outputs:
            raise BackendError(f"--model {self.path} takes {inputs} and gives {outputs}; a bgw-seg segmenter takes "
                               f"[{ONNX_INPUT!r}] and gives {ONNX_OUTPUT!r}; export one with export-model")
        self._check_shapes()
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.fg_prob = self.metadata.get("bgw.fg_prob", "softmax")
        self.input_size, self.input_size_from = self._training_size()
        self.fingerprint = sha256_file(self.path)
        check_card_sha256(self.path, self.fingerprint)
        self.device = device

    def _check_shapes(self) -> None:
        """Refuse, before any image is read, a graph whose declared shapes break the contract: a
        fixed batch, height or width fails on the first image of another size, and an output of
        another rank (a flattened [N, H*W]) would be read as a wrong mask."""
        given = self.session.get_inputs()[0]
        shape = given.shape
        if given.type != "tensor(float)" or shape is None or len(shape) != 4 or shape[1] not in (3, "3") \
                or any(isinstance(d, int) for d in (shape[0], shape[2], shape[3])):
            raise BackendError(f"--model {self.path}: its input {ONNX_INPUT} is {given.type} {_dims(shape)}; a bgw-seg "
                               "segmenter takes float [N, 3, H, W] with batch, height and width dynamic; export one "
                               "with export-model")
        out = next(o for o in self.session.get_outputs() if o.name == ONNX_OUTPUT)
        if out.type != "tensor(float)" or (out.shape is not None and len(out.shape) != 3) \
                or any(isinstance(d, int) for d in (out.shape or [])):
            raise BackendError(f"--model {self.path}: its output {ONNX_OUTPUT} is {out.type} {_dims(out.shape)}; a "
                               "bgw-seg segmenter gives float [N, H, W] with dynamic sides; export one with export-model")

    def _training_size(self) -> tuple[int, str]:
        """(size, how it is known) from the metadata; files exported before `bgw.input_size` was
        written carry the training config's size in their provenance."""
        size = whole_size(self.metadata.get(META_INPUT_SIZE))
        if size is not None:
            return size, "recorded"
        try:
            size = whole_size(json.loads(self.metadata.get("bgw.provenance") or "{}")["training"]["size"])
        except (ValueError, KeyError, TypeError):
            size = None
        return (size, "config") if size is not None else (DEFAULT_INPUT_SIZE, "default")

    @property
    def label(self) -> str:
        return self.path.stem

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        try:
            return self.session.run([ONNX_OUTPUT], {ONNX_INPUT: normalize_images_numpy(batch)})[0]
        except Exception as e:  # noqa: BLE001 - onnxruntime's run errors have no common class
            raise BackendError(f"--model {self.path} fails on a batch of shape {list(batch.shape)} "
                               f"({first_line(e)}); export the model again with export-model") from None

    def describe(self) -> dict:
        provenance = self.metadata.get("bgw.provenance")
        return {"kind": self.kind, "path": str(self.path), "sha256": self.fingerprint, "fg_prob": self.fg_prob,
                "step": self.metadata.get("bgw.step"), "input_size": self.input_size,
                "provenance": json.loads(provenance) if provenance else None}


def _dims(shape) -> str:
    return "[" + ", ".join(str(d) if d not in (None, "") else "?" for d in shape) + "]" if shape is not None else "[?]"


CARD = "MODEL.md"  # export-model's card, beside the file it describes
_CARD_FILE = re.compile(r"^- File: `([^`]+)`, sha256 `([0-9a-f]{64})`", re.MULTILINE)


def check_card_sha256(path: Path, sha256: str) -> None:
    """Refuse a model file whose bytes differ from the sha256 its card (MODEL.md beside it, as
    export-model writes it) records for its name: a flipped weight changes masks with no other
    sign. A file the card does not name (renamed, or no card) is not judged."""
    card = path.parent / CARD
    try:
        if not card.is_file() or card.stat().st_size > (1 << 20):
            return
        text = card.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return
    recorded = {name: digest for name, digest in _CARD_FILE.findall(text)}
    if path.name in recorded and recorded[path.name] != sha256:
        raise BackendError(f"--model {path} has sha256 {sha256[:16]}..., its card {card} records "
                           f"{recorded[path.name][:16]}...: the file changed after export (a damaged copy?); "
                           "get the file again or export it again")


def open_backend(ckpt: str | Path | None = None, model: str | Path | None = None, *, device: str = "auto",
                 fg_prob: str | None = None) -> Backend:
    """A TorchBackend for a checkpoint (`ckpt`: a run folder or .safetensors file) or an
    OnnxBackend for an exported file (`model`); exactly one of the two. `fg_prob` applies to
    checkpoints (an exported file carries the rule it was exported with)."""
    if (ckpt is None) == (model is None):
        raise BackendError("give either --ckpt (a train-unet run or .safetensors file) or --model (an exported "
                           ".onnx file), not both and not neither")
    if model is not None:
        if fg_prob is not None:
            raise BackendError("--fg-prob applies to --ckpt; an exported model carries the rule it was exported with")
        return OnnxBackend(model, device)
    try:
        import torch  # noqa: F401
        import safetensors  # noqa: F401
    except ImportError as e:
        raise BackendError(f"--ckpt needs torch and safetensors ({e}); pip install 'bgw-seg[eval]', "
                           "or run an exported model with --model") from e
    return TorchBackend(ckpt, device, fg_prob or "softmax")


def feed_size(native: int, native_from: str, asked: int | None) -> tuple[int, str]:
    """(the size a model is fed at, the one line that says so and why). `native`, `native_from`: its
    training size and how that is known (Backend.input_size, .input_size_from); `asked`: the
    --input-size given (None: native)."""
    paper = DEFAULT_INPUT_SIZE
    if asked is None:
        if native_from == "default":
            return native, (f"feeding the model at {native} px, the paper's size: the model records no training "
                            "size (--input-size N to choose another)")
        note = " and the paper's" if native == paper else f" (--input-size {paper} for the paper's sizing)"
        return native, f"feeding the model at {native} px, its training size{note}"
    line = f"feeding the model at {asked} px (--input-size {asked})"
    if native_from == "default":
        return asked, f"{line}; the model records no training size"
    if asked == native:
        return asked, f"{line}, its training size"
    return asked, f"{line}; it was trained at {native} px (--input-size {NATIVE} feeds it at that)"


def predict_batch(backend: Backend, images: list[np.ndarray], batch_size: int = 32) -> list[np.ndarray]:
    """float32 foreground probabilities [h, w], one per uint8 RGB input [h, w, 3], in order: inputs
    of equal shape run together, `batch_size` at a time."""
    out: list[np.ndarray | None] = [None] * len(images)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(im.shape[:2], []).append(i)
    for idx in groups.values():
        for s in range(0, len(idx), batch_size):
            part = idx[s:s + batch_size]
            batch = np.stack([images[i] for i in part])
            probs = np.asarray(backend.probabilities(batch))
            _check_probabilities(backend, batch, probs)
            for i, p in zip(part, probs):
                out[i] = p
    return out  # type: ignore[return-value]


_RANGE_SLACK = 1e-4  # float rounding of a softmax or sigmoid may step past 1 by an ulp or two


def _check_probabilities(backend: Backend, batch: np.ndarray, probs: np.ndarray) -> None:
    """Refuse a model output that is no probability map of the batch: NaN or inf (which
    quantise to an all-zero mask and would pass unnoticed), values outside [0, 1], or another shape."""
    name = getattr(backend, "path", None) or getattr(backend, "weights_path", None) or backend.kind
    want = batch.shape[:3]
    if probs.shape != want:
        raise BackendError(f"the model {name} gives shape {list(probs.shape)} for a batch of {list(want)} "
                           "(N, H, W); a bgw-seg segmenter gives one probability per pixel")
    if not np.isfinite(probs).all():
        bad = int((~np.isfinite(probs)).sum())
        raise BackendError(f"the model {name} gives {bad} non-finite values (NaN or inf) on {len(batch)} images; "
                           "its weights are damaged: get or export the model again")
    lo, hi = float(probs.min(initial=0.0)), float(probs.max(initial=0.0))
    if lo < -_RANGE_SLACK or hi > 1 + _RANGE_SLACK:
        raise BackendError(f"the model {name} gives values from {lo:.3g} to {hi:.3g}, not probabilities in [0, 1]; "
                           "export the model again with export-model")
