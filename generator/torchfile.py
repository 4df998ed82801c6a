"""Read tensors from files that `torch.save` wrote, without torch and without unpickling objects.

A `.pth` file is a pickle plus raw storage bytes: the zip layout of torch >= 1.6
(`<name>/data.pkl`, `<name>/data/<key>`, `<name>/byteorder`) or the legacy stream of torch < 1.6
(magic number, protocol version, system info, the pickle, the storage keys, then each storage as
an int64 element count followed by its bytes). The pickle rebuilds tensors by calling
`torch._utils._rebuild_tensor_v2` on storages named by persistent ids.

`load` runs that pickle through `TensorUnpickler`, which admits only what tensors, state dicts and
plain containers need: the tensor-rebuild calls, the storage types, `collections.OrderedDict`.
Anything else (a class, `os.system`, `builtins.eval`, ...) is refused with `TorchFileError` before it
is called, so a malicious `__reduce__` executes nothing. Tensors come back as numpy arrays, state
dicts as dicts of arrays. This is what lets `pip install 'bgw-seg[gen]'` (no torch) read the
authors' published `bg_direction.pth` and the DCGAN weights of `gan-face-generate`.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

from core.errors import UserError, first_line

# torch's storage types -> numpy dtypes (little-endian unless the file says otherwise)
STORAGE_DTYPES = {
    "DoubleStorage": "f8", "FloatStorage": "f4", "HalfStorage": "f2", "BFloat16Storage": "bf16",
    "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?",
}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
LEGACY_PROTOCOL = 1001


class TorchFileError(UserError, ValueError):
    """A torch file could not be read safely; the message is one line naming the file and why."""


class _StorageType:
    """Stands in for `torch.FloatStorage` & co. in a persistent id: it only names a dtype."""

    def __init__(self, name: str):
        self.name = name


def _rebuild_tensor(storage, offset, size, stride, *_ignored):
    """`torch._utils._rebuild_tensor(_v2)`: a strided view of the storage, copied to a new array."""
    storage = np.asarray(storage)
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise TorchFileError(f"negative tensor size {size} or stride {stride}")
    if any(s == 0 for s in size):
        return np.zeros(size, storage.dtype)
    last = int(offset) + sum((n - 1) * st for n, st in zip(size, stride))
    if offset < 0 or last >= storage.size:
        raise TorchFileError(f"tensor of size {size} at offset {offset} runs past its storage of {storage.size}")
    view = np.lib.stride_tricks.as_strided(storage[int(offset):], shape=size,
                                           strides=[st * storage.itemsize for st in stride], writeable=False)
    return np.array(view)


def _rebuild_parameter(data, requires_grad, backward_hooks, *_ignored):
    """`torch._utils._rebuild_parameter`: an nn.Parameter is its tensor here."""
    return data


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class TensorUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds tensors as numpy arrays and refuses every other global."""

    def __init__(self, file, storage: "callable"):
        super().__init__(file)
        self._storage = storage

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise TorchFileError(f"refuses to load '{module}.{name}': only tensors, state dicts and plain "
                                 f"containers are read (the file may be malicious, or hold a whole "
                                 f"model object: save its state_dict instead)") from None

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel[, view_metadata])
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise TorchFileError(f"unexpected persistent id {str(pid)[:80]}")
        return self._storage(pid[1].name, str(pid[2]), int(pid[4]))


def _dtype(name: str, byteorder: str) -> np.dtype:
    code = STORAGE_DTYPES[name]
    if code == "bf16":
        raise TorchFileError("bfloat16 tensors are not supported; save the tensor as float32")
    dt = np.dtype(code)
    return dt.newbyteorder("<" if byteorder == "little" else ">") if dt.itemsize > 1 else dt


def _load_zip(data: bytes) -> object:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise TorchFileError(f"zip holds {len(pkl)} data.pkl records; expected one (a torch.save file)")
        prefix = pkl[0][: -len("data.pkl")]
        byteorder = zf.read(prefix + "byteorder").decode().strip() if prefix + "byteorder" in names else "little"
        cache: dict[str, np.ndarray] = {}

        def storage(type_name: str, key: str, numel: int) -> np.ndarray:
            if key not in cache:
                dt = _dtype(type_name, byteorder)
                raw = zf.read(f"{prefix}data/{key}")
                if len(raw) < numel * dt.itemsize:
                    raise TorchFileError(f"storage {key} holds {len(raw)} bytes, {numel} x {dt.itemsize} expected")
                cache[key] = np.frombuffer(raw, dt, count=numel).astype(dt.newbyteorder("="))
            return cache[key]

        return TensorUnpickler(io.BytesIO(zf.read(pkl[0])), storage).load()


def _no_storage(*_args):
    raise TorchFileError("unexpected storage in the file header")


def _load_legacy(data: bytes) -> object:
    f = io.BytesIO(data)
    if TensorUnpickler(f, _no_storage).load() != LEGACY_MAGIC:
        raise TorchFileError("not a torch.save file (no zip archive, no legacy magic number)")
    if TensorUnpickler(f, _no_storage).load() != LEGACY_PROTOCOL:
        raise TorchFileError("unsupported legacy torch.save protocol version")
    info = TensorUnpickler(f, _no_storage).load()
    byteorder = "little" if not isinstance(info, dict) or info.get("little_endian", True) else "big"
    start = f.tell()
    # The storages' bytes follow the pickle, so it runs twice: once to learn which storages it
    # names (rebuilding from zeros of the right size), and once more on the real arrays.
    named: dict[str, tuple[np.dtype, int]] = {}

    def record(type_name: str, key: str, numel: int) -> np.ndarray:
        named[key] = (_dtype(type_name, byteorder), numel)
        return np.zeros(numel, named[key][0])

    TensorUnpickler(f, record).load()
    arrays: dict[str, np.ndarray] = {}
    for key in TensorUnpickler(f, _no_storage).load():
        if str(key) not in named:
            raise TorchFileError(f"storage {key} is listed but no tensor uses it")
        dt, numel = named[str(key)]
        (count,) = struct.unpack("<q" if byteorder == "little" else ">q", f.read(8))
        raw = f.read(count * dt.itemsize)
        if count != numel or len(raw) != count * dt.itemsize:
            raise TorchFileError(f"storage {key} holds {len(raw) // dt.itemsize} of {numel} elements")
        arrays[str(key)] = np.frombuffer(raw, dt).astype(dt.newbyteorder("="))
    f.seek(start)
    return TensorUnpickler(f, lambda _type, key, _numel: arrays[key]).load()


def load(path: str | os.PathLike, data: bytes | None = None) -> object:
    """Read a `torch.save` file: tensors become numpy arrays; dicts, lists, numbers and strings stay.

    Raises TorchFileError (one line, naming the file) for a file it cannot read, or one that asks
    for anything beyond tensors and containers."""
    path = Path(path)
    try:
        raw = path.read_bytes() if data is None else data
    except OSError as exc:
        raise TorchFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        return _load_zip(raw) if zipfile.is_zipfile(io.BytesIO(raw)) else _load_legacy(raw)
    except TorchFileError as exc:
        raise TorchFileError(f"{path}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, AttributeError,
            IndexError, struct.error, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise TorchFileError(f"{path}: not a readable torch.save file ({first_line(exc)[:120]})") from None
