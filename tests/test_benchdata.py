"""benchdata: each named layout on tiny hand-made folders (splits, ids, ground truth),
the one-line errors, and the exact shapes and values of the two sizings."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

import benchdata.datasets
import benchdata.io
import benchdata.sizing
from benchdata import DatasetError, get_dataset
from benchdata.sizing import Sizing
from scoring import binarize_gt


def _img(path: Path, h: int, w: int, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.full((h, w, 3), value, np.uint8)
    a[0, 0] = (255, 0, 0)
    assert cv2.imwrite(str(path), a)


def _mask(path: Path, m: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), m)


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# --------------------------------------------------------------------------- sizing


def test_input_size_short128_keeps_aspect_with_half_up_rounding():
    assert Sizing.parse("short128").input_shape((300, 400)) == (128, 171)  # 400 * 128 / 300 = 170.67
    assert Sizing.parse("short128").input_shape((400, 300)) == (171, 128)
    assert Sizing.parse("short128").input_shape((256, 384)) == (128, 192)
    assert Sizing.parse("short128").input_shape((100, 100)) == (128, 128)
    assert Sizing.parse("crop128").input_shape((37, 501)) == (128, 128)
    with pytest.raises(DatasetError, match="unknown sizing 'x'"):
        Sizing.parse("x")


def test_center_crop_exact():
    a = np.arange(15).reshape(3, 5)
    np.testing.assert_array_equal(benchdata.sizing.center_crop(a), [[1, 2, 3], [6, 7, 8], [11, 12, 13]])
    b = np.arange(8).reshape(4, 2)
    np.testing.assert_array_equal(benchdata.sizing.center_crop(b), [[2, 3], [4, 5]])  # rows 1..2 of 4


@pytest.mark.parametrize("shape,proto,expected", [
    ((300, 400, 3), "short128", (128, 171, 3)),
    ((300, 400, 3), "crop128", (128, 128, 3)),
    ((90, 60, 3), "short128", (192, 128, 3)),  # upscaled
    ((90, 60, 3), "crop128", (128, 128, 3)),
])
def test_prepare_image_shapes(shape, proto, expected):
    out = Sizing.parse(proto).prepare_image(np.zeros(shape, np.uint8))
    assert out.shape == expected and out.dtype == np.uint8


def test_prepare_gt_crop128_crops_like_the_image_and_short128_keeps_size():
    gt = np.zeros((256, 512), np.uint8)
    gt[:, 128:256] = 255  # left half of the central square is foreground
    out = binarize_gt(Sizing.parse("crop128").prepare_gt(gt))
    assert out.shape == (128, 128)
    expected = np.zeros((128, 128), bool)
    expected[:, :64] = True
    np.testing.assert_array_equal(out, expected)
    assert Sizing.parse("short128").prepare_gt(gt) is gt


def test_restore_map_resizes_the_float_map_then_the_caller_quantises():
    from segmodel.inference import probability_to_uint8

    prob = np.array([[0.0, 1.0], [0.5, 0.25]], np.float32)
    np.testing.assert_array_equal(benchdata.sizing.restore_map(prob, (2, 2)), prob)
    np.testing.assert_array_equal(probability_to_uint8(benchdata.sizing.restore_map(prob, (2, 2))),
                                  [[0, 255], [128, 64]])
    big = benchdata.sizing.restore_map(np.array([[0.0, 1.0]], np.float32), (1, 4))
    # bilinear on the floats (half-pixel centres): 0, 1/4, 3/4, 1 -> 8 bits 0, 64, 191, 255
    np.testing.assert_allclose(big, [[0.0, 0.25, 0.75, 1.0]])
    np.testing.assert_array_equal(probability_to_uint8(big), [[0, 64, 191, 255]])


def test_binarize_gt_thresholds_at_half_range():
    np.testing.assert_array_equal(binarize_gt(np.array([[0, 127, 128, 255]], np.uint8)), [[0, 0, 1, 1]])
    np.testing.assert_array_equal(binarize_gt(np.array([[32767, 32768]], np.uint16)), [[0, 1]])
    # a {0, 1} label map: 1 is foreground (>= 128 would make it empty)
    np.testing.assert_array_equal(binarize_gt(np.array([[0, 1]], np.uint8)), [[0, 1]])
    np.testing.assert_array_equal(binarize_gt(np.array([[0, 0]], np.uint8)), [[0, 0]])


def test_read_gt_of_colour_and_16_bit_files(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[1, 1] = 200
    _mask(tmp_path / "c.png", rgb)
    np.testing.assert_array_equal(binarize_gt(benchdata.io.read_gt(tmp_path / "c.png")), rgb[..., 0] >= 128)
    m16 = np.array([[0, 40000]], np.uint16)
    _mask(tmp_path / "d.png", m16)
    np.testing.assert_array_equal(binarize_gt(benchdata.io.read_gt(tmp_path / "d.png")), [[False, True]])


# --------------------------------------------------------------------------- errors


def test_missing_root_names_the_env_variable(monkeypatch):
    monkeypatch.delenv(benchdata.datasets.ENV_ROOT, raising=False)
    with pytest.raises(DatasetError) as e:
        get_dataset("ecssd")
    assert "--data-root" in _one_line(e) and benchdata.datasets.ENV_ROOT in str(e.value)


def test_root_from_environment(tmp_path, monkeypatch):
    _img(tmp_path / "ecssd" / "images" / "a.jpg", 8, 8)
    _mask(tmp_path / "ecssd" / "ground_truth_mask" / "a.png", np.zeros((8, 8), np.uint8))
    monkeypatch.setenv(benchdata.datasets.ENV_ROOT, str(tmp_path))
    assert [i.id for i in get_dataset("ecssd").test_items()] == ["a"]


def test_unknown_dataset_lists_close_matches(tmp_path):
    from core.registry import UnknownNameError

    with pytest.raises(UnknownNameError) as e:
        get_dataset("ecsd", tmp_path)
    assert "did you mean ecssd" in _one_line(e) and _one_line(e).endswith("folder:PATH, shards:SET")


def test_missing_dataset_folder_says_where_to_get_it(tmp_path):
    with pytest.raises(DatasetError) as e:
        get_dataset("duts-te", tmp_path)
    msg = _one_line(e)
    assert str(tmp_path / "DUTS-TE") in msg and "saliencydetection.net" in msg


# --------------------------------------------------------------------------- saliency layouts


@pytest.mark.parametrize("name,base,images,masks", [
    ("ecssd", "ecssd", "images", "ground_truth_mask"),
    ("ecssd", "ecssd", "images", "masks"),
    ("duts-te", "DUTS-TE", "DUTS-TE-Image", "DUTS-TE-Mask"),
    ("duts", "DUTS-TR", "DUTS-TR-Image", "DUTS-TR-Mask"),
    ("dut-omron", "DUT-OMRON", "DUT-OMRON-image", "pixelwiseGT-new-PNG"),
])
def test_saliency_layouts(tmp_path, name, base, images, masks):
    for i, stem in enumerate(["b", "a"]):
        _img(tmp_path / base / images / f"{stem}.jpg", 10, 20)
        m = np.zeros((10, 20), np.uint8)
        m[:, : 5 * (i + 1)] = 255
        _mask(tmp_path / base / masks / f"{stem}.png", m)
    ds = get_dataset(name, tmp_path)
    assert ds.name == name and ds.sizing.name == "short128" and ds.task == "mask"
    items = ds.test_items()
    assert [i.id for i in items] == ["a", "b"]
    loaded = list(ds.iter_loaded(items))
    assert loaded[0][1].shape == (10, 20, 3)
    assert binarize_gt(loaded[0][2]).sum() == 10 * 10  # "a" has 10 foreground columns
    assert binarize_gt(loaded[1][2]).sum() == 10 * 5


def test_folder_layout_and_missing_mask(tmp_path):
    _img(tmp_path / "images" / "x1.jpg", 6, 6)
    _img(tmp_path / "images" / "x2.png", 6, 6)
    _mask(tmp_path / "masks" / "x1.png", np.zeros((6, 6), np.uint8))
    with pytest.raises(DatasetError) as e:
        get_dataset(f"folder:{tmp_path}").test_items()
    assert "'x2'" in _one_line(e)
    _mask(tmp_path / "masks" / "x2.png", np.zeros((6, 6), np.uint8))
    ds = get_dataset(f"folder:{tmp_path}")
    assert ds.name == tmp_path.name and ds.sizing.name == "short128"
    assert [i.id for i in ds.test_items()] == ["x1", "x2"]


def test_folder_not_there(tmp_path):
    with pytest.raises(DatasetError) as e:
        get_dataset(f"folder:{tmp_path / 'nope'}")
    assert "is not a folder" in _one_line(e)


# --------------------------------------------------------------------------- table 1 layouts


def _make_cub(root: Path, seg_inside: bool = True) -> None:
    cub = root / "CUB_200_2011"
    rels = ["001.A/a_1.jpg", "001.A/a_2.jpg", "002.B/b_1.jpg", "002.B/b_2.jpg"]
    (cub).mkdir(parents=True)
    (cub / "images.txt").write_text("".join(f"{i + 1} {r}\n" for i, r in enumerate(rels)))
    # ReDO split: 0 train, 1 val, 2 test
    (cub / "train_val_test_split.txt").write_text("1 0\n2 2\n3 1\n4 2\n")
    segs = (cub if seg_inside else root) / "segmentations"
    for r in rels:
        _img(cub / "images" / r, 40, 60)
        m = np.zeros((40, 60), np.uint8)
        m[10:30, 20:40] = 255
        _mask(segs / r.replace(".jpg", ".png"), m)


@pytest.mark.parametrize("seg_inside", [True, False])
def test_cub_layout_uses_redo_split(tmp_path, seg_inside):
    _make_cub(tmp_path, seg_inside)
    ds = get_dataset("cub", tmp_path)
    assert ds.sizing.name == "crop128"
    assert [i.id for i in ds.test_items()] == ["001.A/a_2", "002.B/b_2"]
    assert [p.relative_to(tmp_path).as_posix() for p in ds.train_images()] == ["CUB_200_2011/images/001.A/a_1.jpg"]
    item = ds.test_items()[0]
    assert item.mask_path.name == "a_2.png"
    gt = binarize_gt(ds.sizing.prepare_gt(ds.load_gt(item)))
    assert gt.shape == (128, 128)
    # 40x60 -> central 40x40 (columns 10..49) -> x3.2: foreground columns 10..29 land on 32..95
    assert gt[:, 32:96].any() and not gt[:, :31].any() and not gt[:, 97:].any()


def test_cub_missing_split_file_names_redo(tmp_path):
    _make_cub(tmp_path)
    (tmp_path / "CUB_200_2011" / "train_val_test_split.txt").unlink()
    with pytest.raises(DatasetError) as e:
        get_dataset("cub", tmp_path).test_items()
    msg = _one_line(e)
    assert "train_val_test_split.txt" in msg and "mickaelChen/ReDO" in msg


def test_flowers_layout_split_and_segmim_rule(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    fl = tmp_path / "flowers"
    for i in (1, 2, 3, 4):
        _img(fl / "jpg" / f"image_{i:05d}.jpg", 30, 40)
        seg = np.zeros((30, 40, 3), np.uint8)
        seg[...] = (0, 0, 254)  # RGB blue background, as in the segmim files
        seg[5:25, 10:30] = (200, 100, 50)
        # saved losslessly here so the hand-made values survive
        _mask(fl / "segmim" / f"segmim_{i:05d}.png", cv2.cvtColor(seg, cv2.COLOR_RGB2BGR))
        (fl / "segmim" / f"segmim_{i:05d}.png").rename(fl / "segmim" / f"segmim_{i:05d}.jpg")
    scipy_io.savemat(str(fl / "setid.mat"), {"trnid": np.array([[3, 1]]), "valid": np.array([[2]]),
                                             "tstid": np.array([[4]])})
    ds = get_dataset("flowers", tmp_path)
    assert ds.sizing.name == "crop128"
    assert [i.id for i in ds.test_items()] == ["image_00003", "image_00001"]  # ReDO tests on trnid
    assert [p.name for p in ds.train_images()] == ["image_00004.jpg"]  # ... and trains on tstid
    gt = binarize_gt(ds.load_gt(ds.test_items()[0]))
    expected = np.zeros((30, 40), bool)
    expected[5:25, 10:30] = True
    np.testing.assert_array_equal(gt, expected)


def test_flowers_segmim_rule_exact():
    seg = np.array([[[0, 5, 5], [5, 0, 5], [5, 5, 254], [5, 5, 5], [0, 0, 254]]], np.uint8)
    np.testing.assert_array_equal(benchdata.datasets.flowers_segmim_mask(seg), [[False, False, False, True, False]])


def test_imagenet_train_folders(tmp_path):
    for wnid, n in (("n02", 2), ("n01", 1)):
        for k in range(n):
            _img(tmp_path / "imagenet" / "train" / wnid / f"{wnid}_{k}.JPEG", 8, 8)
    ds = get_dataset("imagenet", tmp_path)
    assert [p.name for p in ds.train_images()] == ["n01_0.JPEG", "n02_0.JPEG", "n02_1.JPEG"]
    with pytest.raises(DatasetError, match="no test split"):
        ds.test_items()


# --------------------------------------------------------------------------- WSOL layouts


def test_wsol_box_layout(tmp_path):
    base = tmp_path / "wsolevaluation"
    meta = base / "metadata" / "CUB" / "test"
    meta.mkdir(parents=True)
    (meta / "image_ids.txt").write_text("001.A/a.jpg\n002.B/b.jpg\n")
    (meta / "class_labels.txt").write_text("001.A/a.jpg,0\n002.B/b.jpg,1\n")
    (meta / "localization.txt").write_text("001.A/a.jpg,1,2,10,12\n002.B/b.jpg,0,0,5,5\n002.B/b.jpg,3,3,9,9\n")
    for r in ("001.A/a.jpg", "002.B/b.jpg"):
        _img(base / "dataset" / "CUB" / r, 16, 16)
    ds = get_dataset("cub-wsol", tmp_path)
    assert ds.task == "boxes" and ds.sizing.name == "short128"
    items = ds.test_items()
    assert [i.id for i in items] == ["001.A/a", "002.B/b"]
    assert items[0].boxes == ((1, 2, 10, 12),)
    assert items[1].boxes == ((0, 0, 5, 5), (3, 3, 9, 9))
    (item, image, gt), _ = list(ds.iter_loaded(items))
    assert image.shape == (16, 16, 3) and gt is None


def test_wsol_openimages_masks_union_and_ignore(tmp_path):
    base = tmp_path / "wsolevaluation"
    meta = base / "metadata" / "OpenImages" / "test"
    meta.mkdir(parents=True)
    (meta / "image_ids.txt").write_text("test/c/x.jpg\n")
    (meta / "localization.txt").write_text(
        "test/c/x.jpg,test/c/x_m1.png,test/c/x_ignore.png\ntest/c/x.jpg,test/c/x_m2.png,\n")
    data = base / "dataset" / "OpenImages"
    _img(data / "test/c/x.jpg", 4, 4)
    m1, m2, ign = (np.zeros((4, 4), np.uint8) for _ in range(3))
    m1[0, 0], m2[3, 3], ign[1, 1] = 255, 255, 255
    _mask(data / "test/c/x_m1.png", m1)
    _mask(data / "test/c/x_m2.png", m2)
    _mask(data / "test/c/x_ignore.png", ign)
    ds = get_dataset("openimages-wsol", tmp_path)
    assert ds.task == "pxap"
    (item,) = ds.test_items()
    assert item.id == "test/c/x"
    gt = binarize_gt(ds.load_gt(item))
    np.testing.assert_array_equal(np.argwhere(gt), [[0, 0], [3, 3]])
    np.testing.assert_array_equal(np.argwhere(ds.load_ignore(item)), [[1, 1]])


def test_wsol_missing_metadata(tmp_path):
    (tmp_path / "wsolevaluation" / "dataset" / "ILSVRC").mkdir(parents=True)
    with pytest.raises(DatasetError) as e:
        get_dataset("imagenet-wsol", tmp_path)
    msg = _one_line(e)
    assert "metadata/ILSVRC/test/image_ids.txt" in msg and "clovaai/wsolevaluation" in msg


# --------------------------------------------------------------------------- shards:SET


def test_shards_val_split(tmp_path):
    shardset = pytest.importorskip("shardset")
    w = shardset.ShardSetWriter(tmp_path / "set", "toy", params={}, seed=0)
    rng = np.random.default_rng(0)

    def sample(shard, i):
        m = np.zeros((16, 16), np.uint8)
        m[: i + 2] = 1
        return {"__key__": f"toy-{shard:06d}-{i:06d}", "image": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8),
                "mask": m, "meta": {}}

    w.write_shard(0, [sample(0, i) for i in range(3)], split="train", stats={})
    w.write_shard(1, [sample(1, i) for i in range(2)], split="val", stats={})
    w.finalize()
    from shardset.split import open_split

    ds = get_dataset(f"shards:{tmp_path / 'set'}", shard_sets=open_split)
    assert ds.sizing.name == "short128"
    items = ds.test_items()
    assert [i.id for i in items] == ["toy-000001-000000", "toy-000001-000001"]
    loaded = list(ds.iter_loaded(items[::-1]))
    assert [x[0].id for x in loaded] == ["toy-000001-000001", "toy-000001-000000"]
    assert loaded[0][2].dtype == bool and loaded[0][2].sum() == 3 * 16


def test_threaded_loading_keeps_order_and_content(tmp_path):
    for i in range(11):
        _img(tmp_path / "images" / f"{i:02d}.png", 5 + i, 7, value=i * 20)
        _mask(tmp_path / "masks" / f"{i:02d}.png", np.full((5 + i, 7), i * 20, np.uint8))
    ds = get_dataset(f"folder:{tmp_path}")
    one = list(ds.iter_loaded(ds.test_items()))
    many = list(ds.iter_loaded(ds.test_items(), workers=3))
    assert [x[0].id for x in many] == [f"{i:02d}" for i in range(11)]
    for (a, ia, ga), (b, ib, gb) in zip(one, many):
        assert a == b
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(ga, gb)
    # an unreadable image is skipped and recorded, with or without threads; the rest keep their order
    (tmp_path / "images" / "05.png").write_bytes(b"junk")
    for workers in (1, 3):
        ds = get_dataset(f"folder:{tmp_path}")
        got = [x[0].id for x in ds.iter_loaded(ds.test_items(), workers=workers)]
        assert got == [f"{i:02d}" for i in range(11) if i != 5]
        assert ds.skipped == {"05": f"{tmp_path / 'images' / '05.png'}: not a PNG, JPEG, WebP, BMP or TIFF file"}
    with pytest.raises(benchdata.io.ImageSkipped, match="05.png: not a PNG"):
        benchdata.io.read_image(tmp_path / "images" / "05.png")


def test_wsol_imagenet_val_split_reads_choe_et_als_val_metadata(tmp_path):
    # a stand-in of wsolevaluation's metadata/ILSVRC/val (ImageNetV2 under dataset/ILSVRC/val2/),
    # beside a test split that must not be read
    base = tmp_path / "wsolevaluation"
    for split, ids in (("val", ["val2/0/a.jpeg", "val2/1/b.jpeg"]), ("test", ["val/ILSVRC2012_val_00000001.JPEG"])):
        meta = base / "metadata" / "ILSVRC" / split
        meta.mkdir(parents=True)
        (meta / "image_ids.txt").write_text("".join(f"{i}\n" for i in ids))
        (meta / "localization.txt").write_text("".join(f"{i},1,2,10,12\n" for i in ids)
                                               + (f"{ids[1]},0,0,5,5\n" if split == "val" else ""))
        for i in ids:
            _img(base / "dataset" / "ILSVRC" / i, 16, 16)
    ds = get_dataset("imagenet-wsol-val", tmp_path)
    assert ds.task == "boxes" and ds.sizing.name == "short128"
    items = ds.test_items()
    assert [i.id for i in items] == ["val2/0/a", "val2/1/b"]
    assert items[1].boxes == ((1, 2, 10, 12), (0, 0, 5, 5))
    assert [i.id for i in get_dataset("imagenet-wsol", tmp_path).test_items()] == ["val/ILSVRC2012_val_00000001"]
    (base / "metadata" / "ILSVRC" / "val" / "localization.txt").unlink()
    with pytest.raises(DatasetError) as e:
        get_dataset("imagenet-wsol-val", tmp_path)
    assert "metadata/ILSVRC/val/localization.txt" in _one_line(e)
