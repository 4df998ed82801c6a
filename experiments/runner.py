"""Run a recipe: generation (or import) -> training -> evaluation, for every seed.

Each stage's output folder is named by a digest of everything that determines it (its options, the
seed, and the digest of the stage it reads from), and is marked finished by a DONE.json written last.
So a re-run skips finished stages, a killed stage is resumed or redone, and two recipes that share a
stage (Table 2's E-BigBiGAN data is Table 3's) share one copy of it."""
from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import shutil
from pathlib import Path

import click

from core.cli import os_error_message
from core.errors import UserError, first_line
from experiments.recipe import Recipe

log = logging.getLogger(__name__)

# stage -> (the tool's click entry point, its sub-command or None)
ENTRY_POINTS = {
    "discover": ("generator.directions_cli:main", "discover"),
    "rank": ("generator.directions_cli:main", "rank"),
    "generate": ("generator.cli:main", None),
    "import": ("shardset.cli:cli", "import"),
    "train": ("trainer.cli:main", None),
    "evaluate": ("evaluator.cli:main", None),
}
TOOLS = {"discover": "find-direction discover", "rank": "find-direction rank", "generate": "gen-synth",
         "import": "shardset import", "train": "train-unet", "evaluate": "eval-seg"}
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BGW_SHARED_DATA", REPO.parent / "shared" / "data"))


class StageError(UserError, RuntimeError):
    """A stage failed; the message names the stage, the recipe and the tool's own one-line error."""


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def _entry_point(stage: str) -> click.Command:
    target, _ = ENTRY_POINTS[stage]
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def command_of(stage: str) -> click.Command:
    """The click command that runs `stage` (a tool, or its sub-command)."""
    tool, sub = _entry_point(stage), ENTRY_POINTS[stage][1]
    return tool.commands[sub] if sub else tool


def _long_flag(opts: list[str]) -> str:
    return max(opts, key=len)


def to_args(command: click.Command, opts: dict, tool: str | None = None) -> list[str]:
    """A stage's options as `command`'s flags, found by click introspection: each key is the name
    of one of its parameters, which is the field of the tool's config it sets (`shard_size` ->
    --shard-size, `batch` -> train-unet's --batch-size). A list is a repeated option (`datasets`
    -> --dataset a --dataset b), True and False an on/off pair (`size_filter = false` ->
    --no-size-filter) or a plain flag, None leaves the option at its default."""
    params = {p.name: p for p in command.params if isinstance(p, click.Option) and p.expose_value}
    args: list[str] = []
    for key, value in opts.items():
        param = params.get(key)
        if param is None:
            raise StageError(f"option {key!r} is not one of {tool or command.name}'s; "
                             f"choose from {', '.join(sorted(params))}")
        if value is None:
            continue
        if param.is_flag:
            if value:
                args.append(_long_flag(param.opts))
            elif param.secondary_opts:
                args.append(_long_flag(param.secondary_opts))
            continue
        for v in value if isinstance(value, list) else [value]:
            args += [_long_flag(param.opts), str(v)]
    return args


def stage_args(stage: str, opts: dict) -> list[str]:
    """The command line of a stage: its sub-command, if any, and its flags."""
    sub = ENTRY_POINTS[stage][1]
    return ([sub] if sub else []) + to_args(command_of(stage), opts, TOOLS[stage])


def invoke(stage: str, args: list[str]) -> None:
    """Run a tool's click command in this process (TensorFlow and torch coexist here)."""
    cmd = _entry_point(stage)
    log.info("%s %s", ENTRY_POINTS[stage][0], " ".join(args))
    try:
        code = cmd.main(args=args, prog_name=cmd.name, standalone_mode=False)
    except click.ClickException as exc:
        raise StageError(f"{stage}: {exc.format_message()}") from None
    except UserError as exc:  # the tool's one-line error, named by the stage
        raise StageError(f"{stage}: {first_line(exc)}") from None
    except OSError as exc:
        raise StageError(f"{stage}: {os_error_message(exc)}") from None
    if isinstance(code, int) and code:
        raise StageError(f"{stage} exited with {code}")


class Workspace:
    """Where a recipe's stages write, and how `@` placeholders resolve."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def demo_images(self) -> Path:
        from experiments.demo_data import make_image_folder

        return make_image_folder(self.root / "demo-images", n=int(os.environ.get("BGW_DEMO_IMAGES", 200)))

    def resolve(self, value, *, shards: str | None = None, found: dict | None = None):
        if isinstance(value, list):
            out = [self.resolve(v, shards=shards, found=found) for v in value]
            return [v for v in out if v is not None]
        if not isinstance(value, str) or not value.startswith("@"):
            return value
        if value in ("@discovered", "@direction"):
            if not found or value not in found:
                raise StageError(f"{value} used before the stage that makes it ([discover], then [rank])")
            return found[value]
        if value == "@demo-images":
            return f"folder:{self.demo_images()}"
        if value.startswith("@demo-images/"):
            return str(self.demo_images() / value.split("/", 1)[1])
        if value == "@shards":
            if shards is None:
                raise StageError("@shards used before a shard set exists")
            return f"shards:{shards}"
        if value.startswith("@shared:"):
            path = SHARED_DATA / value.split(":", 1)[1]
            return f"folder:{path}" if path.is_dir() else None
        if value.startswith("@env:"):
            var = value.split(":", 1)[1]
            if var not in os.environ:
                raise StageError(f"set the environment variable {var} (the recipe reads it)")
            return os.environ[var]
        raise StageError(f"unknown placeholder {value!r}")


def _stage(ws: Workspace, kind: str, key: dict, build_args, *, resumable: bool) -> Path:
    out = ws.root / kind / digest(key)
    done = out / "DONE.json"
    if done.is_file():
        log.info("%s: done already (%s)", kind, out)
        return out
    resume = resumable and out.exists()
    if out.exists() and not resumable:
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    invoke(kind, build_args(out, resume))
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(key, indent=1, sort_keys=True))
    os.replace(tmp, done)
    return out


def find_direction(recipe: Recipe, ws: Workspace) -> dict:
    """[discover] then [rank], when the recipe has them: {"@discovered": .npy, "@direction": .npy}."""
    if recipe.stage("discover") is None:
        return {}
    disc = {k: ws.resolve(v) for k, v in recipe.stage("discover").items()}

    def discover_args(out, resume):
        return stage_args("discover", {**disc, "out": str(out), "resume": resume})

    disc_dir = _stage(ws, "discover", disc, discover_args, resumable=True)
    found = {"@discovered": str(disc_dir / "directions.npy")}
    rank = {k: ws.resolve(v, found=found) for k, v in recipe.stage("rank").items()}
    rank_key = {"discover": disc_dir.name, "rank": rank}

    def rank_args(out, resume):
        return stage_args("rank", {**rank, "out": str(out)})

    rank_dir = _stage(ws, "rank", rank_key, rank_args, resumable=False)
    return {**found, "@direction": str(rank_dir / "direction.npy")}


def run_seed(recipe: Recipe, ws: Workspace, seed: int) -> dict:
    """One seed of a recipe, end to end; returns the evaluator's results.json."""
    found = find_direction(recipe, ws)
    if recipe.stage("generate") is not None:
        gen = {k: ws.resolve(v, found=found) for k, v in recipe.stage("generate").items()}
        gen["seed"] = int(gen.get("seed", 0)) + (seed if recipe.vary_generation else 0)
        data_kind, data_key = "generate", gen

        def data_args(out, resume):
            return stage_args("generate", {**gen, "out": str(out), "name": "set", "resume": resume})
    else:
        imp = {k: ws.resolve(v) for k, v in recipe.stage("import").items()}
        data_kind, data_key = "import", imp

        def data_args(out, resume):
            return stage_args("import", {**imp, "out": str(out), "name": "set"})

    data_dir = _stage(ws, data_kind, data_key, data_args, resumable=data_kind == "generate")
    shards = str(data_dir / "set.json")

    train = {k: ws.resolve(v, shards=shards) for k, v in recipe.stage("train").items()}
    train_key = {"data": data_dir.name, "train": train, "seed": seed}

    def train_args(out, resume):
        return stage_args("train", {**train, "shards": shards, "out": str(out), "seed": seed, "resume": resume})

    run_dir = _stage(ws, "train", train_key, train_args, resumable=True)

    ev = {k: ws.resolve(v, shards=shards) for k, v in recipe.stage("evaluate").items()}
    eval_key = {"run": run_dir.name, "evaluate": ev}

    def eval_args(out, resume):
        return stage_args("evaluate", {**ev, "ckpts": [str(run_dir)], "out": str(out)})

    eval_dir = _stage(ws, "evaluate", eval_key, eval_args, resumable=False)
    return json.loads((eval_dir / "results.json").read_text())


def run_recipe(recipe: Recipe, work: Path, *, tiny: bool = False, seeds: int | None = None) -> Path:
    """All seeds of a recipe; writes work/results/<recipe>.json (atomically) and returns its path."""
    ws = Workspace(work)
    n = recipe.seeds if seeds is None else seeds
    per_seed = []
    for seed in range(n):
        log.info("%s: seed %d/%d", recipe.name, seed + 1, n)
        per_seed.append({"seed": seed, "results": run_seed(recipe, ws, seed)})
    out = Path(work) / "results" / f"{recipe.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "recipe": recipe.name, "table": recipe.table, "row": recipe.row, "tiny": tiny,
        "paper": recipe.paper, "seeds": per_seed,
    }
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
    os.replace(tmp, out)
    return out
