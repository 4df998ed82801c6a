"""`shardset` command: inspect, verify, import and export shard sets (thin click layer).

Errors are one line (core.cli): a ShardError, ManifestError or any other UserError names the file
and the fix."""
from __future__ import annotations

import json
import sys

import click

from core.cli import Group, common_options, config_option, progress_bar, verbosity_option

from .format import ENCODINGS, ShardSetError, check_name
from .importer import ImportConfig, import_folder


@click.group(cls=Group)
@common_options()
def cli() -> None:
    """Shard sets: tar.zst shards of (image, mask, z, meta) samples plus a manifest NAME.json.

    SET is a manifest (shards/NAME.json), a folder holding one set, a glob ('shards/NAME-*'),
    a brace range (NAME-{000000..000009}.tar.zst), or a file://, http(s):// or fsspec URL.
    """


def _import_field(name: str, **kwargs):
    return config_option(ImportConfig, name, **kwargs)


def _set_name(ctx, param, value: str) -> str:
    try:
        return check_name(value)
    except ShardSetError as exc:
        raise click.BadParameter(str(exc)) from None


@cli.command("inspect")
@click.argument("spec", nargs=-1, required=True, metavar="SET...")
@click.option("--preview", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write a contact sheet of image | mask pairs to this PNG file.")
@click.option("--n", "n_preview", type=click.IntRange(1, 1024), default=16, show_default=True,
              help="Samples in the contact sheet.")
@click.option("--cols", type=click.IntRange(1, 64), default=4, show_default=True, help="Pairs per row.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object instead of the table (the preview, if any, under \"preview\").")
@verbosity_option()
def inspect_cmd(spec: tuple[str, ...], preview: str | None, n_preview: int, cols: int, as_json: bool) -> None:
    """Print a summary table of SET (samples, bytes, encoding, parameters, rejections)."""
    from .inspect import format_table, rows_of, summary, write_preview
    from .urls import resolve

    ref = resolve(list(spec))
    facts = summary(ref)
    if not as_json:
        click.echo(format_table(rows_of(facts)))
    if preview:
        n = write_preview(ref, preview, n=n_preview, cols=cols)
        facts["preview"] = {"path": preview, "pairs": n}
        if not as_json:
            click.echo(f"wrote {preview} ({n} image | mask pairs)")
    if as_json:
        click.echo(json.dumps(facts, indent=1, sort_keys=True))


@cli.command("verify")
@click.argument("spec", nargs=-1, required=True, metavar="SET...")
@click.option("--no-decode", is_flag=True, help="Only re-hash shards; skip decoding every sample.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object (ok, samples, bad, problems, notes, shards[]); the exit code stays.")
@verbosity_option()
def verify_cmd(spec: tuple[str, ...], no_decode: bool, as_json: bool) -> None:
    """Re-hash every shard of SET against the manifest and decode every sample.

    Exits 0 when all hold; otherwise 1, naming each bad shard. A set whose manifest says it is
    incomplete, or whose listed shards are missing or not selected by SET, also fails.
    """
    from .urls import resolve
    from .verify import verify_set

    ref = resolve(list(spec))
    with progress_bar(total=len(ref.urls), unit="shard", desc="verify") as bar:
        report = verify_set(ref, decode=not no_decode, progress=lambda _: bar.update(1))
    if as_json:
        click.echo(json.dumps({"set": ref.manifest_url, **report.to_dict()}, indent=1, sort_keys=True))
        sys.exit(0 if report.ok else 1)
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    for bad in report.bad:
        click.echo(f"BAD {bad.url}: {bad.reason}")
    for problem in report.problems:
        click.echo(f"SET {ref.manifest_url}: {problem}")
    if not report.ok:
        extra = f"; {len(report.problems)} set-level problem(s)" if report.problems else ""
        click.echo(f"FAILED: {len(report.bad)} of {len(report.shards)} shards bad{extra}", err=True)
        sys.exit(1)
    click.echo(f"OK: {len(report.shards)} shards, {report.samples} samples")


@cli.command("import")
@click.option("--images", required=True, type=click.Path(exists=True, file_okay=False), help="Folder of <id>.jpg|png.")
@click.option("--masks", required=True, type=click.Path(exists=True, file_okay=False), help="Folder of <id>.png masks.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder of the set.")
@click.option("--name", required=True, callback=_set_name, help="Set name: [A-Za-z0-9_-]+ (shards are NAME-000000.tar.zst).")
@_import_field("size", type=click.IntRange(8, 8192), help="Short side resize, then center crop to size x size.")
@_import_field("shard_size", type=click.IntRange(1, 1_000_000), help="Samples per shard.")
@_import_field("val_fraction", type=click.FloatRange(0.0, 1.0, max_open=True),
               help="Fraction of pairs put into validation shards (picked by --seed).")
@_import_field("encoding", type=click.Choice(ENCODINGS), help="Image encoding inside the shards.")
@_import_field("seed", type=int, help="Seed of the train/val split.")
@_import_field("mode", type=click.Choice(["new", "resume", "overwrite"]),
               help="new refuses an existing set; resume keeps verified shards; overwrite replaces the set.")
@_import_field("num_workers", type=click.IntRange(1, 256),
               help="Local processes reading, resizing and writing shards in parallel.")
@_import_field("max_pixels", type=click.IntRange(1, None),
               help="Skip (and count) images and masks with more pixels than this, read from the file header "
                    "before decoding: decompression bombs never reach memory.")
@verbosity_option()
def import_cmd(images, masks, out, name, **fields) -> None:
    """Turn a labelled folder (images <id>.jpg|png, masks <id>.png) into a shard set.

    Pairs whose image or mask is over --max-image-pixels, truncated or corrupt are skipped with a
    warning; the summary counts them and the manifest records why (rejected.*).
    """
    with progress_bar(unit="sample", desc="import") as bar:
        manifest = import_folder(images, masks, out, name, progress=bar.update, **fields)
    t = manifest["totals"]
    skipped = sum(t["rejected"].values())
    click.echo(f"wrote {t['shards']} shards, {t['samples']} samples ({skipped} skipped) to {out}/{name}.json")


@cli.command("export")
@click.argument("spec", nargs=-1, required=True, metavar="SET...")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--plain-tar", is_flag=True,
              help="Write each shard decompressed (NAME-000000.tar, the bytes `zstd -d` gives) and NAME.json listing "
                   "their sha256 and split, for tools that read only plain tar.")
@click.option("--limit", type=click.IntRange(1, None), default=None,
              help="Export at most this many samples (not with --plain-tar, which exports whole shards).")
@click.option("--encoding", type=click.Choice(ENCODINGS), default=None,
              help="Re-encode: write the whole set anew in --out with its images in this encoding (same keys, "
                   "split and counts; new shards, sha256 and manifest). E.g. an npy set made before delta "
                   "was the default, to --encoding delta.")
@verbosity_option()
def export_cmd(spec: tuple[str, ...], out: str, plain_tar: bool, limit: int | None, encoding: str | None) -> None:
    """Write the samples of SET as images/<key>.png and masks/<key>.png (0/255), as plain tar, or as
    a shard set in another image encoding (--encoding).

    Plain tar: read it with tar, webdataset or Hugging Face datasets without bgw-seg (recipes in
    shardset/FORMAT.md). Refuses an --out that already holds an export of the set.
    """
    from .export import export_plain_tar, export_set, reencode_set
    from .urls import resolve

    if plain_tar and limit is not None:
        raise click.UsageError("--limit counts samples, and --plain-tar exports whole shards: choose the shards "
                               "with SET (a glob or a brace range) instead")
    if encoding is not None and (plain_tar or limit is not None):
        raise click.UsageError("--encoding re-encodes the whole set as a shard set: leave out "
                               f"{'--plain-tar' if plain_tar else '--limit'}")
    ref = resolve(list(spec))
    if encoding is not None:
        was = ref.manifest["encoding"] if ref.manifest else "?"
        with progress_bar(total=len(ref.urls), unit="shard", desc="re-encode") as bar:
            m = reencode_set(ref, out, encoding, progress=bar.update)
        t = m["totals"]
        click.echo(f"wrote {t['shards']} shards ({t['samples']} samples, {t['bytes']} bytes) in encoding {encoding} "
                   f"(was {was}) and {m['name']}.json to {out}")
        return
    if plain_tar:
        with progress_bar(total=len(ref.urls), unit="shard", desc="export") as bar:
            m = export_plain_tar(ref, out, progress=bar.update)
        t = m["totals"]
        click.echo(f"wrote {t['shards']} plain tar shards ({t['samples']} samples, {t['bytes']} bytes) and "
                   f"{m['name']}.json to {out}")
        return
    with progress_bar(unit="sample", desc="export") as bar:
        n = export_set(ref, out, limit=limit, progress=bar.update)
    click.echo(f"wrote {n} samples to {out}")


def main() -> None:
    cli(prog_name="shardset")


if __name__ == "__main__":
    main()
