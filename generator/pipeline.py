"""The gen-synth run: latents -> GAN pairs on the accelerator -> masks and filters -> shards.

``run(GenConfig(...))`` writes (its share of) a shard set. Shard k is filled from its own latent
stream (generator.latents): draws are rendered in batches, G(z) and the mask rule's pair (G(z),
G(z + r h); or the centred G(z -+ r/2 h)) in one call (generator.views), and the first ``size_k``
accepted draws in stream order make the shard. So a shard's bytes depend on
(params, seed, k) only: not on the node count, on which node renders it, or on a crash and
resume in between (on a deterministic device; the batch size is a recorded parameter because a
float kernel may round differently per batch shape).

The pieces: generator.config (settings and the shard plan), generator.inputs (model, direction,
latents), generator.render (the accelerator/host overlap); this module runs them, resumes, and
distributes shards over nodes or Ray.

Nodes: node I of N (`--nodes N --node-index I`: N independent processes, on as many machines
or array jobs) renders the shards k with k % N == I into the shared folder (the writer locks the
manifest); whichever node completes the set last writes the final manifest, equal to a
single-node run's except its creation time.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from core.errors import first_line
from shardset.format import shard_filename, shard_glob

from .config import GenConfig, GenerationError, Plan, make_plan
from .inputs import Inputs, load_inputs, require_direction
from .preview import PreviewCollector, write_preview
from .render import render_preview, render_shards
from .views import Shifts

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a run did: the set's manifest path, shards written now, and the manifest if complete."""

    manifest_path: Path
    written: list[int]
    skipped: list[int]  # complete shards kept from before (resume / other nodes)
    complete: bool
    manifest: dict | None
    preview: Path | None


def node_target(cfg: GenConfig) -> int:
    """Accepted samples this node's shards hold (the progress bar's total)."""
    cfg = cfg.resolved()
    plan = make_plan(cfg)
    return sum(plan.sizes[k] for k in plan.shards_of(cfg.node_index, cfg.nodes))


def _lock_mode(cfg: GenConfig) -> str:
    """Nodes of a multi-node run share the set's lock (each writes its own shards); any other
    run holds it alone, so two single-node runs, --resume or not, cannot write one set."""
    return "shared" if cfg.nodes > 1 else "exclusive"


def _open_writer(cfg: GenConfig, params: dict, plan: Plan):
    from shardset import LockHeldError, ShardSetError, ShardSetExistsError, ShardSetWriter

    # Nodes of a multi-node run share one folder: each joins the set (same params) and
    # writes its own shard indices, so they open it in "resume" mode whatever started first.
    mode = "resume" if (cfg.resume or cfg.nodes > 1) else "new"
    if cfg.nodes == 1 and _holds_no_shards(cfg):
        mode = "overwrite"  # a set header from a run that wrote nothing (e.g. stopped by the filters)
    try:
        return ShardSetWriter(cfg.out, cfg.name, encoding=cfg.encoding, shard_size=cfg.shard_size,
                              params=params, seed=cfg.seed, mode=mode, lock=_lock_mode(cfg),
                              planned=plan.planned(cfg.n))
    except LockHeldError as exc:
        raise GenerationError(str(exc)) from None
    except ShardSetExistsError:
        raise GenerationError(
            f"{Path(cfg.out) / cfg.name}.json exists: pass --resume to complete that set (same parameters), "
            f"or choose another --name or --out") from None
    except ShardSetError as exc:  # params differ from the existing set's
        raise GenerationError(f"{first_line(exc)} (the set in {cfg.out} was made with other parameters; "
                              f"choose another --name or --out)") from None


def _holds_no_shards(cfg: GenConfig) -> bool:
    """True when OUT holds no shard file and no shard record of set NAME (nothing to keep)."""
    out = Path(cfg.out)
    if list(out.glob(shard_glob(cfg.name))):
        return False
    return not list((out / f".{cfg.name}.records").glob("[0-9]*.json"))


def check_existing(cfg: GenConfig) -> None:
    """Fail fast, before the model loads, when the set is being written by another process or a
    single-node run would refuse an existing set."""
    from shardset import LockHeldError
    from shardset.lock import FileLock

    cfg = cfg.resolved()
    out = Path(cfg.out)
    if (out / f"{cfg.name}.lock").exists():
        try:  # a probe only: the writer takes the lock for the run itself
            FileLock(out / f"{cfg.name}.lock", shared=_lock_mode(cfg) == "shared",
                     what=f"shard set {out / cfg.name}.json",
                     hint="wait for that run to finish, or write to another --name or --out").release()
        except LockHeldError as exc:
            raise GenerationError(str(exc)) from None
    if cfg.resume or cfg.nodes > 1:
        return
    if _holds_no_shards(cfg):
        return
    if (out / f"{cfg.name}.json").exists() or (out / f".{cfg.name}.records").exists():
        raise GenerationError(
            f"{out / cfg.name}.json exists: pass --resume to complete that set (same parameters), "
            f"or choose another --name or --out")


def run(config: GenConfig, progress: Callable[[int, int], None] | None = None) -> RunResult:
    """Generate this node's shards of the set described by ``config``.

    ``progress(accepted, drawn)`` is called from the host thread after every batch with the
    samples accepted and draws used in it, and once at the start with the samples of shards
    already complete (drawn 0).
    """
    cfg = config.resolved()
    require_direction(cfg)
    check_existing(cfg)
    plan = make_plan(cfg)
    inputs = load_inputs(cfg)
    if inputs.size_bound is not None:  # --max-fg auto, measured: the filters use the number
        cfg = dataclasses.replace(cfg, max_fg=inputs.size_bound)
    writer = _open_writer(cfg, inputs.params, plan)
    try:  # the set's lock is released however the run ends, so a rerun in this process may take it
        return _run_locked(cfg, plan, inputs, writer, progress)
    finally:
        writer.close()


def _run_locked(cfg: GenConfig, plan: Plan, inputs: Inputs, writer, progress) -> RunResult:
    mine = plan.shards_of(cfg.node_index, cfg.nodes)
    completed = writer.completed()
    todo = [k for k in mine if k not in completed]
    skipped = [k for k in mine if k in completed]
    if skipped:
        log.info("keeping %d complete shard(s) of %s", len(skipped), writer.manifest_path)
    if progress is not None and skipped:
        progress(sum(plan.sizes[k] for k in skipped), 0)

    filters = cfg.filter_config()
    collector = PreviewCollector(pair_label=Shifts.of(filters.mask_rule, cfg.shift).label()) if cfg.preview else None
    written, exc = render_shards(inputs, cfg, plan, writer, filters, todo, progress, collector)
    if exc is not None:
        _remove_uncommitted(writer, cfg, todo)
        if isinstance(exc, OSError):
            raise exc
        if isinstance(exc, GenerationError):
            raise GenerationError(str(exc)) from None
        raise exc
    missing = [k for k in todo if k not in written]
    if missing:  # cannot happen unless the host died silently
        raise GenerationError(f"shards {missing[:5]} were not written; rerun with --resume")

    preview_path = None
    if collector is not None:
        if not collector.accepted:
            render_preview(inputs, cfg, filters, collector)
        preview_path = write_preview(cfg.preview, collector)
        log.info("wrote preview %s", preview_path)

    done = writer.completed()
    complete = all(k in done for k in range(plan.num_shards))
    manifest = writer.finalize(planned=plan.planned(cfg.n)) if complete else None
    return RunResult(writer.manifest_path, sorted(written), skipped, complete, manifest, preview_path)


def _remove_uncommitted(writer, cfg: GenConfig, todo: list[int]) -> None:
    """After a failure (a full disk, say), delete this node's shard files that have no record,
    so nothing that looks like a complete shard is left behind."""
    try:
        committed = writer.completed()
    except OSError:
        committed = {}
    for k in todo:
        if k not in committed:
            (Path(cfg.out) / shard_filename(cfg.name, k)).unlink(missing_ok=True)


# --------------------------------------------------------------------------------- Ray


def run_ray(config: GenConfig, address: str | None = None) -> RunResult:
    """Run the shards as Ray tasks (one GPU each where the cluster has GPUs) on the cluster at
    ``address`` (None or "auto": a local one). Ray is optional: ``pip install bgw-seg[dist]``."""
    try:
        import ray
    except ImportError:
        raise GenerationError("--ray needs Ray, which is not installed: pip install bgw-seg[dist]") from None
    cfg = config.resolved()
    require_direction(cfg)
    check_existing(cfg)
    plan = make_plan(cfg)
    ray.init(address=None if address in (None, "", "local") else address, ignore_reinit_error=True)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    cpus = int(ray.cluster_resources().get("CPU", 1))
    tasks = max(1, min(plan.num_shards, gpus or cpus))
    remote = ray.remote(num_gpus=1 if gpus else 0)(_ray_worker)
    # Every task joins the set as one of `tasks` nodes; the last to finish finalizes it.
    results = ray.get([remote.remote(dataclasses.replace(cfg, nodes=tasks, node_index=i, preview=None,
                                                         resume=True))
                       for i in range(tasks)])
    done = [r for r in results if r.complete]
    last = done[-1] if done else results[-1]
    return RunResult(last.manifest_path, sorted(k for r in results for k in r.written),
                     sorted(k for r in results for k in r.skipped), bool(done), last.manifest, None)


def _ray_worker(cfg: GenConfig) -> RunResult:
    logging.basicConfig(level=logging.INFO)
    return run(cfg)
