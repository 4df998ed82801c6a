"""gans.torchfile: torch.save files read without torch, and nothing unpickled beyond tensors.

torch writes the files here (it is the reference); the reader runs with torch blocked where it
matters, and a malicious pickle must be refused with nothing executed."""
from __future__ import annotations

import io
import pickle
import struct
import sys
import tracemalloc
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

from gans import torchfile
from gans.torchfile import TorchFileError

torch = pytest.importorskip("torch")

MiB = 1 << 20
BUDGET = MiB  # what gans.directions allows


@pytest.fixture(params=[True, False], ids=["zip", "legacy"])
def zipped(request) -> bool:
    return request.param


def _save(obj, path, zipped: bool):
    torch.save(obj, path, _use_new_zipfile_serialization=zipped)
    return path


def test_tensors_views_dtypes_and_containers(tmp_path, zipped, monkeypatch):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    obj = {
        "view": base[1:, ::2].t(),  # offset, strides, transpose: a view into a shared storage
        "same_storage": base,
        "types": [torch.tensor([1, -2], dtype=dt) for dt in (torch.float64, torch.float16, torch.int64,
                                                             torch.int32, torch.int16, torch.int8,
                                                             torch.uint8, torch.bool)],
        "param": torch.nn.Parameter(torch.ones(2)),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 3),
        "meta": ("text", 7, 2.5, None, True),
    }
    path = _save(obj, tmp_path / "x.pth", zipped)
    monkeypatch.setitem(sys.modules, "torch", None)  # the reader never imports torch
    got = torchfile.load(path, max_bytes=BUDGET)
    np.testing.assert_array_equal(got["view"], obj["view"].numpy())
    np.testing.assert_array_equal(got["same_storage"], base.numpy())
    for a, t in zip(got["types"], obj["types"]):
        assert a.dtype == t.numpy().dtype
        np.testing.assert_array_equal(a, t.numpy())
    np.testing.assert_array_equal(got["param"], [1.0, 1.0])
    assert got["scalar"].shape == () and got["scalar"] == 3.5
    assert got["empty"].shape == (0, 3)
    assert got["meta"] == ("text", 7, 2.5, None, True)


def test_state_dict_equals_torch_weights_only_load(tmp_path, zipped):
    net = torch.nn.Sequential(torch.nn.ConvTranspose2d(5, 4, 4, 2, 1, bias=False), torch.nn.BatchNorm2d(4))
    path = _save({"netG_state_dict": net.state_dict(), "epoch": 3}, tmp_path / "w.tar", zipped)
    got = torchfile.load(path, max_bytes=BUDGET)
    ref = torch.load(path, weights_only=True, map_location="cpu")
    assert isinstance(got["netG_state_dict"], OrderedDict) and got["epoch"] == 3
    assert list(got["netG_state_dict"]) == list(ref["netG_state_dict"])
    for key, tensor in ref["netG_state_dict"].items():
        np.testing.assert_array_equal(got["netG_state_dict"][key], tensor.numpy())


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_malicious_reduce_is_refused_and_nothing_runs(tmp_path, zipped):
    marker = tmp_path / "pwned"
    path = _save({"w": torch.ones(2), "x": _Payload(marker)}, tmp_path / "evil.pth", zipped)
    with pytest.raises(TorchFileError) as err:
        torchfile.load(path, max_bytes=BUDGET)
    assert "refuses to load 'posix.system'" in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()
    # torch's own guarded loader agrees that the file is unsafe
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)


def test_whole_model_objects_are_refused(tmp_path):
    path = tmp_path / "model.pth"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(TorchFileError, match="refuses to load 'torch.nn.modules.linear.Linear'.*state_dict"):
        torchfile.load(path, max_bytes=BUDGET)


@pytest.mark.parametrize("data, match", [
    (b"", "not a readable torch.save file"),
    (b"not a pickle at all", "not a readable torch.save file"),
    (b"\x80\x02K\x05.", "no legacy magic number"),  # a pickle of the int 5
])
def test_garbage_is_one_line(tmp_path, data, match):
    (tmp_path / "bad.pth").write_bytes(data)
    with pytest.raises(TorchFileError, match=match) as err:
        torchfile.load(tmp_path / "bad.pth", max_bytes=BUDGET)
    assert "\n" not in str(err.value) and str(tmp_path / "bad.pth") in str(err.value)


def test_truncated_files_are_refused(tmp_path, zipped):
    path = _save({"w": torch.arange(1000, dtype=torch.float32)}, tmp_path / "w.pth", zipped)
    raw = path.read_bytes()
    (tmp_path / "cut.pth").write_bytes(raw[: len(raw) - 400])
    with pytest.raises(TorchFileError):
        torchfile.load(tmp_path / "cut.pth", max_bytes=BUDGET)


# ------------------------------------------------------------------ hand-written hostile files
# A tensor file is a pickle of opcodes plus storages; these helpers write both by hand, so that
# every field a stranger controls (sizes, strides, element counts, the opcodes) can be set.


def _v(value) -> bytes:
    """The opcodes that push `value` (a plain int, str, tuple, None or bool)."""
    return pickle.dumps(value, 2)[2:-1]


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _tensor(numel, size, stride, offset=0, storage="FloatStorage", key="0") -> bytes:
    """torch._utils._rebuild_tensor_v2(storage('0'), offset, size, stride, False, OrderedDict())."""
    pid = b"(" + _v("storage") + _global("torch", storage) + _v(key) + _v("cpu") + _v(numel) + b"tQ"
    return (_global("torch._utils", "_rebuild_tensor_v2") + b"(" + pid + _v(offset) + _v(tuple(size))
            + _v(tuple(stride)) + _v(False) + _global("collections", "OrderedDict") + b")R" + b"tR")


def _pickle(body: bytes) -> bytes:
    return b"\x80\x02" + body + b"."


def _zip(pkl: bytes, storages: dict[str, bytes], compression=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/byteorder", "little")
        for key, raw in storages.items():
            zf.writestr(f"archive/data/{key}", raw)
    return buf.getvalue()


def _legacy(pkl: bytes, storages: dict[str, tuple[int, bytes]]) -> bytes:
    """torch < 1.6's stream; each storage is (the element count its header claims, its bytes)."""
    out = [pickle.dumps(v, 2) for v in (torchfile.LEGACY_MAGIC, torchfile.LEGACY_PROTOCOL,
                                        {"protocol_version": 1001, "little_endian": True})]
    out += [pkl, pickle.dumps(list(storages), 2)]
    out += [struct.pack("<q", count) + raw for count, raw in storages.values()]
    return b"".join(out)


def _file(tmp_path, zipped: bool, body: bytes, storage: bytes = np.arange(6, dtype="<f4").tobytes(),
          count: int | None = None, name="x.pth"):
    pkl = _pickle(body)
    count = len(storage) // 4 if count is None else count
    data = _zip(pkl, {"0": storage}) if zipped else _legacy(pkl, {"0": (count, storage)})
    (tmp_path / name).write_bytes(data)
    return tmp_path / name


def _refused(path, match: str, max_bytes=BUDGET, peak_mb=8.0) -> str:
    """Loading `path` is refused with one line naming the file and matching `match`, and the
    attempt's peak traced memory (numpy's buffers included) stays under `peak_mb`."""
    tracemalloc.start()
    try:
        with pytest.raises(TorchFileError, match=match) as err:
            torchfile.load(path, max_bytes=max_bytes)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path}: ")
    assert peak < peak_mb * 1e6, f"peak {peak / 1e6:.1f} MB"
    return msg


def test_hand_written_files_read_as_torch_would(tmp_path, zipped):
    """The helpers write what torch writes: a transposed [3, 2] view of a 6-float storage."""
    got = torchfile.load(_file(tmp_path, zipped, _tensor(6, (3, 2), (1, 3))), max_bytes=BUDGET)
    np.testing.assert_array_equal(got, np.arange(6, dtype=np.float32).reshape(2, 3).T)
    # a stride on a dimension of one is never stepped over, whatever its value
    got = torchfile.load(_file(tmp_path, zipped, _tensor(6, (1, 6), (2**70, 1))), max_bytes=BUDGET)
    np.testing.assert_array_equal(got, np.arange(6, dtype=np.float32)[None])


def test_a_stride_zero_expansion_is_refused_in_bounded_memory(tmp_path, zipped):
    """One float viewed as 16384 x 16384 (a ~400-byte legacy file) would be 1 GiB once copied."""
    path = _save(torch.ones(1).expand(16384, 16384), tmp_path / "wide.pth", zipped)
    assert path.stat().st_size < 2000
    msg = _refused(path, r"tensor of shape \(16384, 16384\) would take 1 GiB, past this reader's "
                         r"limit of 1 MiB of tensor data")
    # nor can many views of one small storage add up past the budget
    body = b"(" + _tensor(6, (400, 400), (0, 0)) * 2 + b"l"
    _refused(_file(tmp_path, zipped, body), r"tensor of shape \(400, 400\) would take 625 KiB, past")
    assert "1 MiB" in msg


def test_a_view_must_lie_inside_its_storage(tmp_path, zipped):
    for body, match in [(_tensor(6, (2, 2), (2, 1), offset=3), "runs past its storage of 6 elements"),
                        (_tensor(6, (2,), (-1,)), "invalid"),
                        (_tensor(6, (2,), (1,), offset=-1), "invalid"),
                        (_tensor(6, (2, 2), (1,)), "invalid"),
                        (_tensor(6, ("2",), (1,)), "not a tuple of at most 32 integers"),
                        (_tensor(6, (1,) * 33, (1,) * 33), "not a tuple of at most 32 integers"),
                        (b"(" + _tensor(6, (6,), (1,)) + _tensor(6, (3,), (1,), storage="IntStorage") + b"l",
                         "storage 0 is named with two types or sizes"),
                        (_global("torch._utils", "_rebuild_tensor_v2") + b"(]" + _v(0) + _v((6,)) + _v((1,)) + b"tR",
                         "rebuilt from something other than a storage")]:
        _refused(_file(tmp_path, zipped, body), match)


@pytest.mark.parametrize("size, numel, match", [
    ((2**70,), 6, r"tensor of shape \(1180591620717411303424,\) has a dimension past this reader's limit of 1 MiB"),
    ((2**20, 2**20), 6, r"tensor of shape \(1048576, 1048576\) would take 4.1e\+03 GiB, past .* limit of 1 MiB"),
    ((4,), 2**70, r"storage 0 of 1180591620717411303424 elements would take .* limit of 1 MiB"),
    ((0, 2**70), 6, r"has a dimension past this reader's limit of 1 MiB of tensor data"),
])
def test_astronomical_sizes_are_one_line(tmp_path, zipped, size, numel, match):
    _refused(_file(tmp_path, zipped, _tensor(numel, size, (1,) * len(size))), match)
    assert torchfile.load(_file(tmp_path, zipped, _tensor(6, (0, 5), (5, 1))), max_bytes=BUDGET).shape == (0, 5)


def test_a_legacy_file_claiming_a_large_storage_allocates_nothing(tmp_path):
    """The storage's element count is checked against the budget before the first pass makes
    anything, and again against the count written before its bytes."""
    path = _file(tmp_path, False, _tensor(2**28, (4,), (1,)), count=2**28)
    _refused(path, r"storage 0 of 268435456 elements would take 1 GiB, past this reader's limit of 1 MiB")
    path = _file(tmp_path, False, _tensor(6, (4,), (1,)), count=2**28)
    _refused(path, "storage 0 holds 268435456 elements, the pickle says 6")
    # a string in the pickle claiming 4 GiB is refused before it is read
    body = b"X" + struct.pack("<I", 2**32 - 1)
    _refused(_file(tmp_path, False, body), r"the pickle is larger than this reader's limit of 64 KiB")


def _bomb(nbytes: int) -> bytes:
    return b"\0" * nbytes


def test_zip_members_are_decompressed_within_the_budget(tmp_path):
    """A deflated member of 64 KiB that inflates to 64 MiB is never inflated whole."""
    pkl = _pickle(_tensor(6, (6,), (1,)))
    cases = [
        # the pickle itself
        (_zip(_bomb(64 * MiB), {"0": bytes(24)}, zipfile.ZIP_DEFLATED),
         r"the pickle \(data.pkl\) is larger than this reader's limit of 64 KiB"),
        # a storage whose pickle asks for 6 floats but whose member holds 64 MiB
        (_zip(pkl, {"0": _bomb(64 * MiB)}, zipfile.ZIP_DEFLATED), "storage 0 holds 67108864 bytes, 6 x 4 expected"),
        # a storage whose pickle asks for 64 MiB of floats
        (_zip(_pickle(_tensor(16 * MiB, (6,), (1,))), {"0": _bomb(64 * MiB)}, zipfile.ZIP_DEFLATED),
         "storage 0 of 16777216 elements would take 64 MiB, past this reader's limit of 1 MiB"),
    ]
    for i, (data, match) in enumerate(cases):
        assert len(data) < MiB
        (tmp_path / f"bomb{i}.pth").write_bytes(data)
        _refused(tmp_path / f"bomb{i}.pth", match)


def test_a_zip_header_that_understates_a_member_reads_only_what_it_states(tmp_path):
    """zipfile stops at the size the header gives; a member longer than that fails its CRC."""
    data = bytearray(_zip(_pickle(_tensor(6, (6,), (1,))), {"0": np.arange(7, dtype="<f4").tobytes()}))
    # both headers of the storage (local and central) say 24 bytes where 28 were written
    for at in [m for m in range(len(data)) if data[m:m + 4] in (b"PK\x03\x04", b"PK\x01\x02")]:
        name_at = at + (30 if data[at + 2] == 3 else 46)
        if data[name_at:name_at + 14] == b"archive/data/0":
            size_at = at + (22 if data[at + 2] == 3 else 24)
            data[size_at:size_at + 4] = struct.pack("<I", 24)
    (tmp_path / "short.pth").write_bytes(bytes(data))
    _refused(tmp_path / "short.pth", "not a readable torch.save file .*CRC")


def test_a_huge_zip_directory_is_refused_before_it_is_parsed(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", _pickle(_v(1)))
        for i in range(3000):
            zf.writestr(f"archive/pad/{i:040d}", b"")
    (tmp_path / "wide.pth").write_bytes(buf.getvalue())
    _refused(tmp_path / "wide.pth", r"zip directory of .* KiB is larger than this reader's limit of 64 KiB")


def test_a_pickle_bomb_is_bounded_by_the_pickle_limit(tmp_path, zipped):
    """Each opcode makes at most one small object: 64 KiB of EMPTY_DICT or MARK stays in a few MB,
    and one byte more than the limit is refused."""
    limit = torchfile.pickle_limit(BUDGET)
    assert limit == 64 << 10
    for op in (b"}", b"(", b"]"):
        path = _file(tmp_path, zipped, op * (limit - 4))
        tracemalloc.start()
        try:
            try:
                torchfile.load(path, max_bytes=BUDGET)
            except TorchFileError:  # MARKs left open
                pass
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 100 * limit, f"{op}: peak {peak / 1e6:.1f} MB"
    path = _file(tmp_path, zipped, _v("x" * limit))
    _refused(path, r"pickle.* is larger than this reader's limit of 64 KiB")


def _clean_float_file(tmp_path):
    path = tmp_path / "clean.pth"
    torch.save(torch.tensor([1.5, -2.0]), path)
    return path


# Each pickle tries to change something the reader hands out or the caller receives.
_MUTATIONS = {
    # rename the allow-listed float storage type (what one file did to the old reader)
    "BUILD storage type": _global("torch", "FloatStorage") + b"}" + _v("name") + _v("IntStorage") + b"sb",
    "BUILD slots of a rebuild call": (_global("torch._utils", "_rebuild_tensor_v2") + b"N}" + _v("__defaults__")
                                      + _v((1,)) + b"s\x86b"),
    "BUILD the OrderedDict class": _global("collections", "OrderedDict") + b"}" + _v("x") + _v(1) + b"sb",
    "BUILD a method onto a state dict": (_global("collections", "OrderedDict") + b")R}" + _v("items")
                                         + _global("collections", "OrderedDict") + b"sb"),
    "SETITEM the OrderedDict class": _global("collections", "OrderedDict") + _v("k") + _v(1) + b"s",
    "SETITEMS a rebuild call": _global("torch._utils", "_rebuild_parameter") + b"(" + _v("k") + _v(1) + b"u",
    "APPEND a storage type": _global("torch", "FloatStorage") + _v(1) + b"a",
    "APPENDS a rebuild call": _global("torch._utils", "_rebuild_tensor") + b"(" + _v(1) + b"e",
    "EMPTY_SET": b"\x8f",
    "NEWOBJ": _global("collections", "OrderedDict") + b")\x81",
    "INST": b"(" + b"icollections\nOrderedDict\n",
}


@pytest.mark.parametrize("attack", list(_MUTATIONS))
def test_no_file_changes_the_reader(tmp_path, zipped, attack):
    body = _MUTATIONS[attack] + b"0" + _tensor(6, (6,), (1,))  # then a tensor, as if all went well
    msg = _refused(_file(tmp_path, zipped, body), "refuses")
    assert "malicious" in msg
    got = torchfile.load(_clean_float_file(tmp_path), max_bytes=BUDGET)
    assert got.dtype == np.float32 and got.tolist() == [1.5, -2.0]


def test_storage_types_are_fresh_per_load(tmp_path):
    """Even the objects the reader hands out are not shared between loads (or within one)."""
    path = _file(tmp_path, True, b"(" + _global("torch", "FloatStorage") * 2 + b"l")
    a, b = torchfile.load(path, max_bytes=BUDGET)
    (c, _) = torchfile.load(path, max_bytes=BUDGET)
    assert a is not b and a is not c and a.name == "FloatStorage"


def test_a_direction_over_its_budget_is_refused(tmp_path):
    from gans.directions import TORCH_MAX_BYTES, DirectionError, load_direction

    torch.save(torch.ones(TORCH_MAX_BYTES // 4 + 1), tmp_path / "big.pth")
    with pytest.raises(DirectionError, match=r"big.pth: .*past this reader's limit of 1 MiB") as err:
        load_direction(tmp_path / "big.pth")
    assert "\n" not in str(err.value)
    torch.save(torch.ones(120), tmp_path / "ok.pth")
    assert load_direction(tmp_path / "ok.pth")[0].shape == (120,)


def test_the_dcgan_weights_fit_their_budget():
    """dcgan.WEIGHTS_MAX_BYTES is sized for weights.tar: it loads, with less than 20% to spare."""
    from gans import dcgan

    try:
        path = dcgan.weights_path()
    except dcgan.DcganError:
        pytest.skip(f"{dcgan.PACKAGE} is not installed")
    state = torchfile.load(path, max_bytes=dcgan.WEIGHTS_MAX_BYTES)["netG_state_dict"]
    nbytes = sum(v.nbytes for v in state.values())
    assert 0.8 * dcgan.WEIGHTS_MAX_BYTES < nbytes < dcgan.WEIGHTS_MAX_BYTES
    ref = torch.load(path, weights_only=True, map_location="cpu")["netG_state_dict"]
    for key, tensor in ref.items():
        np.testing.assert_array_equal(state[key], tensor.numpy())
