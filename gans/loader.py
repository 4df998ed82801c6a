"""GAN adapters: load BigBiGAN, or any module that meets the model contract, behind one small API.

`load_gan(spec)` accepts a name of the `GANS` registry (core.registry), each with its loader:
`bigbigan` (https://tfhub.dev/deepmind/bigbigan-resnet50/1), `biggan` (BigGAN-128,
https://tfhub.dev/deepmind/biggan-128/2, class-conditional), `toy` (the project's stand-in, a test
fixture, built on first use by gans.toy) and `dcgan-faces` (gans.dcgan); else a local SavedModel
folder, or any TF-Hub handle. Everything goes through `tensorflow_hub`, which finds a cached
copy of a handle under `$TFHUB_CACHE_DIR/<sha1 of the handle>` with no network, so a module
placed there loads offline under its real handle. Both of TF-Hub's formats load: TF2
SavedModels and the TF1 Hub format that BigBiGAN ships (`tfhub_module.pb`, SignatureDefs under
the empty tag set), which `hub.load` handles itself.

The model contract (`check_signatures`): a generator signature is required, `generate` when the
module has one, else `default` when it takes z (BigGAN's only signature): z float32 [N, D] ->
`default` [N, S, S, 3] in [-1, 1], any D, any square S >= 32. Two more inputs are allowed on it:
y float32 [N, C], a one-hot class (the module is then class-conditional with C classes, and every
call needs one class per latent, `gans.classes`), and truncation float32 [] (BigGAN's; fed
`Gan.truncation`, 1.0 by default: untruncated z ~ N(0, I), as Voynov & Babenko sample). `encode`
(x [N, E, E, 3] -> `z_sample` [N, D]) is optional and needed only for embedding latents.
`Gan.generate_shifted` renders G(z + s h) for several shifts s in one batched call and resamples
the images to the shard set's size on the accelerator (`resample`); `generate_pair` is its
two-shift case.

TensorFlow and tensorflow_hub are imported inside functions, never at module import.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from core.errors import UserError, first_line
from core.registry import Registry
from gans import dcgan, toy
from gans.classes import ClassSpecError

log = logging.getLogger(__name__)

BIGBIGAN_HANDLE = "https://tfhub.dev/deepmind/bigbigan-resnet50/1"
BIGGAN_HANDLE = "https://tfhub.dev/deepmind/biggan-128/2"
# the registered names that are TF-Hub handles (a cached copy under $TFHUB_CACHE_DIR loads offline)
HUB_NAMES = {"bigbigan": BIGBIGAN_HANDLE, "biggan": BIGGAN_HANDLE}
DEFAULT_GAN = "bigbigan"  # the paper's model: what --gan means when it is not given
MIN_IMAGE_SIZE = 32  # smallest side of G(z) the mask rules and filters are meant for
# Bounds on what a module may declare, checked before anything is drawn or rendered: a module from
# anywhere that declares z of 10^9 or a billion classes would otherwise ask for terabytes at the first
# latent block or one-hot batch. Real ones sit far inside: z of 100-512 (StyleGAN's W+ is 18 x 512),
# 1000 classes (ImageNet-21k's 21,843), images up to 1024.
MAX_LATENT_DIM = 1 << 16
MAX_CLASSES = 100_000
MAX_IMAGE_SIZE = 4096
ENCODE_SIZE = 256  # BigBiGAN's encoder input side, used when an encoder leaves its size open


@contextlib.contextmanager
def quiet_native_stderr():
    """Hold back what TensorFlow's C++ layer writes to stderr while it starts (CUDA probing, "All log
    messages before absl::InitializeLog()", cuInit errors: lines TF_CPP_MIN_LOG_LEVEL does not
    reach), unless logging is at INFO or finer (-v). The text is replayed if the block fails."""
    if logging.getLogger().getEffectiveLevel() <= logging.INFO:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def import_hub():
    """tensorflow_hub (and TensorFlow), imported quietly: TF's start-up lines are held back
    (`quiet_native_stderr`), and the import of pkg_resources warns on every run (setuptools<81 is pinned)."""
    import warnings

    with warnings.catch_warnings(), quiet_native_stderr():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        import tensorflow as tf
        import tensorflow_hub

        tf.config.list_logical_devices("GPU")  # the first device query probes CUDA: quiet it too
    return tensorflow_hub


class GanLoadError(UserError, RuntimeError):
    """A GAN could not be loaded; the message is one line that says what to do."""


def hub_cache_path(handle: str) -> Path:
    """Where tensorflow_hub looks for a cached copy of `handle`: $TFHUB_CACHE_DIR/<sha1(handle)>."""
    cache = import_hub().resolver.tfhub_cache_dir(use_temp=True)
    return Path(cache) / hashlib.sha1(handle.encode("utf8")).hexdigest()


def _is_handle(spec: str) -> bool:
    return "://" in spec or spec.startswith("gs://")


# Named GANs: each name's loader takes the cache folder and the truncation, and returns the loaded
# Gan. A --gan that names none of them is a local SavedModel folder or a TF-Hub handle (load_gan).
GANS: Registry[Callable[[Path, float], "Gan"]] = Registry("GAN")


@GANS.register("bigbigan")
def _load_bigbigan(cache: Path, truncation: float) -> "Gan":
    """The paper's model, by its TF-Hub handle (a cached copy loads offline)."""
    return _load_path(BIGBIGAN_HANDLE, _resolve_handle(BIGBIGAN_HANDLE), cache, truncation=truncation)


@GANS.register("biggan")
def _load_biggan(cache: Path, truncation: float) -> "Gan":
    """BigGAN-128 (class-conditional, 1000 ImageNet classes), by its TF-Hub handle (a cached copy
    loads offline)."""
    return _load_path(BIGGAN_HANDLE, _resolve_handle(BIGGAN_HANDLE), cache, truncation=truncation)


@GANS.register(toy.TOY_HANDLE)
def _load_toy(cache: Path, truncation: float) -> "Gan":
    """The project's stand-in, built by gans.toy on first use."""
    try:
        path = toy.ensure_toy_module(cache)
    except Exception as e:  # noqa: BLE001 - the model-loading boundary: TensorFlow's errors as one line
        raise GanLoadError(f"could not build the toy GAN under {cache}: {e}") from e
    return _load_path(toy.TOY_HANDLE, path, cache, truncation=truncation)


@GANS.register(dcgan.DCGAN_HANDLE)
def _load_dcgan_faces(cache: Path, truncation: float) -> "Gan":
    """A trained DCGAN of faces whose weights ship in a wheel, built by gans.dcgan on first use."""
    try:
        path, digest = dcgan.ensure_dcgan_module(cache)
    except dcgan.DcganError as e:
        raise GanLoadError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - the model-loading boundary: TensorFlow's errors as one line
        raise GanLoadError(f"could not build {dcgan.DCGAN_HANDLE} under {cache}: {e}") from e
    return _load_path(dcgan.DCGAN_HANDLE, path, cache, fingerprint=digest, truncation=truncation)


def load_gan(spec: str, *, cache_dir: str | os.PathLike | None = None, truncation: float = 1.0) -> "Gan":
    """Load a GAN by name (GANS: `bigbigan`, `biggan`, `toy`, `dcgan-faces`), local SavedModel folder
    or TF-Hub handle.

    `cache_dir` holds the built modules (toy, dcgan-faces) and the fingerprint cache (default:
    gans.toy's `default_cache_dir()`, i.e. `$BGW_CACHE_DIR` or ~/.cache/bgw-seg). `truncation` is
    fed to a module with a truncation input (BigGAN) on every call; 1.0 is BigGAN's value for
    untruncated z ~ N(0, I), and a module without the input takes only 1.0.
    Raises GanLoadError with a one-line message on any failure.
    """
    check_gan_spec(spec)
    truncation = _check_truncation(truncation)
    import_hub()  # TensorFlow starts here, quietly, before anything builds a module with it
    cache = Path(cache_dir) if cache_dir is not None else toy.default_cache_dir()
    if spec in GANS:
        return GANS.get(spec)(cache, truncation)
    if _is_handle(spec):
        return _load_path(spec, _resolve_handle(spec), cache, truncation=truncation)
    path = Path(spec).expanduser().resolve()
    return _load_path(str(path), path, cache, truncation=truncation)


def _check_truncation(truncation) -> float:
    try:
        value = float(truncation)
    except (TypeError, ValueError):
        value = float("nan")
    if not np.isfinite(value) or value <= 0:
        raise GanLoadError(f"truncation must be a positive number (1.0: untruncated z ~ N(0, I)), got {truncation!r}")
    return value


def check_gan_spec(spec: str) -> None:
    """Refuse, before anything loads, a --gan that is no known name, no folder and no hub handle. A
    bare word (no path separator) is taken for a misspelt name: the registry's one line, with the
    close names, as a usage error; a path that is not a folder says so."""
    if spec in GANS or _is_handle(spec) or Path(spec).expanduser().is_dir():
        return
    if "/" not in spec and os.sep not in spec:
        GANS.get(spec)  # raises UnknownNameError: "unknown GAN 'toyy' (did you mean toy?); choose from ..."
    raise GanLoadError(f"--gan {spec!r} is neither a known name ({', '.join(GANS.names())}), "
                       f"a SavedModel folder nor a TF-Hub handle (https://...)")


def _resolve_handle(handle: str) -> Path:
    """Local folder for a hub handle: the cache when present, else a download."""
    hub = import_hub()
    cached = hub_cache_path(handle)
    try:
        return Path(hub.resolve(handle))
    except Exception as e:  # noqa: BLE001 - the model-loading boundary: offline, DNS, HTTP, a corrupt archive
        reason = first_line(e)
        raise GanLoadError(
            f"cannot fetch {handle} ({type(e).__name__}: {reason[:160]}); offline? pass --gan PATH "
            f"to a local copy of the module, or place it at {cached} "
            f"(TFHUB_CACHE_DIR/{cached.name}, the sha1 of the handle)") from e


def _load_path(handle: str, path: Path, cache: Path, fingerprint: str | None = None,
               truncation: float = 1.0) -> "Gan":
    hub = import_hub()
    try:
        module = hub.load(str(path))
    except Exception as e:  # noqa: BLE001 - the model-loading boundary: any folder or handle a user names
        reason = first_line(e)
        raise GanLoadError(f"{path} is not a loadable SavedModel / TF-Hub module: {reason[:200]}") from e
    contract = check_signatures(module, where=str(path))
    if not contract.has_truncation and truncation != 1.0:
        raise NoTruncationError(f"{handle} takes no truncation input (BigGAN's modules do), so truncation "
                                f"{truncation} cannot apply; leave it out")
    return Gan(handle=handle, path=Path(path), module=module, contract=contract, cache_dir=cache,
               fingerprint=fingerprint, truncation=truncation)


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


def _image_side(shape: list | None, probe) -> int | None:
    """S of an image batch [N, S, S, 3]; None when the shape is not that. Sides a TF1 module leaves
    unknown in its SignatureDef are read off one call of `probe()` (which returns a tensor)."""
    if shape is None or (len(shape) == 4 and (shape[1] is None or shape[2] is None)):
        shape = list(probe().shape)
    if len(shape) != 4 or shape[3] not in (3, None) or shape[1] != shape[2]:
        return None
    return int(shape[1])


@dataclass(frozen=True)
class ModelContract:
    """What a module provides, read off its signatures (`check_signatures`).

    latent_dim: D of the generator's z [N, D]. image_size: S of `default` [N, S, S, 3].
    encode_size: E of `encode`'s x [N, E, E, 3], or None for a module without an encoder.
    num_classes: C of the generator's y [N, C] (a one-hot class), None for an unconditional module.
    has_truncation: whether the generator takes BigGAN's truncation float32 [].
    signature: the generator signature's name, `generate` or (BigGAN) `default`."""

    latent_dim: int
    image_size: int
    encode_size: int | None
    num_classes: int | None = None
    has_truncation: bool = False
    signature: str = "generate"


_GEN_INPUTS = ("z", "y", "truncation")
_ACCEPTED = ("z float32 [N,D] (required), y float32 [N,C] (a one-hot class, optional), "
             "truncation float32 [] (optional)")


def _generator_signature(sigs, where: str) -> str:
    """`generate` when present, else BigGAN's `default` when it takes z."""
    if "generate" in sigs:
        return "generate"
    if "default" in sigs and "z" in sigs["default"].structured_input_signature[1]:
        return "default"
    raise GanLoadError(
        f"{where} lacks the signature 'generate' (has {sorted(sigs) or 'none'}); a GAN module needs "
        f"'generate' (or BigGAN's 'default'): z float32 [N,D] -> {{'default': [N,S,S,3] in [-1,1]}}")


def check_signatures(module, *, where: str) -> ModelContract:
    """Check a module against the model contract (README, "The model contract").

    Required: a generator signature (`generate`, else a `default` that takes z: BigGAN's), z float32
    [N, D] -> dict with `default` float32 [N, S, S, 3] in [-1, 1], any D >= 1 and any static square
    S >= MIN_IMAGE_SIZE; it may also take y float32 [N, C] (one-hot class, C fixed) and truncation
    float32 [], nothing else. Optional: `encode`, x float32 [N, E, E, 3] in [-1, 1] -> dict with
    `z_sample` [N, D]. Raises GanLoadError naming what is wrong."""
    sigs = getattr(module, "signatures", {}) or {}
    name = _generator_signature(sigs, where)
    gen = sigs[name]
    inputs = sorted(gen.structured_input_signature[1])
    extra = [k for k in inputs if k not in _GEN_INPUTS]
    if extra:
        raise GanLoadError(f"{where}: signature {name!r} takes inputs {inputs}, and {extra} is none the model "
                           f"contract knows; a generator takes {_ACCEPTED}")
    z = _spec(gen, "z")
    if z is None or z[0] is None or len(z[0]) != 2 or z[0][1] is None or z[1] != "float32":
        raise GanLoadError(f"{where}: signature {name!r} must take one input z float32 [N,D] with D fixed, got "
                           f"{z if z is not None else inputs}")
    latent_dim = int(z[0][1])
    _check_bound(where, f"signature {name!r} z [N,{latent_dim}]", latent_dim, MAX_LATENT_DIM, "latent dimensions")
    num_classes = None
    y = _spec(gen, "y")
    if y is not None:
        if y[0] is None or len(y[0]) != 2 or y[0][1] is None or y[0][1] < 1 or y[1] != "float32":
            raise GanLoadError(f"{where}: signature {name!r} may take y float32 [N,C] (a one-hot class, C fixed), "
                               f"got {y}")
        num_classes = int(y[0][1])
        _check_bound(where, f"signature {name!r} y [N,{num_classes}]", num_classes, MAX_CLASSES, "classes")
    t = _spec(gen, "truncation")
    if t is not None and (t[0] != [] or t[1] != "float32"):
        raise GanLoadError(f"{where}: signature {name!r} may take truncation float32 [] (a scalar), got {t}")
    feed = _feed(num_classes, t is not None, 1.0)
    out = gen.structured_outputs
    side = None
    if "default" in out and out["default"].dtype.name == "float32":
        import tensorflow as tf

        def probe():
            classes = None if num_classes is None else tf.zeros([1], tf.int32)
            return gen(z=tf.zeros([1, latent_dim]), **feed(classes))["default"]

        side = _image_side(_dims(out["default"]), probe)
    if side is None or side < MIN_IMAGE_SIZE:
        raise GanLoadError(f"{where}: {name!r} must return default float32 [N,S,S,3] (square, S >= "
                           f"{MIN_IMAGE_SIZE}), got {({k: (_dims(v), v.dtype.name) for k, v in out.items()})}"
                           + (f" (S = {side})" if side is not None else ""))
    _check_bound(where, f"signature {name!r} images [N,{side},{side},3]", side, MAX_IMAGE_SIZE, "pixels a side")
    contract = dict(num_classes=num_classes, has_truncation=t is not None, signature=name)
    if "encode" not in sigs:
        return ModelContract(latent_dim, side, None, **contract)
    enc = sigs["encode"]
    x = _spec(enc, "x")
    shape = x[0] if x is not None else None
    if shape is not None and len(shape) == 4 and shape[1] is None and shape[2] is None:
        shape = [None, ENCODE_SIZE, ENCODE_SIZE, shape[3]]  # an encoder of any size: feed BigBiGAN's
    square = shape is not None and len(shape) == 4 and shape[3] in (3, None) and shape[1] == shape[2]
    enc_side = int(shape[1]) if square and shape[1] is not None else None
    if enc_side is not None:
        _check_bound(where, f"signature 'encode' x [N,{enc_side},{enc_side},3]", enc_side, MAX_IMAGE_SIZE, "pixels a side")
    if enc_side is None or x[1] != "float32":
        raise GanLoadError(f"{where}: signature 'encode' must take x float32 [N,E,E,3], got {x}")
    eout = enc.structured_outputs
    if "z_sample" not in eout or not _fits(_dims(eout["z_sample"]), [None, latent_dim]):
        raise GanLoadError(f"{where}: 'encode' must return z_sample [N,{latent_dim}], "
                           f"got {({k: _dims(v) for k, v in eout.items()})}")
    return ModelContract(latent_dim, side, enc_side, **contract)


def _check_bound(where: str, what: str, value: int, bound: int, unit: str) -> None:
    if value > bound:
        raise GanLoadError(f"{where}: {what} declares {value:,} {unit}, more than the {bound:,} this tool takes "
                           f"(it would need that many per sample in memory); is this the module you meant?")


def _feed(num_classes: int | None, has_truncation: bool, truncation: float):
    """classes (an int32 tensor [N], or None) -> the generator's inputs beside z: y as one-hot
    rows for a class-conditional module, truncation for a module that takes it."""
    import tensorflow as tf

    def feed(classes) -> dict:
        inputs = {}
        if num_classes is not None:
            inputs["y"] = tf.one_hot(classes, num_classes, dtype=tf.float32)
        if has_truncation:
            inputs["truncation"] = tf.constant(truncation, tf.float32)
        return inputs

    return feed


class NoTruncationError(GanLoadError):
    """A truncation asked of a module that takes none: an option the model cannot take (exit 2)."""

    exit_code = 2  # core.cli's usage exit code


class NoEncoderError(GanLoadError):
    """The module has no `encode` signature, and something asked for embeddings."""


class Gan:
    """A loaded GAN. numpy in, numpy out; the TF graphs are traced once per signature.

    Attributes: `handle` (what was asked for: the hub URL, `toy`, or the folder), `path` (the
    local module folder), `latent_dim`, `image_size` (S of G(z)), `encode_size` (E of the
    encoder's input, None without an encoder), `num_classes` (C of a class-conditional model such
    as BigGAN, None for an unconditional one; `conditional`), `truncation` (fed to a module that
    takes it, 1.0 = untruncated), `signature` (the generator signature's name), `device` (where
    TF runs the generator), and `fingerprint` (sha256 of the module files, computed on first use
    and cached).

    Every entry point of a class-conditional model takes `classes`, int [N] in [0, C), one class
    per latent (`check_classes`); an unconditional model takes none.
    """

    def __init__(self, *, handle: str, path: Path, module, contract: ModelContract, cache_dir: Path,
                 fingerprint: str | None = None, truncation: float = 1.0):
        import tensorflow as tf

        self.handle = handle
        self.path = Path(path)
        self.module = module
        self.latent_dim = contract.latent_dim
        self.image_size = contract.image_size
        self.encode_size = contract.encode_size
        self.num_classes = contract.num_classes
        self.signature = contract.signature
        self.has_truncation = contract.has_truncation
        self._truncation = float(truncation)
        self._cache_dir = Path(cache_dir)
        self._fingerprint = fingerprint
        gpus = tf.config.list_logical_devices("GPU")
        self.device = gpus[0].name.replace("/device:", "") if gpus else "CPU"
        gen_sig = module.signatures[self.signature]
        feed = _feed(self.num_classes, contract.has_truncation, self._truncation)
        self._gen_sig, self._feed = gen_sig, feed
        d = self.latent_dim
        # Fixed input signatures: one trace for every batch size and number of shifts. Wrapping the
        # signature in a tf.function that returns only `default` lets grappler prune the unused
        # `upsampled` output (measured ~1.7x faster on the toy). An unconditional model's
        # functions take no classes, so their graphs are the ones traced before classes existed.
        z_spec = tf.TensorSpec([None, d], tf.float32)
        shift_specs = [tf.TensorSpec([d], tf.float32), tf.TensorSpec([None], tf.float32),
                       tf.TensorSpec([], tf.int32)]

        def shifted(z, h, shifts, size, classes=None):
            # [z + s_0 h; z + s_1 h; ...] and each latent's class repeated the same way
            zz = tf.reshape(z[None] + shifts[:, None, None] * h[None, None, :], [-1, d])
            cc = None if classes is None else tf.tile(classes, tf.shape(shifts))
            return resample(gen_sig(z=zz, **feed(cc))["default"], size)

        if self.num_classes is None:
            @tf.function(input_signature=[z_spec])
            def _generate(z):
                return gen_sig(z=z, **feed(None))["default"]

            @tf.function(input_signature=[z_spec, *shift_specs])
            def _generate_shifted(z, h, shifts, size):
                return shifted(z, h, shifts, size)
        else:
            c_spec = tf.TensorSpec([None], tf.int32)

            @tf.function(input_signature=[z_spec, c_spec])
            def _generate(z, classes):
                return gen_sig(z=z, **feed(classes))["default"]

            @tf.function(input_signature=[z_spec, *shift_specs, c_spec])
            def _generate_shifted(z, h, shifts, size, classes):
                return shifted(z, h, shifts, size, classes)

        self._generate, self._generate_shifted = _generate, _generate_shifted
        self._encode = None
        if self.encode_size is not None:
            enc_sig, e = module.signatures["encode"], self.encode_size

            @tf.function(input_signature=[tf.TensorSpec([None, e, e, 3], tf.float32)])
            def _encode(x):
                return enc_sig(x=x)["z_sample"]

            self._encode = _encode

    def __repr__(self) -> str:
        classes = f", num_classes={self.num_classes}" if self.conditional else ""
        return (f"Gan(handle={self.handle!r}, latent_dim={self.latent_dim}, image_size={self.image_size}"
                f"{classes}, encoder={self.encode_size is not None}, device={self.device!r})")

    @property
    def has_encoder(self) -> bool:
        return self._encode is not None

    @property
    def conditional(self) -> bool:
        """Whether the model is class-conditional (takes one class per latent)."""
        return self.num_classes is not None

    @property
    def truncation(self) -> float:
        """The truncation fed to a module that takes one (fixed at load: `load_gan(truncation=)`)."""
        return self._truncation

    def check_classes(self, classes, n: int) -> np.ndarray | None:
        """`classes` as int32 [n] for a class-conditional model (required, each in [0, C)), None for
        an unconditional one (which must be given none). Raises ClassSpecError, one line."""
        if self.num_classes is None:
            if classes is not None:
                raise ClassSpecError(f"model {self.handle} takes no classes (it is not class-conditional)")
            return None
        c = self.num_classes
        if classes is None:
            raise ClassSpecError(f"model {self.handle} is class-conditional ({c} classes): pass classes "
                                 f"(gen-synth --classes all, or a list)")
        arr = np.asarray(classes)
        if arr.shape != (n,) or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
            raise ClassSpecError(f"classes must be {n} integers, one per latent, got {arr.dtype} shape {arr.shape}")
        bad = arr[(arr < 0) | (arr >= c)]
        if bad.size:
            raise ClassSpecError(f"classes must lie in [0, {c}) for model {self.handle}, got "
                                 f"{sorted(set(bad.tolist()))[:5]}")
        return arr.astype(np.int32)

    def _z(self, z) -> np.ndarray:
        z = np.asarray(z, dtype=np.float32)
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must be float32 [N, {self.latent_dim}], got shape {z.shape}")
        return z

    def _class_args(self, classes, n: int) -> tuple:
        checked = self.check_classes(classes, n)
        return () if checked is None else (checked,)

    def generate(self, z, classes=None) -> np.ndarray:
        """G(z): float32 [N,S,S,3] in [-1, 1], S = `image_size`; `classes` int [N] for a
        class-conditional model (`check_classes`)."""
        z = self._z(z)
        return self._generate(z, *self._class_args(classes, len(z))).numpy()

    def generate_shifted(self, z, direction, shifts, size: int | None = None, classes=None) -> list[np.ndarray]:
        """[G(z + s * direction) for s in shifts], rendered in ONE batched call of len(shifts) * N
        latents (each latent keeps its class across the shifts), resampled to `size` x `size` on
        the accelerator when `size` differs from `image_size` (`resample`); None keeps the native
        size."""
        z = self._z(z)
        h = np.asarray(direction, dtype=np.float32)
        if h.shape != (self.latent_dim,) or not np.all(np.isfinite(h)):
            raise ValueError(f"direction must be finite float32 [{self.latent_dim}], got shape {h.shape}")
        s = np.asarray(shifts, dtype=np.float32)
        if s.ndim != 1 or s.size == 0 or not np.all(np.isfinite(s)):
            raise ValueError(f"shifts must be a non-empty list of finite numbers, got {shifts!r}")
        size = self.image_size if size is None else int(size)
        if size < 1:
            raise ValueError(f"size must be a positive number of pixels, got {size}")
        x = self._generate_shifted(z, h, s, np.int32(size), *self._class_args(classes, len(z))).numpy()
        return np.split(x, len(s))

    def generate_pair(self, z, direction, shift: float, size: int | None = None,
                      classes=None) -> tuple[np.ndarray, np.ndarray]:
        """(G(z), G(z + shift * direction)): `generate_shifted` with shifts [0, shift]."""
        x, xs = self.generate_shifted(z, direction, [0.0, shift], size, classes)
        return x, xs

    def tf_generator(self):
        """A TF callable f(z, classes=None) -> G(z) [N,S,S,3] that gradients pass through to z (for
        the finder's optimisation): z float32 tensor [N, D]; classes int32 tensor [N] for a
        class-conditional model, None for an unconditional one. Concrete classes (numpy, eager) are
        checked by `check_classes`; classes traced inside a graph must come from the class rules
        (gans.classes), as one_hot writes an all-zero row for an index outside [0, C)."""
        import tensorflow as tf

        gen_sig, feed = self._gen_sig, self._feed

        def generate(z, classes=None):
            if classes is not None and not tf.is_symbolic_tensor(classes):
                arr = np.asarray(classes)
                classes = self.check_classes(arr, z.shape[0] if z.shape[0] is not None else len(arr))
            elif (classes is None) != (self.num_classes is None):
                self.check_classes(classes, 0)  # raises: classes missing, or given to an unconditional model
            cc = None if classes is None else tf.cast(classes, tf.int32)
            return gen_sig(z=z, **feed(cc))["default"]

        return generate

    def encode(self, x) -> np.ndarray:
        """E(x) (`z_sample`): x float32 [N,E,E,3] in [-1, 1] -> float32 [N,D]. Raises
        NoEncoderError (one line) for a module without an `encode` signature."""
        if self._encode is None:
            raise NoEncoderError(f"{self.handle} has no 'encode' signature, so it cannot embed images: "
                                 f"use --latents prior (z ~ N(0, I))")
        x = np.asarray(x, dtype=np.float32)
        e = self.encode_size
        if x.ndim != 4 or x.shape[1:] != (e, e, 3):
            raise ValueError(f"x must be float32 [N,{e},{e},3], got shape {x.shape}")
        return self._encode(x).numpy()

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = module_fingerprint(self.path, cache_dir=self._cache_dir)
        return self._fingerprint


def resample(x, size):
    """Images [N, S, S, 3] (a TF tensor) -> [N, size, size, 3]: bilinear, antialiased when
    shrinking (an area filter, so no aliasing), clipped back into [-1, 1]; the identity when
    S == size. The one place where generator output changes resolution (`resample_record`)."""
    import tensorflow as tf

    def scaled():
        y = tf.image.resize(x, tf.stack([size, size]), method="bilinear", antialias=True)
        return tf.clip_by_value(y, -1.0, 1.0)

    return tf.cond(tf.equal(tf.shape(x)[1], size), lambda: x, scaled)


def resample_record(native: int, size: int) -> dict:
    """How `resample` changed the images, for manifests: {"native", "size", "method"}."""
    if native == size:
        method = None
    else:
        method = "bilinear, antialiased" if size < native else "bilinear"
        method += " (tf.image.resize), clipped to [-1, 1], before the mask rule"
    return {"native": int(native), "size": int(size), "method": method}


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
