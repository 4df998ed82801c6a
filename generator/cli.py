"""The `gen-synth` command: thin click layer over generator.pipeline (config in, run out).

    gen-synth --dataset cub --alpha 0.2 --n 1e6          generate a shard set
    gen-synth --gan toy --latents prior --n 3000 --preview
    gen-synth embed --dataset cub                         only compute/cache the embeddings

Every bad input ends in one line, "Error: <what> ...<fix>", with a non-zero exit code and no
traceback (click's usage block is left out; the message names the fix). The progress bar
(tqdm, on stderr, only on a terminal) shows accepted/target, acceptance rate, samples/s and ETA.
"""
from __future__ import annotations

import errno
import logging
import math
import sys

import click

from shardset.format import DEFAULT_ENCODING, ENCODINGS
from shardset.images import DEFAULT_MAX_PIXELS

from .masks import HISTOGRAM_RULES, MASK_RULES, PRESETS
from .config import NO_HISTOGRAM, GenConfig, GenerationError

DATASET_HELP = "cub, flowers, imagenet, duts, ecssd, dut-omron, or folder:PATH (any folder of images)"


class Count(click.ParamType):
    """A positive integer that may be written as 1e6 or 1_000_000."""

    name = "COUNT"

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool):
            v = value
        else:
            text = str(value).strip().replace("_", "")
            try:
                v = int(text)
            except ValueError:
                try:
                    f = float(text)
                except ValueError:
                    self.fail(f"{value!r} is not a number; write e.g. 1000 or 1e6", param, ctx)
                if not math.isfinite(f) or not f.is_integer():
                    self.fail(f"{value!r} is not a whole number; write e.g. 1000 or 1e6", param, ctx)
                v = int(f)
        if v <= 0:
            self.fail(f"{value} must be a positive integer (e.g. 1000 or 1e6)", param, ctx)
        return v


COUNT = Count()


class OneLineGroup(click.Group):
    """A group whose errors print as a single line: no usage block, no traceback for bad input."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            if isinstance(exc, click.UsageError):
                exc.ctx = None  # the message already says what to change; no usage block
            exc.show()
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:  # Ctrl-C
            if args and list(args)[:1] == ["embed"] or (args is None and sys.argv[1:2] == ["embed"]):
                click.echo("Interrupted: nothing was cached; run the same command again to embed.", err=True)
            else:
                click.echo("Interrupted: complete shards are kept; run the same command with --resume to "
                           "finish the set.", err=True)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def _fail_os(exc: OSError, out: str) -> click.ClickException:
    if exc.errno == errno.ENOSPC:
        return click.ClickException(
            f"disk full while writing to {out}: free some space or pick another --out, then rerun with --resume "
            f"(complete shards are kept; the unfinished one was removed)")
    where = exc.filename or out
    return click.ClickException(f"{where}: {exc.strerror or exc}; check the path and its permissions")


@click.group(cls=OneLineGroup, invoke_without_command=True,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--gan", default="bigbigan", show_default=True,
              help="bigbigan, toy (the built-in stand-in, a test fixture), a SavedModel folder or a TF-Hub handle "
                   "(TF2 SavedModel or TF1 Hub format; 'generate' required, 'encode' optional).")
@click.option("--direction", type=click.Path(dir_okay=False), default=None,
              help="Segmenting direction h_bg, .npy or .pth [latent_dim]. Default: for bigbigan the paper's "
                   "published h_bg (downloaded once into the cache), for toy its shipped one.")
@click.option("--shift", type=float, default=5.0, show_default=True, help="r in x' = G(z + r h).")
@click.option("--latents", type=click.Choice(["prior", "embeddings"]), default=None,
              help="prior: z ~ N(0,I); embeddings: z = E(I_i) + alpha xi. [default: embeddings with --dataset]")
@click.option("--alpha", type=float, default=None,
              help="Noise scale of the embeddings latents. [default: 0.2; 0 for imagenet]")
@click.option("--dataset", default=None, help=f"Dataset for the embeddings latents: {DATASET_HELP}.")
@click.option("--data-root", type=click.Path(file_okay=False), envvar="BGW_DATA_ROOT", default=None,
              help="Folder holding the named datasets. [env BGW_DATA_ROOT]")
@click.option("--n", "n", type=COUNT, default="1000", show_default=True,
              help="Accepted samples to write (1e6 works).")
@click.option("--shard-size", type=COUNT, default="1000", show_default=True, help="Samples per shard.")
@click.option("--val-fraction", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.01, show_default=True,
              help="Share of shards (rounded up, the last ones) held out as validation.")
@click.option("--val-shards", type=click.IntRange(min=0), default=None,
              help="Number of validation shards (the last ones); overrides --val-fraction.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed; with the shard index it fixes every draw.")
@click.option("--out", type=click.Path(file_okay=False), default="shards", show_default=True,
              help="Output folder of the set.")
@click.option("--name", default=None, help="Set name. [default: the dataset's, or MODEL-prior]")
@click.option("--preview", is_flag=True, help="Also write OUT/NAME-preview.png (masks and rejected samples).")
@click.option("--encoding", type=click.Choice(ENCODINGS), default=DEFAULT_ENCODING, show_default=True,
              help="Image encoding inside the shards (npy: raw uint8 under zstd, lossless and the fastest to "
                   "read; png/webp: smaller; jpg: lossy). See benchmarks/shard_io.py.")
@click.option("--image-size", type=click.IntRange(min=32), default=128, show_default=True,
              help="Side of the set's images in pixels. G(z) of another size is resampled to it on the "
                   "accelerator (bilinear, antialiased when shrinking) before the masks are made.")
@click.option("--max-image-pixels", type=COUNT, default=str(DEFAULT_MAX_PIXELS), show_default=True,
              help="Dataset images with more pixels than this (read from the file header) are skipped "
                   "and counted, never decoded: a guard against decompression bombs.")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default=None,
              help="Filter preset. [default: flowers for --dataset flowers, else default]")
@click.option("--mask-rule", type=click.Choice(sorted(MASK_RULES)), default=None,
              help="lighting: gray(x) < gray(x'); mean: gray(x') > its mean. [default: the preset's]")
@click.option("--connectivity", type=click.Choice(["4", "8"]), default=None,
              help="Connected components: 4 (paper) or 8 (reference code). [default: 4]")
@click.option("--components-filter/--no-components-filter", default=None,
              help="Drop mask components smaller than 0.2 x the largest. [default: on]")
@click.option("--size-filter/--no-size-filter", default=None,
              help="Reject masks over half the image. [default: the preset's]")
@click.option("--histogram-rule", type=click.Choice(sorted(HISTOGRAM_RULES)), default=None,
              help="bimodal (the reference code's, which produced the paper's numbers) or paper (the text's, "
                   "stricter). [default: the preset's, bimodal]")
@click.option("--no-histogram-filter", is_flag=True, help="Switch the histogram filter off.")
@click.option("--batch-size", type=COUNT, default="64", show_default=True, help="Pairs per accelerator call.")
@click.option("--num-workers", type=COUNT, default="1", show_default=True,
              help="W: split the shards over W independent processes (SLURM arrays, k8s jobs).")
@click.option("--worker-index", type=click.IntRange(min=0), default=0, show_default=True,
              help="I in 0..W-1: this process renders the shards k with k % W == I.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Run the shards as Ray tasks on the cluster at ADDRESS (a local one without it).")
@click.option("--resume", is_flag=True, help="Complete an existing set made with the same parameters.")
@click.option("--cache-dir", type=click.Path(file_okay=False), envvar="BGW_CACHE_DIR", default=None,
              help="Model and embeddings cache. [env BGW_CACHE_DIR, default ~/.cache/bgw-seg]")
@click.option("-v", "--verbose", count=True, help="-v: info logs, -vv: debug.")
@click.pass_context
def main(ctx, gan, direction, shift, latents, alpha, dataset, data_root, n, shard_size, val_fraction, val_shards,
         seed, out, name, preview, encoding, image_size, max_image_pixels, preset, mask_rule, connectivity, components_filter, size_filter, histogram_rule,
         no_histogram_filter, batch_size, num_workers, worker_index, ray_address, resume, cache_dir, verbose):
    """Generate synthetic (image, mask) pairs from a GAN into a shard set.

    \b
    Examples:
      gen-synth --dataset cub --alpha 0.2 --n 1e6
      gen-synth --gan toy --latents prior --n 3000 --shard-size 500 --out T --name t --seed 1 --preview
      gen-synth embed --dataset cub          (compute the embeddings cache only)
    """
    if ctx.invoked_subcommand is not None:
        ctx.obj = {"gan": gan, "data_root": data_root, "cache_dir": cache_dir, "verbose": verbose}
        return
    _setup_logging(verbose)
    if histogram_rule and no_histogram_filter:
        raise click.UsageError("--histogram-rule and --no-histogram-filter contradict each other; pass one")
    try:
        cfg = GenConfig(
            gan=gan, direction=direction, shift=shift, cache_dir=cache_dir, latents=latents, alpha=alpha,
            dataset=dataset, data_root=data_root, n=n, shard_size=shard_size, val_fraction=val_fraction,
            val_shards=val_shards, seed=seed, out=out, name=name, encoding=encoding, image_size=image_size,
            max_image_pixels=max_image_pixels,
            preview=True if preview else None, preset=preset, mask_rule=mask_rule,
            connectivity=int(connectivity) if connectivity else None, components_filter=components_filter,
            size_filter=size_filter, histogram_rule=NO_HISTOGRAM if no_histogram_filter else histogram_rule,
            batch_size=batch_size, num_workers=num_workers, worker_index=worker_index, resume=resume,
        ).resolved()
        from . import pipeline

        if ray_address is not None:
            result = pipeline.run_ray(cfg, None if ray_address == "local" else ray_address)
        else:
            pipeline.check_existing(cfg)
            result = _run_with_bar(cfg)
    except GenerationError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise _fail_os(exc, out) from None
    _report(result)


def _run_with_bar(cfg: GenConfig):
    from tqdm import tqdm

    from . import pipeline

    target = pipeline.worker_target(cfg)
    # disable=None: no bar when stderr is not a terminal (logs, CI), so output stays clean
    bar = tqdm(total=target, unit="sample", dynamic_ncols=True, disable=None, smoothing=0.1,
               desc=f"{cfg.name} (worker {cfg.worker_index}/{cfg.num_workers})" if cfg.num_workers > 1 else cfg.name)
    counts = {"accepted": 0, "drawn": 0, "started": False}

    def progress(accepted: int, drawn: int) -> None:
        if not counts["started"]:  # the clock starts with the first batch, not with the model load
            counts["started"] = True
            bar.reset(total=target)
        counts["accepted"] += accepted
        counts["drawn"] += drawn
        if counts["drawn"]:
            bar.set_postfix_str(f"accept {100.0 * counts['accepted'] / counts['drawn']:.1f}%", refresh=False)
        bar.update(accepted)

    try:
        return pipeline.run(cfg, progress=progress)
    finally:
        bar.close()


def _report(result) -> None:
    if result.complete:
        tot = result.manifest["totals"]
        rate = tot["samples"] / tot["drawn"] if tot["drawn"] else 0.0
        click.echo(f"{result.manifest_path}: {tot['samples']} samples in {tot['shards']} shards "
                   f"(acceptance {100 * rate:.1f}%, rejected {tot['rejected']})")
    else:
        click.echo(f"{result.manifest_path}: wrote {len(result.written)} shard(s) "
                   f"(kept {len(result.skipped)}); the set completes when every worker has finished")
    if result.preview is not None:
        click.echo(f"preview: {result.preview}")


@main.command("embed")
@click.option("--dataset", required=True, help=f"Dataset to encode: {DATASET_HELP}.")
@click.option("--gan", default=None, help="Model (default: the gen-synth --gan value, bigbigan).")
@click.option("--data-root", type=click.Path(file_okay=False), envvar="BGW_DATA_ROOT", default=None,
              help="Folder holding the named datasets. [env BGW_DATA_ROOT]")
@click.option("--cache-dir", type=click.Path(file_okay=False), envvar="BGW_CACHE_DIR", default=None,
              help="Model and embeddings cache. [env BGW_CACHE_DIR, default ~/.cache/bgw-seg]")
@click.option("--max-image-pixels", type=COUNT, default=str(DEFAULT_MAX_PIXELS), show_default=True,
              help="Images with more pixels than this (read from the header) are skipped and counted.")
@click.option("-v", "--verbose", count=True, help="-v: info logs, -vv: debug.")
@click.pass_context
def embed_cmd(ctx, dataset, gan, data_root, cache_dir, max_image_pixels, verbose):
    """Encode a dataset's train images once (short side 256, centre crop, z_sample) and cache them.

    gen-synth runs this itself when the cache is missing; run it alone to prepare a cluster job.
    """
    parent = ctx.obj or {}
    _setup_logging(max(verbose, parent.get("verbose", 0)))
    from tqdm import tqdm

    from . import inputs

    cfg = GenConfig(gan=gan or parent.get("gan") or "bigbigan", dataset=dataset, latents="embeddings",
                    data_root=data_root or parent.get("data_root"),
                    cache_dir=cache_dir or parent.get("cache_dir"), max_image_pixels=max_image_pixels)
    try:
        total = inputs.count_train_images(cfg)
        with tqdm(total=total, unit="image", desc=f"embed {dataset}", disable=None) as bar:
            facts = inputs.embed_dataset(cfg, progress=bar.update)
    except GenerationError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise _fail_os(exc, str(cfg.cache_dir or "the cache folder")) from None
    emb = facts["embeddings"]
    click.echo(f"{dataset}: {emb['count']} embeddings (dim {emb['dim']}, {facts['dataset'].get('skipped', 0)} "
               f"unreadable images skipped), sha256 {emb['sha256'][:16]}")


if __name__ == "__main__":
    main()
