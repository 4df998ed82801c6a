"""segmodel.checkpoint and trainer.checkpoint (its resume state): round trips, the sidecar contract, and refusing unsafe or foreign files."""
from __future__ import annotations

import io
import json

import pytest
import torch
from safetensors.torch import save_file

from segmodel.checkpoint import CheckpointError, find_sidecar, load_for_inference
from segmodel.unet import UNet
from trainer.checkpoint import load_run_state, save_run_state

torch.set_num_threads(1)

META = {"shardset": {"name": "discs", "fingerprint": "ab" * 32}, "config": {"width": 4}}


def _model(width=4, seed=0):
    torch.manual_seed(seed)
    m = UNet(width=width)
    with torch.no_grad():  # non-default BN buffers, so the round trip checks them too
        m.inc.double_conv[1].running_mean.uniform_()
        m.inc.double_conv[1].num_batches_tracked.fill_(7)
    return m


@pytest.fixture
def run(tmp_path):
    model = _model()
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    opt.step()
    state = {"optimizer": opt.state_dict(), "rng": {"torch": torch.get_rng_state()}, "data": {"step": 3}}
    sidecar = save_run_state(tmp_path, 3, model, META, state)
    return tmp_path, model, sidecar, opt


def test_layout_and_sidecar_contract(run):
    out, model, sidecar, _ = run
    ck = out / "checkpoints"
    assert sidecar == ck / "step-000003.json"
    assert (ck / "step-000003.safetensors").is_file() and (ck / "step-000003.state.pt").is_file()
    meta = json.loads(sidecar.read_text())
    assert meta["format"] == "bgw-unet" and meta["step"] == 3
    assert meta["model"] == {"arch": "unet", "width": 4, "in_channels": 3, "n_classes": 2, "bilinear": True}
    assert meta["shardset"] == META["shardset"] and meta["config"] == META["config"]
    assert json.loads((ck / "last.json").read_text()) == {"step": 3, "sidecar": "step-000003.json"}
    assert not list(ck.glob("*.tmp")) and not list(ck.glob(".*"))


@pytest.mark.parametrize("which", ["run", "safetensors", "json"])
def test_load_for_inference_round_trips_weights_and_buffers(run, which):
    out, model, sidecar, _ = run
    path = {"run": out, "safetensors": sidecar.with_suffix(".safetensors"), "json": sidecar}[which]
    loaded, meta = load_for_inference(path)
    assert not loaded.training and meta["step"] == 3
    ref = model.state_dict()
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, ref[k]), k
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


def test_training_state_round_trips_with_weights_only(run):
    out, _, _, opt = run
    _, _, state = load_run_state(out, with_state=True)
    assert state["data"] == {"step": 3}
    ref = opt.state_dict()["state"]
    for k, v in state["optimizer"]["state"].items():
        assert torch.equal(v["exp_avg"], ref[k]["exp_avg"])


def test_latest_checkpoint_wins(run):
    out, _, _, _ = run
    save_run_state(out, 9, _model(seed=1), META)
    _, meta = load_for_inference(out)
    assert meta["step"] == 9
    assert find_sidecar(out).name == "step-000009.json"


def test_only_the_newest_resume_state_is_kept(run):
    out, _, _, _ = run
    save_run_state(out, 5, _model(seed=1), META, {"data": {"step": 5}})
    ck = out / "checkpoints"
    assert sorted(p.name for p in ck.glob("*.state.pt")) == ["step-000005.state.pt"]
    old = json.loads((ck / "step-000003.json").read_text())
    assert "state" not in old["files"] and "weights" in old["files"]
    model, meta = load_for_inference(ck / "step-000003.safetensors")  # old weights still load
    assert meta["step"] == 3
    with pytest.raises(CheckpointError, match="no training state"):
        load_run_state(ck / "step-000003.safetensors", with_state=True)
    assert load_run_state(out, with_state=True)[2]["data"] == {"step": 5}


def test_tampered_weights_refused(run):
    out, _, sidecar, _ = run
    w = sidecar.with_suffix(".safetensors")
    blob = bytearray(w.read_bytes())
    blob[-1] ^= 1
    w.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="does not match the sha256") as e:
        load_for_inference(out)
    assert "\n" not in str(e.value)


def test_tampered_state_refused(run):
    out, _, sidecar, _ = run
    st = sidecar.parent / "step-000003.state.pt"
    st.write_bytes(st.read_bytes() + b"x")
    load_for_inference(out)  # weights alone are still fine
    with pytest.raises(CheckpointError, match="sha256"):
        load_run_state(out, with_state=True)


def test_pickled_state_never_executed(tmp_path):
    # a state file holding an arbitrary object (with a matching sha256): weights_only refuses it
    import hashlib

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    save_run_state(tmp_path, 1, _model(), META, {"x": 1})
    st = tmp_path / "checkpoints" / "step-000001.state.pt"
    buf = io.BytesIO()
    torch.save({"x": Evil()}, buf)
    st.write_bytes(buf.getvalue())
    sc = tmp_path / "checkpoints" / "step-000001.json"
    meta = json.loads(sc.read_text())
    meta["files"]["state"]["sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
    sc.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="refusing to unpickle") as e:
        load_run_state(tmp_path, with_state=True)
    assert "\n" not in str(e.value)


def test_other_architecture_in_sidecar_refused(run):
    out, _, sidecar, _ = run
    meta = json.loads(sidecar.read_text())
    meta["model"]["arch"] = "resnet50"
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="architecture 'resnet50', not 'unet'"):
        load_for_inference(out)


def test_weights_of_another_architecture_refused(run):
    # a sidecar that claims width 4 over a file holding width-8 tensors (sha256 updated to match)
    import hashlib

    out, _, sidecar, _ = run
    w = sidecar.with_suffix(".safetensors")
    save_file({k: v.contiguous() for k, v in UNet(width=8).state_dict().items()}, str(w))
    meta = json.loads(sidecar.read_text())
    meta["files"]["weights"]["sha256"] = hashlib.sha256(w.read_bytes()).hexdigest()
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="another architecture") as e:
        load_for_inference(w)
    assert "\n" not in str(e.value)


def test_foreign_safetensors_refused(tmp_path):
    w = tmp_path / "model.safetensors"
    save_file({"fc.weight": torch.zeros(2, 2)}, str(w))
    with pytest.raises(CheckpointError, match="no sidecar"):
        load_for_inference(w)
    (tmp_path / "model.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="not a bgw-unet checkpoint"):
        load_for_inference(w)


def test_missing_checkpoint_messages(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        load_for_inference(tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        load_for_inference(tmp_path / "nope.pt")


def test_save_refuses_wrapped_models(tmp_path):
    with pytest.raises(TypeError, match="unwrapped UNet"):
        save_run_state(tmp_path, 1, torch.nn.Sequential(UNet(width=4)), META)


def test_the_same_weights_give_the_same_bytes_in_another_process(tmp_path):
    """A checkpoint's sha256 is reproducible: safetensors orders its metadata by a per-process
    hash, so the file carries a single metadata entry."""
    import hashlib
    import subprocess
    import sys

    code = ("import sys, torch\n"
            "from segmodel.checkpoint import save_checkpoint\n"
            "from segmodel.unet import UNet\n"
            "torch.manual_seed(0)\n"
            "save_checkpoint(sys.argv[1], 7, UNet(width=2), {})\n")
    digests = set()
    for i in range(8):  # with two entries, eight processes would show both orders with probability 127/128
        subprocess.run([sys.executable, "-c", code, str(tmp_path / str(i))], check=True)
        digests.add(hashlib.sha256((tmp_path / str(i) / "checkpoints" / "step-000007.safetensors").read_bytes()).hexdigest())
    assert len(digests) == 1


def _fake_checkpoint(folder, step, val_iou):
    import json as _json

    stem = f"step-{step:06d}"
    (folder / f"{stem}.safetensors").write_bytes(b"w")
    files = {"weights": {"name": f"{stem}.safetensors", "sha256": "x"}}
    if step == 500:
        (folder / f"{stem}.state.pt").write_bytes(b"s")
        files["state"] = {"name": f"{stem}.state.pt", "sha256": "y"}
    meta = {"step": step, "files": files, "val": {} if val_iou is None else {"val_iou": val_iou}}
    (folder / f"{stem}.json").write_text(_json.dumps(meta))


def test_prune_keeps_the_newest_and_the_best(tmp_path):
    from trainer.checkpoint import prune_checkpoints

    for step, iou in ((100, 0.5), (200, 0.9), (300, None), (400, 0.7), (500, 0.6)):
        _fake_checkpoint(tmp_path, step, iou)
    deleted = prune_checkpoints(tmp_path, keep=1)
    assert deleted == ["step-000100.json", "step-000300.json", "step-000400.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step-000200.json", "step-000200.safetensors",  # the best by validation IoU
        "step-000500.json", "step-000500.safetensors", "step-000500.state.pt"]  # the newest, with its state
    assert prune_checkpoints(tmp_path, keep=2) == []


def test_training_keeps_the_last_and_the_best_checkpoint(tmp_path):
    from shardset.synthetic import write_synthetic_set
    from trainer.config import TrainConfig
    from trainer.train import train

    write_synthetic_set(tmp_path / "set", shards=3, shard_size=8, size=32, val_shards=1)
    shards = str(tmp_path / "set" / "synth.json")
    train(TrainConfig(shards=(shards,), out=str(tmp_path / "run"), size=32, width=4, batch=4, steps=6, ckpt_every=2,
                      val_every=2, val_samples=4, num_workers=0, device="cpu", keep_checkpoints=1))
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*.json"))
    assert 1 <= len(names) <= 2 and "step-000006.json" in names
    every = train(TrainConfig(shards=(shards,), out=str(tmp_path / "all"), size=32, width=4, batch=4, steps=6,
                              ckpt_every=2, val_every=2, val_samples=4, num_workers=0, device="cpu",
                              keep_checkpoints=0))
    assert every and len(list((tmp_path / "all" / "checkpoints").glob("step-*.json"))) == 3
