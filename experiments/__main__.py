"""python -m experiments list | run RECIPE [--seed K | --seeds A:B] [--extra-seeds] [--dry-run] ... | table"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from core.cli import Group, common_options
from experiments.recipe import MAX_SEEDS, list_recipes, load_recipe
from core.errors import UserError
from experiments.runner import (DEFAULT_WORK_DIR, RunOptions, Workspace, check_inputs, describe_plan, plan_recipe,
                                run_recipe, seeds_text)
from experiments.table import write_table

_work_dir = click.option("--work-dir", "work", type=click.Path(file_okay=False, path_type=Path),
                         default=DEFAULT_WORK_DIR, show_default=True,
                         help="Folder of every stage's output (env BGW_WORK_DIR); finished stages are skipped "
                              "on a re-run, and machines that share it share the stages.")


def _seed_range(ctx, param, value):
    """--seed K -> (K,); --seeds A:B -> (A, ..., B-1); --seeds N -> (0, ..., N-1)."""
    if value is None:
        return None
    try:
        if ":" in value:
            a, b = (int(v) for v in value.split(":"))
        elif param.name == "seeds":
            a, b = 0, int(value)
        else:
            a = int(value)
            b = a + 1
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a seed K, a count N or a range A:B (A included, B not)") from None
    if a < 0 or b <= a:
        raise click.BadParameter(f"{value!r} selects no seed: give K >= 0, N >= 1 or A:B with 0 <= A < B")
    if b - a > MAX_SEEDS:  # checked before the range is built: --seeds 0:10**12 is refused, not held
        raise click.BadParameter(f"{value!r} selects {b - a} seeds; a run takes at most {MAX_SEEDS}")
    return tuple(range(a, b))


def _check_seeds(recipe, flag: str, seeds: tuple[int, ...] | None, extra: bool) -> None:
    """Seeds beyond the recipe's own are a choice to make out loud (--extra-seeds), not a typo to run."""
    if seeds is None or extra or max(seeds) < recipe.seeds:
        return
    chosen = f"--seed {seeds[0]}" if flag == "--seed" else f"--seeds {seeds[0]}:{seeds[-1] + 1}"
    raise click.UsageError(f"{chosen} reaches beyond {recipe.name}'s {recipe.seeds} seeds (0..{recipe.seeds - 1}); "
                           "pass --extra-seeds to run seeds the recipe does not have")


@click.group(cls=Group)
@common_options(fmt="%(message)s")
def cli() -> None:
    """Recipes that reproduce the paper's tables: [discover -> rank ->] generate -> train -> evaluate per seed.

    -v logs every tool's command line.
    """


@cli.command("list")
def list_cmd() -> None:
    """List the recipes, one per table row."""
    for name in list_recipes():
        r = load_recipe(name)
        click.echo(f"{name:34s} table {r.table:5s} seeds {r.seeds:2d}  {r.row}")


@cli.command()
@click.argument("recipe")
@_work_dir
@click.option("--seed", "seed", callback=_seed_range, default=None, metavar="K",
              help="Run seed K only (0-based), e.g. on one machine of several.")
@click.option("--seeds", "seeds", callback=_seed_range, default=None, metavar="A:B|N",
              help="Run seeds A..B-1 (0:5 is seeds 0-4), or N: the first N seeds, 0..N-1 (not seed N: that is "
                   "--seed N). [default: all of the recipe's]")
@click.option("--extra-seeds", is_flag=True,
              help="Allow --seed/--seeds beyond the recipe's seeds (more runs than the paper's ten).")
@click.option("--data-root", type=click.Path(file_okay=False), default=None,
              help="Folder of the named datasets (passed to gen-synth, train-unet and eval-seg). [env BGW_DATA_ROOT]")
@click.option("--gan", default=None,
              help="Replace the recipe's model: a local copy of the module, a TF-Hub handle or another name.")
@click.option("--gpus", type=click.IntRange(min=0), default=None,
              help="train-unet processes: > 1 runs it under torchrun (NCCL on GPUs, gloo on CPUs). "
                   "[default: every visible CUDA GPU]")
@click.option("--data-per-seed/--shared-data", default=None,
              help="Generate a new shard set for every seed (as the paper's on-line generation does) or one "
                   "for all seeds. [default: the recipe's vary_generation]")
@click.option("--keep-checkpoints", type=click.IntRange(min=0), default=None,
              help="train-unet keeps the newest N checkpoints and the best (0 = all). [default: 1]")
@click.option("--tiny", is_flag=True, help="The recipe at toy scale (a few steps on the toy GAN): checks the plumbing.")
@click.option("--dry-run", is_flag=True, help="Print every stage's command, folder, status and estimated disk "
                                              "and time, check the inputs (data root, datasets, GAN), and run "
                                              "nothing; exits 1 after the plan when an input is missing.")
@common_options(fmt="%(message)s")
def run(recipe: str, work: Path, seed, seeds, extra_seeds, data_root, gan, gpus, data_per_seed, keep_checkpoints,
        tiny, dry_run) -> None:
    """Run RECIPE (a name from `list` or a .toml path): its unfinished stages, for the chosen seeds."""
    import os

    if seed is not None and seeds is not None:
        raise click.UsageError("--seed and --seeds contradict each other; pass one")
    r = load_recipe(recipe, tiny=tiny)
    _check_seeds(r, "--seed" if seed is not None else "--seeds", seed or seeds, extra_seeds)
    options = RunOptions(seeds=seed or seeds, data_root=data_root or os.environ.get("BGW_DATA_ROOT"), gan=gan, gpus=gpus,
                         data_per_seed=data_per_seed, keep_checkpoints=keep_checkpoints)
    if dry_run:
        ws = Workspace(work, dry=True)
        stages = plan_recipe(r, ws, options)
        checks = check_inputs(stages, options, ws)
        click.echo(describe_plan(r, stages, options, checks))
        # the whole plan first, then the refusal: its disk and time are worth reading while the data
        # is fetched, and every missing input is listed at once rather than one per try
        if checks[0]:
            n = len(checks[0])
            raise UserError(f"{n} input{'s are' if n > 1 else ' is'} missing (the 'problem:' lines above); "
                            "the plan cannot run as it stands")
        return
    click.echo(seeds_text(r, options))
    out = run_recipe(r, work, tiny=tiny, options=options, echo=click.echo)
    click.echo(f"results: {out}/ (python -m experiments table --work-dir {work})")


@cli.command()
@_work_dir
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Default: WORK_DIR/results.md")
def table(work: Path, out: Path | None) -> None:
    """Collect finished seeds into results.md: mean ± std beside the paper's numbers."""
    path = write_table(work, out or work / "results.md")
    click.echo(path.read_text())
    click.echo(f"written: {path}")


def main() -> None:
    cli.main(prog_name="python -m experiments")


if __name__ == "__main__":
    sys.exit(main())
