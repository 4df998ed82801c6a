"""The `gen-synth` command: thin click layer over generator.pipeline (config in, run out).

    gen-synth --dataset cub --alpha 0.2 --n 1e6          generate a shard set
    gen-synth --gan toy --latents prior --n 3000 --preview
    gen-synth embed --dataset cub                         only compute/cache the embeddings

Every bad input ends in one line, "Error: <what> ...<fix>", with a non-zero exit code and no
traceback (click's usage block is left out; the message names the fix). The progress bar
(tqdm, on stderr, only on a terminal) shows accepted/target, acceptance rate, samples/s and ETA.
"""
from __future__ import annotations

import contextlib
import errno
import math
import os
import signal
import threading

import click

from core.cli import Group, common_options, config_option, progress_bar, verbosity_option
from masking.rules import HISTOGRAM_RULES, MASK_RULES, PRESETS
from shardset.format import ENCODINGS

from .config import MAX_FG_AUTO, GenConfig, GenerationError

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


class SizeBound(click.ParamType):
    """`auto` or a fraction in (0, 1]."""

    name = "FRACTION|auto"

    def convert(self, value, param, ctx):
        if value is None or value == MAX_FG_AUTO or isinstance(value, float):
            return value
        try:
            v = float(value)
        except ValueError:
            self.fail(f"{value!r} is neither 'auto' nor a number; write e.g. 0.5 or auto", param, ctx)
        if not 0.0 < v <= 1.0:
            self.fail(f"{value} is not a fraction in (0, 1] (e.g. 0.5), nor 'auto'", param, ctx)
        return v


class GenSynthGroup(Group):
    """core.cli's group; a Ctrl-C says what was kept and how to go on, then leaves at once (after an
    interrupt, TensorFlow's teardown at exit has hung a test run for minutes)."""

    leave_at_once_after_interrupt = True

    def interrupted(self, args: list[str]) -> str:
        if args[:1] == ["embed"]:
            return "Interrupted: nothing was cached; run the same command again to embed."
        return "Interrupted: complete shards are kept; run the same command with --resume to finish the set."


def _fail_os(exc: OSError, out: str) -> GenerationError:
    """gen-synth's one line for an OSError: a full disk keeps the complete shards (--resume)."""
    if exc.errno == errno.ENOSPC:
        return GenerationError(
            f"disk full while writing to {out}: free some space or pick another --out, then rerun with --resume "
            f"(complete shards are kept; the unfinished one was removed)")
    where = exc.filename or out
    return GenerationError(f"{where}: {exc.strerror or exc}; check the path and its permissions")


_DEF = GenConfig()


def _field(name: str, flag: str | None = None, **kwargs):
    return config_option(GenConfig, name, flag, **kwargs)


@click.group(cls=GenSynthGroup, invoke_without_command=True)
@_field("gan", help="bigbigan, toy (the built-in stand-in, a test fixture), dcgan-faces, a SavedModel folder or a "
                    "TF-Hub handle (TF2 SavedModel or TF1 Hub format; 'generate' required, 'encode' optional).")
@_field("direction", type=click.Path(dir_okay=False),
        help="Segmenting direction h_bg, .npy or .pth [latent_dim]. Default: for bigbigan the paper's "
             "published h_bg (downloaded once into the cache), for toy and dcgan-faces the shipped one.")
@_field("shift", type=float, help="r in x' = G(z + r h) (background-removal: the pair G(z - r/2 h), G(z + r/2 h)).")
@_field("classes", metavar="SPEC",
        help="Class-conditional models (biggan): the classes drawn, one per sample, uniform over the set and "
             "from the shard's own seeded stream: all, or indices and inclusive ranges such as 1,5,10-19. "
             "Recorded in the manifest and in each sample's meta ('class'). An error for other models. "
             "[default: all]")
@_field("truncation", type=click.FloatRange(0.0, 1.0, min_open=True), metavar="T",
        help="BigGAN's truncation trick, T in (0, 1]: z = T x with x ~ N(0, I) truncated to [-2, 2], the module "
             "fed T (sharper, less varied images). Prior latents and a module with a truncation input only. "
             "[default: none: z ~ N(0, I) untruncated, fed 1.0, as Voynov & Babenko]")
@_field("latents", type=click.Choice(["prior", "embeddings"]),
        help="prior: z ~ N(0,I); embeddings: z = E(I_i) + alpha xi. [default: embeddings with --dataset]")
@_field("alpha", type=float, help="Noise scale of the embeddings latents. [default: 0.2; 0 for imagenet]")
@_field("dataset", help=f"Dataset for the embeddings latents: {DATASET_HELP}.")
@_field("data_root", type=click.Path(file_okay=False), envvar="BGW_DATA_ROOT",
        help="Folder holding the named datasets. [env BGW_DATA_ROOT]")
@_field("n", type=COUNT, help="Accepted samples to write (1e6 works).")
@_field("shard_size", type=COUNT, help="Samples per shard.")
@_field("val_fraction", type=click.FloatRange(0.0, 1.0, max_open=True),
        help="Share of shards (rounded up, the last ones) held out as validation.")
@_field("val_shards", type=click.IntRange(min=0),
        help="Number of validation shards (the last ones); overrides --val-fraction.")
@_field("seed", type=click.IntRange(min=0), help="Seed; with the shard index it fixes every draw.")
@_field("out", type=click.Path(file_okay=False), default=None, show_default=False,
        help="Output folder of the set (created when missing), e.g. --out sets/cub. [required]")
@_field("name", help="Set name. [default: the dataset's, or MODEL-prior]")
@_field("preview", is_flag=True, default=False,
        help="Also write OUT/NAME-preview.png (masks and rejected samples).")
@_field("encoding", type=click.Choice(ENCODINGS),
        help="Image encoding inside the shards (delta: lossless, 0.8x a PNG folder's bytes on photos, as "
             "fast to read as npy; npy: raw uint8; webp: smallest lossless; png; jpg: lossy). See shardset/FORMAT.md.")
@_field("image_size", type=click.IntRange(min=32),
        help="Side of the set's images in pixels. G(z) of another size is resampled to it on the "
             "accelerator (bilinear, antialiased when shrinking) before the masks are made.")
@_field("max_image_pixels", type=COUNT,
        help="Dataset images with more pixels than this (read from the file header) are skipped "
             "and counted, never decoded: a guard against decompression bombs.")
@_field("preset", type=click.Choice(sorted(PRESETS)),
        help="Filter preset. [default: flowers for --dataset flowers, else default]")
@_field("mask_rule", type=click.Choice(sorted(MASK_RULES)),
        help="lighting: gray(x) < gray(x'); mean: gray(x') > its mean; background-removal (Voynov & Babenko, "
             "BigGAN): the centred pair x = G(z - r/2 h), x' = G(z + r/2 h), foreground where the "
             "channel-mean difference x' - x, scaled per image to [0, 1], is below 0.6 (three renders per "
             "latent instead of two). [default: the preset's]")
@_field("shifted_images", type=click.FloatRange(0.0, 1.0), metavar="P",
        help="Share of samples, drawn per sample from the shard's stream, whose stored image is the pair's "
             "shifted render (G(z + r h); background-removal: G(z + r/2 h)) instead of G(z), with the same "
             "mask: Voynov & Babenko train with 0.1. Each sample's meta records 'image_shift'.")
@_field("connectivity", type=click.Choice(["4", "8"]),
        help="Connected components: 4 (paper) or 8 (reference code). [default: 4]")
@_field("components_filter", "--components-filter/--no-components-filter",
        help="Drop mask components smaller than 0.2 x the largest. [default: on]")
@_field("size_filter", "--size-filter/--no-size-filter",
        help="Reject masks over half the image. [default: the preset's]")
@_field("max_fg", type=SizeBound(),
        help="The size filter's bound on a mask's foreground fraction: a fraction, or auto = the 90th "
             "percentile of this direction's own masks (256 draws at the start of the run), never below "
             "0.5; for GANs whose objects fill the frame. Recorded in the manifest. [default: 0.5, the paper's]")
@_field("histogram_rule", type=click.Choice(sorted(HISTOGRAM_RULES)),
        help="bimodal (the reference code's, which produced the paper's numbers) or paper (the text's, "
             "stricter). [default: the preset's, bimodal]")
@_field("histogram_filter", "--histogram-filter/--no-histogram-filter",
        help="Switch the histogram filter on (with the preset's rule) or off. [default: on]")
@_field("batch_size", type=COUNT, help="Pairs per accelerator call.")
@_field("nodes", type=COUNT,
        help="N: split the shards over N independent processes (machines, SLURM arrays, k8s jobs).")
@_field("node_index", type=click.IntRange(min=0),
        help="I in 0..N-1: this process renders the shards k with k % N == I.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Run the shards as Ray tasks on the cluster at ADDRESS (a local one without it).")
@_field("resume", is_flag=True, help="Complete an existing set made with the same parameters.")
@_field("cache_dir", type=click.Path(file_okay=False), envvar="BGW_CACHE_DIR",
        help="Model and embeddings cache. [env BGW_CACHE_DIR, default ~/.cache/bgw-seg]")
@common_options()
@click.pass_context
def main(ctx, preview, connectivity, ray_address, **fields):
    """Generate synthetic (image, mask) pairs from a GAN into a shard set.

    \b
    Examples:
      gen-synth --dataset cub --alpha 0.2 --n 1e6
      gen-synth --gan toy --latents prior --n 3000 --shard-size 500 --out T --name t --seed 1 --preview
      gen-synth embed --dataset cub          (compute the embeddings cache only)
    """
    if ctx.invoked_subcommand is not None:
        ctx.obj = {k: fields[k] for k in ("gan", "data_root", "cache_dir")}
        return
    try:
        cfg = GenConfig(**fields, preview=True if preview else None,
                        connectivity=int(connectivity) if connectivity else None).resolved()
        if cfg.out is None:  # not click's required=True: `gen-synth embed` writes no set and needs none
            raise click.UsageError("missing --out: name the folder the shard set goes to, e.g. --out sets/toy")
        from . import pipeline

        if ray_address is not None:
            result = pipeline.run_ray(cfg, None if ray_address == "local" else ray_address)
        else:
            pipeline.check_existing(cfg)
            with _ctrl_c_stops_the_run():
                result = _run_with_bar(cfg)
    except OSError as exc:
        raise _fail_os(exc, fields["out"]) from None
    _report(result)


@contextlib.contextmanager
def _ctrl_c_stops_the_run():
    """While the run lasts, a first Ctrl-C stops it after the batch in hand (render.STOP, and the
    usual KeyboardInterrupt); complete shards stay. A second one leaves at once: the unfinished
    shard is a temporary file that --resume removes. Only the main thread may set handlers, and a
    process started with SIGINT ignored (a background job of a script, nohup) keeps ignoring it."""
    from . import render

    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is signal.SIG_IGN):
        yield
        return

    def on_sigint(signum, frame):
        if render.STOP.is_set():
            os.write(2, b"Interrupted again: leaving now; run the same command with --resume to finish the set.\n")
            os._exit(130)
        render.STOP.set()
        raise KeyboardInterrupt

    render.STOP.clear()
    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        render.STOP.clear()


def _run_with_bar(cfg: GenConfig):
    from . import pipeline

    target = pipeline.node_target(cfg)
    bar = progress_bar(total=target, unit="sample", smoothing=0.1,
                       desc=f"{cfg.name} (node {cfg.node_index}/{cfg.nodes})" if cfg.nodes > 1 else cfg.name)
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
@click.option("--max-image-pixels", type=COUNT, default=_DEF.max_image_pixels, show_default=True,
              help="Images with more pixels than this (read from the header) are skipped and counted.")
@verbosity_option()
@click.pass_context
def embed_cmd(ctx, dataset, gan, data_root, cache_dir, max_image_pixels):
    """Encode a dataset's train images once (short side 256, centre crop, z_sample) and cache them.

    gen-synth runs this itself when the cache is missing; run it alone to prepare a cluster job.
    """
    parent = ctx.obj or {}
    from . import inputs

    cfg = GenConfig(gan=gan or parent.get("gan") or "bigbigan", dataset=dataset, latents="embeddings",
                    data_root=data_root or parent.get("data_root"),
                    cache_dir=cache_dir or parent.get("cache_dir"), max_image_pixels=max_image_pixels)
    try:
        total = inputs.count_train_images(cfg)
        with progress_bar(total=total, unit="image", desc=f"embed {dataset}") as bar:
            facts = inputs.embed_dataset(cfg, progress=bar.update)
    except OSError as exc:
        raise _fail_os(exc, str(cfg.cache_dir or "the cache folder")) from None
    emb = facts["embeddings"]
    click.echo(f"{dataset}: {emb['count']} embeddings (dim {emb['dim']}, {facts['dataset'].get('skipped', 0)} "
               f"unreadable images skipped), sha256 {emb['sha256'][:16]}")


if __name__ == "__main__":
    main()
