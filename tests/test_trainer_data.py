"""trainer.data: the stages on in-memory samples (order, splits, resume fast-forward) and on real
tiny shard sets (resolution, train/val separation, mixed sets, corrupt shards)."""
from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer import data
from shardset.select import SelectionError, check_compatible, select_shards
from trainer.data import (DataError, StreamSpec, batched, make_loader, rank_batch, round_shards, shuffle,
                          worker_batches_done, worker_stream)
from trainer.toy import disc_samples, write_disc_set

torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------
# in-memory stand-ins for the shard reader and the decoder


class FakeRead:
    """Shard `u{j}` holds `per_shard` raw samples keyed by (shard, i)."""

    def __init__(self, per_shard: int = 5):
        self.per_shard = per_shard

    def __call__(self, url):
        for i in range(self.per_shard):
            yield {"__key__": f"{url}-{i}", "__url__": url, "id": int(url[1:]) * 100 + i}


def fake_decoder(src):
    for raw in src:
        v = raw["id"]
        yield {"__key__": raw["__key__"], "image": np.full((2, 2, 3), v % 256, np.uint8),
               "mask": np.full((2, 2), v // 256, np.uint8), "id": v}


def ids(batch):
    img, mask = batch["image"], batch["mask"]
    return [int(m[0, 0]) * 256 + int(i[0, 0, 0]) for i, m in zip(img, mask)]


URLS = tuple(f"u{j}" for j in range(7))


def global_batches(spec: StreamSpec, num_workers: int, n: int) -> list[list[int]]:
    """What a DataLoader with `num_workers` workers yields: round-robin over worker streams."""
    streams = [worker_stream(spec, w, num_workers, FakeRead(), fake_decoder) for w in range(num_workers)]
    out = []
    start = spec.start_step
    for k in range(start, start + n):
        out.append(ids(next(streams[k % num_workers])))
    return out


# ---------------------------------------------------------------------------------------------


def test_round_shards_split_by_rank_and_worker_covers_every_shard():
    urls = [f"s{i}" for i in range(12)]
    parts = [round_shards(urls, 3, 0, r, 2, w, 3) for r in range(2) for w in range(3)]
    assert sorted(itertools.chain(*parts)) == sorted(urls)  # a partition: each shard read once per round
    assert all(len(p) == 2 for p in parts)
    # the round's permutation depends on (seed, round) only, and changes between rounds
    assert round_shards(urls, 3, 0, 0, 1, 0, 1) == round_shards(urls, 3, 0, 0, 1, 0, 1)
    assert round_shards(urls, 3, 1, 0, 1, 0, 1) != round_shards(urls, 3, 0, 0, 1, 0, 1)


def test_round_shards_repeats_when_fewer_shards_than_readers():
    parts = [round_shards(["a", "b"], 0, 0, r, 2, w, 2) for r in range(2) for w in range(2)]
    assert all(len(p) == 1 for p in parts)
    assert sorted(itertools.chain(*parts)) == ["a", "a", "b", "b"]


def test_shuffle_is_a_seeded_permutation():
    a = list(shuffle(range(50), 10, np.random.default_rng(1)))
    b = list(shuffle(range(50), 10, np.random.default_rng(1)))
    c = list(shuffle(range(50), 10, np.random.default_rng(2)))
    assert a == b and a != c and sorted(a) == list(range(50))
    assert a != list(range(50))


def test_batched_drops_the_partial_tail():
    src = ({"image": np.full((1, 1, 3), i, np.uint8), "mask": np.zeros((1, 1), np.uint8)} for i in range(7))
    out = list(batched(src, 3))
    assert [b["image"][:, 0, 0, 0].tolist() for b in out] == [[0, 1, 2], [3, 4, 5]]


def test_worker_batches_done_is_round_robin():
    # 7 steps over 3 workers: batches 0..6 came from workers 0,1,2,0,1,2,0
    assert [worker_batches_done(7, w, 3) for w in range(3)] == [3, 2, 2]
    assert [worker_batches_done(0, w, 2) for w in range(2)] == [0, 0]
    assert [worker_batches_done(1, w, 2) for w in range(2)] == [1, 0]


def test_rank_batch_splits_the_global_batch():
    assert [rank_batch(95, r, 2) for r in range(2)] == [48, 47]
    assert sum(rank_batch(95, r, 4) for r in range(4)) == 95


@pytest.mark.parametrize("num_workers", [1, 2, 3])
@pytest.mark.parametrize("start", [1, 4, 5, 9])
def test_resumed_stream_continues_the_uninterrupted_one(num_workers, start):
    # round = 12 samples / batch 4 = 3 batches per worker: starts 4, 5 and 9 cross round boundaries
    spec = StreamSpec(urls=URLS, seed=7, batch=4, size=2, shuffle_buffer=6, round_samples=12)
    full = global_batches(spec, num_workers, start + 8)
    resumed = global_batches(StreamSpec(**{**spec.__dict__, "start_step": start}), num_workers, 8)
    assert resumed == full[start:]


def test_stream_reaches_every_shard_and_differs_by_seed_and_rank():
    spec = StreamSpec(urls=URLS, seed=0, batch=5, size=2, shuffle_buffer=8, round_samples=10)
    got = set(itertools.chain(*global_batches(spec, 2, 40)))
    assert {i // 100 for i in got} == set(range(7))
    other = global_batches(StreamSpec(**{**spec.__dict__, "seed": 1}), 2, 4)
    assert other != global_batches(spec, 2, 4)
    r1 = global_batches(StreamSpec(**{**spec.__dict__, "rank": 1, "world": 2}), 2, 4)
    r0 = global_batches(StreamSpec(**{**spec.__dict__, "rank": 0, "world": 2}), 2, 4)
    assert r0 != r1


def test_loader_with_workers_matches_the_simulated_round_robin():
    spec = StreamSpec(urls=URLS, seed=5, batch=3, size=2, shuffle_buffer=4, round_samples=9)
    loader = make_loader(spec, 2, pin_memory=False, read=FakeRead(), decoder=fake_decoder)
    got = [ids({"image": i.numpy(), "mask": m.numpy()}) for i, m in itertools.islice(loader, 6)]
    assert got == global_batches(spec, 2, 6)


def test_check_compatible_refuses_mixed_encodings():
    with pytest.raises(SelectionError, match="--shards 'b' has encoding webp but 'a' has png"):
        check_compatible([("a", {"encoding": "png"}), ("b", {"encoding": "webp"})])
    assert check_compatible([("a", {"encoding": "png"}), ("b", {"encoding": "png"})]) == {"encoding": "png"}


def _truncated_read(url):
    raise DataError(f"corrupt shard {url}: truncated")
    yield  # a generator, as the real reader


@pytest.mark.parametrize("workers", [0, 1])
def test_a_data_error_reaches_the_loop_as_its_one_line(workers):
    """In a loader process, the DataError is handed over as data (WorkerFailure), not rebuilt by
    the DataLoader around the process's traceback; in the main process it is raised as it is."""
    spec = StreamSpec(urls=("u0",), seed=0, batch=2, size=2, shuffle_buffer=1, round_samples=4)
    batches = iter(make_loader(spec, workers, pin_memory=False, read=_truncated_read, decoder=fake_decoder))
    if workers:
        assert next(batches) == data.WorkerFailure("corrupt shard u0: truncated")
    else:
        with pytest.raises(DataError, match="^corrupt shard u0: truncated$"):
            next(batches)


# ---------------------------------------------------------------------------------------------
# real tiny shard sets


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("sets")
    a = write_disc_set(root / "a", "discs", n_train=24, n_val=8, size=32, shard_size=8, seed=1)
    b = write_disc_set(root / "b", "other", n_train=16, n_val=8, size=32, shard_size=8, seed=2)
    w = write_disc_set(root / "w", "webpset", n_train=8, n_val=0, size=32, shard_size=8, encoding="webp")
    big = write_disc_set(root / "big", "bigset", n_train=8, n_val=0, size=48, shard_size=8)
    return {"a": a, "b": b, "webp": w, "big": big, "root": root}


def test_disc_samples_are_deterministic_and_masks_match_the_bright_disc():
    s1, s2 = disc_samples(3, 32, seed=4), disc_samples(3, 32, seed=4)
    for x, y in zip(s1, s2):
        np.testing.assert_array_equal(x["image"], y["image"])
    s = s1[0]
    fg = s["mask"].astype(bool)
    assert s["image"][fg].min() >= 150
    assert s["image"][~fg].max() < 110 and 0.05 < fg.mean() < 0.5


def test_resolve_separates_val_from_train(sets):
    src = select_shards([str(sets["a"])])
    assert len(src.train_urls) == 3 and len(src.val_urls) == 1
    assert not set(src.train_urls) & set(src.val_urls)
    manifest = json.loads(sets["a"].read_text())
    val_files = {r["file"] for r in manifest["shards"] if r["split"] == "val"}
    assert {Path(u).name for u in src.val_urls} == val_files
    assert src.image_size == (32, 32) and src.encoding == "png" and src.name == "discs"
    assert src.fingerprint == manifest["fingerprint"]


def test_glob_folder_and_several_specs(sets):
    by_glob = select_shards([str(sets["a"].parent / "discs-*.tar.zst")])
    by_dir = select_shards([str(sets["a"].parent)])
    assert by_glob.train_urls == by_dir.train_urls
    both = select_shards([str(sets["a"]), str(sets["b"])])
    assert len(both.train_urls) == 5 and len(both.val_urls) == 2 and both.name == "discs+other"


@pytest.mark.parametrize("other,what", [("webp", "encoding webp"), ("big", "image_size 48x48")])
def test_mixed_sets_refused_in_one_line(sets, other, what):
    with pytest.raises(SelectionError) as e:
        select_shards([str(sets["a"]), str(sets[other])])
    assert what in str(e.value) and "\n" not in str(e.value)


def test_one_glob_over_two_sets_refused(sets, tmp_path):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for key in ("a", "b"):
        for p in sets[key].parent.glob("*.tar.zst"):
            shutil.copy(p, mixed / p.name)
    with pytest.raises(SelectionError, match="matches shards of several sets \\(discs, other\\)"):
        select_shards([str(mixed / "*.tar.zst")])


def test_no_shard_matched(sets):
    with pytest.raises(SelectionError, match="no shard matched --shards") as e:
        select_shards([str(sets["root"] / "nothing-*.tar.zst")])
    assert "\n" not in str(e.value)
    with pytest.raises(SelectionError, match="no --shards"):
        select_shards([])


def test_corrupt_shard_is_named(sets, tmp_path):
    folder = tmp_path / "c"
    shutil.copytree(sets["a"].parent, folder)
    victim = sorted(folder.glob("discs-*.tar.zst"))[1]
    blob = victim.read_bytes()
    victim.write_bytes(blob[: len(blob) // 2])  # truncated
    src = select_shards([str(folder / "discs.json")])
    spec = StreamSpec(urls=(str(victim),), seed=0, batch=4, size=32, shuffle_buffer=4, round_samples=8)
    with pytest.raises(DataError) as e:
        next(worker_stream(spec, 0, 1))
    assert victim.name in str(e.value) and "corrupt shard" in str(e.value)
    assert str(victim) in src.train_urls


def test_real_stream_batches_are_uint8_of_the_right_shape(sets):
    src = select_shards([str(sets["a"])])
    spec = StreamSpec(urls=src.train_urls, seed=0, batch=4, size=32, shuffle_buffer=8, round_samples=16)
    img, mask = next(iter(make_loader(spec, 0, pin_memory=False)))
    assert img.dtype == torch.uint8 and img.shape == (4, 32, 32, 3)
    assert mask.dtype == torch.uint8 and mask.shape == (4, 32, 32) and int(mask.max()) == 1


def test_val_samples_never_in_the_training_stream(sets):
    src = select_shards([str(sets["a"])])
    read = data._Reader()
    val_keys = {raw["__key__"] for u in src.val_urls for raw in read(u)}
    spec = StreamSpec(urls=src.train_urls, seed=0, batch=4, size=32, shuffle_buffer=8, round_samples=24)
    seen = set()

    def keys_decoder(src_):
        for s in data.decode(src_):
            seen.add(s["__key__"])
            yield s

    stream = worker_stream(spec, 0, 1, decoder=keys_decoder)
    for _ in range(20):
        next(stream)
    assert len(seen) == 24 and not seen & val_keys


def test_fit_size_resizes_image_and_mask():
    s = {"__key__": "k", "image": np.zeros((48, 48, 3), np.uint8), "mask": np.ones((48, 48), np.uint8)}
    out = next(data.fit_size(iter([s]), 32))
    assert out["image"].shape == (32, 32, 3) and out["mask"].shape == (32, 32) and out["mask"].min() == 1
