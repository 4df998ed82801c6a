"""gans.directions: .npy and .pth direction files, their checks and the atomic save."""
from __future__ import annotations

import hashlib
import os
import sys

import numpy as np
import pytest

from gans import directions as D
from gans.directions import DirectionError

VEC = np.array([3.0, 0.0, -4.0], np.float32)  # norm 5
UNIT = np.array([0.6, 0.0, -0.8], np.float32)


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.mark.parametrize("shape", [(3,), (1, 3), (3, 1)])
def test_npy_normalised_with_sha(tmp_path, shape):
    path = tmp_path / "h.npy"
    np.save(path, VEC.astype(np.float64).reshape(shape))
    vec, sha = D.load_direction(path)
    assert vec.dtype == np.float32 and vec.shape == (3,)
    np.testing.assert_allclose(vec, UNIT, rtol=0, atol=1e-7)
    assert sha == _sha(path)


def test_pth_tensor_and_dict(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save(torch.tensor(VEC).reshape(1, 3), tmp_path / "a.pth")
    torch.save({"direction": torch.tensor(VEC).reshape(3, 1), "note": "h_bg", "step": 3}, tmp_path / "b.pth")
    for name in ("a.pth", "b.pth"):
        vec, sha = D.load_direction(tmp_path / name)
        np.testing.assert_allclose(vec, UNIT, rtol=0, atol=1e-7)
        assert sha == _sha(tmp_path / name)
    torch.save({"a": torch.ones(3), "b": torch.ones(3)}, tmp_path / "two.pth")
    with pytest.raises(DirectionError, match="2 tensors"):
        D.load_direction(tmp_path / "two.pth")
    torch.save([1.0, 2.0], tmp_path / "list.pth")
    with pytest.raises(DirectionError, match="holds a list"):
        D.load_direction(tmp_path / "list.pth")


def test_pth_never_unpickles_objects(tmp_path):
    torch = pytest.importorskip("torch")

    from fractions import Fraction  # any class outside the reader's allow-list stands in for a payload

    torch.save({"x": torch.ones(3), "y": Fraction(1, 3)}, tmp_path / "evil.pth")
    with pytest.raises(DirectionError, match="refuses to load 'fractions.Fraction'"):
        D.load_direction(tmp_path / "evil.pth")


def test_pth_is_read_without_torch(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    torch.save(torch.tensor(VEC), tmp_path / "h.pth")
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    vec, _ = D.load_direction(tmp_path / "h.pth")
    np.testing.assert_allclose(vec, UNIT, rtol=0, atol=1e-7)
    (tmp_path / "bad.pth").write_bytes(b"whatever")
    with pytest.raises(DirectionError) as err:
        D.load_direction(tmp_path / "bad.pth")
    msg = str(err.value)
    assert "not a readable torch.save file" in msg and ".npy" in msg and "\n" not in msg


@pytest.mark.parametrize("arr, match", [
    (np.ones((2, 3)), r"shape \(2, 3\)"),
    (np.ones(()), r"shape \(\)"),
    (np.zeros(0), r"shape \(0,\)"),
    (np.array([1.0, np.nan, 0.0]), "1 of 3 entries are NaN or inf"),
    (np.array([np.inf, 1.0, -np.inf]), "2 of 3 entries are NaN or inf"),
    (np.zeros(3), "zero vector"),
    (np.array(["a", "b"]), "expected a float vector"),
])
def test_bad_vectors(tmp_path, arr, match):
    path = tmp_path / "bad.npy"
    np.save(path, arr)
    with pytest.raises(DirectionError, match=match) as err:
        D.load_direction(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    assert isinstance(err.value, ValueError)


def test_bad_files(tmp_path):
    with pytest.raises(DirectionError, match="no such direction file"):
        D.load_direction(tmp_path / "missing.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DirectionError, match="not a readable .npy array"):
        D.load_direction(tmp_path / "obj.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(DirectionError, match="not a readable .npy array"):
        D.load_direction(tmp_path / "junk.npy")
    (tmp_path / "h.txt").write_text("1 2 3")
    with pytest.raises(DirectionError, match="use .npy or .pth"):
        D.load_direction(tmp_path / "h.txt")
    np.save(tmp_path / "h.npy", VEC)
    with pytest.raises(DirectionError, match="latent space has 120"):
        D.load_direction(tmp_path / "h.npy", dim=120)
    assert D.load_direction(tmp_path / "h.npy", dim=3)[0].shape == (3,)


def test_save_round_trip_and_atomic(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "h.npy"
    sha = D.save_direction(path, VEC * 7)
    vec, sha2 = D.load_direction(path)
    assert sha == sha2 == _sha(path)
    np.testing.assert_allclose(vec, UNIT, rtol=0, atol=1e-7)
    assert np.load(path).dtype == np.float32
    # a save that fails at the rename leaves the old file intact and no temp file behind
    before = path.read_bytes()

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        D.save_direction(path, np.array([1.0, 2.0, 2.0]))
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["h.npy"]
    with pytest.raises(DirectionError, match="saved as .npy"):
        D.save_direction(tmp_path / "h.pth", VEC)
    with pytest.raises(DirectionError, match="NaN"):
        D.save_direction(tmp_path / "n.npy", np.array([np.nan, 1.0]))
    with pytest.raises(DirectionError, match="not a numeric vector"):
        D.save_direction(tmp_path / "n.npy", ["a", "b"])
    assert not (tmp_path / "n.npy").exists()


def test_saved_bytes_are_reproducible(tmp_path):
    a = D.save_direction(tmp_path / "a.npy", VEC)
    b = D.save_direction(tmp_path / "b.npy", VEC.astype(np.float64) * 2)
    assert a == b  # same unit vector, same bytes, same sha256 for the manifest


def test_oversized_and_special_files_are_refused_before_reading(tmp_path):
    import os

    from gans.directions import MAX_FILE_BYTES, DirectionError, load_direction

    big = tmp_path / "big.npy"
    np.save(big, np.ones(MAX_FILE_BYTES // 4 + 16, np.float32))
    with pytest.raises(DirectionError, match="larger than"):
        load_direction(big)
    fifo = tmp_path / "pipe.npy"
    os.mkfifo(fifo)  # an open() would wait for a writer for ever
    with pytest.raises(DirectionError, match="not a regular file"):
        load_direction(fifo)
