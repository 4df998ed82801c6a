"""Every recipe runs in its tiny form (toy GAN, a few steps), so a recipe that would fail at hour
three fails here; the runner skips finished stages and the table shows mean ± std beside the paper."""
from __future__ import annotations

import json
import tomllib

import pytest

from experiments.recipe import PAPER_TABLES, RecipeError, list_recipes, load_recipe
from experiments.runner import RunOptions, StageError, command_of, digest, stage_args, to_args
from experiments.table import render

pytest.importorskip("tensorflow_hub")
pytest.importorskip("torch")

RECIPES = list_recipes()
PAPER_RECIPES = [n for n in RECIPES if load_recipe(n).table in PAPER_TABLES]


def test_every_table_row_of_the_paper_has_a_recipe():
    tables = [load_recipe(n).table for n in PAPER_RECIPES]
    assert set(tables) == set(PAPER_TABLES)
    assert tables.count("1") == 6  # 3 methods x CUB, Flowers
    assert tables.count("5") == 5  # base + four components


@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_full_recipe_keeps_the_papers_protocol(name):
    r = load_recipe(name)
    assert r.seeds == 10  # the paper reports ten runs
    assert r.stage("train") == {"steps": 12000, "batch": 95}
    assert r.paper, "the paper's own numbers are typed into every recipe"
    # the paper's numbers come from the authors' code, which scores sigmoid(logits[:, 1])
    assert r.stage("evaluate")["fg_prob"] == "sigmoid1"
    gen = r.stage("generate")
    if gen is not None:
        assert gen["gan"] == "bigbigan" and gen["n"] == 1_000_000
        if gen.get("latents") == "embeddings":
            assert gen["alpha"] == (0.0 if gen["dataset"] == "imagenet" or "noise" not in name else 0.2)
        if "flowers" in name:
            assert gen["preset"] == "flowers"


def test_to_args_spells_each_tools_own_flags():
    gen = to_args(command_of("generate"), {"shard_size": 5, "preview": True, "size_filter": False,
                                           "histogram_filter": False, "resume": False, "alpha": None})
    assert gen == ["--shard-size", "5", "--preview", "--no-size-filter", "--no-histogram-filter"]
    # the key is the config field; the flag is the tool's (train-unet: --batch-size, --workers)
    assert to_args(command_of("train"), {"batch": 95, "num_workers": 0, "shards": "s.json"}) == [
        "--batch-size", "95", "--workers", "0", "--shards", "s.json"]
    assert to_args(command_of("evaluate"), {"datasets": ["a", "b"], "ckpts": ["r"]}) == [
        "--dataset", "a", "--dataset", "b", "--ckpt", "r"]
    assert stage_args("discover", {"batch": 4, "resume": True}) == ["discover", "--batch-size", "4", "--resume"]


def test_an_unknown_recipe_option_is_a_one_line_error():
    with pytest.raises(StageError, match="'batch_sise' is not one of train-unet's; choose from .*batch"):
        stage_args("train", {"batch_sise": 95})


def test_bad_recipes_are_one_line_errors(tmp_path):
    with pytest.raises(RecipeError, match="known recipes"):
        load_recipe("table9-nothing")
    bad = tmp_path / "bad.toml"
    bad.write_text('[recipe]\ntable = "1"\nrow = "x"\n[train]\n[evaluate]\n')
    with pytest.raises(RecipeError, match="exactly one of"):
        load_recipe(str(bad))
    bad.write_text('[recipe]\ntable = "1"\nrow = "x"\n[generate]\n[train]\n[evaluate]\n[tiny.import]\n')
    with pytest.raises(RecipeError, match="does not have"):
        load_recipe(str(bad), tiny=True)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("experiments")


@pytest.mark.slow
@pytest.mark.parametrize("name", RECIPES)
def test_recipe_runs_in_tiny_form(name, work, monkeypatch):
    from experiments.runner import run_recipe

    monkeypatch.setenv("BGW_DEMO_IMAGES", "24")
    recipe = load_recipe(name, tiny=True)
    if recipe.table in PAPER_TABLES:  # BigBiGAN cannot be fetched here: the toy stands in
        assert recipe.stage("generate") is None or recipe.stage("generate")["gan"] == "toy"
    out = run_recipe(recipe, work, tiny=True, options=RunOptions(seeds=(0,)))
    assert sorted(p.name for p in out.glob("seed-*.json")) == ["seed-0.json"]
    record = json.loads((out / "seed-0.json").read_text())
    ds = record["results"]["datasets"]
    assert ds, "evaluation produced no dataset"
    for entry in ds.values():
        assert 0.0 <= entry["summary"]["max_f"]["mean"] <= 1.0


@pytest.mark.slow
def test_rerun_skips_finished_stages_and_table_reports_mean_std(work, monkeypatch):
    from experiments import runner

    monkeypatch.setenv("BGW_DEMO_IMAGES", "24")
    recipe = load_recipe("table2-ebigbigan", tiny=True)
    two = RunOptions(seeds=(0, 1))
    runner.run_recipe(recipe, work, tiny=True, options=two)
    calls = []
    monkeypatch.setattr(runner, "invoke", lambda stage, args: calls.append(stage))
    runner.run_recipe(recipe, work, tiny=True, options=two)
    assert calls == []  # every stage was finished: nothing ran again
    # the same settings in another table's recipe share the stages
    runner.run_recipe(load_recipe("table4-ebigbigan", tiny=True), work, tiny=True, options=two)
    assert calls == []
    from experiments.table import collect

    text = render([r for r in collect(work) if r["recipe"] == "table2-ebigbigan"])
    row = next(line for line in text.splitlines() if line.startswith("| table2-ebigbigan"))
    assert "(2) [0.797]" in row  # mean ± std over two seeds, beside the paper's ECSSD maxF


def test_stage_folders_are_content_addressed():
    a = digest({"gan": "toy", "n": 48})
    assert a == digest({"n": 48, "gan": "toy"}) and a != digest({"gan": "toy", "n": 49})


def test_recipes_are_valid_toml_with_known_sections():
    from experiments.recipe import RECIPES_DIR

    for path in RECIPES_DIR.glob("*.toml"):
        data = tomllib.loads(path.read_text())
        assert set(data) <= {"recipe", "paper", "tiny", "discover", "rank", "optimize", "generate", "import", "train",
                             "evaluate"}


def test_the_dcgan_recipe_finds_its_own_direction():
    r = load_recipe("extra-dcgan-faces")
    assert r.table not in PAPER_TABLES
    assert r.stage("discover")["gan"] == r.stage("rank")["gan"] == r.stage("generate")["gan"] == "dcgan-faces"
    assert r.stage("rank")["candidates"] == "@discovered" and r.stage("generate")["direction"] == "@direction"
    assert r.stage("generate")["latents"] == "prior"  # the DCGAN has no encoder
    assert r.stage("discover")["directions"] <= 100


def test_the_dcgan_optimize_recipe_takes_no_human_choice():
    r = load_recipe("extra-dcgan-faces-optimize")
    assert r.table not in PAPER_TABLES and r.stage("discover") is None
    assert r.stage("optimize")["gan"] == r.stage("generate")["gan"] == "dcgan-faces"
    assert set(r.stage("optimize")) <= {"gan", "seed"}  # the method's own defaults, nothing tuned
    assert r.stage("generate")["direction"] == "@direction" and r.stage("generate")["max_fg"] == "auto"


def test_optimize_and_discover_do_not_mix(tmp_path):
    bad = tmp_path / "both.toml"
    bad.write_text('[recipe]\ntable = "x"\nrow = "x"\n[discover]\n[rank]\n[optimize]\n[generate]\n[train]\n'
                   '[evaluate]\n')
    with pytest.raises(RecipeError, match="not both"):
        load_recipe(str(bad))


def _cli(*args):
    from click.testing import CliRunner

    from experiments.__main__ import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def test_dry_run_plans_without_running(tmp_path, monkeypatch):
    from experiments import runner

    monkeypatch.setattr(runner, "invoke", lambda *a: pytest.fail("a dry run ran a stage"))
    work = tmp_path / "work"
    res = _cli("run", "table2-ebigbigan", "--tiny", "--dry-run", "--work-dir", work, "--seed", "1",
               "--data-root", tmp_path / "data", "--gan", tmp_path / "my-bigbigan")
    assert res.exit_code == 0, res.output
    out = res.output
    assert "[table2-ebigbigan seed 1] train [to run]" in out and "seed 0" not in out
    assert f"--gan {tmp_path / 'my-bigbigan'}" in out and f"--data-root {tmp_path / 'data'}" in out
    assert "--seed 1 " in out or out.rstrip().endswith("--seed 1") or "--seed 1\n" in out
    assert "disk " in out and "total disk" in out
    assert not work.exists()  # nothing made, not even the demo images
    # the model is part of what a stage computes, where the data lives is not
    plain = _cli("run", "table2-ebigbigan", "--tiny", "--dry-run", "--work-dir", work, "--seed", "1")
    moved = _cli("run", "table2-ebigbigan", "--tiny", "--dry-run", "--work-dir", work, "--seed", "1",
                 "--data-root", tmp_path / "elsewhere")
    folders = [[line for line in r.output.splitlines() if line.startswith("  folder")] for r in (plain, moved, res)]
    assert folders[0] == folders[1] and folders[0][0] != folders[2][0]
    # per-seed data: one generate stage per seed; --gpus 2: training under torchrun
    both = _cli("run", "table2-ebigbigan", "--tiny", "--dry-run", "--work-dir", work, "--seeds", "0:2",
                "--data-per-seed", "--gpus", "2")
    assert both.output.count("] generate [") == 2 and "torchrun --nproc_per_node 2 -m trainer.cli" in both.output
    shared = _cli("run", "table2-ebigbigan", "--tiny", "--dry-run", "--work-dir", work, "--seeds", "0:2")
    assert shared.output.count("] generate [") == 1


@pytest.mark.parametrize("args, needle", [
    (["--seed", "-1"], "selects no seed"),
    (["--seeds", "3:3"], "selects no seed"),
    (["--seeds", "a:b"], "not a seed"),
    (["--seed", "1", "--seeds", "0:2"], "contradict"),
])
def test_bad_seed_choices_are_one_line(tmp_path, args, needle):
    res = _cli("run", "table2-ebigbigan", "--tiny", "--dry-run", "--work-dir", tmp_path, *args)
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code != 0 and len(lines) == 1 and needle in lines[0], res.output


@pytest.mark.slow
def test_seeds_run_apart_and_the_table_collects_them(tmp_path, monkeypatch):
    monkeypatch.setenv("BGW_DEMO_IMAGES", "24")
    work = tmp_path / "work"
    res = _cli("run", "table2-bigbigan", "--tiny", "--work-dir", work, "--seed", "1", "--gan", "toy",
               "--data-root", tmp_path)
    assert res.exit_code == 0, res.output
    assert "[table2-bigbigan seed 1] evaluate: running eval-seg" in res.output
    results = work / "results" / "table2-bigbigan"
    assert sorted(p.name for p in results.glob("*.json")) == ["seed-1.json"]
    # another machine (here: another call) runs seed 0 into the same work folder; the data is shared
    res = _cli("run", "table2-bigbigan", "--tiny", "--work-dir", work, "--seed", "0", "--gan", "toy")
    assert res.exit_code == 0, res.output
    assert "[table2-bigbigan all seeds] generate: done already" in res.output
    assert sorted(p.name for p in results.glob("*.json")) == ["seed-0.json", "seed-1.json"]
    table = _cli("table", "--work-dir", work)
    row = next(line for line in table.output.splitlines() if line.startswith("| table2-bigbigan"))
    assert "(2) [0.782]" in row


@pytest.mark.slow
def test_training_under_torchrun_on_two_cpu_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("BGW_DEMO_IMAGES", "24")
    res = _cli("run", "table2-bigbigan", "--tiny", "--work-dir", tmp_path, "--seed", "0", "--gpus", "2")
    assert res.exit_code == 0, res.output
    run = next((tmp_path / "train").iterdir())
    config = json.loads((run / "config.json").read_text())
    assert config["steps"] == 3 and (run / "DONE.json").is_file()
    assert sorted(p.name for p in (tmp_path / "results" / "table2-bigbigan").glob("*.json")) == ["seed-0.json"]
