"""Issue 27, point 8: one rule for a manifest's counts, applied by every tool alike.

verify, export (both forms), import and the trainer's shard resolution refuse the same manifests
with the same one line (`shardset.check_counts`); a count that passes the rule but is not the
shard's is refused by every reader once it has read the shard to its end; an incomplete set says
how many shards were planned; --plain-tar refuses a sample without an image as verify does; a full
disk under train-unet names the file."""
from __future__ import annotations

import copy
import errno
import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import shardset
from shardset import ManifestError, ShardError, ShardSetWriter, check_counts, verify_set
from shardset.cli import cli
from shardset.export import export_plain_tar, export_set
from shardset.manifest import manifest_fingerprint
from shardset.synthetic import make_samples, write_synthetic_set
from shardset.writer import build_tar, compress


@pytest.fixture
def shard_set(tmp_path) -> Path:
    """Two shards of two samples: s-000000 train, s-000001 val."""
    write_synthetic_set(tmp_path / "set", "s", shards=2, shard_size=2, val_shards=1)
    return tmp_path / "set" / "s.json"


def _rewrite(path: Path, edit) -> dict:
    """Edit a manifest, then make every sum and the fingerprint agree, as a careful forger would."""
    m = json.loads(path.read_text())
    edit(m)
    m["totals"].update(samples=sum(r["samples"] for r in m["shards"]), bytes=sum(r["bytes"] for r in m["shards"]),
                       drawn=sum(r["drawn"] for r in m["shards"]))
    for split in ("train", "val"):
        m["splits"][split]["samples"] = sum(r["samples"] for r in m["shards"] if r["split"] == split)
    m["fingerprint"] = manifest_fingerprint(m)
    path.write_text(json.dumps(m))
    return m


def _claim(samples: int, drawn: int | None = None):
    def edit(m):
        m["shards"][0]["samples"] = samples
        m["shards"][0]["drawn"] = samples if drawn is None else drawn
    return edit


def _cli_error(args) -> str:
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in res.output, res.output
    return errors[0]


def test_a_count_past_the_rule_is_refused_by_every_tool_alike(shard_set, tmp_path):
    """10^15 samples in a two-sample shard: verify, both exports and the trainer give one line."""
    from shardset.select import SelectionError, select_shards

    _rewrite(shard_set, _claim(10**15))
    rule = "shards[0] (s-000000.tar.zst) claims 1000000000000000 samples, over the set's shard_size 2"
    for args in (["verify", str(shard_set)], ["export", str(shard_set), "--out", str(tmp_path / "x")],
                 ["export", str(shard_set), "--plain-tar", "--out", str(tmp_path / "p")]):
        assert rule in _cli_error(args)
    assert not (tmp_path / "x").exists() and not (tmp_path / "p").exists()
    with pytest.raises(SelectionError, match=re.escape(rule)) as err:
        select_shards([str(shard_set)])
    assert "\n" not in str(err.value)


def _pairs(tmp_path: Path, n: int) -> tuple[Path, Path]:
    """A folder pair of `n` 16x16 images and masks for `shardset import`."""
    import cv2

    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for i in range(n):
        cv2.imwrite(str(images / f"{i}.png"), np.full((16, 16, 3), 40 * i, np.uint8))
        cv2.imwrite(str(masks / f"{i}.png"), np.full((16, 16), 255, np.uint8))
    return images, masks


def test_a_writer_refuses_a_record_past_the_rule(tmp_path):
    """An import resumed on a set whose shard record was edited stops at the same rule."""
    from shardset.importer import import_folder

    images, masks = _pairs(tmp_path, 3)
    import_folder(images, masks, tmp_path / "out", "imp", size=16, shard_size=2, val_fraction=0.0)
    record = tmp_path / "out" / ".imp.records" / "000000.json"
    rec = json.loads(record.read_text())
    record.write_text(json.dumps({**rec, "samples": 10**15, "drawn": 10**15}))
    with pytest.raises(ManifestError, match=r"imp.json: shards\[0\] \(imp-000000.tar.zst\) claims 10+ samples"):
        import_folder(images, masks, tmp_path / "out", "imp", size=16, shard_size=2, val_fraction=0.0,
                      mode="resume")


@pytest.mark.parametrize("edit, match", [
    (_claim(3), r"claims 3 samples, over the set's shard_size 2"),
    (_claim(2, drawn=1), r"keeps 2 samples of 1 drawn"),
    (_claim(True), r"shards\[0\].samples True is not a count"),
    (lambda m: m["shards"][0].update(bytes=-5), r"shards\[0\].bytes -5 is not a count"),
    (lambda m: m["shards"][0].update(rejected={"size": -1}), r"rejected is not a table of counts"),
    (lambda m: m.update(shard_size=2**21), r"shard_size 2097152 is not a whole number in 1..1048576"),
    (lambda m: m["totals"].update(rejected={}), r"totals.rejected is \{\}, the shard list sums to"),
    (lambda m: m["splits"]["val"].update(shards=[0]), r"splits.val does not match the shard list"),
    (lambda m: m.update(planned={"shards": 1}), r"shard 1 is listed, past the 1 planned"),
    (lambda m: m.update(planned={"shards": 2, "samples": 3}), r"planned.samples 3 is not a count of at least the 4"),
    (lambda m: (m.update(planned={"shards": 3})), r"complete is true with 2 of 3 planned shards"),
])
def test_the_count_rule(shard_set, edit, match):
    m = json.loads(shard_set.read_text())
    check_counts(m)  # what the writer made passes
    bad = copy.deepcopy(m)
    edit(bad)
    if "totals" not in match and "splits" not in match:  # keep the sums right: the rule itself must catch it
        bad["totals"].update(samples=sum(r["samples"] for r in bad["shards"]),
                             bytes=sum(r["bytes"] for r in bad["shards"]),
                             drawn=sum(r["drawn"] for r in bad["shards"]))
        for split in ("train", "val"):
            bad["splits"][split]["samples"] = sum(r["samples"] for r in bad["shards"] if r["split"] == split)
    with pytest.raises(ManifestError, match=match) as err:
        check_counts(bad, "s.json")
    assert str(err.value).startswith("s.json: ") and "\n" not in str(err.value)


def test_a_count_within_the_rule_but_not_the_shards_is_refused_once_read(shard_set, tmp_path):
    """The record says 1 where the shard holds 2: legal on its face, so every reader given the
    record refuses it when it reaches the shard's end (after its sha256 matched)."""
    from trainer.data import DataError, read_shard_raw

    m = _rewrite(shard_set, _claim(1, drawn=2))
    url = str(shard_set.parent / "s-000000.tar.zst")
    said = "holds 2 samples, its manifest record says 1"
    report = verify_set(str(shard_set))
    assert not report.ok and said in report.bad[0].reason
    assert said in _cli_error(["export", str(shard_set), "--out", str(tmp_path / "x")])
    assert said in _cli_error(["export", str(shard_set), "--plain-tar", "--out", str(tmp_path / "p")])
    assert not (tmp_path / "x").exists() and not (tmp_path / "p").exists()
    with pytest.raises(DataError, match=f"corrupt shard {re.escape(url)}: {said}"):
        list(read_shard_raw(url, expect=m["shards"][0]))
    with pytest.raises(ShardError, match=said):
        list(shardset.iter_samples(url, expect=m["shards"][0]))
    # without a record nothing is claimed, so nothing is refused
    assert len(list(shardset.iter_samples(url))) == 2


def _write_shards(folder: Path, planned: dict | None, done: int, shards_total: int = 5) -> Path:
    with ShardSetWriter(folder, "run", shard_size=2, params={}, seed=0, planned=planned) as w:
        for k in range(done):  # then the writer stops, as a killed gen-synth would
            w.write_shard(k, make_samples(2, seed=k))
    return folder / "run.json"


def test_an_unfinished_set_says_how_many_shards_were_planned(tmp_path):
    from shardset.select import SelectionError, select_shards

    manifest = _write_shards(tmp_path / "a", {"shards": 5}, done=2)
    m = shardset.load_manifest(manifest)
    assert m["planned"] == {"shards": 5} and not m["complete"]
    assert verify_set(str(manifest)).problems == [
        "incomplete: the manifest says complete: false, 2 of 5 planned shards written; its writer stopped early or "
        "is still running"]
    with pytest.raises(SelectionError, match=r"complete: false, 2 of 5 planned shards written\); finish it"):
        select_shards([str(manifest)])
    # a writer that never said its plan: no "?" for the planned count
    manifest = _write_shards(tmp_path / "b", None, done=2)
    problems = verify_set(str(manifest)).problems
    assert problems and "?" not in problems[0] and "2 shards written; its writer recorded no plan" in problems[0]
    # resumed by a writer that says it, the set gains its plan; finishing it completes it
    with ShardSetWriter(tmp_path / "b", "run", shard_size=2, params={}, seed=0, mode="resume",
                        planned={"shards": 3}) as w:
        assert shardset.load_manifest(manifest)["planned"] == {"shards": 3}
        w.write_shard(2, make_samples(2, seed=2))
        assert w.finalize()["complete"]


def test_an_interrupted_import_records_its_plan(tmp_path, monkeypatch):
    from shardset import importer

    images, masks = _pairs(tmp_path, 5)
    real = importer._import_shard

    def stop_after_first(index, split, idx):
        if index > 0:
            raise KeyboardInterrupt
        return real(index, split, idx)

    monkeypatch.setattr(importer, "_import_shard", stop_after_first)
    with pytest.raises(KeyboardInterrupt):
        importer.import_folder(images, masks, tmp_path / "out", "imp", size=16, shard_size=2, val_fraction=0.0)
    m = shardset.load_manifest(tmp_path / "out" / "imp.json")
    assert m["planned"] == {"shards": 3, "pairs": 5} and len(m["shards"]) == 1 and not m["complete"]


def test_plain_tar_refuses_a_sample_without_an_image_as_verify_does(shard_set, tmp_path):
    """The shard matches its (re-hashed) record, but one sample has a mask and no image."""
    folder = shard_set.parent
    shard = folder / "s-000000.tar.zst"
    members = {}
    for i, sample in enumerate(make_samples(2, seed=9)):
        key = f"s-000000-{i:06d}"
        encoded = shardset.encode_sample(sample, "npy")
        if i == 1:
            encoded.pop("image.npy")
        members.update({f"{key}.{field}": data for field, data in encoded.items()})
    shard.write_bytes(compress(build_tar(members)))

    def rehash(m):
        m["shards"][0].update(bytes=shard.stat().st_size, sha256=hashlib.sha256(shard.read_bytes()).hexdigest())
    _rewrite(shard_set, rehash)
    why = "sample 's-000000-000001': needs exactly one image member, found 0"
    report = verify_set(str(shard_set))
    assert not report.ok and why in report.bad[0].reason
    with pytest.raises(ShardError, match=re.escape(why)):
        export_plain_tar(str(shard_set), tmp_path / "plain")
    assert not (tmp_path / "plain").exists()
    with pytest.raises(ShardError, match=re.escape(why)):
        export_set(str(shard_set), tmp_path / "files")


# ------------------------------------------------------------------------ train-unet and a full disk


def _disk_full(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")  # as a failed write raises it: no file named


def test_a_full_disk_while_saving_a_checkpoint_names_its_files(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    import segmodel.checkpoint
    from core.cli import os_error_message
    from segmodel.unet import UNet
    from trainer.checkpoint import save_run_state

    monkeypatch.setattr(segmodel.checkpoint, "atomic_write_bytes", _disk_full)
    torch.manual_seed(0)
    with pytest.raises(OSError) as err:
        save_run_state(tmp_path / "run", 7, UNet(width=4), {"config": {}}, {"step": 7})
    assert err.value.errno == errno.ENOSPC
    assert os_error_message(err.value) == (f"disk full while writing {tmp_path / 'run' / 'checkpoints'}/step-000007.*: "
                                           "free some space and run again")


def test_train_unet_names_the_file_when_the_disk_fills(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    import segmodel.checkpoint
    from trainer.cli import main
    from trainer.toy import write_disc_set

    shards = write_disc_set(tmp_path / "set", "discs", n_train=8, n_val=0, size=32, shard_size=8)
    fast = ["--size", "32", "--width", "4", "--batch-size", "4", "--steps", "1", "--val-every", "0",
            "--workers", "0", "--shuffle-buffer", "8", "--ckpt-every", "1", "--cpu-threads", "1", "--device", "cpu"]
    real = segmodel.checkpoint.atomic_write_bytes

    def full_for_checkpoints(path, data, **kw):  # config.json still fits; the weights do not
        return _disk_full() if Path(path).parent.name == "checkpoints" else real(path, data, **kw)

    monkeypatch.setattr(segmodel.checkpoint, "atomic_write_bytes", full_for_checkpoints)
    res = CliRunner().invoke(main, ["--shards", str(shards), "--out", str(tmp_path / "run"), *fast])
    errors = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert res.exit_code == 1 and len(errors) == 1, res.output
    assert errors[0] == (f"Error: disk full while writing {tmp_path / 'run' / 'checkpoints'}/step-000001.*: "
                         "free some space and run again")
    # any other write of the run that fails naming no file names the run folder
    monkeypatch.undo()
    import trainer.train

    monkeypatch.setattr(trainer.train, "train", _disk_full)
    shutil.rmtree(tmp_path / "run")
    res = CliRunner().invoke(main, ["--shards", str(shards), "--out", str(tmp_path / "run"), *fast])
    assert res.exit_code == 1
    assert f"Error: disk full while writing {tmp_path / 'run'}: free some space and run again" in res.output
