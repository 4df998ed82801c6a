"""`find-direction`: find a GAN's segmenting latent direction without labels.

    find-direction discover --gan toy --directions 120 --steps 2000 --out runs/dirs
    find-direction rank --gan toy --candidates runs/dirs/directions.npy --out runs/dirs/rank
    find-direction --gan toy --out runs/dirs            # both: discover, then rank its output

`discover` learns K directions (Voynov & Babenko 2020, `finder.discover`); `rank` fits the
two-operator model to each candidate and picks the segmenting one (paper, appendix B;
`finder.rank`). Thin click layer: it parses, validates, shows progress and calls
the library functions. Defaults come from DiscoverConfig and FitConfig (and the GAN's from
gans.loader's DEFAULT_GAN); each option is named as the field it sets.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import click
import numpy as np

from core.cli import Group, common_options, progress_bar, verbosity_option
from gans.loader import DEFAULT_GAN
from masking.rules import MASK_RULES

from .discover import DiscoverConfig
from .optimize import SHIFT_DRAWS, OptimizeConfig
from .rank import BOTH_SIGNS, ORIENT_WINNER, PICTURE_TOP, FitConfig

log = logging.getLogger(__name__)


def _load_gan(spec: str, classes: str | None = None):
    """The GAN, and ``--classes`` checked against it before any work (a usage error, exit 2)."""
    from finder.conditional import class_set
    from gans.classes import ClassSpecError
    from gans.loader import load_gan

    model = load_gan(spec)  # GanLoadError: one line at the edge (core.cli)
    try:
        class_set(model, classes)
    except ClassSpecError as e:
        raise click.BadParameter(str(e), param_hint="--classes") from None
    return model


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


def _candidate_pool(specs: tuple[str, ...] | str, latent_dim: int) -> tuple[np.ndarray, list[tuple[str, int]]]:
    """Every source's rows, stacked: (candidates [C, D], [(source, rows)] in order)."""
    specs = (specs,) if isinstance(specs, str) else tuple(specs)
    if len(set(specs)) != len(specs):
        raise click.BadParameter(f"a source is named twice in {list(specs)}", param_hint="--candidates")
    loaded = [_load_candidates(spec, latent_dim) for spec in specs]
    return np.concatenate([arr for arr, _ in loaded]), [(name, len(arr)) for arr, name in loaded]


def _print_table(report: dict, rows: int = 10) -> None:
    """The best entries, one line each: how the sources compare on this GAN."""
    ranked = sorted((e for e in report["entries"] if e["rank"] is not None), key=lambda e: e["rank"])
    click.echo(f"{'rank':>4}  {'source':<28} {'row':>4} sign  {'L_h':>7} {'D_h':>7} {'fg':>5}")
    for e in ranked[:rows]:
        click.echo(f"{e['rank']:>4}  {Path(e['source']).name[:28]:<28} {e['source_row']:>4} {e['sign']:>+4d}  "
                   f"{e['L_h']:7.4f} {e['D_h']:7.4f} {e['lighting_fg']:5.2f}")
    dropped = sum(1 for e in report["entries"] if e["rank"] is None)
    if dropped:
        click.echo(f"({dropped} entries dropped: one class holds nearly every pixel)")


def _out_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise click.BadParameter(f"{out} is a file; give a folder (it is created when missing)", param_hint="--out")


_DISCOVER = DiscoverConfig()
_FIT = FitConfig()
_OPT = OptimizeConfig()


def _run_discover(gan: str, out: Path, resume: bool, cfg: DiscoverConfig, classes: str | None = None) -> Path:
    from finder import discover as dc

    _out_folder(out)
    if resume and not (out / "config.json").is_file():
        raise click.BadParameter(f"{out} holds no discovery run to resume (no config.json); run without --resume "
                                 f"to start one", param_hint="--resume")
    model = _load_gan(gan, classes)
    if not 1 <= cfg.directions <= model.latent_dim:
        raise click.BadParameter(f"{cfg.directions} is not in 1..{model.latent_dim} (the latent size)",
                                 param_hint="--directions")
    bar = progress_bar(total=cfg.steps, desc="discover", unit="step")

    def progress(step: int, metrics: dict) -> None:
        bar.n = step
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['accuracy']:.2f}", refresh=False)
        bar.refresh()

    try:
        dc.discover(model, out, cfg, resume=resume, progress=progress, classes=classes)
    finally:
        bar.close()
    click.echo(f"wrote {out / 'directions.npy'} and {out / 'effects'}/ (TensorBoard: {out / 'tensorboard'})")
    return out / "directions.npy"


def _run_rank(gan: str, candidates: tuple[str, ...] | str, out: Path, cfg: FitConfig, top: int = PICTURE_TOP,
              orient: bool = ORIENT_WINNER, both_signs: bool = BOTH_SIGNS, classes: str | None = None,
              mask_rule: str = "lighting") -> dict:
    from finder import affine
    from finder import rank as ds

    _out_folder(out)
    model = _load_gan(gan, classes)
    arr, source = _candidate_pool(candidates, model.latent_dim)
    with progress_bar(total=len(arr) * (2 if both_signs else 1), desc="rank", unit="fit") as bar:
        report = ds.rank_directions(model, arr, out, cfg, affine.RankRule(), source=source, both_signs=both_signs,
                                    picture_top=top, orient_winner=orient, progress=bar.update, classes=classes,
                                    mask_rule=mask_rule)
    w = report["winner"]
    best = report["entries"][w["entry"]]
    _print_table(report)
    click.echo(f"winner: row {best['source_row']} of {best['source']} (candidate {w['candidate']}, sign "
               f"{w['sign'] * w['orient_sign']:+d}; L_h {best['L_h']:.4f}, D_h {best['D_h']:.4f}); wrote "
               f"{out / 'direction.npy'}, {out / 'ranking.json'}, {out / 'ranking.png'}")
    return report


_gan_opt = click.option("--gan", "gan", default=DEFAULT_GAN, show_default=True,
                        help="GAN: bigbigan, toy, dcgan-faces, a SavedModel folder or a TF-Hub handle.")
_classes_opt = click.option(
    "--classes", "classes", default=None, metavar="SPEC",
    help="Class-conditional GANs (BigGAN) only: the classes drawn, uniformly, one per latent and the same "
         "for G(z) and G(z + shift): 'all' (the default) or indices and ranges, e.g. 1,5,10-19.")


def _seed_opt(default: int):
    return click.option("--seed", "seed", default=default, show_default=True, type=int,
                        help="Seed of every random draw.")


def _steps_list(ctx, param, value):
    """'8000,16000' -> (8000, 16000); '' -> ()."""
    if not value:
        return ()
    if isinstance(value, tuple):
        return value
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


def _out_opt(help: str):
    return click.option("--out", type=click.Path(path_type=Path), required=True, help=help)


@click.group(cls=Group, invoke_without_command=True)
@_gan_opt
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Run folder: discovery in OUT, ranking in OUT/rank. [required without a sub-command]")
@click.option("--directions", default=_DISCOVER.directions, show_default=True, type=int,
              help="K directions to discover.")
@click.option("--steps", default=_DISCOVER.steps, show_default=True, type=int, callback=_positive,
              help="Training steps of discover (rank runs at its defaults: `find-direction rank` sets them).")
@click.option("--resume", is_flag=True, help="Continue the discovery run in OUT.")
@_classes_opt
@_seed_opt(_DISCOVER.seed)
@common_options()
@click.pass_context
def main(ctx, gan, out, directions, steps, resume, classes, seed):
    """Find a GAN's segmenting latent direction without labels.

    \b
    optimize   one direction fitted directly (Melas-Kyriazi et al. 2022): minutes, any GAN
    discover   K interpretable directions (Voynov & Babenko 2020), then
    rank       the segmenting one among candidates (the paper's appendix B)
    With no sub-command: discover, then rank its directions (options named as discover's).

    \b
    Examples:
      find-direction optimize --gan dcgan-faces --out runs/opt
      find-direction --gan toy --out runs/dirs
      find-direction discover --gan toy --directions 120 --steps 2000 --out runs/dirs
      find-direction rank --gan toy --candidates runs/dirs/directions.npy --out runs/dirs/rank
    """
    if ctx.invoked_subcommand is not None:
        return
    if out is None:
        raise click.UsageError("missing --out: name the run folder, e.g. --out runs/dirs (or use optimize, "
                               "discover or rank)")
    path = _run_discover(gan, out, resume, DiscoverConfig(directions=directions, steps=steps, seed=seed), classes)
    _run_rank(gan, str(path), out / "rank", FitConfig(seed=seed), classes=classes)


@main.command()
@_gan_opt
@click.option("--directions", default=_DISCOVER.directions, show_default=True, type=int,
              help="K directions to learn.")
@click.option("--steps", default=_DISCOVER.steps, show_default=True, type=int, callback=_positive,
              help="Training steps.")
@_out_opt("Run folder.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its newest checkpoint.")
@click.option("--batch-size", "batch", default=_DISCOVER.batch, show_default=True, type=int, callback=_positive,
              help="Latents per training step.")
@click.option("--lr", default=_DISCOVER.lr, show_default=True, type=float, callback=_positive,
              help="Adam lr of the reconstructor.")
@click.option("--lr-directions", default=None, type=float, callback=_positive,
              help="Adam lr of the directions (default: --lr).")
@click.option("--lr-directions-milestones", "lr_directions_milestones", callback=_steps_list,
              default=",".join(map(str, _DISCOVER.lr_directions_milestones)),
              help="Steps (comma-separated) at which the directions' lr is multiplied by --lr-directions-gamma.")
@click.option("--lr-directions-gamma", "lr_directions_gamma", default=_DISCOVER.lr_directions_gamma,
              show_default=True, type=float, callback=_positive,
              help="Factor of the directions' lr at each milestone.")
@click.option("--init", type=click.Choice(["random", "identity"]), default=_DISCOVER.init, show_default=True,
              help="Start at a random rotation (the authors' runs) or next to the coordinate axes.")
@_classes_opt
@_seed_opt(_DISCOVER.seed)
@verbosity_option()
def discover(gan, out, resume, lr_directions, classes, **fields):
    """Learn K interpretable directions (Voynov & Babenko 2020); writes OUT/directions.npy [K, D]."""
    cfg = DiscoverConfig(lr_directions=fields["lr"] if lr_directions is None else lr_directions, **fields)
    _run_discover(gan, out, resume, cfg, classes)


@main.command()
@_gan_opt
@click.option("--candidates", required=True, multiple=True,
              help="'axes' or a .npy file of directions [C, D] (or [D], e.g. optimize's direction.npy); repeat "
                   "it to rank several sources in one table: discovered, optimised and the axes side by side.")
@_out_opt("Output folder.")
@click.option("--samples", default=_FIT.samples, show_default=True, type=int, callback=_positive,
              help="Latents z drawn once; Adam batches come from them; scores use all.")
@click.option("--steps", default=_FIT.steps, show_default=True, type=int, help="Adam steps per candidate.")
@click.option("--shift", default=_FIT.shift, show_default=True, type=float, callback=_positive,
              help="Candidates are made unit, then scaled by this.")
@click.option("--init", type=click.Choice(["lighting", "identity"]), default=_FIT.init, show_default=True,
              help="Start of each fit: least squares on the lighting split, or identity +- 0.1.")
@click.option("--top", default=PICTURE_TOP, show_default=True, type=int, help="Candidates drawn in ranking.png.")
@click.option("--both-signs/--plus-only", default=BOTH_SIGNS, show_default=True,
              help="Score every candidate as +h and -h (discovered directions have no sign).")
@click.option("--orient/--no-orient", default=ORIENT_WINNER, show_default=True,
              help="Flip the winner so that the --mask-rule's foreground is the smaller part.")
@click.option("--mask-rule", type=click.Choice(sorted(MASK_RULES)), default="lighting", show_default=True,
              help="gen-synth's mask rule for this direction, which --orient orients it for (background-removal: "
                   "the sign that whitens the background).")
@_classes_opt
@_seed_opt(_FIT.seed)
@verbosity_option()
def rank(gan, candidates, out, top, both_signs, orient, classes, mask_rule, **fields):
    """Rank candidate directions by the appendix-B rule; writes ranking.json, direction.npy, ranking.png."""
    if fields["steps"] < 0:
        raise click.BadParameter(f"{fields['steps']} must be >= 0", param_hint="--steps")
    _run_rank(gan, candidates, out, FitConfig(**fields), top, orient, both_signs, classes, mask_rule)


def _run_optimize(gan: str, out: Path, cfg: OptimizeConfig, classes: str | None = None) -> dict:
    from finder import optimize as op

    _out_folder(out)
    cfg.check()
    model = _load_gan(gan, classes)
    bar = progress_bar(total=cfg.steps, desc="optimize", unit="step")

    def progress(step: int, terms: dict) -> None:
        bar.n = step
        bar.set_postfix(loss=f"{terms['loss']:.4f}", centre=f"{terms['centre']:.4f}", edges=f"{terms['edges']:.4f}",
                        refresh=False)
        bar.refresh()

    try:
        summary = op.run(model, out, cfg, progress, classes=classes)
    finally:
        bar.close()
    m = summary["masks"]
    click.echo(f"masks at shift {m['shift']:g} over {m['samples']} latents: foreground {m['fg_mean']:.0%} of the "
               f"image, {m['centre_fg']:.0%} of the central square, {m['border_fg']:.0%} of the border; "
               f"--max-fg auto would bound at {m['size_bound']:.2f}")
    if summary["centre_assumption"] != "holds":
        click.echo(f"Warning: {summary['centre_assumption']}", err=True)
    click.echo(f"wrote {out / 'direction.npy'} (gen-synth --direction), {out / 'summary.json'}, {out / 'optimize.png'}")
    return summary


@main.command()
@_gan_opt
@_out_opt("Output folder: direction.npy, summary.json, optimize.png.")
@click.option("--steps", default=_OPT.steps, show_default=True, type=int, callback=_positive, help="Adam steps.")
@click.option("--batch-size", "batch", default=_OPT.batch, show_default=True, type=int, callback=_positive,
              help="Latents z ~ N(0, I) per step.")
@click.option("--lr", default=_OPT.lr, show_default=True, type=float, callback=_positive, help="Adam lr of d.")
@click.option("--shift-mean", default=_OPT.shift_mean, show_default=True, type=float,
              help="r ~ N(mean, std), clipped at --shift-min: the shift of each step's G(z + r d).")
@click.option("--shift-std", default=_OPT.shift_std, show_default=True, type=float, callback=_positive,
              help="Standard deviation of r.")
@click.option("--shift-min", default=_OPT.shift_min, show_default=True, type=float, help="Smallest r.")
@click.option("--shift-draw", type=click.Choice(SHIFT_DRAWS), default=_OPT.shift_draw, show_default=True,
              help="One r per latent (the paper's shift length) or per latent coordinate (the authors' code).")
@click.option("--centre-weight", default=_OPT.centre_weight, show_default=True, type=float,
              help="Weight of mean(gray(G(z + r d)) * c): light the centre, darken the border.")
@click.option("--edge-weight", default=_OPT.edge_weight, show_default=True, type=float,
              help="Weight of the Sobel term: the shift keeps the image's edges.")
@click.option("--centre-scale", default=_OPT.centre_scale, show_default=True, type=float, callback=_positive,
              help="c = scale x (distance from the centre - its mean).")
@click.option("--invert", is_flag=True, help="The object darkens and the border lightens instead.")
@click.option("--samples", default=_OPT.samples, show_default=True, type=int, callback=_positive,
              help="Latents of the summary's mask statistics.")
@click.option("--mask-shift", default=_OPT.mask_shift, show_default=True, type=float, callback=_positive,
              help="Shift of the summary's masks and picture (gen-synth's --shift).")
@_classes_opt
@_seed_opt(_OPT.seed)
@verbosity_option()
def optimize(gan, out, classes, **fields):
    """Optimise one segmenting direction (Melas-Kyriazi et al. 2022); writes direction.npy for gen-synth.

    \b
    Each step: z ~ N(0, I), r ~ N(2, 0.5); minimise
      2 x mean(gray(G(z + r d)) x c) + 10 x mean((sobel gray G(z) - sobel gray G(z + r d))^2)
    with c negative at the centre and positive at the border: the shift lights the centre, darkens
    the border and keeps the edges. No ranking and no sign to choose. Minutes on a CPU for a small GAN.

    \b
    Example:
      find-direction optimize --gan dcgan-faces --out runs/dcgan-opt
      gen-synth --gan dcgan-faces --latents prior --direction runs/dcgan-opt/direction.npy --max-fg auto ...
    """
    try:
        cfg = OptimizeConfig(**fields).check()
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    _run_optimize(gan, out, cfg, classes)


if __name__ == "__main__":
    main()
