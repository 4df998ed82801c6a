"""Every recipe runs in its tiny form (toy GAN, a few steps), so a recipe that would fail at hour
three fails here; the runner skips finished stages and the table shows mean ± std beside the paper."""
from __future__ import annotations

import json
import tomllib

import pytest

from core.registry import UnknownNameError
from experiments.recipe import PAPER_TABLES, RecipeError, list_recipes, load_recipe
from experiments.runner import RunOptions, StageError, command_of, digest, stage_args, to_args
from experiments.table import render

pytest.importorskip("tensorflow_hub")
pytest.importorskip("torch")

RECIPES = list_recipes()
PAPER_RECIPES = [n for n in RECIPES if load_recipe(n).table in PAPER_TABLES]
# Table 4's first row is Voynov & Babenko's method on BigGAN, with their own code's settings
VB_ROW = "Voynov & Babenko (2020)"
BIGBIGAN_RECIPES = [n for n in PAPER_RECIPES if load_recipe(n).row != VB_ROW]


def test_every_table_row_of_the_paper_has_a_recipe():
    tables = [load_recipe(n).table for n in PAPER_RECIPES]
    assert set(tables) == set(PAPER_TABLES)
    assert tables.count("1") == 6  # 3 methods x CUB, Flowers
    assert tables.count("5") == 5  # base + four components


@pytest.mark.parametrize("name", BIGBIGAN_RECIPES)
def test_full_recipe_keeps_the_papers_protocol(name):
    r = load_recipe(name)
    assert r.seeds == 10  # the paper reports ten runs
    # the paper's schedule, trained in fp32 as the reference code does (train-unet's GPU default is bf16)
    assert r.stage("train") == {"steps": 12000, "batch": 95, "precision": "fp32"}
    assert r.paper, "the paper's own numbers are typed into every recipe"
    # the paper's numbers were scored with sigmoid(logits[:, 1]) (the authors' code before 835b90a);
    # softmax, its later rule, is scored too, after it (docs/RULES.md)
    assert r.stage("evaluate")["fg_prob"] == ["sigmoid1", "softmax"]
    gen = r.stage("generate")
    if gen is not None:
        assert gen["gan"] == "bigbigan" and gen["n"] == 1_000_000
        # the reference code's 8-connectivity wherever the components filter runs (docs/RULES.md)
        assert gen.get("connectivity") == ("8" if gen.get("components_filter", True) else None)
        if gen.get("latents") == "embeddings":
            assert gen["alpha"] == (0.0 if gen["dataset"] == "imagenet" or "noise" not in name else 0.2)
        if "flowers" in name:
            assert gen["preset"] == "flowers"


def test_the_voynov_babenko_row_follows_their_saliency_code():
    # GANLatentDiscovery: segmentation/train_segmentation.py (SegmentationTrainParams, --classes) and
    # gan_segmentation.py (MaskGenerator with use_diff), run_train.py (discovery on class 239)
    (name,) = [n for n in PAPER_RECIPES if load_recipe(n).row == VB_ROW]
    r = load_recipe(name)
    assert r.table == "4" and r.seeds == 10
    assert r.paper["ecssd"] == {"max_f": 0.778, "iou": 0.648, "acc": 0.904}
    assert r.paper["duts-te"] == {"max_f": 0.604, "iou": 0.478, "acc": 0.889}
    assert r.paper["dut-omron"] == {"max_f": 0.56, "iou": 0.444, "acc": 0.878}
    assert r.stage("discover")["gan"] == "biggan" and r.stage("discover")["classes"] == "239"
    assert r.stage("discover")["directions"] == 120 and r.stage("discover")["steps"] == 100_000
    assert r.stage("rank")["mask_rule"] == "background-removal"  # oriented for the rule it is used with
    gen = r.stage("generate")
    assert gen["gan"] == "biggan" and gen["latents"] == "prior" and gen["classes"] == "all"
    assert gen["mask_rule"] == "background-removal" and gen["shift"] == 22 and gen["shifted_images"] == 0.1
    assert not gen["components_filter"] and not gen["size_filter"] and not gen["histogram_filter"]
    assert gen["n"] == 10_000 * 64  # their on-line samples: 10^4 steps of 64
    assert r.stage("train") == {"steps": 10000, "batch": 64, "lr": 0.005, "weight_decay": 1e-5,
                                "lr_milestones": "3000,6000,9000", "lr_gamma": 0.2, "precision": "fp32"}
    assert r.stage("evaluate")["fg_prob"] == ["sigmoid1", "softmax"]
    assert r.stage("evaluate")["input_size"] == 128


def test_the_voynov_babenko_row_runs_on_a_stand_in_of_biggans_hub_interface(tmp_path, biggan_standin, monkeypatch):
    # the tiny form with --gan: a class-conditional model through discover, rank, gen-synth (a class per
    # sample, the centred pair, shifted images), train-unet and eval-seg
    from experiments.runner import run_recipe
    from shardset import iter_samples

    monkeypatch.setenv("BGW_DEMO_IMAGES", "24")
    (name,) = [n for n in PAPER_RECIPES if load_recipe(n).row == VB_ROW]
    out = run_recipe(load_recipe(name, tiny=True), tmp_path / "w", tiny=True,
                     options=RunOptions(seeds=(0,), gan=str(biggan_standin)))
    record = json.loads((out / "seed-0.json").read_text())
    assert record["results"]["datasets"]
    (manifest,) = (tmp_path / "w" / "generate").glob("*/set.json")
    params = json.loads(manifest.read_text())["params"]
    assert params["latents"]["classes"]["set"] == "all" and params["latents"]["classes"]["num_classes"] == 1000
    assert params["direction"]["pair_shifts"] == [-11.0, 11.0]
    assert params["image"]["shifted"]["fraction"] == 0.1
    samples = [x for shard in sorted(manifest.parent.glob("set-*.tar.zst")) for x in iter_samples(str(shard))]
    assert all(0 <= s["meta"]["class"] < 1000 for s in samples)
    assert len({s["meta"]["class"] for s in samples}) > 10
    (ranking,) = (tmp_path / "w").rglob("ranking.json")
    winner = json.loads(ranking.read_text())["winner"]
    assert winner["orient_rule"] == "background-removal"


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
    with pytest.raises(UnknownNameError, match="unknown recipe 'table9-nothing'.*choose from .*table2-ebigbigan"):
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
    (tmp_path / "my-bigbigan").mkdir()  # the dry run checks that the GAN's folder is there
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
    # the tiny recipe has two seeds: more is a choice made out loud, never a typo that runs
    (["--seed", "99"], "--seed 99 reaches beyond table2-ebigbigan's 2 seeds (0..1); pass --extra-seeds"),
    (["--seeds", "0:100000"], "selects 100000 seeds; a run takes at most 1000"),
    (["--seeds", "0:100000", "--extra-seeds"], "selects 100000 seeds; a run takes at most 1000"),
    (["--seeds", "1000000000000"], "a run takes at most 1000"),  # refused before a range is built
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


def test_extra_seeds_are_run_when_asked_for(tmp_path):
    res = _cli("run", "table2-ebigbigan", "--tiny", "--dry-run", "--work-dir", tmp_path, "--seeds", "1:4",
               "--extra-seeds")
    assert res.exit_code == 0, res.output
    assert [s for s in ("seed 1", "seed 2", "seed 3", "seed 4") if f"[table2-ebigbigan {s}] train" in res.output] == [
        "seed 1", "seed 2", "seed 3"]


def test_dry_run_prints_commands_a_shell_reads_back_as_they_run(tmp_path, monkeypatch):
    import shlex

    from experiments import runner

    monkeypatch.setattr(runner, "invoke", lambda *a: pytest.fail("a dry run ran a stage"))
    hostile = str(tmp_path / "x; touch pwned")
    (tmp_path / "x; touch pwned").mkdir()  # a GAN folder that is there: the dry run checks it
    res = _cli("run", "table2-ebigbigan", "--tiny", "--dry-run", "--work-dir", tmp_path / "my work", "--seed", "0",
               "--gan", hostile, "--data-root", tmp_path / "data $(touch pwned)")
    assert res.exit_code == 0, res.output
    commands = [line.split("$ ", 1)[1] for line in res.output.splitlines() if line.startswith("  $ ")]
    gen = shlex.split(next(c for c in commands if c.startswith("gen-synth")))
    assert gen[gen.index("--gan") + 1] == hostile  # one argument, as the real run passes it (plain argv)
    recipe = load_recipe("table2-ebigbigan", tiny=True)
    options = RunOptions(seeds=(0,), gan=hostile, data_root=str(tmp_path / "data $(touch pwned)"))
    stages = runner.plan_recipe(recipe, runner.Workspace(tmp_path / "my work", dry=True), options)
    assert [shlex.split(c)[1:] for c in commands] == [st.args(False) for st in stages]
    assert "; touch pwned'" in res.output and not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("value", ["1e11", "0", "-3", "1001", "true", '"10"', "2.5"])
def test_a_recipes_seeds_are_a_small_whole_number(tmp_path, value):
    bad = tmp_path / "seeds.toml"
    bad.write_text(f'[recipe]\ntable = "x"\nrow = "x"\nseeds = {value}\n[generate]\n[train]\n[evaluate]\n')
    with pytest.raises(RecipeError, match=r"\[recipe\] seeds = .*; give a whole number of runs from 1 to 1000"):
        load_recipe(str(bad))
    res = _cli("run", bad, "--dry-run", "--work-dir", tmp_path)
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code != 0 and len(lines) == 1 and "whole number of runs" in lines[0], res.output
    bad.write_text('[recipe]\ntable = "x"\nrow = "x"\n[generate]\n[train]\n[evaluate]\n'
                   f'[tiny]\nseeds = {value}\n')
    with pytest.raises(RecipeError, match=r"\[tiny\] seeds"):
        load_recipe(str(bad), tiny=True)


def test_the_runner_never_plans_more_seeds_than_it_can_hold(tmp_path):
    from experiments.runner import Workspace, plan_recipe

    recipe = load_recipe("table2-ebigbigan", tiny=True)
    with pytest.raises(StageError, match="2000 seeds; a run takes 1 to 1000"):
        plan_recipe(recipe, Workspace(tmp_path, dry=True), RunOptions(seeds=tuple(range(2000))))


def _stages_by_kind(tmp_path):
    from experiments.runner import Workspace, plan_recipe

    recipe = load_recipe("table2-ebigbigan", tiny=True)
    return {st.kind: st for st in plan_recipe(recipe, Workspace(tmp_path, dry=True), RunOptions(seeds=(0,)))}


@pytest.mark.parametrize("kind, killed, resumable", [
    ("train", ["config.json", "metrics.jsonl"], False),  # killed before its first checkpoint
    ("train", ["config.json", "checkpoints/last.json"], True),
    ("generate", [".set.records/set.json", "set.json"], False),  # killed before its first shard
    ("generate", [".set.records/set.json", ".set.records/000000.json"], True),
    ("generate", [".set.records/set.json", "set-000001.tar.zst"], True),  # a shard whose record is not written yet
])
def test_a_stage_resumes_only_what_its_tool_can_resume(tmp_path, monkeypatch, kind, killed, resumable):
    from experiments import runner

    stage = _stages_by_kind(tmp_path)[kind]
    for name in killed:
        (stage.folder / name).parent.mkdir(parents=True, exist_ok=True)
        (stage.folder / name).write_text("{}")
    calls = []
    monkeypatch.setattr(runner, "invoke", lambda kind_, args: calls.append(args))
    assert stage.can_resume is resumable
    assert f"[{'partial: will resume' if resumable else 'partial: will start afresh'}]" in runner.describe_plan(
        load_recipe("table2-ebigbigan", tiny=True), [stage], RunOptions(gpus=0))
    runner.run_stage(stage, RunOptions(gpus=0))
    assert ("--resume" in calls[0]) is resumable and stage.done
    # the tool starts afresh in its own folder, under its own lock: a folder another machine may be
    # writing is never cleared from under it
    assert all((stage.folder / name).exists() for name in killed)


def test_a_stage_that_cannot_resume_is_redone_in_a_clean_folder(tmp_path, monkeypatch):
    from experiments import runner

    stage = _stages_by_kind(tmp_path)["evaluate"]
    stage.folder.mkdir(parents=True)
    (stage.folder / "results.json.tmp").write_text("half")
    calls = []

    def invoke(kind, args):
        calls.append(args)
        stage.folder.mkdir()

    monkeypatch.setattr(runner, "invoke", invoke)
    runner.run_stage(stage, RunOptions())
    assert "--resume" not in calls[0] and not (stage.folder / "results.json.tmp").exists() and stage.done


def test_a_training_killed_before_its_first_checkpoint_is_started_afresh(tmp_path):
    """The bug: the rerun passed --resume and train-unet refused (\"holds no checkpoint\")."""
    from experiments import runner
    from trainer.toy import write_disc_set

    shards = write_disc_set(tmp_path / "set", "discs", n_train=16, n_val=8, size=32, shard_size=8)
    folder = tmp_path / "train" / "run"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"steps": 2}')  # what a run killed before its first checkpoint leaves
    (folder / "metrics.jsonl").write_text('{"kind": "train", "step": 1}\n')
    opts = {"shards": str(shards), "size": 32, "width": 4, "batch": 4, "steps": 2, "val_every": 0, "val_samples": 8,
            "num_workers": 0, "shuffle_buffer": 8, "ckpt_every": 2, "cpu_threads": 1, "device": "cpu"}
    stage = runner.Stage("train", 0, opts, folder, resumable=True,
                         args=lambda resume: runner.stage_args("train", {**opts, "out": str(folder), "resume": resume}))
    runner.run_stage(stage, RunOptions(gpus=0))
    assert json.loads((folder / "checkpoints" / "last.json").read_text())["step"] == 2 and stage.done
