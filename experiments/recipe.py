"""A recipe: one row of one of the paper's tables, as a small declarative TOML file.

    [recipe]   table, row, seeds (the paper reports ten runs), vary_generation (new data per seed?)
    [paper]    the paper's own numbers for this row, per dataset: { max_f, iou, acc } or { max_box_acc } ...;
               where the paper gives a standard deviation, `std = { max_f = 0.005, ... }` inside the
               dataset's table, a number or a bound written as a string "<0.001" (Table 1's "< 0.001")
    [discover] optional: `find-direction discover` options, for a GAN without a known direction
    [rank]     optional, with [discover]: `find-direction rank` options; its winner is `@direction`
    [optimize] optional, instead of [discover] + [rank]: `find-direction optimize` options; its
               direction is `@direction`
    [generate] gen-synth options (flag names without the leading dashes), or
    [import]   shardset-import options (Table 6: masks from an external saliency model)
    [train]    train-unet options
    [evaluate] eval-seg options; `datasets` is a list
    [tiny.*]   overrides of the sections above: the same recipe at toy scale, run by the test suite

Values starting with `@` are filled in by the runner: `@demo-images` (a generated folder of images with
masks, see demo_data.py), `@shards` (the shard set this recipe generated), `@shared:NAME`
(`../shared/data/NAME` when present, dropped otherwise), `@discovered` (the directions [discover]
learnt) and `@direction` (the direction [rank] picked, or [optimize] fitted).

Recipes of the paper's tables have `table` "1".."6"; other recipes (a GAN the paper did not use) name
their own table, e.g. "extra"."""
from __future__ import annotations

import copy
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import UserError
from core.registry import Registry

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
# seeds a recipe (or one run) may have: the paper reports ten; the bound keeps a plan (a few stages
# per seed, with folders and command lines) small enough to hold and to print
MAX_SEEDS = 1000
STAGES = ("discover", "rank", "optimize", "generate", "import", "train", "evaluate")
PAPER_TABLES = ("1", "2", "3", "4", "5", "6")


class RecipeError(UserError, ValueError):
    """A recipe that cannot run: the message names the file and the problem."""


def paper_std(value) -> tuple[float, bool]:
    """A [paper] std as (value, exact): 0.005 -> (0.005, True); "<0.001", the paper's "< 0.001",
    -> (0.001, False), a bound the std is below."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value), True
    if isinstance(value, str) and value.replace(" ", "").startswith("<"):
        try:
            bound = float(value.replace(" ", "")[1:])
        except ValueError:
            bound = -1.0
        if bound > 0:
            return bound, False
    raise ValueError(f"std {value!r}: give a number >= 0 or a bound such as \"<0.001\"")


def _check_paper(paper, path: Path) -> dict:
    """[paper] is {dataset: {metric: number, std: {metric: std}}}: a typo here would only show as a
    missing bracket in the table, so it is refused at load."""
    if not isinstance(paper, dict):
        raise RecipeError(f"{path}: [paper] must be a table of datasets")
    for ds, numbers in paper.items():
        if not isinstance(numbers, dict):
            raise RecipeError(f"{path}: [paper] {ds} must be a table such as {{ max_f = 0.8 }}")
        for metric, value in numbers.items():
            if metric == "std":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise RecipeError(f"{path}: [paper] {ds}.{metric} = {value!r}; give a number")
        std = numbers.get("std", {})
        if not isinstance(std, dict):
            raise RecipeError(f"{path}: [paper] {ds}.std must be a table such as {{ max_f = 0.005 }}")
        for metric, value in std.items():
            if metric not in numbers or metric == "std":
                raise RecipeError(f"{path}: [paper] {ds}.std.{metric} has no mean beside it")
            try:
                paper_std(value)
            except ValueError as exc:
                raise RecipeError(f"{path}: [paper] {ds}.std.{metric}: {exc}") from None
    return paper


@dataclass(frozen=True)
class Recipe:
    name: str
    path: Path
    table: str
    row: str
    seeds: int
    vary_generation: bool
    paper: dict = field(default_factory=dict)
    stages: dict = field(default_factory=dict)  # stage name -> options dict

    def stage(self, name: str) -> dict | None:
        opts = self.stages.get(name)
        return None if opts is None else copy.deepcopy(opts)


def _seed_count(value, path: Path, where: str) -> int:
    # bool is an int to Python; 1e11 is a float TOML reads happily
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SEEDS:
        raise RecipeError(f"{path}: {where} = {value!r}; give a whole number of runs from 1 to {MAX_SEEDS}")
    return value


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.toml"))


def load_recipe(name_or_path: str, *, tiny: bool = False) -> Recipe:
    path = Path(name_or_path)
    if not path.suffix:
        known: Registry[Path] = Registry("recipe")
        for name in list_recipes():
            known.register(name, RECIPES_DIR / f"{name}.toml")
        path = known.get(name_or_path)  # a misspelt name: the close ones and every recipe, exit 2
    if not path.is_file():
        raise RecipeError(f"no recipe file {name_or_path!r}; give a recipe's name (python -m experiments list) "
                          f"or the path of a .toml file")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: not valid TOML ({exc})") from None
    head = data.get("recipe", {})
    for key in ("table", "row"):
        if key not in head:
            raise RecipeError(f"{path}: [recipe] lacks {key!r}")
    stages = {s: dict(data[s]) for s in STAGES if s in data}
    if ("generate" in stages) == ("import" in stages):
        raise RecipeError(f"{path}: give exactly one of [generate] or [import]")
    for s in ("train", "evaluate"):
        if s not in stages:
            raise RecipeError(f"{path}: [{s}] is missing")
    if ("discover" in stages) != ("rank" in stages):
        raise RecipeError(f"{path}: [discover] and [rank] come together (rank picks among what discover learnt)")
    if "optimize" in stages and "discover" in stages:
        raise RecipeError(f"{path}: give [optimize] or [discover] + [rank], not both (each makes @direction)")
    unknown = set(data) - {"recipe", "paper", "tiny", *STAGES}
    if unknown:
        raise RecipeError(f"{path}: unknown sections {sorted(unknown)}; known: recipe, paper, tiny, {', '.join(STAGES)}")
    seeds = _seed_count(head.get("seeds", 10), path, "[recipe] seeds")
    if tiny:
        for s, over in data.get("tiny", {}).items():
            if s == "seeds":
                seeds = _seed_count(over, path, "[tiny] seeds")
                continue
            if s not in stages:
                raise RecipeError(f"{path}: [tiny.{s}] overrides a stage the recipe does not have")
            stages[s].update(over)
            stages[s] = {k: v for k, v in stages[s].items() if v != "@drop"}
    return Recipe(
        name=path.stem,
        path=path,
        table=str(head["table"]),
        row=str(head["row"]),
        seeds=seeds,
        vary_generation=bool(head.get("vary_generation", False)),
        paper=_check_paper(data.get("paper", {}), path),
        stages=stages,
    )
