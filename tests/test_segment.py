"""`segment`: inputs, outputs, the one inference path (its masks score under eval-seg --pred-dir as
the checkpoint scores under eval-seg --ckpt), resume, skipped images, URLs, boxes, errors."""
from __future__ import annotations

import functools
import http.server
import json
import threading
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from segmenter.cli import main
from segmenter.inputs import InputError, expand_inputs
from segmenter.outputs import cutout_png, largest_box, mask_of, overlay_jpeg, threshold_level
from segmenter_fixtures import one_line_error, run_dir, write_images  # noqa: F401 (run_dir: a fixture)


def _segment(args) -> object:
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in res.output, res.output
    return res


def _gray(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


# --------------------------------------------------------------------------- pure pieces


def test_threshold_level_is_the_smallest_8bit_value_at_or_above_t():
    assert threshold_level(0.5) == 128  # the paper's IoU rule: p >= 0.5 is v >= 128
    assert threshold_level(51 / 255) == 51 and threshold_level(0.2) == 51  # 255 * 0.2 = 51.000...01 in floats
    assert (threshold_level(0.0), threshold_level(1.0)) == (0, 255)
    v = np.array([[0, 127, 128, 255]], np.uint8)
    np.testing.assert_array_equal(mask_of(v, 0.5), [[0, 0, 255, 255]])
    np.testing.assert_array_equal(mask_of(v, None), v)
    np.testing.assert_array_equal(mask_of(v, 1.0), [[0, 0, 0, 255]])


def test_full_size_map_short128_is_restore_map_and_crop128_fills_the_centre_square():
    from benchdata.sizing import Sizing, restore_map

    prob = np.random.default_rng(0).random((128, 171), dtype=np.float32)
    short = Sizing.parse("short128").full_size_map(prob, (300, 400))
    np.testing.assert_array_equal(short, restore_map(prob, (300, 400)))
    out = Sizing.parse("crop128").full_size_map(np.ones((128, 128), np.float32), (100, 201))
    assert out.shape == (100, 201)
    assert out[:, 50:150].min() == 1.0 and out[:, :50].max() == 0.0 and out[:, 150:].max() == 0.0


def test_largest_box_follows_the_wsol_rule():
    mask = np.zeros((20, 30), np.uint8)
    mask[2:5, 3:8] = 255  # 3 x 5
    mask[10:18, 12:25] = 255  # the largest: rows 10..17, cols 12..24
    assert largest_box(mask) == [12, 10, 25, 18]  # x1 = x0 + width, y1 = y0 + height (the reference's)
    edge = np.zeros((20, 30), np.uint8)
    edge[5:20, 20:30] = 200  # touches the border: clipped to W - 1, H - 1
    assert largest_box(edge) == [20, 5, 29, 19]
    assert largest_box(np.full((4, 4), 127, np.uint8)) is None  # v < 128 everywhere: no foreground


def test_overlay_tints_the_foreground_and_cutout_carries_the_mask_as_alpha():
    image = np.full((32, 48, 3), 100, np.uint8)
    mask = np.zeros((32, 48), np.uint8)
    mask[8:24, 8:40] = 255
    rgba = cv2.imdecode(np.frombuffer(cutout_png(image, mask), np.uint8), cv2.IMREAD_UNCHANGED)
    assert rgba.shape == (32, 48, 4)
    np.testing.assert_array_equal(rgba[..., 3], mask)
    np.testing.assert_array_equal(rgba[..., :3], image)  # grey: BGR = RGB


@pytest.mark.parametrize("colour", [(100, 100, 100), (220, 20, 20), (20, 20, 20), (250, 250, 250)])
def test_overlay_reads_on_a_subject_of_any_colour(colour):
    """The object keeps its colours, the background is dimmed, and the mask's edge carries both a
    near-white and a near-black line: one of the two contrasts with any subject (a red tint hid on
    red subjects)."""
    image = np.zeros((120, 160, 3), np.uint8)
    image[:] = colour
    mask = np.zeros((120, 160), np.uint8)
    mask[30:90, 40:120] = 255
    bgr = cv2.imdecode(np.frombuffer(overlay_jpeg(image, mask), np.uint8), cv2.IMREAD_COLOR)
    assert bgr.shape == (120, 160, 3)
    rgb = bgr[..., ::-1].astype(int)
    assert np.abs(rgb[60, 80] - colour).max() <= 4  # inside: as it was
    assert np.abs(rgb[5, 5] - np.rint(np.array(colour) * 0.35)).max() <= 4  # outside: dimmed
    edge = rgb[26:35, 80]  # a vertical cut through the top edge
    assert (edge.min(axis=1) >= 200).any() and (edge.max(axis=1) <= 50).any()
    # a mask with no foreground draws no edge
    plain = cv2.imdecode(np.frombuffer(overlay_jpeg(image, np.zeros_like(mask)), np.uint8), cv2.IMREAD_COLOR)
    assert np.abs(plain[..., ::-1].astype(int) - np.rint(np.array(colour) * 0.35)).max() <= 4


# --------------------------------------------------------------------------- inputs


def test_inputs_expand_files_folders_globs_and_lists(tmp_path):
    write_images(tmp_path / "photos", [(20, 30), (20, 30)])
    write_images(tmp_path / "photos" / "sub", [(20, 30)])
    (tmp_path / "photos" / ".hidden.png").write_bytes(b"x")
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "l.txt").write_text("# a comment\n\n../photos/sub/img00.png\nhttps://example.org/a/b/c.jpg?x=1\n"
                                              f"{tmp_path / 'photos' / 'img01.png'}\n")
    rels = [str(s.rel) for s in expand_inputs([str(tmp_path / "photos")])]
    assert rels == ["img00", "img01"]
    rels = [str(s.rel) for s in expand_inputs([str(tmp_path / "photos")], recursive=True)]
    assert rels == ["img00", "img01", "sub/img00"]
    rels = [str(s.rel) for s in expand_inputs([str(tmp_path / "photos" / "**" / "*.png")])]
    assert rels == ["img00", "img01", "sub/img00"]
    listed = expand_inputs(["@" + str(tmp_path / "lists" / "l.txt")])
    # '..' paths keep their name only; URLs go under host/path?query (the ? escaped); absolute paths keep their name
    assert [str(s.rel) for s in listed] == ["img00", "example.org/a/b/c%3Fx=1", "img01"]
    assert listed[0].location == str(tmp_path / "lists" / "../photos/sub/img00.png") and listed[1].is_url
    # the same file named twice is one input
    assert len(expand_inputs([str(tmp_path / "photos" / "img00.png"), str(tmp_path / "photos")])) == 2


def test_inputs_that_name_nothing_or_collide_are_refused(tmp_path):
    write_images(tmp_path / "a", [(20, 30)])
    write_images(tmp_path / "b", [(20, 30)])
    with pytest.raises(InputError, match="would both write img00.png"):
        expand_inputs([str(tmp_path / "a"), str(tmp_path / "b")])
    with pytest.raises(InputError, match="no such file"):
        expand_inputs([str(tmp_path / "missing.jpg")])
    with pytest.raises(InputError, match="matches no image"):
        expand_inputs([str(tmp_path / "*.webp")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="--recursive"):
        expand_inputs([str(tmp_path / "empty")])
    assert expand_inputs([str(tmp_path / "a" / "img00.png")])[0].rel == PurePosixPath("img00")


# --------------------------------------------------------------------------- the command


@pytest.mark.parametrize("asked, protocol", [((), "short32"), (("--input-size", 128), "short128")])
def test_segment_writes_the_checkpoints_maps_at_each_images_size(run_dir, tmp_path, asked, protocol):
    """Each mask is the checkpoint's map by the protocol's steps, computed here by hand: prepare_image,
    the U-Net with its softmax, restore_map, probability_to_uint8. The tiny run learnt at 32 px, so
    that is the default sizing; --input-size 128 is the paper's."""
    from benchdata.sizing import Sizing, restore_map
    from segmodel.inference import probability_to_uint8
    from segmodel.runtime import TorchBackend

    sizes = [(90, 120), (130, 70), (90, 120), (64, 64)]
    paths = write_images(tmp_path / "in", sizes)
    res = _segment(["--ckpt", run_dir, tmp_path / "in", "--out", tmp_path / "out", "--threshold", "none",
                    "--device", "cpu", "--batch-size", 2, "--workers", 2, *asked])
    assert res.exit_code == 0, res.output
    assert "segmented 4 of 4 images" in res.output
    fed = [ln for ln in res.output.splitlines() if ln.startswith("feeding the model")]
    assert fed == [f"feeding the model at {protocol[5:]} px" + (
        ", its training size (--input-size 128 for the paper's sizing)" if not asked else
        " (--input-size 128); it was trained at 32 px (--input-size native feeds it at that)")]
    assert json.loads((tmp_path / "out" / "segment.json").read_text())["protocol"] == protocol
    backend = TorchBackend(run_dir, "cpu")
    for path, (h, w) in zip(paths, sizes):
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        x = Sizing.parse(protocol).prepare_image(rgb)
        assert min(x.shape[:2]) == int(protocol[5:])
        expected = probability_to_uint8(restore_map(backend.probabilities(x[None])[0], (h, w)))
        got = _gray(tmp_path / "out" / f"{path.stem}.png")
        assert got.shape == (h, w)
        np.testing.assert_array_equal(got, expected)
    if asked:
        return
    # the default: binary at p >= 0.5 of the same maps
    res = _segment(["--ckpt", run_dir, tmp_path / "in", "--out", tmp_path / "bin", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    for path in paths:
        prob = _gray(tmp_path / "out" / f"{path.stem}.png")
        np.testing.assert_array_equal(_gray(tmp_path / "bin" / f"{path.stem}.png"), np.where(prob >= 128, 255, 0))


def _folder_dataset(root: Path, n: int = 6) -> Path:
    """A folder: dataset (images/ + masks/) of discs, for eval-seg."""
    paths = write_images(root / "images", [(90 + 7 * i, 120 - 5 * i) for i in range(n)], seed=3)
    (root / "masks").mkdir()
    for p in paths:
        img = cv2.imread(str(p))
        cv2.imwrite(str(root / "masks" / p.name), np.where(img[..., 0] > 150, 255, 0).astype(np.uint8))
    return root


def _scalars(results: dict) -> dict:
    (ds,) = results["datasets"].values()
    return {(p, k): v["mean"] for p, e in ds["protocols"].items() for k, v in e["summary"].items()}


def test_saved_maps_score_as_the_checkpoint_scores(run_dir, tmp_path):
    """The one inference path, on a small folder set: eval-seg --pred-dir on segment's 8-bit maps
    gives eval-seg --ckpt's numbers, and on its default binary masks the same IoU and accuracy."""
    from evaluator.cli import EvalConfig, evaluate

    data = _folder_dataset(tmp_path / "set")
    spec = (f"folder:{data}",)
    by_ckpt = _scalars(evaluate(EvalConfig(datasets=spec, ckpts=(run_dir,), device="cpu", figures=False)))
    assert _segment(["--ckpt", run_dir, data / "images", "--out", tmp_path / "maps", "--threshold", "none",
                     "--device", "cpu"]).exit_code == 0
    by_maps = _scalars(evaluate(EvalConfig(datasets=spec, pred_dir=tmp_path / "maps", figures=False)))
    assert by_maps.keys() == by_ckpt.keys()
    for key, value in by_ckpt.items():
        assert by_maps[key] == pytest.approx(value, abs=1e-4), key
    assert _segment(["--ckpt", run_dir, data / "images", "--out", tmp_path / "bin", "--device", "cpu"]).exit_code == 0
    by_bin = _scalars(evaluate(EvalConfig(datasets=spec, pred_dir=tmp_path / "bin", figures=False)))
    for key in (("paper", "iou"), ("paper", "accuracy")):
        assert by_bin[key] == by_ckpt[key], key


def test_resume_skips_complete_outputs_and_rewrites_the_rest_identically(run_dir, tmp_path):
    write_images(tmp_path / "in", [(60, 80)] * 5)
    args = ["--ckpt", run_dir, tmp_path / "in", "--out", tmp_path / "out", "--device", "cpu", "--overlay",
            "--cutout", "--boxes"]
    assert _segment(args).exit_code == 0
    out = tmp_path / "out"
    files = sorted(p for p in out.iterdir() if p.is_file())
    # mask, overlay, cutout per image; boxes.jsonl; segment.json; segment.done.jsonl, the journal of what is done
    assert len(files) == 5 * 3 + 3
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in files if p.name != "segment.done.jsonl"}
    (out / "img01.png").unlink()  # a lost mask
    data = (out / "img02.overlay.jpg").read_bytes()
    (out / "img02.overlay.jpg").write_bytes(data[: len(data) // 2])  # a file cut short
    (out / "boxes.jsonl").unlink()
    res = _segment(args)
    assert res.exit_code == 0, res.output
    assert "segmented 2 of 5 images" in res.output and "3 done before" in res.output
    for name, (data, mtime) in before.items():
        path = out / name
        assert path.read_bytes() == data, name  # identical bytes, boxes of done images drawn from their masks
        if name.startswith(("img00", "img03", "img04")):
            assert path.stat().st_mtime_ns == mtime, f"{name} was rewritten"
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_a_folder_of_other_settings_is_not_resumed(run_dir, tmp_path):
    write_images(tmp_path / "in", [(60, 80)])
    base = ["--ckpt", run_dir, tmp_path / "in", "--out", tmp_path / "out", "--device", "cpu"]
    assert _segment(base).exit_code == 0
    one_line_error(_segment(base + ["--threshold", "none"]), "--threshold 0.5", "none", "--overwrite")
    one_line_error(_segment(base + ["--protocol", "crop"]), "sizing short32", "crop32")
    one_line_error(_segment(base + ["--input-size", 128]), "sizing short32", "short128")
    one_line_error(_segment(base + ["--protocol", "crop128"]), "--protocol crop --input-size 128")
    one_line_error(_segment(base + ["--input-size", "big"]), "--input-size 'big'", "native")
    res = _segment(base + ["--threshold", "none", "--overwrite"])
    assert res.exit_code == 0 and "segmented 1 of 1" in res.output
    assert len(np.unique(_gray(tmp_path / "out" / "img00.png"))) > 2  # 8-bit probabilities now


def test_unreadable_images_are_reported_skipped_and_counted(run_dir, tmp_path):
    write_images(tmp_path / "in", [(60, 80), (40, 40)])
    # cut from the 40 x 40 image: its header passes the pixel limit, so the truncation is what is found
    good = (tmp_path / "in" / "img01.png").read_bytes()
    (tmp_path / "in" / "cut.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "in" / "text.jpg").write_text("not a picture")
    res = _segment(["--ckpt", run_dir, tmp_path / "in", "--out", tmp_path / "out", "--device", "cpu",
                    "--max-image-pixels", 3000])  # 80 x 60 = 4800 pixels: over the limit
    assert res.exit_code == 0, res.output
    assert "segmented 1 of 4 images" in res.output
    assert "skipped 3: 1 too large, 1 truncated, 1 unreadable" in res.output
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["img01.png"]
    res = _segment(["--ckpt", run_dir, tmp_path / "in" / "text.jpg", "--out", tmp_path / "o2", "--device", "cpu"])
    one_line_error(res, "none of the 1 images could be read")


@pytest.fixture()
def served(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/www."""
    www = tmp_path / "www"
    www.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            pass  # a client that hangs up mid-file (a refused download) is what the tests do

    server = Server(("127.0.0.1", 0), functools.partial(Quiet, directory=str(www)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_urls_and_lists_download_into_the_same_reader(run_dir, served, tmp_path):
    www, base = served
    write_images(www / "pics", [(60, 80), (300, 400)])
    write_images(tmp_path / "local", [(50, 50)])
    (tmp_path / "urls.txt").write_text(f"{base}/pics/img00.png\n{base}/pics/missing.png\n{base}/pics/img01.png\n"
                                       "local/img00.png\n")
    res = _segment(["--ckpt", run_dir, "@" + str(tmp_path / "urls.txt"), "--out", tmp_path / "out",
                    "--device", "cpu", "--max-image-pixels", 100_000])
    assert res.exit_code == 0, res.output
    assert "segmented 2 of 4 images" in res.output and "1 too large" in res.output and "HTTP 404" in res.output
    assert "1 unreadable" in res.output and "not downloaded" in res.output
    assert _gray(tmp_path / "out" / "127.0.0.1" / "pics" / "img00.png").shape == (60, 80)
    # a URL's mask equals the one of the same file read from disk
    res = _segment(["--ckpt", run_dir, www / "pics" / "img00.png", "--out", tmp_path / "disk", "--device", "cpu"])
    assert res.exit_code == 0
    assert (tmp_path / "disk" / "img00.png").read_bytes() == \
        (tmp_path / "out" / "127.0.0.1" / "pics" / "img00.png").read_bytes()
    assert (tmp_path / "out" / "local" / "img00.png").is_file()


def test_boxes_are_one_json_line_per_image_in_input_order(run_dir, tmp_path):
    write_images(tmp_path / "in", [(60, 80), (70, 50), (40, 40)])
    res = _segment(["--ckpt", run_dir, tmp_path / "in", "--out", tmp_path / "out", "--device", "cpu", "--boxes"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in (tmp_path / "out" / "boxes.jsonl").read_text().splitlines()]
    assert [x["mask"] for x in lines] == ["img00.png", "img01.png", "img02.png"]
    for entry in lines:
        mask = _gray(tmp_path / "out" / entry["mask"])
        assert (entry["height"], entry["width"]) == mask.shape
        assert entry["box"] == largest_box(mask)


def test_out_inside_an_input_folder_is_refused(run_dir, tmp_path):
    write_images(tmp_path / "in", [(60, 80)])
    for out in (tmp_path / "in", tmp_path / "in" / "masks"):
        one_line_error(_segment(["--ckpt", run_dir, tmp_path / "in", "--out", out]), "inside the input folder")
    one_line_error(_segment(["--ckpt", run_dir, tmp_path / "in" / "img00.png", "--out", tmp_path / "in"]),
                    "is the folder of the input")
    one_line_error(_segment(["--ckpt", run_dir, str(tmp_path / "in" / "*.png"), "--out", tmp_path / "in" / "m"]),
                    "inside the input folder")
    assert not (tmp_path / "in" / "masks").exists() and not (tmp_path / "in" / "m").exists()


def test_the_command_follows_the_cli_convention(tmp_path):
    from core.version import package_version

    res = CliRunner().invoke(main, ["-h"])
    assert res.exit_code == 0 and "-v, --verbose" in res.output and "--threshold" in res.output
    assert CliRunner().invoke(main, ["--version"]).output.strip().endswith(package_version())
    write_images(tmp_path / "in", [(20, 20)])
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"\x89PNG\r\n\x1a\n not a model")
    one_line_error(_segment([tmp_path / "in", "--out", tmp_path / "o"]), "--ckpt", "--model")
    one_line_error(_segment(["--model", onnx, tmp_path / "in", "--out", tmp_path / "o"]), "a PNG image", "export-model")
    one_line_error(_segment(["--model", tmp_path / "none.onnx", tmp_path / "in", "--out", tmp_path / "o"]),
                    "not found")
    res = _segment(["--model", onnx, tmp_path / "in", "--out", tmp_path / "o", "--threshold", "1.5"])
    assert res.exit_code == 2 and "outside [0, 1]" in res.output


# --------------------------------------------------------------------------- the check, on ECSSD


@pytest.mark.slow
@pytest.mark.data
def test_segment_on_ecssd_writes_1000_masks_that_score_as_the_checkpoint(run_dir, ecssd_dir, tmp_path):
    """Done when: segment on ecssd/images writes 1,000 masks, and eval-seg --pred-dir on them gives
    eval-seg --ckpt's numbers on the same checkpoint to 1e-4, under both evaluation protocols."""
    from evaluator.cli import EvalConfig, evaluate

    out = tmp_path / "masks"
    res = _segment(["--ckpt", run_dir, ecssd_dir / "images", "--out", out, "--threshold", "none", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert len(list(out.glob("*.png"))) == 1000
    spec = (f"folder:{ecssd_dir}",)
    by_ckpt = evaluate(EvalConfig(datasets=spec, ckpts=(run_dir,), device="cpu", figures=False))
    by_maps = evaluate(EvalConfig(datasets=spec, pred_dir=out, figures=False))
    a, b = _scalars(by_ckpt), _scalars(by_maps)
    assert a.keys() == b.keys() and len(a) >= 10
    worst = max(abs(a[k] - b[k]) for k in a)
    assert worst <= 1e-4, {k: (a[k], b[k]) for k in a if abs(a[k] - b[k]) > 1e-4}
    assert next(iter(by_maps["datasets"].values()))["n_images"] == 1000
