"""`find-direction`: find a GAN's segmenting latent direction without labels.

    find-direction discover --gan toy --directions 120 --steps 2000 --out runs/dirs
    find-direction rank --gan toy --candidates runs/dirs/directions.npy --out runs/dirs/rank
    find-direction --gan toy --out runs/dirs            # both: discover, then rank its output

`discover` learns K directions (Voynov & Babenko 2020, `generator.discover`); `rank` fits the
two-operator model to each candidate and picks the segmenting one (paper, appendix B;
`generator.direction_search`). Thin click layer: it parses, validates, shows progress and calls
the library functions.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import click
import numpy as np

log = logging.getLogger(__name__)


def _load_gan(spec: str):
    from generator.gan import GanLoadError, load_gan

    try:
        return load_gan(spec)
    except GanLoadError as e:
        raise click.BadParameter(str(e), param_hint="--gan") from None


def _load_candidates(spec: str, latent_dim: int) -> tuple[np.ndarray, str]:
    """``axes`` -> the identity's rows; else a .npy file of shape [C, D] (or [D] for one)."""
    if spec == "axes":
        return np.eye(latent_dim, dtype=np.float32), "axes"
    path = Path(spec)
    if path.suffix != ".npy" or not path.is_file():
        raise click.BadParameter(f"{spec!r} is neither 'axes' nor an existing .npy file of directions [C, D]",
                                 param_hint="--candidates")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise click.BadParameter(f"cannot read {spec}: {e}", param_hint="--candidates") from None
    arr = np.atleast_2d(arr)
    if arr.ndim != 2 or arr.shape[1] != latent_dim or not np.issubdtype(arr.dtype, np.number):
        raise click.BadParameter(f"{spec} holds an array of shape {arr.shape} ({arr.dtype}); need numbers "
                                 f"[C, {latent_dim}] (the GAN's latent size)", param_hint="--candidates")
    if not np.all(np.isfinite(arr)) or np.any(np.linalg.norm(arr, axis=1) == 0):
        raise click.BadParameter(f"{spec} has a zero or non-finite row; every row must be a direction",
                                 param_hint="--candidates")
    return arr.astype(np.float32), str(path)


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def _out_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise click.BadParameter(f"{out} is a file; give a folder (it is created when missing)", param_hint="--out")


def _run_discover(gan_spec: str, directions: int, steps: int, out: Path, resume: bool, seed: int,
                  batch: int, lr: float, lr_directions: float | None, init: str,
                  milestones: tuple[int, ...] = (), gamma: float = 0.1) -> Path:
    from tqdm import tqdm

    from generator import discover as dc

    _out_folder(out)
    if resume and not (out / "config.json").is_file():
        raise click.BadParameter(f"{out} holds no discovery run to resume (no config.json); run without --resume "
                                 f"to start one", param_hint="--resume")
    gan = _load_gan(gan_spec)
    if not 1 <= directions <= gan.latent_dim:
        raise click.BadParameter(f"{directions} is not in 1..{gan.latent_dim} (the latent size)",
                                 param_hint="--directions")
    cfg = dc.DiscoverConfig(directions=directions, steps=steps, batch=batch, lr=lr,
                            lr_directions=lr if lr_directions is None else lr_directions, init=init, seed=seed,
                            lr_directions_milestones=milestones, lr_directions_gamma=gamma)
    bar = tqdm(total=steps, desc="discover", unit="step", disable=None)  # no bar when stderr is no terminal

    def progress(step: int, metrics: dict) -> None:
        bar.n = step
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['accuracy']:.2f}", refresh=False)
        bar.refresh()

    try:
        dc.discover(gan, out, cfg, resume=resume, progress=progress)
    except (dc.RunExists, ValueError) as e:
        raise click.ClickException(str(e)) from None
    finally:
        bar.close()
    click.echo(f"wrote {out / 'directions.npy'} and {out / 'effects'}/ (TensorBoard: {out / 'tensorboard'})")
    return out / "directions.npy"


def _run_rank(gan_spec: str, candidates: str, out: Path, samples: int, steps: int, seed: int,
              shift: float, init: str, top: int, orient: bool, both_signs: bool = True) -> dict:
    from tqdm import tqdm

    from generator import affine
    from generator import direction_search as ds

    _out_folder(out)
    gan = _load_gan(gan_spec)
    arr, source = _load_candidates(candidates, gan.latent_dim)
    cfg = ds.FitConfig(steps=steps, samples=samples, shift=shift, init=init, seed=seed)
    with tqdm(total=len(arr) * (2 if both_signs else 1), desc="rank", unit="fit", disable=None) as bar:
        try:
            report = ds.rank_directions(gan, arr, out, cfg, affine.RankRule(), source=source, both_signs=both_signs,
                                        picture_top=top, orient_winner=orient, progress=bar.update)
        except ValueError as e:
            raise click.ClickException(str(e)) from None
    w = report["winner"]
    best = report["entries"][w["entry"]]
    click.echo(f"winner: candidate {w['candidate']} (sign {w['sign'] * w['orient_sign']:+d}; L_h {best['L_h']:.4f}, "
               f"D_h {best['D_h']:.4f}); wrote {out / 'direction.npy'}, {out / 'ranking.json'}, {out / 'ranking.png'}")
    return report


_gan_opt = click.option("--gan", "gan_spec", default="bigbigan", show_default=True,
                        help="GAN: bigbigan, toy, a SavedModel folder or a TF-Hub handle.")
_seed_opt = click.option("--seed", default=0, show_default=True, type=int, help="Seed of every random draw.")
_verbose_opt = click.option("-v", "--verbose", count=True, help="-v: info logs, -vv: debug.")


def _steps_list(ctx, param, value):
    """'8000,16000' -> (8000, 16000); '' -> ()."""
    if not value:
        return ()
    try:
        steps = tuple(sorted(int(v) for v in value.split(",") if v.strip()))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of steps, e.g. 8000,16000") from None
    if any(v < 1 for v in steps):
        raise click.BadParameter(f"{value!r}: steps must be >= 1")
    return steps


def _positive(ctx, param, value):
    if value is not None and not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"{value} must be a finite number > 0")
    return value


@click.group(invoke_without_command=True,
             context_settings={"help_option_names": ["-h", "--help"]})
@_gan_opt
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/find-direction"), show_default=True,
              help="Run folder (no sub-command): discovery in OUT, ranking in OUT/rank.")
@click.option("--directions", default=120, show_default=True, type=int, help="K directions to discover.")
@click.option("--discover-steps", default=100_000, show_default=True, type=int, callback=_positive)
@click.option("--rank-steps", default=200, show_default=True, type=int, help="Adam steps per candidate.")
@click.option("--samples", default=32, show_default=True, type=int, callback=_positive)
@click.option("--resume", is_flag=True, help="Continue the discovery run in OUT.")
@_seed_opt
@_verbose_opt
@click.pass_context
def main(ctx, gan_spec, out, directions, discover_steps, rank_steps, samples, resume, seed, verbose):
    """Find a GAN's segmenting latent direction: `discover`, then `rank` (both when no sub-command)."""
    if ctx.invoked_subcommand is not None:
        return
    _setup_logging(verbose)
    path = _run_discover(gan_spec, directions, discover_steps, out, resume, seed, 32, 1e-4, None, "random")
    _run_rank(gan_spec, str(path), out / "rank", samples, rank_steps, seed, 5.0, "lighting", 3, True)


@main.command()
@_gan_opt
@click.option("--directions", default=120, show_default=True, type=int, help="K directions to learn.")
@click.option("--steps", default=100_000, show_default=True, type=int, callback=_positive, help="Training steps.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Run folder.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its newest checkpoint.")
@click.option("--batch", default=32, show_default=True, type=int, callback=_positive)
@click.option("--lr", default=1e-4, show_default=True, type=float, callback=_positive, help="Adam lr.")
@click.option("--lr-directions", default=None, type=float, callback=_positive,
              help="Adam lr of the directions (default: --lr).")
@click.option("--lr-directions-milestones", "milestones", default="", callback=_steps_list,
              help="Steps (comma-separated) at which the directions' lr is multiplied by --lr-directions-gamma.")
@click.option("--lr-directions-gamma", "gamma", default=0.1, show_default=True, type=float, callback=_positive,
              help="Factor of the directions' lr at each milestone.")
@click.option("--init", type=click.Choice(["random", "identity"]), default="random", show_default=True,
              help="Start at a random rotation (the authors' runs) or next to the coordinate axes.")
@_seed_opt
@_verbose_opt
def discover(gan_spec, directions, steps, out, resume, batch, lr, lr_directions, milestones, gamma, init, seed,
             verbose):
    """Learn K interpretable directions (Voynov & Babenko 2020); writes OUT/directions.npy [K, D]."""
    _setup_logging(verbose)
    _run_discover(gan_spec, directions, steps, out, resume, seed, batch, lr, lr_directions, init, milestones, gamma)


@main.command()
@_gan_opt
@click.option("--candidates", required=True, help="'axes' or a .npy file of directions [C, D].")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option("--samples", default=32, show_default=True, type=int, callback=_positive,
              help="Latents z drawn once; Adam batches come from them; scores use all.")
@click.option("--steps", default=200, show_default=True, type=int, help="Adam steps per candidate.")
@click.option("--shift", default=5.0, show_default=True, type=float, callback=_positive,
              help="Candidates are made unit, then scaled by this.")
@click.option("--init", type=click.Choice(["lighting", "identity"]), default="lighting", show_default=True,
              help="Start of each fit: least squares on the lighting split, or identity +- 0.1.")
@click.option("--top", default=3, show_default=True, type=int, help="Candidates drawn in ranking.png.")
@click.option("--both-signs/--plus-only", default=True, show_default=True,
              help="Score every candidate as +h and -h (discovered directions have no sign).")
@click.option("--orient/--no-orient", default=True, show_default=True,
              help="Flip the winner so that the lighting rule's foreground is the smaller part.")
@_seed_opt
@_verbose_opt
def rank(gan_spec, candidates, out, samples, steps, shift, init, top, both_signs, orient, seed, verbose):
    """Rank candidate directions by the appendix-B rule; writes ranking.json, direction.npy, ranking.png."""
    _setup_logging(verbose)
    if steps < 0:
        raise click.BadParameter(f"{steps} must be >= 0", param_hint="--steps")
    _run_rank(gan_spec, candidates, out, samples, steps, seed, shift, init, top, orient, both_signs)


if __name__ == "__main__":
    main()
