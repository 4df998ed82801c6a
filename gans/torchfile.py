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

A file is data from a stranger, so the reader holds two more promises:

- **Bounded memory.** The caller passes `max_bytes`, its budget of tensor data (a direction needs a
  few KiB, the DCGAN's weights 14 MB). Every size, stride, offset and element count is checked
  against it before anything is allocated: the storages read (at most `max_bytes` in all), the
  tensors built from them (at most `max_bytes` in all, so a stride-0 view cannot expand one float
  into gigabytes), and every strided view must lie inside its storage. Zip members are
  decompressed only as far as the bytes needed (never more than the budget plus one byte); the
  pickle itself may be at most `pickle_limit(max_bytes)` = max(64 KiB, max_bytes / 64) bytes, and so
  may a zip's central directory. A file given by path is read as it is parsed, not loaded whole.
  Peak memory is therefore at most about 2 x max_bytes + 100 x pickle_limit (each pickle opcode
  makes at most one small Python object: 75 bytes per pickle byte measured at worst): 9 MiB for a
  1 MiB budget, 3.6 x max_bytes for budgets of 4 MiB and up (the DCGAN's 14 MB load peaks at 28 MB).
- **No file changes the reader.** The pickle runs on Python's reference unpickler, whose opcodes
  can be vetted one by one: SETITEM(S) and APPEND(S) fill only the dicts and lists the file itself
  made, BUILD only sets a state dict's `_metadata`; sets, class instantiation (NEWOBJ, OBJ, INST)
  and extension codes are refused. The callables and storage types handed to the file are fresh
  per load. So one file cannot, say, rename the float storage type for the next file.

Every refusal is one `TorchFileError` line naming the file and, for a limit, the limit.
"""
from __future__ import annotations

import collections
import io
import math
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
MAX_DIMS = 32  # numpy 1.x's limit; no torch.save file of weights comes near it
_REBUILD = ("_rebuild_tensor", "_rebuild_tensor_v2")


class TorchFileError(UserError, ValueError):
    """A torch file could not be read safely; the message is one line naming the file and why."""


def pickle_limit(max_bytes: int) -> int:
    """The largest pickle (and zip central directory) read under a tensor budget of `max_bytes`.

    A state dict's pickle takes ~100 bytes per tensor (the DCGAN's: 2.7 KB for 25 tensors), so
    1/64 of the budget is ample; the floor keeps small budgets usable."""
    return max(64 << 10, max_bytes // 64)


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.3g} {unit}"
    return f"{n} bytes"


class _Budget:
    """What is left of one load's allowance of storage bytes and of tensor bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.left = {"storage": max_bytes, "tensor": max_bytes}

    def take(self, kind: str, nbytes: int, what: str) -> None:
        if nbytes > self.left[kind]:
            raise TorchFileError(f"{what} would take {_size(nbytes)}, past this reader's limit of "
                                 f"{_size(self.max_bytes)} of {kind} data (the file is corrupt or not "
                                 f"the kind of file expected here)")
        self.left[kind] -= nbytes


class _StorageType:
    """Stands in for `torch.FloatStorage` & co. in a persistent id: it only names a dtype. A fresh
    one is made for each reference in the file."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


class _Storage:
    """One storage of the file: its dtype and element count, and its data once read (None in the
    legacy format's first pass, which only learns which storages the pickle names)."""

    __slots__ = ("key", "dtype", "numel", "data")

    def __init__(self, key: str, dtype: np.dtype, numel: int, data: np.ndarray | None):
        self.key, self.dtype, self.numel, self.data = key, dtype, numel, data


def _ints(value, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or len(value) > MAX_DIMS or not all(type(v) is int for v in value):
        raise TorchFileError(f"tensor {what} is not a tuple of at most {MAX_DIMS} integers")
    return tuple(value)


def _opcode_refused(name: str):
    def refuse(_self):
        raise TorchFileError(f"refuses the pickle opcode {name}: a tensor file needs no sets, class "
                             f"instances or extension codes (the file may be malicious)")
    return refuse


def _owned(allowed: tuple[type, ...], opcode: str):
    """The reference unpickler's handler of `opcode`, run only when its target is one of the
    `allowed` containers (exact types: never a class, a callable or a storage handed to the file)."""
    handler = pickle._Unpickler.dispatch[getattr(pickle, opcode)[0]]

    def guarded(self):
        if opcode in ("SETITEMS", "APPENDS"):  # the target sits under the mark
            target = self.metastack[-1][-1] if self.metastack and self.metastack[-1] else None
        else:
            depth = 3 if opcode == "SETITEM" else 2
            target = self.stack[-depth] if len(self.stack) >= depth else None
        if type(target) not in allowed:
            raise TorchFileError(f"refuses {opcode} on a {type(target).__name__}: a file may fill only "
                                 f"the containers it made (the file may be malicious)")
        handler(self)
    return guarded


def _load_build(self):
    # torch pickles a state dict as an OrderedDict carrying one attribute, `_metadata`; any other
    # state could shadow a method of the dict the caller gets, or alter what find_class handed out
    state = self.stack[-1]
    target = self.stack[-2] if len(self.stack) >= 2 else None
    if type(target) is not collections.OrderedDict or not (
            state is None or (type(state) is dict and set(state) <= {"_metadata"})):
        raise TorchFileError(f"refuses BUILD on a {type(target).__name__}: a file may set only a state "
                             f"dict's _metadata (the file may be malicious)")
    self.stack.pop()
    if state:
        target._metadata = state["_metadata"]


class TensorUnpickler(pickle._Unpickler):
    """Python's reference unpickler (its opcodes can be vetted one by one, unlike the C one's),
    rebuilding tensors as numpy arrays and refusing every other global and every mutation of an
    object the file did not make. One instance reads one pickle."""

    dispatch = dict(pickle._Unpickler.dispatch)
    for _name in ("EMPTY_SET", "ADDITEMS", "FROZENSET", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX",
                  "EXT1", "EXT2", "EXT4", "PERSID", "NEXT_BUFFER", "READONLY_BUFFER"):
        dispatch[getattr(pickle, _name)[0]] = _opcode_refused(_name)
    dispatch[pickle.BUILD[0]] = _load_build
    for _name, _types in (("SETITEM", (dict, collections.OrderedDict)),
                          ("SETITEMS", (dict, collections.OrderedDict)),
                          ("APPEND", (list,)), ("APPENDS", (list,))):
        dispatch[getattr(pickle, _name)[0]] = _owned(_types, _name)
    del _name, _types

    def __init__(self, file, storage: "callable", budget: _Budget):
        super().__init__(file)
        self._storage = storage
        self._budget = budget

    def find_class(self, module: str, name: str):
        # bound methods and new instances: nothing shared between loads reaches the file
        if module == "torch._utils" and name in _REBUILD:
            return self._rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return self._rebuild_parameter
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict  # a builtin type: immutable, and BUILD on it is refused
        raise TorchFileError(f"refuses to load '{module}.{name}': only tensors, state dicts and plain "
                             f"containers are read (the file may be malicious, or hold a whole "
                             f"model object: save its state_dict instead)")

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel[, view_metadata])
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and type(pid[2]) is str and type(pid[4]) is int):
            raise TorchFileError(f"unexpected persistent id (a {type(pid).__name__}); expected a storage")
        if len(pid) == 6 and pid[5] is not None:
            raise TorchFileError("holds a storage view (written by torch < 0.4), which this reader "
                                 "does not rebuild; re-save the file with a current torch")
        if pid[4] < 0:
            raise TorchFileError(f"storage of {pid[4]} elements")
        return self._storage(pid[1].name, str(pid[2]), pid[4])

    def _rebuild_tensor(self, storage, offset, size, stride, *_ignored):
        """`torch._utils._rebuild_tensor(_v2)`: a strided view of the storage, copied to a new array."""
        if not isinstance(storage, _Storage) or type(offset) is not int:
            raise TorchFileError("a tensor is rebuilt from something other than a storage")
        size, stride = _ints(size, "size"), _ints(stride, "stride")
        if len(size) != len(stride) or any(s < 0 for s in size) or any(s < 0 for s in stride) or offset < 0:
            raise TorchFileError(f"tensor size {size}, stride {stride} or offset {offset} is invalid")
        if any(n > self._budget.max_bytes for n in size):  # an empty tensor's other dimensions too
            raise TorchFileError(f"tensor of shape {size} has a dimension past this reader's limit of "
                                 f"{_size(self._budget.max_bytes)} of tensor data")
        count = math.prod(size)
        self._budget.take("tensor", count * storage.dtype.itemsize, f"a tensor of shape {size}")
        if count == 0:
            return np.zeros(size, storage.dtype) if storage.data is not None else None
        # a dimension of one is never stepped over, whatever stride the file gives it
        stride = tuple(st if n > 1 else 0 for n, st in zip(size, stride))
        last = offset + sum((n - 1) * st for n, st in zip(size, stride))
        if last >= storage.numel:
            raise TorchFileError(f"tensor of size {size} at offset {offset} runs past its storage of "
                                 f"{storage.numel} elements")
        if storage.data is None:
            return None
        view = np.lib.stride_tricks.as_strided(storage.data[offset:], shape=size, writeable=False,
                                               strides=[st * storage.dtype.itemsize for st in stride])
        return np.array(view)

    def _rebuild_parameter(self, data, requires_grad, backward_hooks, *_ignored):
        """`torch._utils._rebuild_parameter`: an nn.Parameter is its tensor here."""
        return data


class _Bounded:
    """At most `limit` bytes of `f` (a pickle in the legacy stream): a length in the pickle past the
    limit is refused before it is read."""

    def __init__(self, f, limit: int, what: str):
        self._f, self._left, self._limit, self._what = f, limit, limit, what

    def _grant(self, n: int) -> int:
        if n > self._left:
            raise TorchFileError(f"{self._what} is larger than this reader's limit of {_size(self._limit)}")
        self._left -= n
        return n

    def read(self, n: int = -1) -> bytes:
        return self._f.read(self._grant(self._left if n is None or n < 0 else n))

    def readline(self, size: int = -1) -> bytes:
        line = self._f.readline(self._left + 1)
        self._grant(len(line))
        return line

    def readinto(self, buf) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)


def _dtype(name: str, byteorder: str) -> np.dtype:
    code = STORAGE_DTYPES[name]
    if code == "bf16":
        raise TorchFileError("bfloat16 tensors are not supported; save the tensor as float32")
    dt = np.dtype(code)
    return dt.newbyteorder("<" if byteorder == "little" else ">") if dt.itemsize > 1 else dt


def _as_native(raw: bytes, dt: np.dtype) -> np.ndarray:
    return np.frombuffer(raw, dt).astype(dt.newbyteorder("="), copy=False)


def _read_member(zf: zipfile.ZipFile, name: str, limit: int, what: str) -> bytes:
    """A zip member, decompressed no further than `limit` + 1 bytes whatever its header says."""
    if zf.getinfo(name).file_size > limit:
        raise TorchFileError(f"{what} is larger than this reader's limit of {_size(limit)}")
    with zf.open(name) as member:
        raw = member.read(limit + 1)
    if len(raw) > limit:
        raise TorchFileError(f"{what} is larger than this reader's limit of {_size(limit)}")
    return raw


def _check_zip_directory(f, limit: int) -> None:
    # ZipFile parses every central-directory entry when it opens (hundreds of bytes of Python
    # objects each), so the directory's size is read from the end record and bounded first.
    end = zipfile._EndRecData(f)
    if end is not None and end[5] > limit:  # end[5]: the central directory's size in bytes
        raise TorchFileError(f"zip directory of {_size(end[5])} is larger than this reader's limit of "
                             f"{_size(limit)}")


def _named_before(storages: dict[str, _Storage], key: str, dt: np.dtype, numel: int,
                  budget: _Budget) -> _Storage | None:
    """The storage `key` if the pickle named it before (with the same type and size); otherwise
    None, once its bytes are taken from the budget."""
    if key in storages:
        if (storages[key].dtype, storages[key].numel) != (dt, numel):
            raise TorchFileError(f"storage {key} is named with two types or sizes")
        return storages[key]
    budget.take("storage", numel * dt.itemsize, f"storage {key} of {numel} elements")
    return None


def _load_zip(f, max_bytes: int) -> object:
    _check_zip_directory(f, pickle_limit(max_bytes))
    with zipfile.ZipFile(f) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise TorchFileError(f"zip holds {len(pkl)} data.pkl records; expected one (a torch.save file)")
        prefix = pkl[0][: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = _read_member(zf, prefix + "byteorder", 16, "the byteorder record").decode().strip()
        budget = _Budget(max_bytes)
        cache: dict[str, _Storage] = {}

        def storage(type_name: str, key: str, numel: int) -> _Storage:
            dt = _dtype(type_name, byteorder)
            if (known := _named_before(cache, key, dt, numel, budget)) is not None:
                return known
            need = numel * dt.itemsize
            member = f"{prefix}data/{key}"
            declared = zf.getinfo(member).file_size
            with zf.open(member) as fm:
                # one byte more than needed reaches the member's end, where zipfile checks its CRC
                raw = fm.read(need + 1) if declared == need else b""
            if len(raw) != need:
                raise TorchFileError(f"storage {key} holds {declared} bytes, {numel} x {dt.itemsize} expected")
            cache[key] = _Storage(key, dt, numel, _as_native(raw, dt))
            return cache[key]

        raw_pickle = _read_member(zf, pkl[0], pickle_limit(max_bytes), "the pickle (data.pkl)")
        return TensorUnpickler(io.BytesIO(raw_pickle), storage, budget).load()


def _no_storage(*_args):
    raise TorchFileError("unexpected storage in the file header")


def _load_legacy(f, max_bytes: int) -> object:
    limit = pickle_limit(max_bytes)

    def unpickle(storage, budget, what):
        return TensorUnpickler(_Bounded(f, limit, what), storage, budget).load()

    if unpickle(_no_storage, _Budget(0), "the header") != LEGACY_MAGIC:
        raise TorchFileError("not a torch.save file (no zip archive, no legacy magic number)")
    if unpickle(_no_storage, _Budget(0), "the header") != LEGACY_PROTOCOL:
        raise TorchFileError("unsupported legacy torch.save protocol version")
    info = unpickle(_no_storage, _Budget(0), "the header")
    byteorder = "little" if not isinstance(info, dict) or info.get("little_endian", True) else "big"
    start = f.tell()
    # The storages' bytes follow the pickle, so it runs twice: once to learn which storages it
    # names and to check every tensor against them and the budget (allocating nothing), and once
    # more on the real arrays.
    named: dict[str, _Storage] = {}
    budget = _Budget(max_bytes)

    def record(type_name: str, key: str, numel: int) -> _Storage:
        dt = _dtype(type_name, byteorder)
        if (known := _named_before(named, key, dt, numel, budget)) is not None:
            return known
        named[key] = _Storage(key, dt, numel, None)
        return named[key]

    unpickle(record, budget, "the pickle")
    keys = unpickle(_no_storage, _Budget(0), "the storage list")
    if not isinstance(keys, list) or len(set(map(str, keys))) != len(keys):
        raise TorchFileError("the storage list is not a list of distinct keys")
    arrays: dict[str, _Storage] = {}
    for key in map(str, keys):
        if key not in named:
            raise TorchFileError(f"storage {key} is listed but no tensor uses it")
        dt, numel = named[key].dtype, named[key].numel
        (count,) = struct.unpack("<q" if byteorder == "little" else ">q", f.read(8))
        if count != numel:
            raise TorchFileError(f"storage {key} holds {count} elements, the pickle says {numel}")
        raw = f.read(count * dt.itemsize)
        if len(raw) != count * dt.itemsize:
            raise TorchFileError(f"storage {key} holds {len(raw) // dt.itemsize} of {numel} elements")
        arrays[key] = _Storage(key, dt, numel, _as_native(raw, dt))
    f.seek(start)
    return unpickle(lambda _type, key, _numel: arrays[key], _Budget(max_bytes), "the pickle")


def load(path: str | os.PathLike, data: bytes | None = None, *, max_bytes: int) -> object:
    """Read a `torch.save` file: tensors become numpy arrays; dicts, lists, numbers and strings stay.

    `max_bytes` is the caller's budget of tensor data (see the module docstring for what it bounds).
    `data`, when given, is the file's content (already read by the caller); otherwise the file is
    read as it is parsed. Raises TorchFileError (one line, naming the file) for a file it cannot
    read, one past the budget, or one that asks for anything beyond tensors and containers."""
    path = Path(path)
    try:
        f = io.BytesIO(data) if data is not None else open(path, "rb")
    except OSError as exc:
        raise TorchFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        with f:
            if zipfile.is_zipfile(f):
                return _load_zip(f, max_bytes)
            f.seek(0)
            return _load_legacy(f, max_bytes)
    except TorchFileError as exc:
        raise TorchFileError(f"{path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a stranger's file: zipfile, zlib, bz2, lzma, struct and pickle fail in ways no list names
        raise TorchFileError(f"{path}: not a readable torch.save file ({first_line(exc)[:120]})") from None
