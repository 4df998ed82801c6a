"""python -m experiments run RECIPE [--tiny] [--seeds N] | table | list"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from core.cli import Group, common_options
from experiments.recipe import list_recipes, load_recipe
from experiments.runner import run_recipe
from experiments.table import write_table

WORK = Path("runs") / "experiments"


@click.group(cls=Group)
@common_options(fmt="%(message)s")
def cli() -> None:
    """Recipes that reproduce the paper's tables: generation -> training -> evaluation per seed.

    -v logs every stage's command line.
    """


@cli.command("list")
def list_cmd() -> None:
    """List the recipes, one per table row."""
    for name in list_recipes():
        r = load_recipe(name)
        click.echo(f"{name:34s} table {r.table:2s} {r.row}")


@cli.command()
@click.argument("recipe")
@click.option("--work", type=click.Path(path_type=Path), default=WORK, show_default=True,
              help="Folder for every stage's output; finished stages are skipped on a re-run.")
@click.option("--tiny", is_flag=True, help="The recipe at toy scale (the toy GAN, a few steps): checks the plumbing.")
@click.option("--seeds", type=click.IntRange(min=1), default=None, help="Override the recipe's number of seeds.")
def run(recipe: str, work: Path, tiny: bool, seeds: int | None) -> None:
    """Run RECIPE (a name from `list` or a .toml path) for every seed."""
    out = run_recipe(load_recipe(recipe, tiny=tiny), work, tiny=tiny, seeds=seeds)
    click.echo(f"results: {out}")


@cli.command()
@click.option("--work", type=click.Path(path_type=Path), default=WORK, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Default: WORK/results.md")
def table(work: Path, out: Path | None) -> None:
    """Collect finished recipes into results.md: mean ± std beside the paper's numbers."""
    path = write_table(work, out or work / "results.md")
    click.echo(path.read_text())
    click.echo(f"written: {path}")


def main() -> None:
    cli.main(prog_name="python -m experiments")


if __name__ == "__main__":
    sys.exit(main())
