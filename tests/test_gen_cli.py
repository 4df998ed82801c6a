"""The gen-synth command: the scaled-down done-when run, `embed`, and one-line errors for bad input."""
from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from generator.cli import COUNT, main

# The toy passes the default (paper) filters; nothing to override.
FILTER: list[str] = []


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, *needles: str) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: "), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("text, value", [("1e6", 1_000_000), ("120", 120), ("1_000", 1000), ("2.5e3", 2500)])
def test_count_accepts_integers_in_any_spelling(text, value):
    assert COUNT.convert(text, None, None) == value


# ------------------------------------------------------------------ bad input, no model needed


@pytest.mark.parametrize("args, needles", [
    (["--n", "0"], ["--n", "positive integer"]),
    (["--n", "-5"], ["-5", "positive integer"]),
    (["--n", "1.5"], ["1.5", "whole number"]),
    (["--n", "lots"], ["lots", "not a number"]),
    (["--shard-size", "0"], ["--shard-size"]),
    (["--mask-rule", "median"], ["median", "lighting"]),
    (["--num-workers", "2", "--worker-index", "2", "--gan", "toy"], ["worker_index", "0..1"]),
    (["--histogram-rule", "paper", "--no-histogram-filter"], ["contradict"]),
    (["--gan", "toy", "--latents", "embeddings"], ["--dataset"]),
    (["--gan", "toy", "--name", "a.b"], ["a.b"]),
    (["--bogus"], ["--bogus"]),
])
def test_bad_options_give_one_line(args, needles):
    assert_one_line_error(invoke(*args), *needles)


def test_datasets_that_cannot_be_found(tmp_path, monkeypatch):
    monkeypatch.delenv("BGW_DATA_ROOT", raising=False)
    # the verbatim command parses (1e6 included); without a data root it says where CUB must be, in one line
    assert_one_line_error(invoke("--dataset", "cub", "--alpha", "0.2", "--n", "1e6", "--out", tmp_path),
                          "cub", "--data-root")
    toy = ["--gan", "toy", "--out", tmp_path]
    assert_one_line_error(invoke(*toy, "--dataset", "cub", "--alpha", "0.2", "--n", "1e6"), "cub", "data root")
    assert_one_line_error(invoke(*toy, "--dataset", "cub", "--data-root", tmp_path), "cub")
    assert_one_line_error(invoke(*toy, "--dataset", "nosuch", "--data-root", tmp_path), "unknown dataset", "nosuch")
    assert_one_line_error(invoke(*toy, "--dataset", f"folder:{tmp_path / 'missing'}"), "not a folder")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(invoke(*toy, "--dataset", f"folder:{tmp_path / 'empty'}"), "no images")
    assert not list(tmp_path.glob("*.tar.zst"))


def test_ray_missing_names_the_extra(tmp_path):
    try:
        import ray  # noqa: F401
        pytest.skip("ray is installed")
    except ImportError:
        pass
    assert_one_line_error(invoke("--gan", "toy", "--latents", "prior", "--ray", "--n", "10", "--out", tmp_path),
                          "pip install bgw-seg[dist]")


# ------------------------------------------------------------------ runs on the toy GAN

tf_only = pytest.mark.tf


@pytest.fixture(scope="module")
def done_when(tmp_path_factory) -> Path:
    """The issue's done-when command, scaled down: 120 samples in shards of 30."""
    pytest.importorskip("tensorflow")
    out = tmp_path_factory.mktemp("T")
    res = invoke("--gan", "toy", "--latents", "prior", "--n", "120", "--shard-size", "30", "--out", out,
                 "--name", "t", "--seed", "1", "--preview", "--batch-size", "32", *FILTER)
    assert res.exit_code == 0, res.output
    assert "120 samples in 4 shards" in res.output
    return out


@tf_only
def test_done_when_command_runs_and_verifies(done_when):
    from shardset import verify_set

    assert (done_when / "t-preview.png").stat().st_size > 0
    report = verify_set(str(done_when))
    assert report.ok and report.samples == 120, [s.reason for s in report.bad]
    m = json.loads((done_when / "t.json").read_text())
    assert m["complete"] and m["totals"]["samples"] == 120 and len(m["shards"]) == 4


@tf_only
def test_existing_set_is_refused_unless_resume_matches(done_when):
    same = ["--gan", "toy", "--latents", "prior", "--n", "120", "--shard-size", "30", "--out", done_when,
            "--name", "t", "--seed", "1", "--batch-size", "32", *FILTER]
    before = {p.name: p.read_bytes() for p in done_when.glob("t-*.tar.zst")}
    assert_one_line_error(invoke(*same), "exists", "--resume")
    assert_one_line_error(invoke(*same[:-len(FILTER) - 2], "--seed", "2", "--resume", *FILTER),
                          "other parameters")
    res = invoke(*same, "--resume")  # same parameters: everything is kept, nothing redone
    assert res.exit_code == 0, res.output
    assert {p.name: p.read_bytes() for p in done_when.glob("t-*.tar.zst")} == before


@tf_only
def test_bad_directions(tmp_path):
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.ones(7, np.float32))
    nan = tmp_path / "nan.npy"
    vec = np.ones(120, np.float32)
    vec[3] = np.nan
    np.save(nan, vec)
    base = ["--gan", "toy", "--latents", "prior", "--n", "10", "--out", tmp_path / "out"]
    assert_one_line_error(invoke(*base, "--direction", wrong), "wrong.npy", "7 entries")
    assert_one_line_error(invoke(*base, "--direction", nan), "nan.npy", "NaN")
    assert_one_line_error(invoke(*base, "--direction", tmp_path / "none.npy"), "none.npy")
    assert not list((tmp_path / "out").glob("*.tar.zst")) if (tmp_path / "out").exists() else True


@tf_only
def test_unreadable_images_and_models(tmp_path):
    junk = tmp_path / "junk"
    junk.mkdir()
    for i in range(3):
        (junk / f"{i}.jpg").write_bytes(b"not a jpeg at all")
    assert_one_line_error(invoke("--gan", "toy", "--dataset", f"folder:{junk}", "--n", "10",
                                 "--out", tmp_path / "out", "--cache-dir", tmp_path / "cache"), "could be read")
    assert_one_line_error(invoke("--gan", str(tmp_path / "no-model"), "--latents", "prior", "--n", "10",
                                 "--direction", tmp_path / "x.npy", "--out", tmp_path / "out"), "no-model")


@tf_only
def test_full_disk_is_one_line_and_leaves_no_shard(tmp_path, monkeypatch):
    from shardset import ShardSetWriter

    def full(self, index, samples, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ShardSetWriter, "write_shard", full)
    out = tmp_path / "out"
    assert_one_line_error(invoke("--gan", "toy", "--latents", "prior", "--n", "20", "--shard-size", "10",
                                 "--batch-size", "16", "--out", out, *FILTER), "disk full", "--resume")
    assert not list(out.glob("*.tar.zst*"))


@tf_only
def test_embed_subcommand_caches_the_embeddings(tmp_path):
    import cv2

    data = tmp_path / "imgs"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        img = np.full((200, 300, 3), 40, np.uint8)
        cv2.circle(img, (150, 100), 30 + 10 * i, tuple(int(c) for c in rng.integers(0, 255, 3)), -1)
        cv2.imwrite(str(data / f"{i}.jpg"), img)
    (data / "broken.png").write_bytes(b"\x89PNG broken")
    res = invoke("embed", "--dataset", f"folder:{data}", "--gan", "toy", "--cache-dir", tmp_path / "cache")
    assert res.exit_code == 0, res.output
    assert "4 embeddings (dim 120, 1 unreadable images skipped)" in res.output
    assert len(list((tmp_path / "cache" / "embeddings").glob("*.npy"))) == 1
    # the group form works too: options before the sub-command
    res = invoke("--gan", "toy", "--cache-dir", tmp_path / "cache", "embed", "--dataset", f"folder:{data}")
    assert res.exit_code == 0, res.output
    assert_one_line_error(invoke("embed", "--dataset", f"folder:{tmp_path / 'nope'}", "--gan", "toy"),
                          "not a folder")


@tf_only
def test_filters_that_reject_everything_stop_with_one_line(tmp_path, monkeypatch):
    import generator.pipeline as pipeline

    from generator import masks

    def reject_all(x, x_shift, cfg):
        res = masks.process_batch(x, x_shift, cfg)
        n = len(res.reason)
        return masks.BatchResult(res.masks, np.zeros(n, bool), ["histogram"] * n, res.fg_fraction)

    monkeypatch.setattr(pipeline, "GIVE_UP_EMPTY", 64)
    monkeypatch.setattr(pipeline, "process_batch", reject_all)
    assert_one_line_error(invoke("--gan", "toy", "--latents", "prior", "--n", "10", "--batch-size", "32",
                                 "--out", tmp_path), "0 of 10 samples accepted in 64 draws", "histogram 64")
    assert not list(tmp_path.glob("*.tar.zst"))
    # the set holds no shard, so a rerun with other settings may replace it
    monkeypatch.undo()
    res = invoke("--gan", "toy", "--latents", "prior", "--n", "10", "--batch-size", "32", "--out", tmp_path,
                 "--no-histogram-filter")
    assert res.exit_code == 0, res.output
    assert len(list(tmp_path.glob("*.tar.zst"))) == 1
