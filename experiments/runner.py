"""Run a recipe: [discover -> rank ->] generation (or import) -> training -> evaluation, per seed.

`plan_recipe` turns a recipe and the run's options into a list of `Stage`s, each with its command
line and folder, and does nothing else (`--dry-run` prints it); `run_recipe` runs the stages that
are not finished. Each stage's folder is named by a digest of everything that determines its output
(its options, the seed, the digest of the stage it reads from: not where the data lives, nor how
many checkpoints are kept), and is marked finished by a DONE.json written last. So a re-run skips
finished stages, a killed stage is resumed or redone, two recipes that share a stage (Table 2's
E-BigBiGAN data is Table 3's) share one copy of it, and seeds can run on different machines
against one shared work folder. Each seed's results land in results/RECIPE/seed-K.json as soon as
that seed is evaluated; `python -m experiments table` collects whatever has finished."""
from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import click

from core.cli import os_error_message
from core.errors import UserError, first_line
from experiments.recipe import MAX_SEEDS, Recipe

log = logging.getLogger(__name__)

# stage -> (the tool's click entry point, its sub-command or None)
ENTRY_POINTS = {
    "discover": ("finder.cli:main", "discover"),
    "rank": ("finder.cli:main", "rank"),
    "optimize": ("finder.cli:main", "optimize"),
    "generate": ("generator.cli:main", None),
    "import": ("shardset.cli:cli", "import"),
    "train": ("trainer.cli:main", None),
    "evaluate": ("evaluator.cli:main", None),
}
TOOLS = {"discover": "find-direction discover", "rank": "find-direction rank",
         "optimize": "find-direction optimize", "generate": "gen-synth",
         "import": "shardset import", "train": "train-unet", "evaluate": "eval-seg"}
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BGW_SHARED_DATA", REPO.parent / "shared" / "data"))
# where stages write unless --work-dir says otherwise: not the current folder, so a run started
# from elsewhere finds its finished stages
DEFAULT_WORK_DIR = Path(os.environ.get("BGW_WORK_DIR", Path.home() / "bgw-seg" / "experiments"))
# stage options that say where things are or how much is kept, not what is computed: they stay
# out of the folder digest, so moving the data or keeping more checkpoints redoes nothing
NOT_IN_DIGEST = ("data_root", "keep_checkpoints", "workers")


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
    log.info("%s %s", ENTRY_POINTS[stage][0], shlex.join(args))
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
    """Where a recipe's stages write, and how `@` placeholders resolve. With `dry`, nothing is
    created (the demo image folder's path is named, not drawn)."""

    def __init__(self, root: Path, *, dry: bool = False):
        self.root = Path(root)
        self.dry = dry

    def demo_images(self) -> Path:
        from experiments.demo_data import make_image_folder

        folder = self.root / "demo-images"
        if self.dry:
            return folder
        return make_image_folder(folder, n=int(os.environ.get("BGW_DEMO_IMAGES", 200)))

    def resolve(self, value, *, shards: str | None = None, found: dict | None = None):
        if isinstance(value, list):
            out = [self.resolve(v, shards=shards, found=found) for v in value]
            return [v for v in out if v is not None]
        if not isinstance(value, str) or not value.startswith("@"):
            return value
        if value in ("@discovered", "@direction"):
            if not found or value not in found:
                raise StageError(f"{value} used before the stage that makes it ([discover] then [rank], or [optimize])")
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
            if not path.is_dir():
                log.warning("%s is not present: the stage leaves it out (set BGW_SHARED_DATA)", path)
                return None
            return f"folder:{path}"
        if value.startswith("@env:"):
            var = value.split(":", 1)[1]
            if var not in os.environ:
                raise StageError(f"set the environment variable {var} (the recipe reads it)")
            return os.environ[var]
        raise StageError(f"unknown placeholder {value!r}")


@dataclass(frozen=True)
class RunOptions:
    """How `python -m experiments run` runs a recipe (the recipe says what to compute)."""

    seeds: tuple[int, ...] | None = None  # None: 0 .. recipe.seeds - 1
    data_root: str | None = None  # where the named datasets are (gen-synth, train-unet, eval-seg)
    gan: str | None = None  # replaces the recipe's model: a local copy, another handle
    gpus: int | None = None  # processes for train-unet (torchrun when > 1); None: every visible CUDA GPU
    data_per_seed: bool | None = None  # one generated set per seed; None: the recipe's vary_generation
    keep_checkpoints: int | None = None  # train-unet --keep-checkpoints; None: its default (last + best)


# what a resumable stage's folder must hold for its tool's --resume to find something to continue
# (globs): a stage killed before its first checkpoint (train), shard (generate) or config (discover)
# leaves a folder whose --resume the tool refuses, so that folder is started afresh instead. The
# generate stage's set is named "set"; a shard without its record yet counts, as gen-synth counts it
RESUME_MARKERS = {"train": ("checkpoints/last.json",),
                  "generate": (".set.records/[0-9]*.json", "set-" + "[0-9]" * 6 + ".tar.zst"),
                  "discover": ("config.json",)}


@dataclass
class Stage:
    """One step of a recipe for one seed (or for all: seed None), with its folder and command."""

    kind: str  # discover, rank, optimize, generate, import, train, evaluate
    seed: int | None
    opts: dict  # the resolved options (the recipe's keys)
    folder: Path
    args: Callable[[bool], list[str]]  # the tool's arguments, given whether to resume
    resumable: bool
    key: dict = field(repr=False, default_factory=dict)

    @property
    def done(self) -> bool:
        return (self.folder / "DONE.json").is_file()

    @property
    def can_resume(self) -> bool:
        """The folder holds what the tool's --resume continues (not merely a folder)."""
        markers = RESUME_MARKERS.get(self.kind, ()) if self.resumable else ()
        return any(next(self.folder.glob(m), None) for m in markers)

    @property
    def tool(self) -> str:
        return TOOLS[self.kind]

    def label(self, recipe: Recipe) -> str:
        return f"[{recipe.name} {'all seeds' if self.seed is None else f'seed {self.seed}'}] {self.kind}"


def _folder(ws: Workspace, kind: str, key: dict) -> Path:
    return ws.root / kind / digest(key)


def _stage_opts(kind: str, raw: dict, options: RunOptions, ws: Workspace, **placeholders) -> dict:
    """A stage's options with placeholders resolved and the run's overrides applied."""
    opts = {k: ws.resolve(v, **placeholders) for k, v in raw.items()}
    params = {p.name for p in command_of(kind).params}
    if options.gan and kind in ("discover", "rank", "optimize", "generate"):
        opts["gan"] = options.gan
    if options.data_root and "data_root" in params and "data_root" not in opts:
        opts["data_root"] = options.data_root
    if options.keep_checkpoints is not None and kind == "train":
        opts["keep_checkpoints"] = options.keep_checkpoints
    return opts


def _key(opts: dict) -> dict:
    return {k: v for k, v in opts.items() if k not in NOT_IN_DIGEST}


def plan_recipe(recipe: Recipe, ws: Workspace, options: RunOptions = RunOptions()) -> list[Stage]:
    """Every stage of the seeds to run, in order, with folders and command lines. Creates nothing
    (but a `@demo-images` folder when the workspace is not dry)."""
    count = len(options.seeds) if options.seeds is not None else recipe.seeds
    if not 1 <= count <= MAX_SEEDS:  # a plan is a few stages per seed, all held in memory
        raise StageError(f"{recipe.name}: {count} seeds; a run takes 1 to {MAX_SEEDS}")
    seeds = list(options.seeds) if options.seeds is not None else list(range(recipe.seeds))
    per_seed_data = recipe.vary_generation if options.data_per_seed is None else options.data_per_seed
    stages: list[Stage] = []
    found: dict = {}
    if recipe.stage("discover") is not None:
        disc = _stage_opts("discover", recipe.stage("discover"), options, ws)
        disc_dir = _folder(ws, "discover", _key(disc))
        stages.append(Stage("discover", None, disc, disc_dir, resumable=True, key=_key(disc),
                            args=lambda resume, o=disc, d=disc_dir: stage_args(
                                "discover", {**o, "out": str(d), "resume": resume})))
        found["@discovered"] = str(disc_dir / "directions.npy")
        rank = _stage_opts("rank", recipe.stage("rank"), options, ws, found=found)
        rank_key = {"discover": disc_dir.name, "rank": _key(rank)}
        rank_dir = _folder(ws, "rank", rank_key)
        stages.append(Stage("rank", None, rank, rank_dir, resumable=False, key=rank_key,
                            args=lambda resume, o=rank, d=rank_dir: stage_args("rank", {**o, "out": str(d)})))
        found["@direction"] = str(rank_dir / "direction.npy")
    if recipe.stage("optimize") is not None:
        opt = _stage_opts("optimize", recipe.stage("optimize"), options, ws)
        opt_dir = _folder(ws, "optimize", _key(opt))
        stages.append(Stage("optimize", None, opt, opt_dir, resumable=False, key=_key(opt),
                            args=lambda resume, o=opt, d=opt_dir: stage_args("optimize", {**o, "out": str(d)})))
        found["@direction"] = str(opt_dir / "direction.npy")
    data_stages: dict[int | None, Stage] = {}
    for seed in seeds:
        data_seed = seed if per_seed_data else None
        if data_seed not in data_stages:
            if recipe.stage("generate") is not None:
                gen = _stage_opts("generate", recipe.stage("generate"), options, ws, found=found)
                if per_seed_data:
                    gen["seed"] = int(gen.get("seed", 0)) + seed
                folder = _folder(ws, "generate", _key(gen))
                data_stages[data_seed] = Stage(
                    "generate", data_seed, gen, folder, resumable=True, key=_key(gen),
                    args=lambda resume, o=gen, d=folder: stage_args(
                        "generate", {**o, "out": str(d), "name": "set", "resume": resume}))
            else:
                imp = _stage_opts("import", recipe.stage("import"), options, ws)
                folder = _folder(ws, "import", _key(imp))
                data_stages[data_seed] = Stage(
                    "import", data_seed, imp, folder, resumable=False, key=_key(imp),
                    args=lambda resume, o=imp, d=folder: stage_args("import", {**o, "out": str(d), "name": "set"}))
            stages.append(data_stages[data_seed])
        data = data_stages[data_seed]
        shards = str(data.folder / "set.json")
        train = _stage_opts("train", recipe.stage("train"), options, ws, shards=shards)
        train_key = {"data": data.folder.name, "train": _key(train), "seed": seed}
        run_dir = _folder(ws, "train", train_key)
        stages.append(Stage("train", seed, train, run_dir, resumable=True, key=train_key,
                            args=lambda resume, o=train, d=run_dir, k=seed: stage_args(
                                "train", {**o, "shards": shards, "out": str(d), "seed": k, "resume": resume})))
        evs = _stage_opts("evaluate", recipe.stage("evaluate"), options, ws, shards=shards)
        # fg_prob may list rules (the paper's sigmoid1 and softmax): one eval-seg pass per rule, the
        # recipe's own first; each pass alone keys its folder as a single-rule recipe would
        rules = evs["fg_prob"] if isinstance(evs.get("fg_prob"), list) else [evs.get("fg_prob")]
        for rule in rules:
            ev = {**evs, "fg_prob": rule} if "fg_prob" in evs else evs
            eval_key = {"run": run_dir.name, "evaluate": _key(ev)}
            eval_dir = _folder(ws, "evaluate", eval_key)
            stages.append(Stage("evaluate", seed, ev, eval_dir, resumable=False, key=eval_key,
                                args=lambda resume, o=ev, d=eval_dir, r=run_dir: stage_args(
                                    "evaluate", {**o, "ckpts": [str(r)], "out": str(d)})))
    return stages


def visible_gpus() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count()


def _train_processes(options: RunOptions) -> int:
    return visible_gpus() if options.gpus is None else options.gpus


def invoke_torchrun(args: list[str], processes: int) -> None:
    """train-unet as `torchrun --nproc_per_node N -m trainer.cli ARGS` (NCCL on GPUs, gloo on CPUs)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
           "-m", "trainer.cli", *args]
    log.info("%s", shlex.join(cmd))
    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if res.returncode:
        lines = [line for line in res.stderr.splitlines() if line.startswith("Error:")] or res.stderr.splitlines()[-1:]
        raise StageError(f"train (torchrun, {processes} processes): {lines[-1] if lines else res.returncode}")


def run_stage(stage: Stage, options: RunOptions) -> None:
    """Run one unfinished stage and mark it done."""
    resume = stage.can_resume
    # train-unet and gen-synth start afresh in a folder holding nothing to resume, under their own
    # lock: clearing it here could pull the folder from under another machine's run of the stage
    if stage.folder.exists() and not resume and stage.kind not in ("train", "generate"):
        shutil.rmtree(stage.folder)
    stage.folder.parent.mkdir(parents=True, exist_ok=True)
    processes = _train_processes(options) if stage.kind == "train" else 1
    if processes > 1:
        invoke_torchrun(stage.args(resume), processes)
    else:
        invoke(stage.kind, stage.args(resume))
    done = stage.folder / "DONE.json"
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(stage.key, indent=1, sort_keys=True))
    os.replace(tmp, done)


def results_dir(work: Path, recipe: Recipe) -> Path:
    return Path(work) / "results" / recipe.name


def _write_seed_result(work: Path, recipe: Recipe, seed: int, tiny: bool, eval_dirs: list[Path]) -> Path:
    """results: the recipe's own fg-prob rule's (the first pass); by_fg_prob: every pass by its rule."""
    passes = [json.loads((d / "results.json").read_text()) for d in eval_dirs]
    record = {"recipe": recipe.name, "table": recipe.table, "row": recipe.row, "tiny": tiny, "paper": recipe.paper,
              "seed": seed, "results": passes[0], "by_fg_prob": {r.get("fg_prob") or "-": r for r in passes}}
    out = results_dir(work, recipe) / f"seed-{seed}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
    os.replace(tmp, out)
    return out


def run_recipe(recipe: Recipe, work: Path, *, tiny: bool = False, options: RunOptions = RunOptions(),
               echo: Callable[[str], None] = lambda line: None) -> Path:
    """Run the unfinished stages of the chosen seeds; returns results/RECIPE/ (one seed-K.json per
    evaluated seed). `echo` gets one seed-labelled line per stage."""
    ws = Workspace(work)
    evaluated: dict[int | None, list[Path]] = {}
    for stage in plan_recipe(recipe, ws, options):
        if stage.done:
            echo(f"{stage.label(recipe)}: done already ({stage.folder})")
        else:
            echo(f"{stage.label(recipe)}: running {stage.tool} -> {stage.folder}")
            run_stage(stage, options)
        if stage.kind == "evaluate":
            evaluated.setdefault(stage.seed, []).append(stage.folder)
            path = _write_seed_result(work, recipe, stage.seed, tiny, evaluated[stage.seed])
            echo(f"{stage.label(recipe)}: results {path}")
    return results_dir(work, recipe)


def seeds_text(recipe: Recipe, options: RunOptions) -> str:
    """Which seeds a run covers, spelt so that `--seeds 2` cannot read as "seed 2"."""
    seeds = list(options.seeds) if options.seeds is not None else list(range(recipe.seeds))
    contiguous = seeds == list(range(seeds[0], seeds[-1] + 1))
    which = (f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}-{seeds[-1]}" if contiguous
             else "seeds " + ", ".join(map(str, seeds)))
    return f"{recipe.name}: {which} ({len(seeds)} run{'s' if len(seeds) > 1 else ''}; the recipe has {recipe.seeds})"


def _with_defaults(kind: str, opts: dict) -> dict:
    """A stage's options over its tool's own defaults: what the tool will really run with."""
    defaults = {}
    for p in command_of(kind).params:
        d = p.default
        if isinstance(p, click.Option) and d is not None and not callable(d) and type(d).__module__ != "click._utils":
            defaults[p.name] = d
    return {**defaults, **opts}


def _cost_context(st: Stage, stages: list[Stage]) -> dict:
    """What a stage's estimate needs from the stages around it: rank's candidate count (discover's
    directions), evaluate's model shape (its seed's train stage) and held-out samples (the set)."""
    if st.kind == "rank":
        disc = next((s for s in stages if s.kind == "discover"), None)
        return {"candidates": int(_with_defaults("discover", disc.opts)["directions"])} if disc else {}
    if st.kind != "evaluate":
        return {}
    train = next((s for s in stages if s.kind == "train" and s.seed == st.seed), None)
    out = {}
    if train is not None:
        t = _with_defaults("train", train.opts)
        out.update(width=t.get("width"), size=t.get("size"))
    data = next((s for s in stages if s.kind == "generate"), None)
    if data is not None:
        g = _with_defaults("generate", data.opts)
        n, shard = int(g.get("n") or 0), int(g.get("shard_size") or 1)
        out["shard_images"] = (int(g["val_shards"]) * shard if g.get("val_shards") is not None
                               else round(n * float(g.get("val_fraction") or 0)))
    return out


def _hub_cache(handle: str) -> Path:
    # tensorflow_hub's own rule (resolver.tfhub_cache_dir with use_temp): asked of it, the dry run
    # would import TensorFlow to print a plan
    cache = os.environ.get("TFHUB_CACHE_DIR") or os.path.join(tempfile.gettempdir(), "tfhub_modules")
    return Path(cache) / hashlib.sha1(handle.encode("utf8")).hexdigest()


def check_gan(spec: str) -> tuple[str | None, str]:
    """(a problem or None, one line saying what `--gan spec` will load)."""
    import difflib

    from gans import dcgan
    from gans.loader import GANS, HUB_NAMES

    handle = HUB_NAMES.get(spec, spec if "://" in spec else None)
    if handle is not None:
        cached = _hub_cache(handle)
        if cached.is_dir():
            return None, f"GAN {spec}: TF-Hub handle {handle}, cached copy at {cached}"
        return None, (f"GAN {spec}: TF-Hub handle {handle}, no cached copy at {cached}: downloaded on first use "
                      "(needs network; offline, unpack the module there or pass --gan FOLDER)")
    if spec == dcgan.DCGAN_HANDLE:
        try:
            return None, f"GAN {spec}: weights {dcgan.weights_path()}"
        except dcgan.DcganError as e:
            return f"GAN {spec}: {first_line(e)}", f"GAN {spec}: not installed"
    if spec in GANS:
        return None, f"GAN {spec}: built on first use"
    if Path(spec).expanduser().is_dir():
        return None, f"GAN {spec}: a local folder (SavedModel or TF-Hub module)"
    close = difflib.get_close_matches(spec, list(GANS), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return (f"GAN {spec!r} is not a known name{hint}, an existing folder nor a TF-Hub handle (https://...); "
            f"known names: {', '.join(GANS.names())}"), f"GAN {spec}: not found"


def _dataset_specs(opts: dict) -> list[str]:
    specs = []
    for key in ("dataset", "datasets", "eval_dataset"):
        value = opts.get(key)
        specs += [v for v in (value if isinstance(value, list) else [value]) if isinstance(v, str)]
    return specs


def _the_datasets(names: list[str]) -> str:
    return f"the dataset{'s' if len(names) > 1 else ''} {', '.join(names)}"


def check_inputs(stages: list[Stage], options: RunOptions, ws: Workspace) -> tuple[list[str], list[str]]:
    """(problems, notes) about what the stages read and nothing makes: the data root, each named
    dataset's layout under it (benchdata's own checks), folders outside the work folder, the GAN.
    Finished stages are not checked: they read nothing more."""
    from benchdata.datasets import get_dataset

    problems, notes, seen, gans = [], [], set(), set()
    root = options.data_root or os.environ.get("BGW_DATA_ROOT")
    named = [spec for st in stages if not st.done for spec in _dataset_specs(st.opts) if ":" not in spec]
    named = list(dict.fromkeys(named))
    no_root = not root or not Path(root).expanduser().is_dir()
    if root and no_root and named:
        problems.append(f"data root {root} is not a folder (--data-root or BGW_DATA_ROOT); "
                        f"{_the_datasets(named)} {'are' if len(named) > 1 else 'is'} read from it")
    elif root and no_root:  # the tools pass it along and read nothing from it: no reason to stop
        notes.append(f"data root {root} is not a folder; no stage to run reads a named dataset from it")
    elif named and no_root:
        problems.append(f"{_the_datasets(named)} need{'' if len(named) > 1 else 's'} a data root: "
                        "pass --data-root DIR or set BGW_DATA_ROOT")
    for st in stages:
        if st.done:
            continue
        for spec in _dataset_specs(st.opts):
            if spec in seen or spec.startswith("shards:"):  # a shard set is an earlier stage's output
                continue
            seen.add(spec)
            if spec.startswith("folder:") and Path(spec[len("folder:"):]).resolve().is_relative_to(ws.root.resolve()):
                continue  # made by the run itself (the demo images)
            if ":" not in spec and no_root:
                continue  # said once above
            try:
                ds = get_dataset(spec, root)
            except UserError as e:
                problems.append(f"dataset {spec} ({st.kind}): {first_line(e)}")
            else:
                notes.append(f"dataset {spec}: {ds.root}")
        gan = st.opts.get("gan")
        if st.kind in ("discover", "rank", "optimize", "generate") and gan and gan not in gans:
            gans.add(gan)
            problem, note = check_gan(gan)
            notes.append(note)
            if problem:
                problems.append(problem)
    return problems, notes


def describe_plan(recipe: Recipe, stages: list[Stage], options: RunOptions,
                  checks: tuple[list[str], list[str]] | None = None) -> str:
    """The --dry-run text: the seeds, each stage's status, command, folder and estimated cost, and
    what the inputs checks found (`checks`: check_inputs' problems and notes)."""
    from experiments.estimate import MACHINE, estimate, human_bytes, human_seconds

    gpu = _train_processes(options) > 0 and visible_gpus() > 0
    lines, disk, seconds, unknown = [seeds_text(recipe, options)], 0, 0.0, 0
    for st in stages:
        status = ("done" if st.done else "partial: will resume" if st.can_resume
                  else "partial: will start afresh" if st.folder.exists() else "to run")
        processes = _train_processes(options) if st.kind == "train" else 1
        prefix = f"torchrun --nproc_per_node {processes} -m trainer.cli" if processes > 1 else st.tool.split()[0]
        cost = estimate(st.kind, _with_defaults(st.kind, st.opts), gpu=gpu, context=_cost_context(st, stages))
        disk += cost.disk_bytes or 0
        if not st.done:
            seconds += cost.seconds or 0
            unknown += cost.seconds is None or cost.at_least
        lines += [f"{st.label(recipe)} [{status}]", f"  $ {prefix} {shlex.join(st.args(st.can_resume))}",
                  f"  folder {st.folder}", f"  {cost.describe()}"]
    lines.append(f"total disk of these stages: {human_bytes(disk)} (datasets not counted)")
    partial = f" ({unknown} stage{'s' if unknown > 1 else ''} not fully measured: more)" if unknown else ""
    where = "GPU machine" if gpu else MACHINE
    lines.append(f"total time of the stages to run: {human_seconds(seconds)} on a {where}{partial}")
    if checks is not None:
        problems, notes = checks
        lines.append("inputs:")
        lines += [f"  {n}" for n in notes]
        lines += [f"  problem: {p}" for p in problems]
    return "\n".join(lines)
