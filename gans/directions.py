"""Latent direction files: load a segmenting direction h_bg as a float32 unit vector, save one.

Formats:
- `.npy`: float array [D] (or [1, D] / [D, 1]); read with `allow_pickle=False`.
- `.pth` / `.pt`: a tensor as the paper's authors published their directions, or a dict holding
  exactly one tensor; read by `gans.torchfile`, which needs no torch and admits nothing but
  tensors and containers (a malicious pickle is refused before anything in it runs).

`load_direction` returns the unit vector and the sha256 of the file's bytes (for the manifest),
and raises `DirectionError` (a ValueError with a one-line message naming the file and the fix)
for a missing or unreadable file, a wrong shape, NaN/inf or a zero vector.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
from pathlib import Path

import numpy as np

from core.atomic import atomic_write_bytes
from core.errors import UserError, first_line

log = logging.getLogger(__name__)

TORCH_SUFFIXES = (".pth", ".pt")
MAX_FILE_BYTES = 4 << 20  # a direction file of any format: one vector of at most a few hundred thousand floats
# A direction is a few hundred floats; the reader refuses a .pth file with more tensor data
TORCH_MAX_BYTES = 1 << 20


class DirectionError(UserError, ValueError):
    """A direction file is missing, unreadable or not a usable [D] vector (one-line message)."""


def _from_torch(path: Path, data: bytes) -> np.ndarray:
    """A direction from a torch.save file, read by gans.torchfile: no torch needed, and
    nothing unpickled beyond tensors and containers."""
    from .torchfile import TorchFileError, load

    try:
        obj = load(path, data, max_bytes=TORCH_MAX_BYTES)
    except TorchFileError as e:
        raise DirectionError(f"{first_line(e)}; save the direction with torch.save(tensor) or as .npy") from None
    if isinstance(obj, dict):
        tensors = [v for v in obj.values() if isinstance(v, np.ndarray)]
        if len(tensors) != 1:
            raise DirectionError(f"{path}: holds a dict with {len(tensors)} tensors "
                                 f"(keys {sorted(map(str, obj))[:5]}); expected exactly one direction tensor")
        obj = tensors[0]
    if not isinstance(obj, np.ndarray):
        raise DirectionError(f"{path}: holds a {type(obj).__name__}, expected a tensor of shape [D]")
    if obj.dtype.kind not in "fiu":
        raise DirectionError(f"{path}: holds a {obj.dtype} tensor, expected a float vector")
    return obj.astype(np.float64)


def _from_npy(path: Path, data: bytes) -> np.ndarray:
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - the file-reading boundary: numpy raises many kinds for a corrupt header
        raise DirectionError(f"{path}: not a readable .npy array ({first_line(e)}); save the "
                             f"direction with np.save(path, vec.astype(np.float32))") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu":
        kind = getattr(arr, "dtype", type(arr).__name__)
        raise DirectionError(f"{path}: holds dtype {kind}, expected a float vector")
    return arr.astype(np.float64)


def as_unit_vector(vec, name: str = "direction", dim: int | None = None) -> np.ndarray:
    """Validate and normalise a direction: [D], [1, D] or [D, 1] -> float32 unit vector [D].

    Raises DirectionError for another shape, a dimension other than `dim` (when given),
    NaN/inf or zero norm. The norm is taken in float64."""
    try:
        arr = np.asarray(vec, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DirectionError(f"{name}: not a numeric vector ({first_line(e)})") from None
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.reshape(-1)
    if arr.ndim != 1 or arr.size == 0:
        raise DirectionError(f"{name}: shape {tuple(np.shape(vec))}, expected a vector [D] "
                             f"(or [1, D] / [D, 1])")
    if dim is not None and arr.size != dim:
        raise DirectionError(f"{name}: has {arr.size} entries, the latent space has {dim}; "
                             f"use a direction found for this GAN")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise DirectionError(f"{name}: {bad} of {arr.size} entries are NaN or inf; "
                             f"re-export the direction")
    norm = float(np.linalg.norm(arr))
    if norm == 0.0:
        raise DirectionError(f"{name}: is the zero vector; a direction needs a nonzero norm")
    return (arr / norm).astype(np.float32)


def load_direction(path: str | os.PathLike, dim: int | None = None) -> tuple[np.ndarray, str]:
    """Read a direction file (.npy, or .pth/.pt with torch) -> (float32 unit vector [D],
    sha256 hex digest of the file's bytes). `dim`, when given, is the required length."""
    path = Path(path)
    if path.exists() and not path.is_file():  # a FIFO would block the open, a device read for ever
        raise DirectionError(f"{path}: not a regular file; pass a .npy or .pth direction file")
    try:
        with open(path, "rb") as fh:
            # a direction is a few hundred floats: read no more than the reader's budget allows
            data = fh.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise DirectionError(f"{path}: larger than {MAX_FILE_BYTES >> 20} MiB; a direction file holds one "
                                 f"vector [D] (a few KB)")
    except FileNotFoundError:
        raise DirectionError(f"{path}: no such direction file; pass a .npy or .pth file "
                             f"that exists") from None
    except OSError as e:
        raise DirectionError(f"{path}: cannot read the direction file ({e.strerror or e})") from None
    digest = hashlib.sha256(data).hexdigest()
    if path.suffix.lower() in TORCH_SUFFIXES:
        raw = _from_torch(path, data)
    elif path.suffix.lower() == ".npy":
        raw = _from_npy(path, data)
    else:
        raise DirectionError(f"{path}: unknown direction format {path.suffix!r}; use .npy or .pth")
    vec = as_unit_vector(raw, name=str(path), dim=dim)
    log.debug("loaded direction %s: D=%d, sha256 %s", path, vec.size, digest[:12])
    return vec, digest


def save_direction(path: str | os.PathLike, vec) -> str:
    """Write a direction as a float32 unit-vector .npy, atomically (temp file, then os.replace).
    The vector is validated and normalised first. Returns the sha256 of the written bytes."""
    path = Path(path)
    if path.suffix.lower() != ".npy":
        raise DirectionError(f"{path}: directions are saved as .npy; change the suffix to .npy")
    unit = as_unit_vector(vec, name=str(path))
    buf = io.BytesIO()
    np.save(buf, unit, allow_pickle=False)
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------ the paper's published direction

# The authors published BigBiGAN's h_bg beside their reference code (its download_all.sh). No copy
# could be fetched where this tool was built, so no checksum is pinned: the first download's
# sha256 is recorded in every manifest made with it, and BGW_BIGBIGAN_DIRECTION_SHA256 pins one.
PUBLISHED_DIRECTIONS = {
    "bigbigan": ("bg_direction.pth", "https://www.dropbox.com/s/np74kmkohkbx76t/bg_direction.pth?dl=1"),
}


def published_direction_path(gan: str, cache_dir: str | os.PathLike | None = None,
                             *, download: bool = True, timeout_s: float = 60.0) -> Path:
    """Local path of the paper's direction for `gan`, downloaded into the cache on first use.

    Offline, raises DirectionError saying where to put the file or to pass --direction."""
    if gan not in PUBLISHED_DIRECTIONS:
        raise DirectionError(f"no published direction for model {gan!r}: pass --direction FILE "
                             f"(find one with `find-direction`)")
    name, url = PUBLISHED_DIRECTIONS[gan]
    from .toy import default_cache_dir  # the one place that knows $BGW_CACHE_DIR's default

    dest = (Path(cache_dir) if cache_dir else default_cache_dir()) / "directions" / f"{gan}-{name}"
    if dest.is_file():
        return dest
    if not download:
        raise DirectionError(f"{dest} is missing: download {url} there, or pass --direction FILE")
    try:
        download_with_checksum(url, dest, os.environ.get("BGW_BIGBIGAN_DIRECTION_SHA256"), timeout_s=timeout_s)
    except OSError as exc:
        raise DirectionError(
            f"could not download the paper's {gan} direction ({first_line(exc)}): fetch {url} to {dest} "
            f"on a machine that is online, or pass --direction FILE") from None
    return dest


def download_with_checksum(url: str, dest: Path, sha256: str | None = None, *, timeout_s: float = 60.0,
                           max_bytes: int = 64 << 20) -> str:
    """Download `url` to `dest` atomically; check sha256 when given. Returns the sha256 of the bytes.

    Nothing is written at `dest` unless the whole file arrived and matched. The file is held in
    memory (bounded by `max_bytes`): a direction file is a few hundred bytes."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        data = resp.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise OSError(f"{url} is larger than {max_bytes} bytes; a direction file is a few hundred bytes")
    digest = hashlib.sha256(data).hexdigest()
    if sha256 and digest != sha256.lower():
        raise OSError(f"sha256 of {url} is {digest}, expected {sha256}")
    atomic_write_bytes(dest, data)
    return digest
