"""A model is applied at the size it learnt: a checkpoint records its training size (older ones fall
back to their config's size, else 128), an exported file carries it in its metadata, and segment
(--ckpt and --model), eval-seg --ckpt and the trainer's benchmark validation feed the model at it
unless --input-size says otherwise. The sizes asserted are the ones that reach the model (a spy on
the backends), and the outputs are compared byte for byte with an explicit --input-size run."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from segmenter_fixtures import one_line_error, write_images

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from segmodel.checkpoint import CheckpointError, input_size_of, read_sidecar, save_checkpoint  # noqa: E402
from segmodel.runtime import OnnxBackend, TorchBackend, feed_size, parse_input_size  # noqa: E402
from segmodel.unet import UNet  # noqa: E402


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models on a shared 2-core box: one intra-op thread avoids oversubscription."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _ckpt(run: Path, meta: dict, seed: int = 0) -> Path:
    """A width-4 U-Net with non-trivial BatchNorm statistics, saved with `meta` in its sidecar."""
    torch.manual_seed(seed)
    model = UNet(width=4)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    save_checkpoint(run, 1, model, {"shardset": {"name": "t", "fingerprint": "0" * 64}, **meta})
    return run


def _spy(monkeypatch, cls) -> list[tuple[int, ...]]:
    """The shapes of the batches that reach `cls`'s model, in order."""
    seen: list[tuple[int, ...]] = []
    real = cls.probabilities

    def probabilities(self, batch):
        seen.append(tuple(batch.shape))
        return real(self, batch)

    monkeypatch.setattr(cls, "probabilities", probabilities)
    return seen


def _segment(args):
    from segmenter.cli import main

    res = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in res.output, res.output
    return res


def _maps(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def _fed(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.startswith("feeding the model")]


def _folder_set(root: Path) -> Path:
    """folder:ROOT, images/ + masks/ of discs of three shapes."""
    paths = write_images(root / "images", [(90, 120), (130, 70), (80, 80)], seed=2)
    (root / "masks").mkdir()
    for p in paths:
        img = cv2.imread(str(p))
        cv2.imwrite(str(root / "masks" / p.name), np.where(img[..., 0] > 150, 255, 0).astype(np.uint8))
    return root


# --------------------------------------------------------------------------- the record


def test_the_sidecar_records_the_size_and_older_ones_fall_back(tmp_path):
    recorded = _ckpt(tmp_path / "a", {"input_size": 64, "config": {"size": 96}})
    old = _ckpt(tmp_path / "b", {"config": {"size": 64}})  # written before input_size was recorded
    older = _ckpt(tmp_path / "c", {"config": {"seed": 0}})  # no size at all
    side = lambda run: read_sidecar(next((run / "checkpoints").glob("step-*.json")))  # noqa: E731
    assert side(recorded)["input_size"] == 64
    assert input_size_of(side(recorded)) == (64, "recorded")
    assert input_size_of(side(old)) == (64, "config")
    assert input_size_of(side(older)) == (128, "default")
    assert (TorchBackend(old, "cpu").input_size, TorchBackend(older, "cpu").input_size) == (64, 128)
    sidecar = next((older / "checkpoints").glob("step-*.json"))
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "input_size": "big"}))
    with pytest.raises(CheckpointError, match="input_size 'big' is not a size in pixels"):
        read_sidecar(sidecar)
    with pytest.raises(ValueError, match="input_size"):
        _ckpt(tmp_path / "d", {"input_size": 0})


def test_a_train_unet_checkpoint_records_its_training_size(tmp_path):
    pytest.importorskip("webdataset")
    from trainer import toy
    from trainer.config import TrainConfig
    from trainer.train import train

    manifest = toy.write_disc_set(tmp_path / "shards", n_train=8, n_val=4, size=32, shard_size=4)
    train(TrainConfig(shards=(str(manifest),), size=32, num_workers=0, width=4, steps=1, batch=4, val_every=0,
                      ckpt_every=1, out=str(tmp_path / "run"), device="cpu", shuffle_buffer=4, val_samples=4,
                      precision="fp32", channels_last=False))
    sidecar = read_sidecar(next((tmp_path / "run" / "checkpoints").glob("step-*.json")))
    assert sidecar["input_size"] == 32 and input_size_of(sidecar) == (32, "recorded")


def test_the_feeding_line_says_at_what_size_and_why():
    assert feed_size(64, "recorded", None) == (
        64, "feeding the model at 64 px, its training size (--input-size 128 for the paper's sizing)")
    assert feed_size(128, "config", None) == (128, "feeding the model at 128 px, its training size and the paper's")
    assert feed_size(128, "default", None)[1].startswith("feeding the model at 128 px, the paper's size: the model "
                                                         "records no training size")
    assert feed_size(64, "recorded", 128) == (
        128, "feeding the model at 128 px (--input-size 128); it was trained at 64 px (--input-size native feeds it "
             "at that)")
    assert feed_size(64, "recorded", 64)[1] == "feeding the model at 64 px (--input-size 64), its training size"
    assert [parse_input_size(v) for v in ("native", None, "64", 96, " NATIVE ")] == [None, None, 64, 96, None]
    for bad in ("0", "8", "64px", "1e9", "-16", True):
        with pytest.raises(Exception, match="--input-size"):
            parse_input_size(bad)


# --------------------------------------------------------------------------- segment --ckpt


@pytest.mark.parametrize("protocol", ["short", "crop"])
def test_segment_feeds_a_64_px_checkpoint_at_64_by_default(tmp_path, monkeypatch, protocol):
    run = _ckpt(tmp_path / "run", {"input_size": 64, "config": {"size": 64}})
    write_images(tmp_path / "in", [(90, 120), (130, 70), (200, 200)])
    seen = _spy(monkeypatch, TorchBackend)
    sizes, maps, lines = {}, {}, {}
    for name, asked in (("native", []), ("64", ["--input-size", 64]), ("128", ["--input-size", 128])):
        seen.clear()
        res = _segment(["--ckpt", run, tmp_path / "in", "--out", tmp_path / name, "--threshold", "none",
                        "--device", "cpu", "--protocol", protocol, "--batch-size", 1, *asked])
        assert res.exit_code == 0, res.output
        sizes[name] = sorted(shape[1:3] for shape in seen)
        maps[name] = _maps(tmp_path / name)
        lines[name] = _fed(res.output)
        record = json.loads((tmp_path / name / "segment.json").read_text())
        assert (record["protocol"], record["input_size"]) == (f"{protocol}{name.replace('native', '64')}",
                                                              int(name.replace("native", "64")))
    if protocol == "short":  # short side at S, the aspect kept
        assert sizes["native"] == sizes["64"] == [(64, 64), (64, 85), (119, 64)]
        assert sizes["128"] == [(128, 128), (128, 171), (238, 128)]
    else:  # the centre square at S x S
        assert sizes["native"] == sizes["64"] == [(64, 64)] * 3
        assert sizes["128"] == [(128, 128)] * 3
    assert maps["native"] == maps["64"] and len(maps["native"]) == 3
    assert all(maps["native"][k] != maps["128"][k] for k in maps["native"])
    assert lines["native"] == ["feeding the model at 64 px, its training size (--input-size 128 for the paper's sizing)"]
    assert lines["128"] == ["feeding the model at 128 px (--input-size 128); it was trained at 64 px "
                            "(--input-size native feeds it at that)"]


@pytest.mark.parametrize("meta, size, why", [
    ({"config": {"size": 64}}, 64, "its training size"),  # an older sidecar: its config's size
    ({}, 128, "the paper's size: the model records no training size"),  # nothing recorded: the paper's
])
def test_segment_feeds_an_older_checkpoint_at_its_fallback_size(tmp_path, monkeypatch, meta, size, why):
    run = _ckpt(tmp_path / "run", meta)
    write_images(tmp_path / "in", [(90, 120)])
    seen = _spy(monkeypatch, TorchBackend)
    res = _segment(["--ckpt", run, tmp_path / "in", "--out", tmp_path / "out", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert [min(s[1:3]) for s in seen] == [size]
    (line,) = _fed(res.output)
    assert line.startswith(f"feeding the model at {size} px, {why}")


def test_segment_refuses_bad_sizes_and_the_old_protocol_names_in_one_line(tmp_path):
    run = _ckpt(tmp_path / "run", {"input_size": 64})
    write_images(tmp_path / "in", [(40, 50)])
    base = ["--ckpt", run, tmp_path / "in", "--out", tmp_path / "out", "--device", "cpu"]
    one_line_error(_segment(base + ["--input-size", "8"]), "--input-size '8'", "16", "native")
    one_line_error(_segment(base + ["--protocol", "short128"]), "--protocol short --input-size 128")
    one_line_error(_segment(base + ["--protocol", "middle"]), "unknown --protocol 'middle'", "crop, short")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- eval-seg --ckpt


def _eval(args):
    from evaluator.cli import main

    res = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in res.output, res.output
    return res


def test_eval_seg_feeds_a_64_px_checkpoint_at_64_and_records_it(tmp_path, monkeypatch):
    run = _ckpt(tmp_path / "run", {"input_size": 64})
    data = _folder_set(tmp_path / "set")
    seen = _spy(monkeypatch, TorchBackend)
    results, sizes = {}, {}
    for name, asked in (("native", []), ("64", ["--input-size", 64]), ("128", ["--input-size", 128])):
        seen.clear()
        res = _eval(["--ckpt", run, "--dataset", f"folder:{data}", "--out", tmp_path / name, "--device", "cpu",
                     "--batch-size", 1, *asked])
        assert res.exit_code == 0, res.output
        sizes[name] = sorted(min(shape[1:3]) for shape in seen)
        results[name] = json.loads((tmp_path / name / "results.json").read_text())
        if name == "native":
            assert _fed(res.output) == ["feeding the model at 64 px, its training size (--input-size 128 for the "
                                        "paper's sizing)"]
            assert "short64" in res.output  # the terminal table's input column
    assert sizes["native"][:3] == sizes["64"][:3] == [64, 64, 64] and sizes["128"][:3] == [128, 128, 128]
    ds = {name: r["datasets"]["set"] for name, r in results.items()}
    assert (ds["native"]["protocol"], ds["native"]["input_size"]) == ("short64", 64)
    assert (ds["128"]["protocol"], ds["128"]["input_size"]) == ("short128", 128)
    assert results["native"]["feeding"].startswith("feeding the model at 64 px")
    assert ds["native"]["protocols"] == ds["64"]["protocols"]
    assert ds["native"]["protocols"]["paper"]["summary"] != ds["128"]["protocols"]["paper"]["summary"]
    # results.md rows of the two sizes do not read alike; the paper's size keeps the plain name
    assert "(input 64 px)" in (tmp_path / "native" / "results.md").read_text()
    assert "(input" not in (tmp_path / "128" / "results.md").read_text()


def test_eval_seg_mixed_training_sizes_need_one_input_size(tmp_path, monkeypatch):
    a = _ckpt(tmp_path / "a", {"input_size": 64})
    b = _ckpt(tmp_path / "b", {"input_size": 128}, seed=1)
    data = _folder_set(tmp_path / "set")
    base = ["--ckpt", a, "--ckpt", b, "--dataset", f"folder:{data}", "--device", "cpu"]
    one_line_error(_eval(base + ["--out", tmp_path / "R"]), "trained at different sizes (64 px, 128 px)",
                   "--input-size N")
    assert not (tmp_path / "R").exists()
    seen = _spy(monkeypatch, TorchBackend)
    res = _eval(base + ["--out", tmp_path / "R", "--input-size", 96, "--batch-size", 1])
    assert res.exit_code == 0, res.output
    assert {min(s[1:3]) for s in seen} == {96}
    assert _fed(res.output) == ["feeding the models at 96 px (--input-size 96); they were trained at 64 px, 128 px"]


def test_eval_seg_input_size_is_refused_with_pred_dir_and_when_malformed(tmp_path):
    data = _folder_set(tmp_path / "set")
    one_line_error(_eval(["--pred-dir", data / "masks", "--dataset", f"folder:{data}", "--out", tmp_path / "R",
                          "--input-size", 64]), "--input-size applies to --ckpt")
    run = _ckpt(tmp_path / "run", {"input_size": 64})
    one_line_error(_eval(["--ckpt", run, "--dataset", f"folder:{data}", "--out", tmp_path / "R",
                          "--input-size", "huge"]), "--input-size 'huge'")


def test_trainer_benchmark_validation_feeds_the_training_size_as_eval_seg(tmp_path):
    from evaluator.cli import EvalConfig, evaluate
    from trainer.validate import validate_real

    run = _ckpt(tmp_path / "run", {"input_size": 64})
    model = TorchBackend(run, "cpu").model
    spec = f"folder:{_folder_set(tmp_path / 'set')}"
    ref = evaluate(EvalConfig(datasets=(spec,), ckpts=(run,), device="cpu", batch_size=1, figures=False))
    assert ref["datasets"]["set"]["input_size"] == 64

    def no_autocast():
        return torch.autocast("cpu", enabled=False)

    ours = validate_real(model, spec, None, torch.device("cpu"), no_autocast, input_size=64)
    paper = validate_real(model, spec, None, torch.device("cpu"), no_autocast)
    assert (ours["input_size"], paper["input_size"]) == (64, 128)
    summary = ref["datasets"]["set"]["protocols"]["paper"]["summary"]
    for k in ("max_f", "iou", "accuracy"):
        assert ours[k] == pytest.approx(summary[k]["mean"], abs=1e-9), k
    assert any(paper[k] != ours[k] for k in ("max_f", "iou", "accuracy"))


# --------------------------------------------------------------------------- the exported file


@pytest.fixture(scope="module")
def exported64(tmp_path_factory):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from segmenter.cli import export_main

    root = tmp_path_factory.mktemp("export64")
    run = _ckpt(root / "run", {"input_size": 64, "config": {"size": 64, "width": 4}})
    res = CliRunner().invoke(export_main, ["--ckpt", str(run), "--out", str(root / "m.onnx")])
    assert res.exit_code == 0, res.output
    return run, root / "m.onnx"


def test_the_onnx_metadata_and_card_carry_the_training_size(exported64):
    import onnx

    _, model = exported64
    meta = {p.key: p.value for p in onnx.load(str(model)).metadata_props}
    assert meta["bgw.input_size"] == "64" and meta["bgw.protocol"] == "short64"
    assert json.loads(meta["bgw.provenance"])["input_size"] == 64
    card = (model.parent / "MODEL.md").read_text()
    assert "Input size: 64 px" in card and "`short64` (resize the image so its short side is 64" in card
    assert OnnxBackend(model, "cpu").input_size == 64


def test_export_takes_the_kind_of_sizing_and_says_so_for_an_old_name(tmp_path):
    from segmenter.cli import export_main

    run = _ckpt(tmp_path / "run", {"input_size": 64})
    res = CliRunner().invoke(export_main, ["--ckpt", str(run), "--out", str(tmp_path / "m.onnx"), "--protocol",
                                           "crop128"])
    one_line_error(res, "--protocol 'crop128' is not a sizing", "give --protocol crop")
    assert not (tmp_path / "m.onnx").exists()


def test_segment_model_feeds_the_files_training_size(exported64, tmp_path, monkeypatch):
    run, model = exported64
    write_images(tmp_path / "in", [(90, 120), (130, 70)])
    seen = _spy(monkeypatch, OnnxBackend)
    maps = {}
    for name, args in (("native", ["--model", model]), ("64", ["--model", model, "--input-size", 64]),
                       ("128", ["--model", model, "--input-size", 128]), ("ckpt", ["--ckpt", run])):
        seen.clear()
        res = _segment([*args, tmp_path / "in", "--out", tmp_path / name, "--threshold", "none", "--device", "cpu",
                        "--batch-size", 1])
        assert res.exit_code == 0, res.output
        if name != "ckpt":
            assert sorted(min(s[1:3]) for s in seen) == [int(name.replace("native", "64"))] * 2
        maps[name] = _maps(tmp_path / name)
    assert maps["native"] == maps["64"]
    assert all(maps["native"][k] != maps["128"][k] for k in maps["native"])
    for k in maps["native"]:  # the checkpoint fed at its size: 8-bit levels apart by the parity's rounding
        a, b = (cv2.imdecode(np.frombuffer(maps[n][k], np.uint8), cv2.IMREAD_UNCHANGED) for n in ("native", "ckpt"))
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_an_older_onnx_file_falls_back_to_its_provenance_then_128(exported64, tmp_path):
    import onnx

    _, path = exported64
    model = onnx.load(str(path))
    keep = [(p.key, p.value) for p in model.metadata_props if p.key != "bgw.input_size"]

    def write(name: str, entries) -> Path:
        del model.metadata_props[:]
        for k, v in entries:
            entry = model.metadata_props.add()
            entry.key, entry.value = k, v
        onnx.save(model, str(tmp_path / name))
        return tmp_path / name

    old = OnnxBackend(write("old.onnx", keep), "cpu")
    assert (old.input_size, old.input_size_from) == (64, "config")  # bgw.provenance's training size
    older = OnnxBackend(write("older.onnx", [(k, v) for k, v in keep if k != "bgw.provenance"]), "cpu")
    assert (older.input_size, older.input_size_from) == (128, "default")


# --------------------------------------------------------------------------- the paper's recipes


def test_the_papers_recipes_ask_for_128_and_the_dcgan_one_feeds_native():
    """The paper's tables keep the paper's protocol exactly; a CPU-sized model trained at 64 px
    (extra-dcgan-faces) is scored at the size it learnt."""
    from experiments.recipe import PAPER_TABLES, list_recipes, load_recipe
    from experiments.runner import stage_args

    paper = [n for n in list_recipes() if load_recipe(n).table in PAPER_TABLES]
    assert len(paper) >= 17
    for name in paper:
        for tiny in (False, True):
            assert load_recipe(name, tiny=tiny).stage("evaluate").get("input_size") == 128, (name, tiny)
    assert stage_args("evaluate", {"input_size": 128}) == ["--input-size", "128"]
    dcgan = load_recipe("extra-dcgan-faces")
    assert dcgan.stage("train")["size"] == 64 and "input_size" not in dcgan.stage("evaluate")
