"""find-direction on a class-conditional GAN (BigGAN's interface, tests/conftest.py's stand-in):
each latent's class is drawn over --classes after the unconditional draws, held fixed across
G(z) and G(z + shift), recorded, and the runs stay deterministic; --classes on an unconditional
GAN is a usage error."""
from __future__ import annotations

import inspect
import json
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from finder import conditional as cond

SET = [3, 7, 11]
SPEC = "3,7,11"


# --------------------------------------------------------------------------------------------
# the draws (numpy only)


def test_classes_come_after_the_unconditional_draws():
    from finder import discover as dc
    from finder import optimize as op

    classes = cond.ClassSet(SPEC, np.array(SET), 1000)
    z, idx, eps = dc.draw_step(4, 9, 64, 5, 3, dc.DiscoverConfig())
    z2, idx2, eps2, c = dc.draw_step(4, 9, 64, 5, 3, dc.DiscoverConfig(), classes)
    assert z.tobytes() == z2.tobytes() and idx.tobytes() == idx2.tobytes() and eps.tobytes() == eps2.tobytes()
    assert c.shape == (64,) and set(c.tolist()) == set(SET)
    cfg = op.OptimizeConfig(batch=64)
    z, r = op.draw_step(cfg, 2, 5)
    z2, r2, c = op.draw_step(cfg, 2, 5, classes)
    assert z.tobytes() == z2.tobytes() and r.tobytes() == r2.tobytes() and set(c.tolist()) == set(SET)
    z, c = cond.draw_samples(64, 5, 1, classes)
    assert z.tobytes() == cond.draw_samples(64, 5, 1)[0].tobytes() and set(c.tolist()) == set(SET)


def test_the_class_set_follows_the_model():
    unconditional = SimpleNamespace(handle="plain", latent_dim=4)
    assert cond.class_set(unconditional, None) is None
    with pytest.raises(cond.ClassesNotConditionalError, match="plain is not class-conditional") as err:
        cond.class_set(unconditional, "1")
    assert err.value.exit_code == 2
    conditional = SimpleNamespace(handle="c", latent_dim=4, num_classes=20)
    assert cond.class_set(conditional, None).ids.tolist() == list(range(20))
    assert cond.class_set(conditional, "2,4-5").record()["set"] == [2, 4, 5]


# --------------------------------------------------------------------------------------------
# the stand-in


@pytest.fixture(scope="module")
def biggan(biggan_standin, tmp_path_factory):
    from gans.loader import load_gan

    gan = load_gan(str(biggan_standin), cache_dir=tmp_path_factory.mktemp("fingerprints"))
    assert gan.conditional
    return gan


class Spy:
    """Records the classes of every render of a Gan (numpy) and of the finder's differentiable
    generator (the tensors each traced call received)."""

    def __init__(self, monkeypatch, gan):
        self.renders: list[tuple[str, int, np.ndarray | None]] = []
        self.traced: list = []
        for name in ("generate", "generate_shifted"):
            original = getattr(gan, name)

            def spy(*args, _name=name, _original=original, **kwargs):
                given = inspect.signature(_original).bind(*args, **kwargs).arguments
                self.renders.append((_name, len(given["z"]), given.get("classes")))
                return _original(*args, **kwargs)

            monkeypatch.setattr(gan, name, spy)
        make = gan.tf_generator

        def tf_generator():
            f = make()

            def g(z, classes=None):
                self.traced.append(classes)
                return f(z, classes)

            return g

        monkeypatch.setattr(gan, "tf_generator", tf_generator)

    def render_classes(self) -> list[np.ndarray]:
        assert self.renders and all(c is not None for _, _, c in self.renders), self.renders
        return [np.asarray(c) for _, _, c in self.renders]

    def check_pairs(self) -> None:
        """The step's G(z) and G(z + shift) take the very same class tensor."""
        assert len(self.traced) >= 2 and len(self.traced) % 2 == 0
        for a, b in zip(self.traced[::2], self.traced[1::2]):
            assert a is not None and a is b


def test_discover_draws_classes_from_the_set_and_holds_them_across_the_pair(biggan, monkeypatch, tmp_path):
    from finder import discover as dc

    drawn = []
    draw = dc.draw_step
    monkeypatch.setattr(dc, "draw_step", lambda *a: drawn.append(draw(*a)) or drawn[-1])
    spy = Spy(monkeypatch, biggan)
    cfg = dc.DiscoverConfig(directions=2, steps=2, batch=2, recon_size=32, width=4, checkpoint_every=10,
                            picture_samples=2)
    dc.discover(biggan, tmp_path / "a", cfg, classes=SPEC)
    assert len(drawn) == 2 and all(len(d) == 4 and set(d[3].tolist()) <= set(SET) for d in drawn)
    spy.check_pairs()
    # the effect pictures: one render per direction, each sample's class along its row of shifts
    for c in spy.render_classes():
        rows = c.reshape(cfg.picture_samples, 5)
        assert (rows == rows[:, :1]).all() and set(c.tolist()) <= set(SET)
    record = {"num_classes": 1000, "set": SET, "draw": "uniform over the set, one class per sample"}
    assert json.loads((tmp_path / "a" / "config.json").read_text())["classes"] == record
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["classes"] == record
    dc.discover(biggan, tmp_path / "b", cfg, classes=SPEC)
    assert (tmp_path / "a" / "directions.npy").read_bytes() == (tmp_path / "b" / "directions.npy").read_bytes()
    with pytest.raises(dc.DiscoveryError, match="classes"):
        dc.discover(biggan, tmp_path / "a", dc.DiscoverConfig(**{**cfg.__dict__, "steps": 3}), resume=True,
                    classes="all")


def test_rank_renders_each_latent_with_its_class(biggan, monkeypatch, tmp_path):
    from finder import rank as ds
    from gans import toy

    rng = np.random.default_rng(0)
    cands = np.concatenate([toy.toy_direction()[None], rng.standard_normal((2, biggan.latent_dim))])
    cfg = ds.FitConfig(samples=4, steps=10)
    spy = Spy(monkeypatch, biggan)
    report = ds.rank_directions(biggan, cands, tmp_path / "a", cfg, source="mixed", picture_top=1,
                                picture_samples=2, classes=SPEC)
    labels = spy.render_classes()
    assert all(set(c.tolist()) <= set(SET) for c in labels)
    # every render of the 4 latents (G(z), each G(z + 5h), the orientation's) takes the same classes
    full = [c for (_, n, _), c in zip(spy.renders, labels) if n == cfg.samples]
    assert len(full) >= 1 + 2 * len(cands) and all(np.array_equal(c, full[0]) for c in full)
    assert report["classes"]["set"] == SET
    assert report["winner"]["candidate"] == 0  # the toy's light still segments, whatever the class
    assert json.loads((tmp_path / "a" / "ranking.json").read_text())["classes"]["set"] == SET
    ds.rank_directions(biggan, cands, tmp_path / "b", cfg, source="mixed", picture_top=1, picture_samples=2,
                       classes=SPEC)
    assert (tmp_path / "a" / "direction.npy").read_bytes() == (tmp_path / "b" / "direction.npy").read_bytes()


def test_optimize_draws_classes_from_the_set_and_holds_them_across_the_pair(biggan, monkeypatch, tmp_path):
    from finder import optimize as op

    drawn = []
    draw = op.draw_step
    monkeypatch.setattr(op, "draw_step", lambda *a: drawn.append(draw(*a)) or drawn[-1])
    spy = Spy(monkeypatch, biggan)
    cfg = op.OptimizeConfig(steps=2, batch=2, samples=4)
    summary = op.run(biggan, tmp_path / "a", cfg, picture_samples=2, classes=SPEC)
    assert len(drawn) == 2 and all(len(d) == 3 and set(d[2].tolist()) <= set(SET) for d in drawn)
    spy.check_pairs()
    # the summary's pairs: generate_pair is generate_shifted with shifts [0, r] and one class per latent
    assert [name for name, _, _ in spy.renders] == ["generate_shifted"]
    assert set(spy.render_classes()[0].tolist()) <= set(SET)
    assert summary["classes"]["set"] == SET
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["classes"]["set"] == SET
    op.run(biggan, tmp_path / "b", cfg, picture_samples=2, classes=SPEC)
    assert (tmp_path / "a" / "direction.npy").read_bytes() == (tmp_path / "b" / "direction.npy").read_bytes()


# --------------------------------------------------------------------------------------------
# the CLI


def test_cli_rank_on_the_standin_defaults_to_all_classes(biggan_standin, monkeypatch, tmp_path):
    from finder.cli import main
    from gans import toy

    monkeypatch.setenv("BGW_CACHE_DIR", str(tmp_path / "cache"))
    cands = tmp_path / "c.npy"
    np.save(cands, np.stack([toy.toy_direction(), np.eye(120, dtype=np.float32)[0]]))
    res = CliRunner().invoke(main, ["rank", "--gan", str(biggan_standin), "--candidates", str(cands),
                                    "--out", str(tmp_path / "r"), "--samples", "4", "--steps", "5", "--top", "1"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "r" / "ranking.json").read_text())["classes"]["set"] == "all"
    res = CliRunner().invoke(main, ["rank", "--gan", str(biggan_standin), "--candidates", str(cands),
                                    "--out", str(tmp_path / "r2"), "--classes", "1000"])
    assert res.exit_code == 2 and "--classes" in res.output and len(res.output.strip().splitlines()) == 1, res.output


@pytest.fixture(scope="module")
def toy_cache(tmp_path_factory):
    from gans import toy

    cache = tmp_path_factory.getbasetemp() / "bgw-cache"
    toy.ensure_toy_module(cache)
    return cache


@pytest.mark.parametrize("command", [
    ["discover", "--directions", "2", "--steps", "1"],
    ["rank", "--candidates", "axes"],
    ["optimize", "--steps", "1"],
    [],  # the combined form: discover, then rank
])
def test_classes_on_an_unconditional_gan_is_one_usage_line(toy_cache, monkeypatch, tmp_path, command):
    from finder import discover as dc
    from finder import optimize as op
    from finder import rank as ds
    from finder.cli import main

    monkeypatch.setenv("BGW_CACHE_DIR", str(toy_cache))
    calls = []
    monkeypatch.setattr(dc, "discover", lambda *a, **k: calls.append("discover"))
    monkeypatch.setattr(ds, "rank_directions", lambda *a, **k: calls.append("rank"))
    monkeypatch.setattr(op, "run", lambda *a, **k: calls.append("optimize"))
    res = CliRunner().invoke(main, [*command, "--gan", "toy", "--classes", "1", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and "not class-conditional" in lines[0], res.output
    assert calls == [] and not (tmp_path / "o").exists()
