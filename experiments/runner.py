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

from experiments.recipe import Recipe

log = logging.getLogger(__name__)

ENTRY_POINTS = {
    "discover": "generator.directions_cli:main",
    "rank": "generator.directions_cli:main",
    "generate": "generator.cli:main",
    "import": "shardset.cli:cli",
    "train": "trainer.cli:main",
    "evaluate": "evaluator.cli:main",
}
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BGW_SHARED_DATA", REPO.parent / "shared" / "data"))


class StageError(RuntimeError):
    """A stage failed; the message names the stage, the recipe and the tool's own one-line error."""


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def to_args(opts: dict) -> list[str]:
    """{"shard_size": 500, "preview": True, "datasets": [a, b]} -> --shard-size 500 --preview --dataset a ..."""
    args: list[str] = []
    for key, value in opts.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, list):
            singular = flag[:-1] if flag.endswith("s") else flag
            for v in value:
                args += [singular, str(v)]
        elif value is not None:
            args += [flag, str(value)]
    return args


def invoke(stage: str, args: list[str]) -> None:
    """Run a tool's click command in this process (TensorFlow and torch coexist here)."""
    module, attr = ENTRY_POINTS[stage].split(":")
    cmd = getattr(importlib.import_module(module), attr)
    log.info("%s %s", ENTRY_POINTS[stage], " ".join(args))
    try:
        cmd.main(args=args, prog_name=module.split(".")[0], standalone_mode=False)
    except click.exceptions.Exit as exc:
        if exc.exit_code:
            raise StageError(f"{stage} exited with {exc.exit_code}") from None
    except click.ClickException as exc:
        raise StageError(f"{stage}: {exc.format_message()}") from None


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
        return ["discover"] + to_args({**disc, "out": str(out)}) + (["--resume"] if resume else [])

    disc_dir = _stage(ws, "discover", disc, discover_args, resumable=True)
    found = {"@discovered": str(disc_dir / "directions.npy")}
    rank = {k: ws.resolve(v, found=found) for k, v in recipe.stage("rank").items()}
    rank_key = {"discover": disc_dir.name, "rank": rank}

    def rank_args(out, resume):
        return ["rank"] + to_args({**rank, "out": str(out)})

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
            args = to_args({**gen, "out": str(out), "name": "set"})
            return args + (["--resume"] if resume else [])
    else:
        imp = {k: ws.resolve(v) for k, v in recipe.stage("import").items()}
        data_kind, data_key = "import", imp

        def data_args(out, resume):
            return ["import"] + to_args({**imp, "out": str(out), "name": "set"})

    data_dir = _stage(ws, data_kind, data_key, data_args, resumable=data_kind == "generate")
    shards = str(data_dir / "set.json")

    train = {k: ws.resolve(v, shards=shards) for k, v in recipe.stage("train").items()}
    train_key = {"data": data_dir.name, "train": train, "seed": seed}

    def train_args(out, resume):
        args = to_args({**train, "shards": shards, "out": str(out), "seed": seed})
        return args + (["--resume"] if resume else [])

    run_dir = _stage(ws, "train", train_key, train_args, resumable=True)

    ev = {k: ws.resolve(v, shards=shards) for k, v in recipe.stage("evaluate").items()}
    eval_key = {"run": run_dir.name, "evaluate": ev}

    def eval_args(out, resume):
        return to_args({**ev, "ckpt": str(run_dir), "out": str(out)})

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
