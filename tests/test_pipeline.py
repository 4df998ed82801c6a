"""generator.pipeline end to end on the toy GAN: the set verifies, masks match the toy's truth,
and 1 worker, 2 workers and a crashed-then-resumed run give byte-identical shards."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_hub")

from generator import pipeline  # noqa: E402
from generator.config import GenConfig, GenerationError, make_plan  # noqa: E402
from generator.inputs import cached_gan  # noqa: E402
from generator.pipeline import run  # noqa: E402

pytestmark = pytest.mark.tf

# The paper's default filters throughout: the toy's segmenting direction saturates at z + 5h, so
# the strict histogram rule accepts most draws and still rejects the weakly lit ones.
BASE = GenConfig(gan="toy", latents="prior", n=120, shard_size=30, seed=1, name="t", batch_size=32,
                 val_shards=1)


def _shards(folder: Path, name: str = "t") -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob(f"{name}-*.tar.zst"))}


def _manifest(folder: Path, name: str = "t") -> dict:
    from shardset import canonical_manifest

    return canonical_manifest(json.loads((folder / f"{name}.json").read_text()))


def _samples(folder: Path, name: str = "t") -> list[dict]:
    from shardset import iter_samples

    return [s for p in sorted(folder.glob(f"{name}-*.tar.zst")) for s in iter_samples(str(p))]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One single-worker run with a preview: the set every other run must reproduce."""
    out = tmp_path_factory.mktemp("ref")
    result = run(dataclasses.replace(BASE, out=str(out), preview=str(out / "t-preview.png")))
    assert result.complete and result.written == [0, 1, 2, 3]
    return out


def test_set_verifies_and_holds_what_the_format_says(reference):
    from shardset import verify_set

    report = verify_set(str(reference))
    assert report.ok, [s.reason for s in report.bad]
    assert report.samples == 120
    m = json.loads((reference / "t.json").read_text())
    assert m["complete"] and m["totals"]["samples"] == 120
    assert m["splits"]["val"]["shards"] == [3] and m["splits"]["train"]["shards"] == [0, 1, 2]
    p = m["params"]
    assert p["generator"]["handle"] == "toy" and len(p["generator"]["fingerprint"]) == 64
    assert p["direction"]["shift"] == 5.0 and len(p["direction"]["sha256"]) == 64
    assert p["filters"]["histogram_rule"] == "bimodal" and p["filters"]["mask_rule"] == "lighting"
    assert p["image"]["size"] == 128 and p["image"]["resample"] is None and p["generator"]["image_size"] == 128
    assert p["n"] == 120 and p["seed"] == 1 and p["latents"]["source"] == "prior"
    assert m["planned"] == {"samples": 120, "shards": 4, "val_shards": 1}
    for rec in m["shards"]:
        assert rec["drawn"] == rec["samples"] + sum(rec["rejected"].values())

    samples = _samples(reference)
    assert [s["__key__"] for s in samples[:2]] == ["t-000000-000000", "t-000000-000001"]
    s = samples[0]
    assert s["image"].dtype == np.uint8 and s["image"].shape == (128, 128, 3)
    assert s["mask"].dtype == np.uint8 and set(np.unique(s["mask"])) <= {0, 1}
    assert s["z"].dtype == np.float32 and s["z"].shape == (120,)
    assert s["meta"]["source_index"] == -1 and s["meta"]["stream"][:2] == [1, 0]
    assert s["meta"]["fg_fraction"] == pytest.approx(s["mask"].mean())
    # the latent is the stream's draw it names
    from generator.latents import LatentStream

    seed, shard, draw = samples[45]["meta"]["stream"]
    z = LatentStream(seed, shard, 120).take(draw + 1).z[draw]
    np.testing.assert_array_equal(samples[45]["z"], z)

    preview = cv2.imread(str(reference / "t-preview.png"))
    assert preview is not None and preview.shape[1] == 6 * 128 and preview.shape[0] > 4 * 128


def test_image_is_the_rounded_generator_output(reference):
    from gans.toy import toy_direction

    s = _samples(reference)[0]
    x, _ = cached_gan("toy").generate_pair(s["z"][None], toy_direction(), 5.0)
    expected = np.clip(np.rint((x[0] + 1) * 127.5), 0, 255).astype(np.uint8)
    # the batch shape may change the last float bit of a TF kernel: allow one grey level
    assert np.abs(expected.astype(int) - s["image"].astype(int)).max() <= 1


def test_masks_agree_with_the_toy_truth(reference):
    from gans.toy import toy_true_mask

    samples = _samples(reference)
    truth = toy_true_mask(np.stack([s["z"] for s in samples]))
    ious = []
    for s, t in zip(samples, truth):
        m = s["mask"].astype(bool)
        union = np.logical_or(m, t).sum()
        ious.append(np.logical_and(m, t).sum() / union if union else 1.0)
    assert np.mean(ious) >= 0.8, np.mean(ious)


def test_two_workers_give_the_same_set(reference, tmp_path):
    for i in (1, 0):  # order does not matter; the last one to finish writes the final manifest
        res = run(dataclasses.replace(BASE, out=str(tmp_path), nodes=2, node_index=i))
        assert res.written == make_plan(BASE).shards_of(i, 2)
    assert res.complete
    assert _shards(tmp_path) == _shards(reference)
    assert _manifest(tmp_path) == _manifest(reference)


def test_crash_then_resume_gives_the_same_set(reference, tmp_path, monkeypatch):
    from shardset import ShardSetWriter

    real = ShardSetWriter.write_shard
    calls = {"n": 0}

    def dying(self, index, samples, **kw):
        if calls["n"] == 2:
            raise KeyboardInterrupt  # a kill in the middle of the third shard
        calls["n"] += 1
        return real(self, index, samples, **kw)

    monkeypatch.setattr(ShardSetWriter, "write_shard", dying)
    with pytest.raises(KeyboardInterrupt):
        run(dataclasses.replace(BASE, out=str(tmp_path)))
    monkeypatch.setattr(ShardSetWriter, "write_shard", real)
    # shards are written on a thread pool: which two made it depends on timing
    survivors = sorted(_shards(tmp_path))
    assert len(survivors) == 2
    assert not list(tmp_path.glob("*.tmp"))

    # a damaged shard is redone too: truncate the second survivor
    damaged = tmp_path / survivors[1]
    damaged.write_bytes(damaged.read_bytes()[:1000])
    with pytest.raises(GenerationError, match="--resume"):
        run(dataclasses.replace(BASE, out=str(tmp_path)))
    res = run(dataclasses.replace(BASE, out=str(tmp_path), resume=True))
    kept = int(survivors[0][2:8])
    assert res.skipped == [kept] and res.written == [k for k in range(4) if k != kept] and res.complete
    assert _shards(tmp_path) == _shards(reference)
    assert _manifest(tmp_path) == _manifest(reference)


def test_the_stop_flag_ends_a_run_whose_interrupt_was_lost(reference, tmp_path, monkeypatch):
    """gen-synth's Ctrl-C handler sets render.STOP as well as raising KeyboardInterrupt: should the
    exception be swallowed (inside TensorFlow), the render loop stops at its next batch anyway,
    keeping the complete shards; nothing else of the run is left behind."""
    from generator import render

    real = render.Host.consume
    calls = {"n": 0}

    def consume_then_flag(self, *a):
        real(self, *a)
        calls["n"] += 1
        if calls["n"] == 3:
            render.STOP.set()  # what the handler does; its KeyboardInterrupt is "lost" here

    monkeypatch.setattr(render.Host, "consume", consume_then_flag)
    try:
        with pytest.raises(KeyboardInterrupt):
            run(dataclasses.replace(BASE, out=str(tmp_path)))
    finally:
        render.STOP.clear()
    assert sorted(_shards(tmp_path)) != sorted(_shards(reference))  # it stopped before the end
    assert not list(tmp_path.glob("*.tmp"))
    monkeypatch.setattr(render.Host, "consume", real)
    res = run(dataclasses.replace(BASE, out=str(tmp_path), resume=True))
    assert res.complete and _shards(tmp_path) == _shards(reference)


def test_resume_with_other_parameters_is_refused(reference, tmp_path):
    shutil.copytree(reference, tmp_path / "set")
    with pytest.raises(GenerationError, match="other parameters"):
        run(dataclasses.replace(BASE, out=str(tmp_path / "set"), seed=2, resume=True))
    # nothing was touched
    assert _shards(tmp_path / "set") == _shards(reference)


def test_disk_full_leaves_no_complete_looking_shard(tmp_path, monkeypatch):
    import errno

    from shardset import ShardSetWriter

    real = ShardSetWriter.write_shard

    def full_disk(self, index, samples, **kw):
        if index == 1:
            # the shard file landed but its record (the commit marker) could not be written
            (self.out_dir / f"t-{index:06d}.tar.zst").write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, index, samples, **kw)

    monkeypatch.setattr(ShardSetWriter, "write_shard", full_disk)
    with pytest.raises(OSError) as info:
        run(dataclasses.replace(BASE, out=str(tmp_path), n=60))
    assert info.value.errno == errno.ENOSPC
    assert sorted(_shards(tmp_path)) == ["t-000000.tar.zst"]
    assert [r["index"] for r in json.loads((tmp_path / "t.json").read_text())["shards"]] == [0]


def _write_images(folder: Path, n: int = 10) -> None:
    """Toy renders upsampled to 256 as PNG: a small 'dataset' whose encodings are meaningful."""
    folder.mkdir(parents=True)
    z = np.random.default_rng(5).standard_normal((n, 120)).astype(np.float32)
    x = cached_gan("toy").generate(z)
    for i, img in enumerate(x):
        rgb = np.clip(np.rint((img + 1) * 127.5), 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"img{i:02d}.png"), cv2.resize(rgb[..., ::-1], (256, 256)))
    (folder / "notes.txt").write_text("not an image")


def test_embeddings_path_end_to_end(tmp_path):
    data = tmp_path / "data"
    _write_images(data)
    cfg = GenConfig(gan="toy", dataset=f"folder:{data}", alpha=0.2, n=40, shard_size=20, seed=3,
                    batch_size=20, out=str(tmp_path / "out"),
                    cache_dir=str(tmp_path / "cache"))
    assert cfg.resolved().latents == "embeddings" and cfg.resolved().name == "data"
    res = run(cfg)
    assert res.complete
    m = res.manifest
    assert m["params"]["latents"] == {"source": "embeddings", "alpha": 0.2, "draw_block": 256}
    assert m["params"]["dataset"]["train_images"] == 10 and m["params"]["dataset"]["skipped"] == 0
    assert len(m["params"]["dataset"]["fingerprint"]) == 64
    emb_facts = m["params"]["embeddings"]
    assert emb_facts["count"] == 10 and len(emb_facts["sha256"]) == 64

    from generator.embed import load_or_compute_embeddings

    paths = sorted(data.glob("*.png"))
    table, _ = load_or_compute_embeddings(cached_gan("toy"), paths, dataset_name="data", root=data,
                                          cache_dir=tmp_path / "cache")
    assert len(table) == 10
    samples = _samples(tmp_path / "out", "data")
    assert len(samples) == 40
    src = np.array([s["meta"]["source_index"] for s in samples])
    assert src.min() >= 0 and src.max() < 10
    xi = (np.stack([s["z"] for s in samples]).astype(np.float64) - table[src]) / 0.2
    assert abs(xi.std() - 1.0) < 0.1  # z = E(I_i) + 0.2 xi, xi ~ N(0, I)

    from gans.toy import toy_true_mask

    truth = toy_true_mask(np.stack([s["z"] for s in samples]))
    ious = [np.logical_and(s["mask"], t).sum() / max(1, np.logical_or(s["mask"], t).sum())
            for s, t in zip(samples, truth)]
    assert np.mean(ious) >= 0.8


def test_plan_and_defaults():
    plan = make_plan(GenConfig(n=1001, shard_size=250, val_fraction=0.01, name="x"))
    assert plan.sizes == (250, 250, 250, 250, 1) and plan.num_val == 1
    assert [plan.split(k) for k in range(5)] == ["train"] * 4 + ["val"]
    assert plan.shards_of(1, 2) == [1, 3]
    assert make_plan(GenConfig(n=10, shard_size=10, val_fraction=0.5)).num_val == 0  # one shard: train
    assert make_plan(GenConfig(n=100, shard_size=10, val_shards=3)).num_val == 3
    assert make_plan(GenConfig(n=100, shard_size=10, val_fraction=0.0)).num_val == 0

    cub = GenConfig(dataset="cub").resolved()
    assert (cub.latents, cub.alpha, cub.name, cub.preset) == ("embeddings", 0.2, "cub", "default")
    assert GenConfig(dataset="imagenet").resolved().alpha == 0.0
    flowers = GenConfig(dataset="flowers").resolved()
    assert flowers.preset == "flowers" and flowers.filter_config().mask_rule == "mean"
    assert not flowers.filter_config().size_filter
    toy = GenConfig(gan="toy").resolved()
    assert (toy.latents, toy.name) == ("prior", "toy-prior")
    over = GenConfig(connectivity=8, histogram_filter=False, size_filter=False).resolved().filter_config()
    assert (over.connectivity, over.histogram_rule, over.size_filter) == (8, None, False)


@pytest.mark.parametrize("change, match", [
    ({"n": 0}, "n must be a positive integer"),
    ({"shard_size": -1}, "shard_size must be"),
    ({"node_index": 2, "nodes": 2}, "node_index must be in 0..1"),
    ({"latents": "embeddings"}, "need a dataset"),
    ({"alpha": float("nan")}, "alpha must be"),
    ({"val_shards": 4}, "must leave a training shard"),
    ({"name": "a.b"}, "set name"),
    ({"mask_rule": "median"}, "unknown mask rule"),
    ({"preset": "flower"}, "unknown filter preset 'flower' \\(did you mean flowers\\?\\)"),
    ({"histogram_rule": "paper", "histogram_filter": False}, "contradict"),
    ({"encoding": "gif"}, "encoding"),
    ({"shifted_images": 1.5}, "shifted_images must be a fraction in \\[0, 1\\]"),
    ({"shifted_images": float("nan")}, "shifted_images must be"),
    ({"classes": " "}, "classes is empty"),
])
def test_resolving_validates_and_names_the_bad_value(change, match):
    with pytest.raises(GenerationError, match=match):
        dataclasses.replace(BASE, **change).resolved()


def test_write_threads_and_set_size_do_not_change_shards(reference, tmp_path):
    # shards 0 and 1 of a 60-sample set, written synchronously, are those of the 120-sample set
    res = run(dataclasses.replace(BASE, out=str(tmp_path), n=60, write_threads=1, val_shards=None))
    assert res.complete and res.written == [0, 1]
    ref = _shards(reference)
    assert _shards(tmp_path) == {k: ref[k] for k in ("t-000000.tar.zst", "t-000001.tar.zst")}


def test_ray_path_runs_the_shards_as_tasks(reference, tmp_path, monkeypatch):
    """A stand-in `ray` module (Ray is an optional extra): tasks run inline, in reverse order."""
    import sys
    import types

    calls = []

    class Remote:
        def __init__(self, fn):
            self.fn = fn

        def remote(self, cfg):
            calls.append((cfg.node_index, cfg.nodes))
            return cfg

    fake = types.SimpleNamespace(
        init=lambda address=None, ignore_reinit_error=True: None,
        cluster_resources=lambda: {"CPU": 3.0},
        remote=lambda num_gpus=0: Remote,
    )
    fake.get = lambda cfgs: [pipeline._ray_worker(c) for c in reversed(cfgs)]
    monkeypatch.setitem(sys.modules, "ray", fake)
    res = pipeline.run_ray(dataclasses.replace(BASE, out=str(tmp_path)))
    assert calls == [(0, 3), (1, 3), (2, 3)]
    assert res.complete and res.written == [0, 1, 2, 3]
    assert _shards(tmp_path) == _shards(reference)
    assert _manifest(tmp_path) == _manifest(reference)


def test_gen_synth_on_a_real_local_ray_cluster(reference, tmp_path):
    """`gen-synth --ray` on a local Ray cluster of 2 CPUs and no GPU (Ray is in the test extra, so
    this runs wherever `make test` does): the shards are real Ray tasks, in the default encoding,
    and the set is byte for byte the single-process one."""
    import ray
    from click.testing import CliRunner

    from generator.cli import main
    from shardset import DEFAULT_ENCODING

    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    try:
        assert ray.cluster_resources().get("CPU") == 2.0
        res = CliRunner().invoke(main, ["--gan", "toy", "--latents", "prior", "--n", "120", "--shard-size", "30",
                                        "--val-shards", "1", "--seed", "1", "--batch-size", "32", "--name", "t",
                                        "--out", str(tmp_path), "--ray"])
    finally:
        ray.shutdown()
    assert res.exit_code == 0, res.output
    assert _manifest(tmp_path)["encoding"] == DEFAULT_ENCODING == "delta"
    assert sorted(_shards(tmp_path)) == [f"t-{k:06d}.tar.zst" for k in range(4)]
    assert _shards(tmp_path) == _shards(reference)
    assert _manifest(tmp_path) == _manifest(reference)


def test_preview_picture_has_labelled_strips():
    from generator.preview import LABEL_H, TILE, PreviewCollector, render_preview

    x = np.full((5, 128, 128, 3), -0.5, np.float32)
    xs = np.full_like(x, 0.5)
    masks = np.zeros((5, 128, 128), np.uint8)
    masks[:, 32:96, 32:96] = 1
    col = PreviewCollector(rows=3, per_reason=2)
    col.add(x, xs, masks, [None, "size", None, "size", "size"])
    assert len(col.accepted) == 2 and len(col.rejected["size"]) == 2 and col.rejected["histogram"] == []
    assert not col.full
    img = render_preview(col)
    # accepted band + 1 row of 2 triplets, the size filter's band + one row of tiles, and the
    # histogram filter's band alone: it rejected nothing, so no empty row is drawn
    assert img.shape == (3 * LABEL_H + 2 * TILE, 6 * TILE, 3)
    band = img[:LABEL_H]
    assert len(np.unique(band.reshape(-1, 3), axis=0)) > 2  # text was drawn on the band
    first = img[LABEL_H:LABEL_H + TILE, :TILE]
    np.testing.assert_array_equal(first[0, 0], [64, 64, 64])  # round((-0.5 + 1) * 127.5) = 64, grey
    overlay = img[LABEL_H:LABEL_H + TILE, 2 * TILE:3 * TILE]
    assert not np.array_equal(overlay[64, 64], first[64, 64])  # the mask tints the object
    np.testing.assert_array_equal(overlay[5, 5], first[5, 5])  # and leaves the background


def test_a_preview_with_nothing_rejected_says_so_in_one_band():
    from generator.preview import LABEL_H, TILE, PreviewCollector, render_preview

    x = np.full((2, 128, 128, 3), -0.5, np.float32)
    col = PreviewCollector(rows=3, per_reason=2)
    col.add(x, -x, np.zeros((2, 128, 128), np.uint8), [None, None])
    # the accepted band, one row of two triplets, and one band for every filter together
    assert render_preview(col).shape == (2 * LABEL_H + TILE, 6 * TILE, 3)
