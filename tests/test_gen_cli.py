"""The gen-synth command: the scaled-down done-when run, `embed`, and one-line errors for bad input."""
from __future__ import annotations

import errno
import json
import sys
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
    (["--nodes", "2", "--node-index", "2", "--gan", "toy"], ["node_index", "0..1"]),
    (["--histogram-rule", "paper", "--no-histogram-filter"], ["contradict"]),
    (["--gan", "toy", "--latents", "embeddings"], ["--dataset"]),
    (["--gan", "toy", "--name", "a.b"], ["a.b"]),
    (["--bogus"], ["--bogus"]),
    (["--shifted-images", "1.5"], ["--shifted-images", "1.5"]),
    (["--shifted-images", "some"], ["--shifted-images", "some"]),
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


def test_ray_missing_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed: the test extra installs it
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
    import generator.render as render

    from masking import rules as masks

    def reject_all(x, x_shift, cfg):
        res = masks.process_batch(x, x_shift, cfg)
        n = len(res.reason)
        return masks.BatchResult(res.masks, np.zeros(n, bool), ["histogram"] * n, res.fg_fraction)

    monkeypatch.setattr(render, "GIVE_UP_EMPTY", 64)
    monkeypatch.setattr(render, "process_batch", reject_all)
    assert_one_line_error(invoke("--gan", "toy", "--latents", "prior", "--n", "10", "--batch-size", "32",
                                 "--out", tmp_path), "0 of 10 samples accepted in 64 draws", "histogram 64")
    assert not list(tmp_path.glob("*.tar.zst"))
    # the set holds no shard, so a rerun with other settings may replace it
    monkeypatch.undo()
    res = invoke("--gan", "toy", "--latents", "prior", "--n", "10", "--batch-size", "32", "--out", tmp_path,
                 "--no-histogram-filter")
    assert res.exit_code == 0, res.output
    assert len(list(tmp_path.glob("*.tar.zst"))) == 1


# ------------------------------------------------------------------ integrity at the edges


@tf_only
def test_resume_with_other_settings_names_the_one_that_differs(done_when):
    line = assert_one_line_error(invoke("--gan", "toy", "--latents", "prior", "--n", "120", "--shard-size", "30",
                                        "--out", done_when, "--name", "t", "--seed", "1", "--batch-size", "32",
                                        "--shift", "4", "--resume"), "params.direction.shift", "5.0", "4.0")
    assert len(line) < 400 and "overwrite" not in line


@tf_only
def test_a_second_writer_fails_at_once_naming_the_holder(tmp_path):
    import socket
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from shardset.lock import FileLock\n"
        f"lock = FileLock({str(tmp_path / 'toy-prior.lock')!r})\n"
        "print('held', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for extra in ([], ["--resume"]):
            assert_one_line_error(invoke("--gan", "toy", "--latents", "prior", "--n", "10", "--out", tmp_path, *extra),
                                  "in use", f"pid {holder.pid}", socket.gethostname())
        assert not list(tmp_path.glob("*.tar.zst")) and not (tmp_path / "toy-prior.json").exists()
    finally:
        holder.kill()
        holder.wait()
    res = invoke("--gan", "toy", "--latents", "prior", "--n", "10", "--out", tmp_path)  # free again
    assert res.exit_code == 0, res.output


def _gen_synth_process(*args, **kwargs):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.Popen([str(Path(sys.executable).parent / "gen-synth"), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kwargs)


@tf_only
def test_tensorflow_start_up_lines_are_held_back(tmp_path):
    proc = _gen_synth_process("--gan", "toy", "--latents", "prior", "--n", "10", "--out", tmp_path,
                              "--cache-dir", tmp_path / "cache")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert err.strip() == "", err  # no absl preamble, no CUDA probing, no cuInit error
    assert "10 samples in 1 shards" in out


@tf_only
def test_ctrl_c_says_how_to_finish_the_set(tmp_path):
    import signal
    import time

    # the child must not inherit an ignored SIGINT (pytest started as a background job of a script
    # has it ignored, and gen-synth then rightly keeps ignoring it)
    proc = _gen_synth_process("--gan", "toy", "--latents", "prior", "--n", "100000", "--shard-size", "50",
                              "--out", tmp_path, "--cache-dir", tmp_path / "cache",
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for _ in range(480):  # up to about 4 minutes for the first complete shard
        if list(tmp_path.glob("toy-prior-*.tar.zst")) or proc.poll() is not None:
            break
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 130, err
    assert lines and "--resume" in lines[-1] and "Traceback" not in err
    # and the set is incomplete but consistent: a resume with the same command would keep its shards
    from shardset import verify_set

    report = verify_set(str(tmp_path / "toy-prior.json"))
    assert not report.bad


@tf_only
def test_images_over_the_pixel_limit_are_skipped_and_counted(tmp_path):
    import cv2

    from test_images import bomb_png

    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        cv2.imwrite(str(data / f"{i}.jpg"), np.full((120, 160, 3), 60 * i, np.uint8))
    (data / "bomb.png").write_bytes(bomb_png(20000, 20000))  # 400 MP from a small file
    res = invoke("embed", "--dataset", f"folder:{data}", "--gan", "toy", "--cache-dir", tmp_path / "cache")
    assert res.exit_code == 0, res.output
    assert "3 embeddings" in res.output and "1 unreadable images skipped" in res.output
    res = invoke("embed", "--dataset", f"folder:{data}", "--gan", "toy", "--cache-dir", tmp_path / "cache",
                 "--max-image-pixels", "10000")  # 120 x 160 = 19,200 pixels: over this limit too
    assert_one_line_error(res, "none of the 4 images")


# ------------------------------------------------------------------ the size bound (--max-fg)


@pytest.mark.parametrize("args, needles", [
    (["--max-fg", "1.5"], ["1.5", "fraction"]),
    (["--max-fg", "big"], ["big", "auto"]),
    (["--gan", "toy", "--max-fg", "auto", "--no-size-filter"], ["max_fg", "size filter", "off"]),
])
def test_bad_size_bounds_give_one_line(args, needles):
    assert_one_line_error(invoke(*args), *needles)


@tf_only
def test_max_fg_auto_follows_the_directions_own_masks(tmp_path):
    """A direction that lights and grows the toy's objects makes masks over half the image: `auto`
    measures them, records the bound, and keeps masks the paper's 0.5 rejects; no kept mask exceeds it."""
    from gans import toy
    from shardset.reader import iter_samples

    grow = toy.toy_factor_direction("saliency_light") + 1.5 * toy.toy_factor_direction("size")
    direction = tmp_path / "grow.npy"
    np.save(direction, (grow / np.linalg.norm(grow)).astype(np.float32))
    common = ["--gan", "toy", "--latents", "prior", "--direction", direction, "--n", "40", "--shard-size", "20",
              "--batch-size", "32", "--seed", "3", "--no-histogram-filter"]
    res = invoke(*common, "--max-fg", "auto", "--out", tmp_path / "auto", "--name", "a")
    assert res.exit_code == 0, res.output
    filters = json.loads((tmp_path / "auto" / "a.json").read_text())["params"]["filters"]
    auto = filters["max_fg_auto"]
    assert filters["max_fg_fraction"] == auto["value"] > 0.5 and auto["samples"] == 256
    assert auto["value"] >= auto["median_fg"]  # the 0.9 quantile sits above the median
    fractions = [float(s["mask"].mean()) for p in sorted((tmp_path / "auto").glob("a-*.tar.zst"))
                 for s in iter_samples(str(p))]
    assert len(fractions) == 40 and max(fractions) <= auto["value"] and max(fractions) > 0.5
    paper = invoke(*common, "--out", tmp_path / "paper", "--name", "p")
    assert paper.exit_code == 0, paper.output
    m = json.loads((tmp_path / "paper" / "p.json").read_text())
    assert m["params"]["filters"]["max_fg_fraction"] == 0.5 and "max_fg_auto" not in m["params"]["filters"]
    assert m["totals"]["rejected"]["size"] > 0
    # the bound is a function of the params and the seed: a second run writes the same bytes
    again = invoke(*common, "--max-fg", "auto", "--out", tmp_path / "again", "--name", "a")
    assert again.exit_code == 0, again.output
    for p in sorted((tmp_path / "auto").glob("a-*.tar.zst")):
        assert (tmp_path / "again" / p.name).read_bytes() == p.read_bytes()


def test_a_missing_out_writes_nothing_into_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = assert_one_line_error(invoke("--gan", "toy", "--latents", "prior", "--n", "10"), "--out")
    assert "e.g. --out" in line and not list(tmp_path.iterdir())
