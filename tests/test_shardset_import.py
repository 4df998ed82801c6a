"""Import of labelled folders, the CLI (one-line errors), export, and `zstd -dc | tar x`."""
from __future__ import annotations

import io
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import zstandard
from click.testing import CliRunner
from PIL import Image

from shardset import DEFAULT_ENCODING, iter_samples, load_manifest, resolve, verify_set
from shardset.cli import cli
from shardset.importer import import_folder, plan_shards, resize_center_crop


def _png(path: Path, arr: np.ndarray) -> None:
    Image.fromarray(arr).save(path)


@pytest.fixture
def folder(tmp_path):
    """Hand-made pairs whose prepared 16x16 versions are known exactly (2x2-constant blocks shrink
    exactly under area interpolation)."""
    rng = np.random.default_rng(1)
    img_dir, mask_dir = tmp_path / "images", tmp_path / "masks"
    img_dir.mkdir()
    mask_dir.mkdir()
    expected = {}
    # a: 32x64 landscape -> 16x32 -> centre columns 8..24
    small = rng.integers(0, 256, (16, 32, 3), dtype=np.uint8)
    _png(img_dir / "a.png", np.kron(small, np.ones((2, 2, 1), np.uint8)))
    m = np.zeros((32, 64), np.uint8)
    m[8:24, 24:40] = 200  # soft value above 128: foreground
    m[0:8, 24:40] = 100  # below 128: background
    _png(mask_dir / "a.png", m)
    em = np.zeros((16, 16), np.uint8)
    em[4:12, 4:12] = 1
    expected["a"] = (small[:, 8:24], em)
    # b: 20x16 portrait, already at size on its short side -> centre rows 2..18
    img = rng.integers(0, 256, (20, 16, 3), dtype=np.uint8)
    _png(img_dir / "b.png", img)
    m = np.zeros((20, 16), np.uint8)
    m[2:5, :] = 255
    _png(mask_dir / "b.png", m)
    em = np.zeros((16, 16), np.uint8)
    em[0:3, :] = 1
    expected["b"] = (img[2:18], em)
    # c: a jpg image with mask
    img = np.full((16, 16, 3), 90, np.uint8)
    cv2.imwrite(str(img_dir / "c.jpg"), img)
    _png(mask_dir / "c.png", np.full((16, 16), 255, np.uint8))
    expected["c"] = (None, np.ones((16, 16), np.uint8))
    # broken image, image without mask, mask without image
    (img_dir / "d.jpg").write_bytes(b"not a jpeg")
    _png(mask_dir / "d.png", np.zeros((16, 16), np.uint8))
    _png(img_dir / "e.png", img)
    _png(mask_dir / "f.png", np.zeros((16, 16), np.uint8))
    return img_dir, mask_dir, expected


def test_resize_center_crop_exact():
    a = np.arange(12 * 8).reshape(12, 8).astype(np.uint8)
    np.testing.assert_array_equal(resize_center_crop(a, 8), a[2:10])


def test_plan_shards_split():
    plan = plan_shards(10, 3, 0.3, seed=0)
    assert [s for s, _ in plan] == ["train", "train", "train", "val"]
    flat = sorted(i for _, idx in plan for i in idx)
    assert flat == list(range(10)) and len(plan[-1][1]) == 3
    assert plan == plan_shards(10, 3, 0.3, seed=0) and plan != plan_shards(10, 3, 0.3, seed=1)


def test_import_hand_made_folder(folder, tmp_path):
    img_dir, mask_dir, expected = folder
    m = import_folder(img_dir, mask_dir, tmp_path / "out", "hand", size=16, shard_size=2, encoding="png")
    assert m["complete"] and m["totals"]["samples"] == 3
    assert m["totals"]["rejected"] == {"unreadable_image": 1}
    assert m["params"]["unpaired_images"] == 1 and m["params"]["unpaired_masks"] == 1
    got = {s["meta"]["source_id"]: s for u in resolve(str(tmp_path / "out")).urls for s in iter_samples(u)}
    assert sorted(got) == ["a", "b", "c"]
    for sid, (img, mask) in expected.items():
        np.testing.assert_array_equal(got[sid]["mask"], mask)
        if img is not None:
            np.testing.assert_array_equal(got[sid]["image"], img)
    assert got["a"]["meta"]["fg_fraction"] == 0.25
    # tar x gives exactly the imported masks
    shard = tmp_path / "out" / "hand-000000.tar.zst"
    extract = tmp_path / "x"
    extract.mkdir()
    if shutil.which("zstd") and shutil.which("tar"):
        subprocess.run(f"zstd -dc '{shard}' | tar x -C '{extract}'", shell=True, check=True)
    else:
        tar_bytes = zstandard.ZstdDecompressor().decompress(shard.read_bytes())
        with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
            tar.extractall(extract, filter="data")
    masks = sorted(extract.glob("*.mask.png"))
    assert [p.name for p in masks] == ["hand-000000-000000.mask.png", "hand-000000-000001.mask.png"]
    for p, sid in zip(masks, ["a", "b"]):
        np.testing.assert_array_equal(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) // 255, expected[sid][1])


def test_import_parallel_matches_serial(folder, tmp_path):
    img_dir, mask_dir, _ = folder
    kw = dict(size=16, shard_size=1, val_fraction=0.34, seed=3)
    a = import_folder(img_dir, mask_dir, tmp_path / "a", "p", num_workers=2, **kw)
    b = import_folder(img_dir, mask_dir, tmp_path / "b", "p", num_workers=1, **kw)
    assert [r["sha256"] for r in a["shards"]] == [r["sha256"] for r in b["shards"]]
    assert a["fingerprint"] == b["fingerprint"] and a["complete"]
    # the val pick is the unreadable pair: its shard is kept, empty, with the rejection counted
    assert a["splits"]["val"] == {"shards": [3], "samples": 0}
    assert a["shards"][3]["rejected"] == {"unreadable_image": 1} and a["shards"][3]["samples"] == 0
    assert verify_set(str(tmp_path / "a")).ok


def _one_line_error(result) -> str:
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def test_cli_round_trip_and_errors(folder, tmp_path):
    img_dir, mask_dir, expected = folder
    out = tmp_path / "out"
    runner = CliRunner()
    args = ["import", "--images", str(img_dir), "--masks", str(mask_dir), "--out", str(out), "--name", "hand",
            "--size", "16", "--shard-size", "2"]
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "wrote 2 shards, 3 samples (1 skipped)" in res.output

    line = _one_line_error(runner.invoke(cli, args))
    assert "already holds shard set 'hand'" in line and "overwrite" in line
    assert runner.invoke(cli, args + ["--mode", "resume"]).exit_code == 0

    res = runner.invoke(cli, ["verify", str(out)])
    assert res.exit_code == 0 and "OK: 2 shards, 3 samples" in res.output

    res = runner.invoke(cli, ["inspect", str(out / "hand.json"), "--preview", str(tmp_path / "sheet.png"), "--cols", "2"])
    assert res.exit_code == 0, res.output
    assert "bytes/sample" in res.output and re.search(r"^rejected\.unreadable_image +1$", res.output, re.M)
    sheet = cv2.imread(str(tmp_path / "sheet.png"))
    assert sheet.shape == (2 + 2 * 18, 2 + 2 * (2 * 16 + 4), 3)

    res = runner.invoke(cli, ["export", str(out), "--out", str(tmp_path / "exp"), "--limit", "2"])
    assert res.exit_code == 0 and "wrote 2 samples" in res.output
    got = cv2.imread(str(tmp_path / "exp" / "masks" / "hand-000000-000000.png"), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(got // 255, expected["a"][1])

    shard = out / "hand-000001.tar.zst"
    data = bytearray(shard.read_bytes())
    data[40] ^= 0x10
    shard.write_bytes(bytes(data))
    res = runner.invoke(cli, ["verify", str(out / "hand.json")])
    assert res.exit_code == 1 and "BAD " in res.output and "hand-000001.tar.zst" in res.output
    assert "hand-000000.tar.zst" not in res.output

    assert "matches no" in _one_line_error(runner.invoke(cli, ["verify", str(tmp_path / "nowhere-*.tar.zst")]))
    assert "does not exist" in _one_line_error(runner.invoke(cli, ["verify", str(tmp_path / "nowhere.tar.zst")]))
    bad_name = [a if a != "hand" else "a.b" for a in args]
    assert "Invalid value for '--name': set name 'a.b' is invalid" in _one_line_error(runner.invoke(cli, bad_name))
    (tmp_path / "bad.json").write_text('{"format": "bgw-shardset", "format_version": 7}')
    assert "format_version 7" in _one_line_error(runner.invoke(cli, ["inspect", str(tmp_path / "bad.json")]))


def test_import_duts_50(duts_dir, tmp_path):
    ids = sorted(p.stem for p in (duts_dir / "masks").glob("*.png"))[:50]
    img_dir, mask_dir = tmp_path / "images", tmp_path / "masks"
    img_dir.mkdir()
    mask_dir.mkdir()
    for i in ids:  # links, not copies: the data stays in ../shared
        (img_dir / f"{i}.jpg").symlink_to(duts_dir / "images" / f"{i}.jpg")
        (mask_dir / f"{i}.png").symlink_to(duts_dir / "masks" / f"{i}.png")
    m = import_folder(img_dir, mask_dir, tmp_path / "out", "duts", size=128, shard_size=20, val_fraction=0.2)
    assert m["totals"]["samples"] == 50 and m["splits"]["val"]["samples"] == 10
    assert verify_set(str(tmp_path / "out")).ok
    n = 0
    for s in (s for u in resolve(str(tmp_path / "out" / "duts.json")).urls for s in iter_samples(u)):
        sid = s["meta"]["source_id"]
        # independent reference: PIL reads the mask; DUTS images have short side 128, so only a crop happens
        gt = np.asarray(Image.open(duts_dir / "masks" / f"{sid}.png").convert("L"))
        assert min(gt.shape) == 128
        top, left = (gt.shape[0] - 128) // 2, (gt.shape[1] - 128) // 2
        np.testing.assert_array_equal(s["mask"], (gt[top:top + 128, left:left + 128] >= 128).astype(np.uint8))
        img = cv2.cvtColor(cv2.imread(str(duts_dir / "images" / f"{sid}.jpg")), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(s["image"], img[top:top + 128, left:left + 128])
        n += 1
    assert n == 50
    assert load_manifest(tmp_path / "out" / "duts.json")["encoding"] == DEFAULT_ENCODING == "delta"
