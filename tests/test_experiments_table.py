"""The results table beside the paper: its std where the paper gives one (Table 1's best model), whether
our mean is within it, and one row per foreground-probability rule a run was scored with."""
from __future__ import annotations

import pytest

from experiments.recipe import RecipeError, load_recipe, paper_std
from experiments.table import render, within_std


def _seed(seed: int, rule: str, iou: float, other: dict | None = None) -> dict:
    def results(r, v):
        return {"fg_prob": r, "datasets": {"flowers": {"summary": {"iou": {"mean": v}, "accuracy": {"mean": 0.9}}}}}
    return {"seed": seed, "results": results(rule, iou),
            "by_fg_prob": {rule: results(rule, iou)} | {r: results(r, v) for r, v in (other or {}).items()}}


def _record(seeds: list[dict], paper: dict) -> dict:
    return {"recipe": "table1-flowers-ebigbigan-noise", "table": "1", "row": "E-BigBiGAN (with z-noising)",
            "tiny": False, "paper": paper, "seeds": seeds}


def test_table1_best_rows_quote_the_papers_std_row():
    cub = load_recipe("table1-cub-ebigbigan-noise").paper["cub"]
    assert cub["std"] == {"max_f": 0.005, "iou": 0.007, "acc": 0.002}
    flowers = load_recipe("table1-flowers-ebigbigan-noise").paper["flowers"]
    assert flowers["std"] == {"max_f": 0.001, "iou": "<0.001", "acc": "<0.001"}
    # the paper gives the std for its best model only
    assert "std" not in load_recipe("table1-cub-bigbigan").paper["cub"]


def test_a_std_is_a_number_or_a_bound():
    assert paper_std(0.005) == (0.005, True)
    assert paper_std("<0.001") == (0.001, False) == paper_std("< 0.001")
    for bad in ("0.001", "<x", -1, True, "<0"):
        with pytest.raises(ValueError):
            paper_std(bad)


def test_within_std_counts_a_bound_as_its_value():
    assert within_std(0.879, 0.878, 0.001) and not within_std(0.880, 0.878, 0.001)
    assert within_std(0.8045, 0.804, "<0.001") and not within_std(0.806, 0.804, "<0.001")


def test_a_bad_paper_std_is_a_one_line_recipe_error(tmp_path):
    path = tmp_path / "r.toml"
    base = '[recipe]\ntable = "1"\nrow = "x"\n[generate]\n[train]\n[evaluate]\n[paper]\n'
    path.write_text(base + 'cub = { iou = 0.7, std = { iou = "about 0.01" } }\n')
    with pytest.raises(RecipeError, match=r"cub.std.iou"):
        load_recipe(str(path))
    path.write_text(base + 'cub = { iou = 0.7, std = { acc = 0.01 } }\n')
    with pytest.raises(RecipeError, match="no mean beside it"):
        load_recipe(str(path))
    path.write_text(base + 'cub = { iou = "0.7" }\n')
    with pytest.raises(RecipeError, match="give a number"):
        load_recipe(str(path))


def test_table_prints_the_papers_std_and_says_whether_ours_is_within_it():
    paper = load_recipe("table1-flowers-ebigbigan-noise").paper
    text = render([_record([_seed(0, "sigmoid1", 0.8040, {"softmax": 0.790}),
                            _seed(1, "sigmoid1", 0.8046, {"softmax": 0.792})], paper)])
    lines = text.splitlines()
    assert "| recipe | row | fg prob | flowers maxFβ | flowers IoU | flowers Acc | within std |" in lines
    own = next(x for x in lines if "| sigmoid1 |" in x)
    # ours 0.8043 ± 0.0003 over two seeds beside the paper's 0.804 ± <0.001: within; accuracy 0.900 vs 0.904: not
    assert "0.804 ± 0.000 (2) [0.804 ± <0.001] ✓" in own
    assert "0.900 ± 0.000 (2) [0.904 ± <0.001] ✗" in own
    assert "[0.878 ± 0.001]" in own and own.endswith("| no |")
    # the other rule, scored from the same checkpoints, on its own row below
    other = next(x for x in lines if "| softmax |" in x)
    assert lines.index(own) < lines.index(other) and "0.791 ± 0.001 (2) [0.804 ± <0.001] ✗" in other


def test_a_record_scored_once_keeps_one_row_without_a_std_column():
    seed = {"seed": 0, "results": {"fg_prob": "sigmoid1", "datasets": {"ecssd": {"summary": {"max_f": {"mean": 0.8}}}}}}
    text = render([{"recipe": "table2-ebigbigan", "table": "2", "row": "E-BigBiGAN", "tiny": True,
                    "paper": {"ecssd": {"max_f": 0.797}}, "seeds": [seed]}])
    rows = [x for x in text.splitlines() if x.startswith("| table2")]
    assert rows == ["| table2-ebigbigan (tiny) | E-BigBiGAN | sigmoid1 | 0.800 ± 0.000 (1) [0.797] |"]


def test_a_recipe_listing_two_fg_prob_rules_plans_one_evaluation_per_rule(tmp_path):
    from experiments.runner import RunOptions, Workspace, plan_recipe

    recipe = load_recipe("table2-ebigbigan")
    stages = plan_recipe(recipe, Workspace(tmp_path, dry=True), RunOptions(seeds=(0,)))
    evals = [s for s in stages if s.kind == "evaluate"]
    assert [s.opts["fg_prob"] for s in evals] == ["sigmoid1", "softmax"]
    assert evals[0].folder != evals[1].folder
    assert "--fg-prob" in (args := evals[1].args(False)) and args[args.index("--fg-prob") + 1] == "softmax"
    # the recipe's own rule keeps the folder a single-rule recipe had: finished evaluations are reused
    single = recipe.stages["evaluate"] | {"fg_prob": "sigmoid1"}
    one = plan_recipe(type(recipe)(**{**recipe.__dict__, "stages": {**recipe.stages, "evaluate": single}}),
                      Workspace(tmp_path, dry=True), RunOptions(seeds=(0,)))
    assert [s.folder for s in one if s.kind == "evaluate"] == [evals[0].folder]


def test_the_seed_record_keeps_every_rules_results(tmp_path):
    import json

    from experiments.runner import _write_seed_result
    from experiments.table import collect

    dirs = []
    for rule, v in (("sigmoid1", 0.81), ("softmax", 0.79)):
        d = tmp_path / rule
        d.mkdir()
        (d / "results.json").write_text(json.dumps(
            {"fg_prob": rule, "datasets": {"flowers": {"summary": {"iou": {"mean": v}}}}}))
        dirs.append(d)
    recipe = load_recipe("table1-flowers-ebigbigan-noise")
    path = _write_seed_result(tmp_path / "work", recipe, 0, False, dirs)
    record = json.loads(path.read_text())
    assert record["results"]["fg_prob"] == "sigmoid1" and set(record["by_fg_prob"]) == {"sigmoid1", "softmax"}
    text = render(collect(tmp_path / "work"))
    assert "| sigmoid1 | — [0.878 ± 0.001] | 0.810 ± 0.000 (1) [0.804 ± <0.001] ✗ |" in text
    assert "| softmax | — [0.878 ± 0.001] | 0.790 ± 0.000 (1) [0.804 ± <0.001] ✗ |" in text


def test_table3_scores_imagenet_on_the_10000_image_val_split():
    r = load_recipe("table3-ebigbigan")
    assert r.stage("evaluate")["datasets"][0] == "imagenet-wsol-val"
    assert r.paper["imagenet-wsol-val"] == {"max_box_acc": 0.614}
