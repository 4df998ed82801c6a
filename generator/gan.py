"""GAN adapters: load BigBiGAN (or any module with its TF-Hub signatures) behind one small API.

`load_gan(spec)` accepts `bigbigan` (https://tfhub.dev/deepmind/bigbigan-resnet50/1), `toy` (the
project's stand-in, a test fixture, built on first use by generator.toy), a local SavedModel
folder, or any TF-Hub handle. Everything goes through `tensorflow_hub`, which finds a cached
copy of a handle under `$TFHUB_CACHE_DIR/<sha1 of the handle>` with no network, so a module
placed there loads offline under its real handle.

TensorFlow and tensorflow_hub are imported inside functions, never at module import.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

BIGBIGAN_HANDLE = "https://tfhub.dev/deepmind/bigbigan-resnet50/1"
GAN_ALIASES = {"bigbigan": BIGBIGAN_HANDLE}
GENERATE_SIZE = 128
ENCODE_SIZE = 256


def _hub():
    """tensorflow_hub, imported quietly: its import of pkg_resources warns on every run (setuptools<81 is pinned)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        import tensorflow_hub

    return tensorflow_hub


class GanLoadError(RuntimeError):
    """A GAN could not be loaded; the message is one line that says what to do."""


def hub_cache_path(handle: str) -> Path:
    """Where tensorflow_hub looks for a cached copy of `handle`: $TFHUB_CACHE_DIR/<sha1(handle)>."""
    cache = _hub().resolver.tfhub_cache_dir(use_temp=True)
    return Path(cache) / hashlib.sha1(handle.encode("utf8")).hexdigest()


def _is_handle(spec: str) -> bool:
    return "://" in spec or spec.startswith("gs://")


def load_gan(spec: str, *, cache_dir: str | os.PathLike | None = None) -> "Gan":
    """Load a GAN by name (`bigbigan`, `toy`), local SavedModel folder or TF-Hub handle.

    `cache_dir` holds the toy module and the fingerprint cache (default: generator.toy's
    `default_cache_dir()`, i.e. `$BGW_CACHE_DIR` or ~/.cache/bgw-seg).
    Raises GanLoadError with a one-line message on any failure.
    """
    from generator import toy

    cache = Path(cache_dir) if cache_dir is not None else toy.default_cache_dir()
    if spec == toy.TOY_HANDLE:
        try:
            path = toy.ensure_toy_module(cache)
        except Exception as e:  # noqa: BLE001 - one-line message for the CLI
            raise GanLoadError(f"could not build the toy GAN under {cache}: {e}") from e
        return _load_path(toy.TOY_HANDLE, path, cache)
    handle = GAN_ALIASES.get(spec, spec)
    if _is_handle(handle):
        return _load_path(handle, _resolve_handle(handle), cache)
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise GanLoadError(
            f"--gan {spec!r} is neither a known name ({', '.join(sorted([*GAN_ALIASES, toy.TOY_HANDLE]))}), "
            f"a SavedModel folder nor a TF-Hub handle (https://...)")
    path = path.resolve()
    return _load_path(str(path), path, cache)


def _resolve_handle(handle: str) -> Path:
    """Local folder for a hub handle: the cache when present, else a download."""
    hub = _hub()
    cached = hub_cache_path(handle)
    try:
        return Path(hub.resolve(handle))
    except Exception as e:  # noqa: BLE001 - offline, DNS, HTTP, or a corrupt archive
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise GanLoadError(
            f"cannot fetch {handle} ({type(e).__name__}: {reason[:160]}); offline? pass --gan PATH "
            f"to a local copy of the module, or place it at {cached} "
            f"(TFHUB_CACHE_DIR/{cached.name}, the sha1 of the handle)") from e


def _load_path(handle: str, path: Path, cache: Path) -> "Gan":
    hub = _hub()
    try:
        module = hub.load(str(path))
    except Exception as e:  # noqa: BLE001
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise GanLoadError(f"{path} is not a loadable SavedModel / TF-Hub module: {reason[:200]}") from e
    latent_dim = check_signatures(module, where=str(path))
    return Gan(handle=handle, path=Path(path), module=module, latent_dim=latent_dim, cache_dir=cache)


def _spec(fn, name: str):
    """(shape, dtype) of the input `name` of a concrete signature function, or None."""
    args, kwargs = fn.structured_input_signature
    spec = kwargs.get(name)
    return None if spec is None else (_dims(spec), spec.dtype.name)


def _dims(t) -> list | None:
    """Static shape as a list, or None when even the rank is unknown."""
    return None if t.shape.rank is None else t.shape.as_list()


def _fits(shape: list | None, expected: list) -> bool:
    """Same rank, and every statically known dim equals the expected one (unknown passes)."""
    if shape is None:
        return True
    return len(shape) == len(expected) and all(a is None or e is None or a == e for a, e in zip(shape, expected))


def check_signatures(module, *, where: str) -> int:
    """Check the BigBiGAN signatures `generate` (z -> default) and `encode` (x -> z_sample).

    Returns the latent size D. Raises GanLoadError naming what is wrong.
    """
    sigs = getattr(module, "signatures", {}) or {}
    missing = [s for s in ("generate", "encode") if s not in sigs]
    if missing:
        raise GanLoadError(
            f"{where} lacks signature(s) {missing} (has {sorted(sigs)}); a GAN module needs BigBiGAN's "
            f"'generate' (z [N,D]) and 'encode' (x [N,256,256,3]) signatures")
    gen, enc = sigs["generate"], sigs["encode"]
    z = _spec(gen, "z")
    if z is None or z[0] is None or len(z[0]) != 2 or z[0][1] is None or z[1] != "float32":
        raise GanLoadError(f"{where}: signature 'generate' must take z float32 [N,D], got {z}")
    latent_dim = int(z[0][1])
    out = gen.structured_outputs
    if "default" not in out or not _fits(_dims(out["default"]), [None, GENERATE_SIZE, GENERATE_SIZE, 3]):
        raise GanLoadError(f"{where}: 'generate' must return default [N,{GENERATE_SIZE},{GENERATE_SIZE},3], "
                           f"got {({k: _dims(v) for k, v in out.items()})}")
    x = _spec(enc, "x")
    if x is None or not _fits(x[0], [None, ENCODE_SIZE, ENCODE_SIZE, 3]) or x[1] != "float32":
        raise GanLoadError(f"{where}: signature 'encode' must take x float32 [N,{ENCODE_SIZE},{ENCODE_SIZE},3], got {x}")
    eout = enc.structured_outputs
    if "z_sample" not in eout or not _fits(_dims(eout["z_sample"]), [None, latent_dim]):
        raise GanLoadError(f"{where}: 'encode' must return z_sample [N,{latent_dim}], "
                           f"got {({k: _dims(v) for k, v in eout.items()})}")
    return latent_dim


class Gan:
    """A loaded GAN. numpy in, numpy out; the TF graphs are traced once per signature.

    Attributes: `handle` (what was asked for: the hub URL, `toy`, or the folder), `path` (the
    local module folder), `latent_dim`, `device` (where TF runs the generator), and
    `fingerprint` (sha256 of the module files, computed on first use and cached).
    """

    def __init__(self, *, handle: str, path: Path, module, latent_dim: int, cache_dir: Path):
        import tensorflow as tf

        self.handle = handle
        self.path = Path(path)
        self.module = module
        self.latent_dim = latent_dim
        self._cache_dir = Path(cache_dir)
        self._fingerprint: str | None = None
        gpus = tf.config.list_logical_devices("GPU")
        self.device = gpus[0].name.replace("/device:", "") if gpus else "CPU"
        gen_sig, enc_sig = module.signatures["generate"], module.signatures["encode"]
        d = latent_dim
        # Fixed input signatures: one trace for every batch size. Wrapping the signature in a
        # tf.function that returns only `default` lets grappler prune the unused `upsampled`
        # output (measured ~1.7x faster on the toy).

        @tf.function(input_signature=[tf.TensorSpec([None, d], tf.float32)])
        def _generate(z):
            return gen_sig(z=z)["default"]

        @tf.function(input_signature=[tf.TensorSpec([None, d], tf.float32),
                                      tf.TensorSpec([d], tf.float32),
                                      tf.TensorSpec([], tf.float32)])
        def _generate_pair(z, h, shift):
            n = tf.shape(z)[0]
            x = gen_sig(z=tf.concat([z, z + shift * h[None, :]], axis=0))["default"]
            return x[:n], x[n:]

        @tf.function(input_signature=[tf.TensorSpec([None, ENCODE_SIZE, ENCODE_SIZE, 3], tf.float32)])
        def _encode(x):
            return enc_sig(x=x)["z_sample"]

        self._generate, self._generate_pair, self._encode = _generate, _generate_pair, _encode

    def __repr__(self) -> str:
        return f"Gan(handle={self.handle!r}, latent_dim={self.latent_dim}, device={self.device!r})"

    def _z(self, z) -> np.ndarray:
        z = np.asarray(z, dtype=np.float32)
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must be float32 [N, {self.latent_dim}], got shape {z.shape}")
        return z

    def generate(self, z) -> np.ndarray:
        """G(z): float32 [N,128,128,3] in [-1, 1]."""
        return self._generate(self._z(z)).numpy()

    def generate_pair(self, z, direction, shift: float) -> tuple[np.ndarray, np.ndarray]:
        """(G(z), G(z + shift * direction)) rendered in ONE batched call of 2N latents."""
        z = self._z(z)
        h = np.asarray(direction, dtype=np.float32)
        if h.shape != (self.latent_dim,) or not np.all(np.isfinite(h)):
            raise ValueError(f"direction must be finite float32 [{self.latent_dim}], got shape {h.shape}")
        x, xs = self._generate_pair(z, h, np.float32(shift))
        return x.numpy(), xs.numpy()

    def encode(self, x) -> np.ndarray:
        """E(x) (`z_sample`): x float32 [N,256,256,3] in [-1, 1] -> float32 [N,D]."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 4 or x.shape[1:] != (ENCODE_SIZE, ENCODE_SIZE, 3):
            raise ValueError(f"x must be float32 [N,{ENCODE_SIZE},{ENCODE_SIZE},3], got shape {x.shape}")
        return self._encode(x).numpy()

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = module_fingerprint(self.path, cache_dir=self._cache_dir)
        return self._fingerprint


# ---------------------------------------------------------------------------------------------
# fingerprints

_MEMO: dict[tuple, str] = {}
_MEMO_LOCK = threading.Lock()
_TOY_STAMP = "bgw-toy.json"


def _fingerprint_files(path: Path) -> list[Path]:
    """The files that define a module: saved_model.pb and variables/*.

    The toy's saved_model.pb embeds TF's process-global function counters, so two identical
    builds differ there; for the toy (recognised by its stamp, which holds its source digest)
    the stamp replaces the pb, so every machine that builds the same code agrees.
    """
    files = sorted(p for p in (path / "variables").rglob("*") if p.is_file()) if (path / "variables").is_dir() else []
    head = path / _TOY_STAMP if (path / _TOY_STAMP).is_file() else path / "saved_model.pb"
    if head.is_file():
        return [head, *files]
    return sorted(p for p in path.rglob("*") if p.is_file())  # unusual layout: hash all of it


def module_fingerprint(path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None) -> str:
    """sha256 over the module's defining files (relative names and bytes), memoised.

    Memoised in memory and, when `cache_dir` is given, in `cache_dir/fingerprints/` keyed by the
    folder and the files' sizes and mtimes (hashing BigBiGAN's weights takes a few seconds).
    """
    path = Path(path).resolve()
    files = _fingerprint_files(path)
    stat_key = tuple((str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    key = (str(path), stat_key)
    with _MEMO_LOCK:
        if key in _MEMO:
            return _MEMO[key]
    record = None
    if cache_dir is not None:
        record = Path(cache_dir) / "fingerprints" / f"{hashlib.sha1(str(path).encode()).hexdigest()}.json"
        try:
            saved = json.loads(record.read_text())
            if saved.get("files") == [list(s) for s in stat_key]:
                with _MEMO_LOCK:
                    _MEMO[key] = saved["sha256"]
                return saved["sha256"]
        except (OSError, ValueError, KeyError):
            pass
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    digest = h.hexdigest()
    with _MEMO_LOCK:
        _MEMO[key] = digest
    if record is not None:
        try:
            record.parent.mkdir(parents=True, exist_ok=True)
            tmp = record.with_name(f"{record.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"path": str(path), "files": stat_key, "sha256": digest}))
            os.replace(tmp, record)
        except OSError as e:  # a read-only cache costs only a re-hash next time
            log.debug("could not record fingerprint in %s: %s", record, e)
    return digest
