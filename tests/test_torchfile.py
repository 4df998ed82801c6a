"""generator.torchfile: torch.save files read without torch, and nothing unpickled beyond tensors.

torch writes the files here (it is the reference); the reader runs with torch blocked where it
matters, and a malicious pickle must be refused with nothing executed."""
from __future__ import annotations

import sys
from collections import OrderedDict

import numpy as np
import pytest

from generator import torchfile
from generator.torchfile import TorchFileError

torch = pytest.importorskip("torch")


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
    got = torchfile.load(path)
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
    got = torchfile.load(path)
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
        torchfile.load(path)
    assert "refuses to load 'posix.system'" in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()
    # torch's own guarded loader agrees that the file is unsafe
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)


def test_whole_model_objects_are_refused(tmp_path):
    path = tmp_path / "model.pth"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(TorchFileError, match="refuses to load 'torch.nn.modules.linear.Linear'.*state_dict"):
        torchfile.load(path)


@pytest.mark.parametrize("data, match", [
    (b"", "not a readable torch.save file"),
    (b"not a pickle at all", "not a readable torch.save file"),
    (b"\x80\x02K\x05.", "no legacy magic number"),  # a pickle of the int 5
])
def test_garbage_is_one_line(tmp_path, data, match):
    (tmp_path / "bad.pth").write_bytes(data)
    with pytest.raises(TorchFileError, match=match) as err:
        torchfile.load(tmp_path / "bad.pth")
    assert "\n" not in str(err.value) and str(tmp_path / "bad.pth") in str(err.value)


def test_truncated_files_are_refused(tmp_path, zipped):
    path = _save({"w": torch.arange(1000, dtype=torch.float32)}, tmp_path / "w.pth", zipped)
    raw = path.read_bytes()
    (tmp_path / "cut.pth").write_bytes(raw[: len(raw) - 400])
    with pytest.raises(TorchFileError):
        torchfile.load(tmp_path / "cut.pth")


def test_a_tensor_past_its_storage_is_refused():
    with pytest.raises(TorchFileError, match="runs past its storage"):
        torchfile._rebuild_tensor(np.zeros(4, np.float32), 2, (2, 2), (2, 1))
