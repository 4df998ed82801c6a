"""eval-seg end to end: --pred-dir on real ECSSD pairs and hand-made sets, --ckpt on tiny U-Net
checkpoints (cross-checked against a by-hand inference + metrics pipeline), mean ± std over
several checkpoints, the WSOL sets, and the one-line errors."""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import benchdata.datasets as D
from evaluator.cli import main
from evaluator.evaluation import EvalConfig, EvalError, evaluate
from scoring import SegmentationMetrics


def _run(args, env=None):
    """eval-seg with `args`, and a fresh --out when they name none (it is required)."""
    args = [str(a) for a in args]
    if "--out" not in args:
        args += ["--out", tempfile.mkdtemp(prefix="eval-out-")]
    return CliRunner().invoke(main, args, env=env)


def _assert_one_line_error(res, *needles):
    assert res.exit_code != 0
    assert "Traceback" not in res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    err = [ln for ln in lines if ln.startswith("Error:")]
    assert len(err) == 1, res.output
    for n in needles:
        assert n in err[0], err[0]


def _rect_mask(h, w, y0, y1, x0, x1) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 255
    return m


def _folder(root: Path, shapes) -> Path:
    """images/<id>.png + masks/<id>.png with a textured image and a rectangle mask each."""
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(shapes):
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        cv2.imwrite(str(root / "images" / f"im{i}.png"), img)
        cv2.imwrite(str(root / "masks" / f"im{i}.png"), _rect_mask(h, w, h // 4, 3 * h // 4, w // 5, w // 2))
    return root


# --------------------------------------------------------------------------- --pred-dir


def test_pred_dir_gt_as_prediction_scores_one_and_writes_everything(ecssd_dir, tmp_path):
    ids = sorted(p.stem for p in (ecssd_dir / "images").iterdir())[:4]
    pred = tmp_path / "pred"
    pred.mkdir()
    for i in ids:
        shutil.copy(ecssd_dir / "masks" / f"{i}.png", pred / f"{i}.png")
    out = tmp_path / "R"
    args = ["--pred-dir", pred, "--dataset", f"folder:{ecssd_dir}", "--limit", 4, "--out", out]
    res = _run(args)
    assert res.exit_code == 0, res.output
    assert "maxFβ" in res.output
    for name in ("results.json", "results.md", "pr_curve.png", "examples_ecssd.png"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    ds = results["datasets"]["ecssd"]
    assert ds["n_images"] == 4 and ds["protocol"] == "short128"
    for k in ("max_f", "iou", "accuracy"):
        assert ds["summary"][k]["mean"] == 1.0, k
    assert ds["summary"]["s_measure"]["mean"] == pytest.approx(1.0, abs=1e-9)  # eps in its formula
    assert ds["summary"]["mae"]["mean"] == 0.0
    paper, toolkit = ds["protocols"]["paper"], ds["protocols"]["sod-toolkit"]
    assert paper["summary"] == ds["summary"]
    assert paper["runs"][0]["per_image"]["ids"] == ids
    assert len(paper["runs"][0]["curves"]["precision_curve"]) == 255
    assert len(toolkit["runs"][0]["curves"]["precision_curve"]) == 256
    for k in ("max_f", "mean_f", "adaptive_f", "s_measure", "e_max", "e_mean", "e_adaptive", "mae", "weighted_f"):
        assert k in toolkit["summary"], k
    assert toolkit["summary"]["max_f"]["mean"] == 1.0 and toolkit["summary"]["mae"]["mean"] == 0.0
    assert results["fg_prob"] is None  # saved maps: no logits
    assert results["tool"]["version"]
    fig = cv2.imread(str(out / "examples_ecssd.png"))
    assert fig is not None and fig.shape[0] > 3 * 160
    # a second run appends its row under the same header
    assert _run(args + ["--method", "again"]).exit_code == 0
    md = (out / "results.md").read_text().splitlines()
    assert md[0] == ("| Method | fg prob | ecssd maxFβ | ecssd IoU | ecssd Acc | ecssd SOD maxFβ | ecssd SOD Sα | "
                     "ecssd SOD meanEξ | ecssd SOD MAE | ecssd SOD wFβ |")
    assert md[2].startswith("| pred | - | 1.000 | 1.000 | 1.000 | 1.000 |")
    assert md[3].startswith("| again | - | 1.000 | 1.000 | 1.000 | 1.000 |")
    assert len(md) == 4


def test_missing_prediction_is_one_line_naming_the_id(tmp_path):
    data = _folder(tmp_path / "data", [(20, 30), (20, 30)])
    pred = tmp_path / "pred"
    pred.mkdir()
    shutil.copy(data / "masks" / "im0.png", pred / "im0.png")
    res = _run(["--pred-dir", pred, "--dataset", f"folder:{data}"])
    _assert_one_line_error(res, "'im1'", str(pred / "im1.png"))


def test_out_is_required():
    res = CliRunner().invoke(main, ["--pred-dir", ".", "--dataset", "ecssd"])
    assert res.exit_code == 2 and "Error: missing --out" in res.output and "Usage" not in res.output


def test_images_over_the_pixel_limit_are_skipped_named_and_counted(tmp_path):
    """im1 (30 x 40 = 1200 pixels) is over --max-image-pixels 1000, im0 (600) is not: one image is
    scored, the summary line says which was skipped and why, results.json lists it."""
    data = _folder(tmp_path / "data", [(20, 30), (30, 40)])
    pred = tmp_path / "pred"
    pred.mkdir()
    shutil.copy(data / "masks" / "im0.png", pred / "im0.png")
    res = _run(["--pred-dir", pred, "--dataset", f"folder:{data}", "--out", tmp_path / "R",
                "--max-image-pixels", "1000"])
    assert res.exit_code == 0, res.output
    row = next(ln for ln in res.output.splitlines() if ln.startswith("data ") and " paper " in ln)
    assert row.split()[1] == "1"  # the images column: scored, not listed
    assert "data: 1 image(s) skipped, not scored (" in res.output and "1200 pixels" in res.output
    ds = json.loads((tmp_path / "R" / "results.json").read_text())["datasets"]["data"]
    assert ds["n_images"] == 1 and list(ds["skipped"]) == ["im1"]
    assert "im1.png: 40x30 = 1200 pixels, over the limit of 1000" in ds["skipped"]["im1"]  # width x height
    assert ds["summary"]["iou"]["mean"] == 1.0  # im0's own mask as its prediction


def test_a_dataset_whose_every_image_is_skipped_is_one_line(tmp_path):
    data = _folder(tmp_path / "data", [(20, 30)])
    res = _run(["--pred-dir", tmp_path, "--dataset", f"folder:{data}", "--max-image-pixels", "100"])
    _assert_one_line_error(res, "dataset data: none of its 1 test images could be scored (1 skipped, e.g. ",
                           "over the limit of 100")


def test_prediction_of_another_size_is_resized_bilinearly(tmp_path):
    data = _folder(tmp_path / "data", [(40, 60)])
    pred = tmp_path / "pred"
    pred.mkdir()
    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    cv2.imwrite(str(pred / "im0.png"), small)
    results = evaluate(EvalConfig(datasets=(f"folder:{data}",), pred_dir=pred))
    m = SegmentationMetrics()
    m.update(cv2.resize(small, (60, 40), interpolation=cv2.INTER_LINEAR),
             cv2.imread(str(data / "masks" / "im0.png"), cv2.IMREAD_GRAYSCALE) >= 128)
    ref = m.compute()
    got = results["datasets"]["data"]["summary"]
    for k in ("max_f", "iou", "accuracy", "mae"):
        assert got[k]["mean"] == ref[k], k


def test_crop128_pred_dir_at_original_size_gets_the_gt_crop(tmp_path):
    cub = tmp_path / "CUB_200_2011"
    (cub / "images" / "001.A").mkdir(parents=True)
    (cub / "segmentations" / "001.A").mkdir(parents=True)
    (cub / "images.txt").write_text("1 001.A/a.jpg\n2 001.A/b.jpg\n")
    (cub / "train_val_test_split.txt").write_text("1 0\n2 2\n")
    for s in "ab":
        cv2.imwrite(str(cub / "images" / "001.A" / f"{s}.jpg"), np.zeros((50, 80, 3), np.uint8))
        cv2.imwrite(str(cub / "segmentations" / "001.A" / f"{s}.png"), _rect_mask(50, 80, 10, 40, 20, 50))
    pred = tmp_path / "pred" / "001.A"
    pred.mkdir(parents=True)
    shutil.copy(cub / "segmentations" / "001.A" / "b.png", pred / "b.png")
    results = evaluate(EvalConfig(datasets=("cub",), pred_dir=tmp_path / "pred", data_root=tmp_path))
    ds = results["datasets"]["cub"]
    assert ds["protocol"] == "crop128" and ds["n_images"] == 1
    assert ds["summary"]["iou"]["mean"] == 1.0 and ds["summary"]["max_f"]["mean"] == 1.0


# --------------------------------------------------------------------------- --ckpt


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models on a shared 2-core box: one intra-op thread avoids oversubscription."""
    try:
        import torch
    except ImportError:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tiny_ckpt(run_dir: Path, seed: int, **meta) -> Path:
    torch = pytest.importorskip("torch")
    unet = pytest.importorskip("segmodel.unet")
    checkpoint = pytest.importorskip("trainer.checkpoint")
    torch.manual_seed(seed)
    model = unet.UNet(width=4)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode matters
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    checkpoint.save_run_state(run_dir, 7, model, {"shardset": {"name": "toy", "fingerprint": "0" * 64},
                                                  "config": {"seed": seed}, **meta})
    return run_dir


def _by_hand(run_dir: Path, data: Path, fg_prob: str = "softmax") -> dict:
    """The documented pipeline written out: short side 128, [-1, 1] NCHW, softmax[:, 1] (or
    sigmoid of logit 1), bilinear back to the gt's size, 8-bit, metrics."""
    import torch
    from segmodel.checkpoint import load_for_inference

    model, _ = load_for_inference(run_dir)
    m = SegmentationMetrics()
    for img_path in sorted((data / "images").iterdir()):
        image = cv2.cvtColor(cv2.imread(str(img_path)), cv2.COLOR_BGR2RGB)
        gt = cv2.imread(str(data / "masks" / img_path.name), cv2.IMREAD_GRAYSCALE) >= 128
        h, w = image.shape[:2]
        s = 128 / min(h, w)
        size = (int(w * s + 0.5), int(h * s + 0.5))
        x = cv2.resize(image, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        x = torch.from_numpy(x).permute(2, 0, 1)[None].float() / 127.5 - 1
        with torch.no_grad():
            logits = model(x)
            p = (torch.softmax(logits, dim=1)[0, 1] if fg_prob == "softmax" else 1 / (1 + torch.exp(-logits[0, 1])))
            p = p.numpy()
        p = cv2.resize(p, (w, h), interpolation=cv2.INTER_LINEAR)
        m.update(np.clip(np.rint(p * 255), 0, 255).astype(np.uint8), gt)
    return m.compute()


def test_ckpt_matches_the_pipeline_by_hand(tmp_path):
    run = _tiny_ckpt(tmp_path / "run", seed=0)
    data = _folder(tmp_path / "data", [(40, 60), (60, 40), (40, 60)])
    results = evaluate(EvalConfig(datasets=(f"folder:{data}",), ckpts=(run,), batch_size=2, device="cpu"))
    ref = _by_hand(run, data)
    got = results["datasets"]["data"]
    for k in ("max_f", "iou", "accuracy", "mae", "s_measure", "e_max"):
        assert got["summary"][k]["mean"] == pytest.approx(ref[k], abs=1e-6), k
    np.testing.assert_allclose(got["protocols"]["paper"]["runs"][0]["curves"]["f_curve"], ref["f_curve"], atol=1e-6)
    assert results["fg_prob"] == "softmax"
    src = results["sources"][0]
    weights = run / "checkpoints" / "step-000007.safetensors"
    import hashlib
    assert src["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert src["step"] == 7 and src["kind"] == "checkpoint"


def test_ckpt_cli_on_a_run_folder_writes_outputs(tmp_path):
    run = _tiny_ckpt(tmp_path / "run", seed=0)
    data = _folder(tmp_path / "data", [(40, 60), (60, 40)])
    res = _run(["--ckpt", run, "--dataset", f"folder:{data}", "--out", tmp_path / "R", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "R" / "examples_data.png").is_file()
    assert json.loads((tmp_path / "R" / "results.json").read_text())["sources"][0]["path"].endswith(
        "step-000007.safetensors")


def test_several_ckpts_give_mean_and_sample_std(tmp_path):
    runs = [_tiny_ckpt(tmp_path / f"run{s}", seed=s) for s in (0, 1)]
    data = _folder(tmp_path / "data", [(40, 60), (60, 40)])
    singles = [evaluate(EvalConfig(datasets=(f"folder:{data}",), ckpts=(r,), device="cpu"))
               for r in runs]
    out = tmp_path / "R"
    both = evaluate(EvalConfig(datasets=(f"folder:{data}",), ckpts=tuple(runs), device="cpu", out=out))
    for k in ("max_f", "iou", "accuracy"):
        vals = [s["datasets"]["data"]["summary"][k]["mean"] for s in singles]
        agg = both["datasets"]["data"]["summary"][k]
        assert agg["runs"] == vals
        assert agg["mean"] == pytest.approx(np.mean(vals), abs=1e-12)
        assert agg["std"] == pytest.approx(np.std(vals, ddof=1), abs=1e-12)
    assert len(both["sources"]) == 2
    assert len({s["sha256"] for s in both["sources"]}) == 2
    row = (out / "results.md").read_text().splitlines()[2]
    assert row.count("±") == 3 + 5  # the paper's maxF, IoU, Acc; the toolkit's maxF, Sα, Eξ, MAE, wFβ


def _one_image_cub(tmp_path: Path):
    """The cub dataset (crop128) of one 50 x 80 image under tmp_path."""
    cub = tmp_path / "CUB_200_2011"
    (cub / "images" / "001.A").mkdir(parents=True)
    (cub / "segmentations" / "001.A").mkdir(parents=True)
    (cub / "images.txt").write_text("1 001.A/a.jpg\n")
    (cub / "train_val_test_split.txt").write_text("1 2\n")
    cv2.imwrite(str(cub / "images" / "001.A" / "a.jpg"), np.full((50, 80, 3), 90, np.uint8))
    cv2.imwrite(str(cub / "segmentations" / "001.A" / "a.png"), _rect_mask(50, 80, 10, 40, 20, 50))
    return D.get_dataset("cub", tmp_path)


def test_crop128_ckpt_predicts_at_128(tmp_path):
    from evaluator.predict import CheckpointSource, iter_predictions

    run = _tiny_ckpt(tmp_path / "run", seed=0)
    ds = _one_image_cub(tmp_path)
    (p,) = list(iter_predictions(ds, ds.test_items(), CheckpointSource(run, device="cpu")))
    assert p.pred.shape == (128, 128) and p.truth.mask.shape == (128, 128) and p.pred.dtype == np.uint8


def test_crop_ckpt_of_64_px_is_fed_the_square_at_64_and_scored_at_the_datasets_128(tmp_path, monkeypatch):
    from segmodel.runtime import TorchBackend

    run = _tiny_ckpt(tmp_path / "run", seed=0, input_size=64)
    seen = []
    real = TorchBackend.probabilities
    monkeypatch.setattr(TorchBackend, "probabilities", lambda self, b: seen.append(b.shape) or real(self, b))
    _one_image_cub(tmp_path)
    results = evaluate(EvalConfig(datasets=("cub",), data_root=tmp_path, ckpts=(run,), device="cpu", figures=False))
    assert seen == [(1, 64, 64, 3)]  # the centre square at the model's training size
    ds = results["datasets"]["cub"]
    assert (ds["protocol"], ds["input_size"], ds["n_images"]) == ("crop64", 64, 1)
    # the ground truth, and the pixels the metrics count, are the dataset's 128 x 128 square
    from evaluator.predict import CheckpointSource, iter_predictions

    cub = D.get_dataset("cub", tmp_path)
    (p,) = list(iter_predictions(cub, cub.test_items(), CheckpointSource(run, device="cpu", input_size=64)))
    assert p.pred.shape == p.truth.mask.shape == (128, 128) and seen[-1] == (1, 64, 64, 3)


# --------------------------------------------------------------------------- WSOL sets


def test_box_and_pxap_sets_through_pred_dir(tmp_path):
    base = tmp_path / "wsolevaluation"
    # cub-wsol: one image, one box; the prediction is that box filled
    meta = base / "metadata" / "CUB" / "test"
    meta.mkdir(parents=True)
    (meta / "image_ids.txt").write_text("001.A/a.jpg\n")
    (meta / "localization.txt").write_text("001.A/a.jpg,10,5,29,24\n")
    (base / "dataset" / "CUB" / "001.A").mkdir(parents=True)
    cv2.imwrite(str(base / "dataset" / "CUB" / "001.A" / "a.jpg"), np.zeros((40, 50, 3), np.uint8))
    # openimages-wsol: mask = prediction
    meta = base / "metadata" / "OpenImages" / "test"
    meta.mkdir(parents=True)
    (meta / "image_ids.txt").write_text("test/c/x.jpg\n")
    (meta / "localization.txt").write_text("test/c/x.jpg,test/c/x_m.png,\n")
    oi = base / "dataset" / "OpenImages" / "test" / "c"
    oi.mkdir(parents=True)
    cv2.imwrite(str(oi / "x.jpg"), np.zeros((30, 30, 3), np.uint8))
    cv2.imwrite(str(oi / "x_m.png"), _rect_mask(30, 30, 5, 20, 5, 20))
    pred = tmp_path / "pred"
    (pred / "001.A").mkdir(parents=True)
    (pred / "test" / "c").mkdir(parents=True)
    cv2.imwrite(str(pred / "001.A" / "a.png"), _rect_mask(40, 50, 5, 25, 10, 30))
    cv2.imwrite(str(pred / "test" / "c" / "x.png"), _rect_mask(30, 30, 5, 20, 5, 20))
    results = evaluate(EvalConfig(datasets=("cub-wsol", "openimages-wsol"), pred_dir=pred, data_root=tmp_path,
                                  out=tmp_path / "R"))
    assert results["datasets"]["cub-wsol"]["summary"]["max_box_acc"]["mean"] == 1.0
    assert results["datasets"]["cub-wsol"]["summary"]["max_box_acc_v2"]["mean"] == 1.0
    # PxAP of the same map and mask fed to scoring.wsol directly (its 224 resize blurs edges,
    # so a perfect map scores just under 1)
    from scoring.wsol import PxAP

    ref = PxAP()
    ref.update(_rect_mask(30, 30, 5, 20, 5, 20).astype(np.float32) / 255, _rect_mask(30, 30, 5, 20, 5, 20) >= 128)
    assert results["datasets"]["openimages-wsol"]["summary"]["pxap"]["mean"] == ref.compute()["pxap"] > 0.99
    md = (tmp_path / "R" / "results.md").read_text().splitlines()
    assert md[0] == "| Method | fg prob | cub-wsol MaxBoxAcc | openimages-wsol PxAP |"
    assert list(results["datasets"]["cub-wsol"]["protocols"]) == ["wsol"]


# --------------------------------------------------------------------------- errors


def test_missing_data_root_is_one_line(monkeypatch, tmp_path):
    res = _run(["--pred-dir", tmp_path, "--dataset", "ecssd"], env={D.ENV_ROOT: ""})
    _assert_one_line_error(res, "--data-root", D.ENV_ROOT)


def test_missing_named_dataset_is_one_line(tmp_path):
    res = _run(["--pred-dir", tmp_path, "--dataset", "dut-omron", "--data-root", tmp_path])
    _assert_one_line_error(res, "DUT-OMRON", "saliencydetection.net")


def test_unknown_dataset_is_a_bad_parameter(tmp_path):
    res = _run(["--pred-dir", tmp_path, "--dataset", "ecsd"])
    assert res.exit_code == 2 and "unknown dataset 'ecsd'" in res.output and "Traceback" not in res.output


def test_ckpt_and_pred_dir_are_exclusive(tmp_path):
    data = _folder(tmp_path / "data", [(8, 8)])
    with pytest.raises(EvalError, match="either --ckpt"):
        evaluate(EvalConfig(datasets=(f"folder:{data}",)))
    res = _run(["--dataset", f"folder:{data}"])
    _assert_one_line_error(res, "either --ckpt")


def test_bad_checkpoint_is_one_line(tmp_path):
    data = _folder(tmp_path / "data", [(8, 8)])
    (tmp_path / "empty_run").mkdir()
    res = _run(["--ckpt", tmp_path / "empty_run", "--dataset", f"folder:{data}"])
    _assert_one_line_error(res, "no checkpoint in")


@pytest.mark.slow
def test_ckpt_on_a_train_unet_run_scores_its_val_shards(tmp_path):
    """The done-when check: a real (tiny) train-unet run, scored on its own val shards."""
    pytest.importorskip("webdataset")
    toy = pytest.importorskip("trainer.toy")
    train_mod = pytest.importorskip("trainer.train")
    from trainer.config import TrainConfig

    manifest = toy.write_disc_set(tmp_path / "shards", n_train=16, n_val=4, size=32, shard_size=8)
    cfg = TrainConfig(shards=(str(manifest),), size=32, num_workers=0, width=4, steps=1, batch=4, val_every=0,
                      ckpt_every=1, out=str(tmp_path / "run"), device="cpu", shuffle_buffer=4, val_samples=4,
                      precision="fp32", channels_last=False)
    train_mod.train(cfg)
    res = _run(["--ckpt", tmp_path / "run", "--dataset", f"shards:{tmp_path / 'shards'}", "--out", tmp_path / "R",
                "--device", "cpu", "--batch-size", 3])
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / "R" / "results.json").read_text())
    ds = results["datasets"]["shards:discs"]
    assert ds["n_images"] == 4 and ds["info"]["fingerprint"] == json.loads(manifest.read_text())["fingerprint"]
    assert results["sources"][0]["shardset"]["fingerprint"] == ds["info"]["fingerprint"]
    assert 0.0 <= ds["summary"]["iou"]["mean"] <= 1.0
    assert (tmp_path / "R" / "examples_shards_discs.png").is_file()


def test_16_bit_predictions_are_scaled_to_8_bits(tmp_path):
    data = _folder(tmp_path / "data", [(20, 30)])
    pred = tmp_path / "pred"
    pred.mkdir()
    gt = cv2.imread(str(data / "masks" / "im0.png"), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(pred / "im0.png"), gt.astype(np.uint16) * 257)  # 255 -> 65535
    results = evaluate(EvalConfig(datasets=(f"folder:{data}",), pred_dir=pred))
    assert results["datasets"]["data"]["summary"]["iou"]["mean"] == 1.0
    assert results["datasets"]["data"]["summary"]["mae"]["mean"] == 0.0


def test_unreadable_prediction_and_missing_cuda_are_one_line(tmp_path):
    data = _folder(tmp_path / "data", [(20, 30)])
    pred = tmp_path / "pred"
    pred.mkdir()
    (pred / "im0.png").write_bytes(b"not a png")
    _assert_one_line_error(_run(["--pred-dir", pred, "--dataset", f"folder:{data}"]), "'im0'", "not a readable PNG")
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    run = _tiny_ckpt(tmp_path / "run", seed=0)
    res = _run(["--ckpt", run, "--dataset", f"folder:{data}", "--device", "cuda"])
    _assert_one_line_error(res, "'cuda'", "--device cpu")


# --------------------------------------------------------------------------- protocols, --fg-prob


@pytest.mark.data
def test_sod_toolkit_numbers_equal_pysodmetrics_on_the_files(ecssd_dir, tmp_path):
    """eval-seg's sod-toolkit protocol against pysodmetrics' defaults fed the same PNG files (the
    toolkits' own inputs), on ECSSD maps that do not span [0, 1]."""
    from sod_reference import TOOLKIT_KEYS, pysodmetrics_defaults

    ids = sorted(p.stem for p in (ecssd_dir / "images").iterdir())[:12]
    pred = tmp_path / "pred"
    pred.mkdir()
    for i, name in enumerate(ids):
        gt = cv2.imread(str(ecssd_dir / "masks" / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
        p = cv2.GaussianBlur(gt.astype(np.float32), (0, 0), 3 + i) * (0.3 + 0.05 * i) + 10 * (i % 3)
        cv2.imwrite(str(pred / f"{name}.png"), np.clip(np.rint(p), 0, 255).astype(np.uint8))
    results = evaluate(EvalConfig(datasets=(f"folder:{ecssd_dir}",), pred_dir=pred, limit=len(ids)))
    got = results["datasets"]["ecssd"]["protocols"]["sod-toolkit"]["summary"]
    pairs = []
    for name in ids:
        v = cv2.imread(str(pred / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
        assert v.max() < 255  # the maps do not span [0, 1]
        pairs.append((v, cv2.imread(str(ecssd_dir / "masks" / f"{name}.png"), cv2.IMREAD_GRAYSCALE)))
    theirs = pysodmetrics_defaults(pairs)
    for k in TOOLKIT_KEYS:
        assert got[k]["mean"] == pytest.approx(theirs[k], abs=1e-9), k
    assert got["max_f"]["mean"] != results["datasets"]["ecssd"]["summary"]["max_f"]["mean"]


def test_fg_prob_rules_on_fixed_logits():
    torch = pytest.importorskip("torch")
    from segmodel.inference import foreground_probability

    ln3 = float(np.log(3.0))
    # pixels (l0, l1): (0, ln 3), (ln 3, 0), (-ln 3, ln 3)
    logits = torch.tensor([[[[0.0, ln3, -ln3]], [[ln3, 0.0, ln3]]]])
    # softmax: e^l1 / (e^l0 + e^l1) = 3/4, 1/4, 3 / (1/3 + 3) = 9/10
    np.testing.assert_allclose(foreground_probability(logits, "softmax").numpy(), [[[0.75, 0.25, 0.9]]], atol=1e-6)
    # sigmoid1: 1 / (1 + e^-l1) = 3/4, 1/2, 3/4 (l0 is ignored)
    np.testing.assert_allclose(foreground_probability(logits, "sigmoid1").numpy(), [[[0.75, 0.5, 0.75]]], atol=1e-6)
    from core.registry import UnknownNameError

    with pytest.raises(UnknownNameError, match="did you mean sigmoid1"):
        foreground_probability(logits, "sigmoid")


def test_fg_prob_sigmoid1_matches_the_pipeline_by_hand_and_is_recorded(tmp_path):
    run = _tiny_ckpt(tmp_path / "run", seed=0)
    data = _folder(tmp_path / "data", [(40, 60), (60, 40)])
    out = tmp_path / "R"
    res = _run(["--ckpt", run, "--dataset", f"folder:{data}", "--device", "cpu", "--fg-prob", "sigmoid1",
                "--out", out])
    assert res.exit_code == 0, res.output
    assert "foreground probability: sigmoid1" in res.output
    results = json.loads((out / "results.json").read_text())
    ref, soft = _by_hand(run, data, "sigmoid1"), _by_hand(run, data, "softmax")
    got = results["datasets"]["data"]["summary"]
    for k in ("max_f", "iou", "accuracy", "mae"):
        assert got[k]["mean"] == pytest.approx(ref[k], abs=1e-6), k
    assert abs(ref["mae"] - soft["mae"]) > 1e-3  # the two rules really differ on this model
    assert results["fg_prob"] == "sigmoid1" and results["sources"][0]["fg_prob"] == "sigmoid1"
    assert (out / "results.md").read_text().splitlines()[2].startswith("| run@7 | sigmoid1 |")


def test_fg_prob_with_pred_dir_or_unknown_is_refused(tmp_path):
    data = _folder(tmp_path / "data", [(8, 8)])
    _assert_one_line_error(_run(["--pred-dir", tmp_path, "--dataset", f"folder:{data}", "--fg-prob", "softmax"]),
                           "--fg-prob applies to --ckpt")
    res = _run(["--pred-dir", tmp_path, "--dataset", f"folder:{data}", "--fg-prob", "sigmoid"])
    assert res.exit_code == 2 and "sigmoid1" in res.output and "Traceback" not in res.output


# --------------------------------------------------------------------------- issue 18: boundaries


def _pred_dir_case(tmp_path):
    data = _folder(tmp_path / "data", [(20, 30), (30, 20)])
    pred = tmp_path / "pred"
    pred.mkdir()
    for i in range(2):
        shutil.copy(data / "masks" / f"im{i}.png", pred / f"im{i}.png")
    return ["--pred-dir", pred, "--dataset", f"folder:{data}"]


def _tree(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_out_under_a_file_is_one_line_before_scoring(tmp_path, monkeypatch):
    args = _pred_dir_case(tmp_path)
    (tmp_path / "afile").write_text("x")
    import evaluator.evaluation as evaluation

    monkeypatch.setattr(evaluation, "score", lambda *a, **k: pytest.fail("scored before checking --out"))
    res = _run(args + ["--out", tmp_path / "afile" / "sub"])
    _assert_one_line_error(res, "--out", "afile", "is a file")
    assert (tmp_path / "afile").read_text() == "x"


def test_out_in_a_read_only_folder_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    import errno

    import evaluator.report as report

    args = _pred_dir_case(tmp_path)
    out = tmp_path / "R"
    out.mkdir()
    (out / "results.md").write_text("| Method | old |\n|---|---|\n| x | 1 |\n")
    before = _tree(out)

    def read_only(path, data, **kw):  # root ignores chmod, so the mount's answer is injected
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(report, "atomic_write_bytes", read_only)
    res = _run(args + ["--out", out])
    _assert_one_line_error(res, "--out", "Read-only file system")
    assert _tree(out) == before  # no results.json, no pictures, results.md as it was


@pytest.mark.parametrize("fail_at", [1, 3, 4])  # a picture, results.md, results.json
def test_full_disk_keeps_the_previous_results_and_no_new_results_json(tmp_path, monkeypatch, fail_at):
    import errno

    import evaluator.report as report

    args = _pred_dir_case(tmp_path)
    out = tmp_path / "R"
    assert _run(args + ["--out", out, "--method", "first"]).exit_code == 0
    before = _tree(out)
    fresh = tmp_path / "fresh"
    real, calls = report.atomic_write_bytes, []

    def full_disk(path, data, **kw):
        calls.append(path)
        if len(calls) % 4 == fail_at % 4:  # pr_curve, examples, results.md, results.json
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, data, **kw)

    monkeypatch.setattr(report, "atomic_write_bytes", full_disk)
    res = _run(args + ["--out", out, "--method", "second"])
    _assert_one_line_error(res, "No space left on device", "no results.json")
    assert _tree(out) == before  # the first run's complete set, untouched; no staged leftovers
    res = _run(args + ["--out", fresh])
    _assert_one_line_error(res, "No space left on device")
    assert not fresh.exists()  # a folder this run created is removed again


def test_a_failed_rename_leaves_no_results_json(tmp_path, monkeypatch):
    import errno

    import evaluator.report as report

    args = _pred_dir_case(tmp_path)
    out = tmp_path / "R"
    assert _run(args + ["--out", out, "--method", "first"]).exit_code == 0
    md_before = (out / "results.md").read_text()
    real, n = report.os.replace, []

    def replace(a, b):
        n.append(b)
        if str(b).endswith("results.md"):  # the pictures are in place already
            raise OSError(errno.EIO, "Input/output error", str(b))
        real(a, b)

    monkeypatch.setattr(report.os, "replace", replace)
    _assert_one_line_error(_run(args + ["--out", out, "--method", "second"]), "Input/output error")
    assert not (out / "results.json").exists()  # the old one no longer describes the new pictures
    assert (out / "results.md").read_text() == md_before
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("name, data, kind", [
    ("model.pt", b"PK\x03\x04" + b"\0" * 40, "a zip archive"),
    ("weights.ckpt", b"\x80\x04\x95" + b"\0" * 20, "a Python pickle"),
    ("mask.png", None, "a PNG image"),
    ("notes.txt", b"hello\n", "a text file"),
    ("empty.bin", b"", "an empty file"),
])
def test_ckpt_that_is_not_a_checkpoint_says_what_it_is(tmp_path, name, data, kind):
    pytest.importorskip("torch")
    args = _pred_dir_case(tmp_path)[2:]
    path = tmp_path / name
    if data is None:
        cv2.imwrite(str(path), np.zeros((4, 4), np.uint8))
    else:
        path.write_bytes(data)
    res = _run(["--ckpt", path] + args)
    _assert_one_line_error(res, str(path), kind, "not a train-unet checkpoint", "step-*.safetensors")
    assert "not found" not in res.output


def test_no_carriage_return_progress_frames_when_stderr_is_not_a_terminal(tmp_path):
    res = _run(_pred_dir_case(tmp_path))
    assert res.exit_code == 0, res.output
    assert "\r" not in res.output and "img/s" not in res.output
