"""`--gan dcgan-faces`: the trained DCGAN of the PyPI package `gan-face-generate` (MIT licence), as a
TF SavedModel that meets the model contract.

The package ships the PyTorch-tutorial DCGAN generator trained on DigiFace1M (rendered faces in front
of varied backgrounds): z [N, 100, 1, 1] -> five transposed convolutions (kernel 4; stride 1 and
padding 0, then stride 2 and padding 1), batch norm and ReLU between them, tanh at the end ->
[N, 3, 64, 64] in [-1, 1]. Its weights are `gan_face_generate/weights.tar`, a torch zip checkpoint
whose `netG_state_dict` this module reads with gans.torchfile (no torch, nothing unpickled).

`ensure_dcgan_module()` builds, once, a SavedModel with one signature,
`generate(z [N, 100]) -> {"default": [N, 64, 64, 3]}` (NHWC, batch norm in inference mode with
the running statistics), into the model cache; it has no encoder, so only prior latents apply.
The model's fingerprint is the sha256 of weights.tar. Install the package without its training
dependencies (wandb, matplotlib, torchvision, requests): `pip install --no-deps gan-face-generate==1.1.1`.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from core.errors import UserError
from core.hashing import sha256_file

log = logging.getLogger(__name__)

DCGAN_HANDLE = "dcgan-faces"
PACKAGE = "gan-face-generate"
PACKAGE_VERSION = "1.1.1"
INSTALL = f"pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}"
LATENT_DIM = 100
SIZE = 64
BN_EPS = 1e-5  # torch.nn.BatchNorm2d's default
# weights.tar of 1.1.1 holds netG's 3.6 M floats, 14.3 MB; the reader refuses more tensor data
WEIGHTS_MAX_BYTES = 16 << 20
# (state-dict prefix of the transposed convolution, of its batch norm or None, stride, padding)
LAYERS = (("main.0", "main.1", 1, 0), ("main.3", "main.4", 2, 1), ("main.6", "main.7", 2, 1),
          ("main.9", "main.10", 2, 1), ("main.12", None, 2, 1))
_STAMP = "bgw-dcgan.json"
BUILD_VERSION = 1  # bump when the SavedModel this module writes changes


class DcganError(UserError, RuntimeError):
    """The DCGAN cannot be found or built; the message is one line that says what to do."""


def weights_path() -> Path:
    """`gan_face_generate/weights.tar` of the installed package (found without importing it)."""
    spec = importlib.util.find_spec("gan_face_generate")
    if spec is None or not spec.submodule_search_locations:
        raise DcganError(f"--gan {DCGAN_HANDLE} needs the package {PACKAGE}, which is not installed: {INSTALL}")
    path = Path(list(spec.submodule_search_locations)[0]) / "weights.tar"
    if not path.is_file():
        raise DcganError(f"{path} is missing: reinstall the package ({INSTALL} --force-reinstall)")
    return path


def load_state_dict(path: Path) -> dict[str, np.ndarray]:
    """The generator's `netG_state_dict` as float32 numpy arrays, read without torch."""
    from .torchfile import TorchFileError, load

    try:
        checkpoint = load(path, max_bytes=WEIGHTS_MAX_BYTES)
    except TorchFileError as exc:
        raise DcganError(str(exc)) from None
    state = checkpoint.get("netG_state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise DcganError(f"{path} holds no 'netG_state_dict'; expected the checkpoint of {PACKAGE} {PACKAGE_VERSION}")
    return {k: np.asarray(v, np.float32) for k, v in state.items() if k.endswith(("weight", "bias", "running_mean",
                                                                                 "running_var"))}


def _make_module(state: dict[str, np.ndarray]):
    import tensorflow as tf

    class DcganFaces(tf.Module):
        """The DCGAN of gan-face-generate, NHWC, inference mode."""

        def __init__(self):
            super().__init__(name="dcgan_faces")
            self.kernels, self.bn = [], []
            for conv, bn, _, _ in LAYERS:
                # torch ConvTranspose2d weight [in, out, kh, kw] -> tf conv2d_transpose filter
                # [kh, kw, out, in]: both are the gradient of a cross-correlation, so no flip
                w = np.transpose(state[f"{conv}.weight"], (2, 3, 1, 0))
                self.kernels.append(tf.Variable(w, trainable=False, name=f"{conv}.weight"))
                if bn is not None:
                    scale = state[f"{bn}.weight"] / np.sqrt(state[f"{bn}.running_var"] + BN_EPS)
                    shift = state[f"{bn}.bias"] - state[f"{bn}.running_mean"] * scale
                    self.bn.append((tf.Variable(scale, trainable=False, name=f"{bn}.scale"),
                                    tf.Variable(shift, trainable=False, name=f"{bn}.shift")))

        @tf.function(input_signature=[tf.TensorSpec([None, LATENT_DIM], tf.float32, name="z")])
        def generate(self, z):
            n = tf.shape(z)[0]
            x = tf.reshape(z, [n, 1, 1, LATENT_DIM])
            for i, (kernel, (_, _, stride, pad)) in enumerate(zip(self.kernels, LAYERS)):
                k = kernel.shape[0]
                h = tf.shape(x)[1]
                full = (h - 1) * stride + k
                # torch's padding p crops p pixels off each side of the full (VALID) transposed conv
                x = tf.nn.conv2d_transpose(x, kernel, tf.stack([n, full, full, kernel.shape[2]]), stride, "VALID")
                x = x[:, pad:full - pad, pad:full - pad, :]
                if i < len(self.bn):
                    scale, shift = self.bn[i]
                    x = tf.nn.relu(x * scale + shift)
            x = tf.tanh(x)
            return {"default": tf.ensure_shape(x, [None, SIZE, SIZE, 3])}

    return DcganFaces()


def build_module(path: str | os.PathLike, weights: Path | None = None) -> Path:
    """Save the DCGAN as a SavedModel at `path` (must not exist), with its stamp."""
    import tensorflow as tf

    weights = weights or weights_path()
    path = Path(path)
    module = _make_module(load_state_dict(weights))
    tf.saved_model.save(module, str(path), signatures={"generate": module.generate})
    stamp = {"weights_sha256": sha256_file(weights), "build": BUILD_VERSION, "package": f"{PACKAGE}=={PACKAGE_VERSION}"}
    (path / _STAMP).write_text(json.dumps(stamp, sort_keys=True))
    return path


def read_stamp(path: Path) -> dict | None:
    try:
        return json.loads((path / _STAMP).read_text())
    except (OSError, ValueError):
        return None


def ensure_dcgan_module(cache_dir: str | os.PathLike) -> tuple[Path, str]:
    """(path of the built module under `cache_dir`, sha256 of the weights), built on first use.

    The folder is named by the weights' digest, so another version of the package gets its own;
    it is built in a temporary folder and renamed into place (a crash or a concurrent build never
    leaves a half-written module where a reader looks)."""
    weights = weights_path()
    digest = sha256_file(weights)
    base = Path(cache_dir)
    target = base / f"dcgan-faces-{digest[:16]}-b{BUILD_VERSION}"
    stamp = read_stamp(target)
    if stamp and stamp.get("weights_sha256") == digest and (target / "saved_model.pb").is_file():
        return target, digest
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        build_module(tmp, weights)
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "saved_model.pb").is_file():  # another process finished first, or not
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("built %s from %s (sha256 %s) at %s", DCGAN_HANDLE, weights, digest[:12], target)
    return target, digest
