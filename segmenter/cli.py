"""`segment` and `export-model`, the two commands of the segmenter (core.cli's convention: -h,
-v/-vv, --version, one-line errors; a progress bar on a terminal).

    segment --ckpt runs/unet photos/ --out masks/
    segment --model model.onnx photos/ extra.jpg 'more/*.png' @urls.txt --out masks/ --overlay --boxes
    export-model --ckpt runs/unet --format onnx --out model/segmenter.onnx

`segment(SegmentConfig)` and `export_onnx(ExportConfig)` are the library functions (tests call them);
the commands add the progress bar and print the counts.
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from benchdata.sizing import PAPER_SIZE
from core.cli import Command, common_options, config_option, progress_bar
from core.images import SKIP_KINDS
from segmodel.inference import FG_PROB
from segmodel.runtime import NATIVE

from .export import FORMATS, PARITY_ATOL, ExportConfig, export_onnx
from .segment import SegmentConfig, segment

__all__ = ["main", "export_main"]


class _Threshold(click.ParamType):
    """A probability in [0, 1], or `none` for the 8-bit probability map itself."""

    name = "T|none"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, float):
            return value
        if str(value).strip().lower() == "none":
            return None
        try:
            t = float(value)
        except ValueError:
            self.fail(f"{value!r} is neither a number in [0, 1] nor 'none'", param, ctx)
        if not 0.0 <= t <= 1.0:
            self.fail(f"{t} is outside [0, 1]", param, ctx)
        return t


def _bar(total: int, desc: str):
    return progress_bar(total=total, desc=desc, unit="img")


def _note(line: str) -> None:
    """A line about the run (the size the model is fed at) on stderr, beside the progress bar."""
    click.echo(line, err=True)


def _field(name: str, flag: str | None = None, **kwargs):
    return config_option(SegmentConfig, name, flag, **kwargs)


@click.command(cls=Command)
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@_field("ckpt", type=click.Path(exists=True, path_type=Path),
        help="A train-unet run folder or step-*.safetensors file (needs torch).")
@_field("model", type=click.Path(path_type=Path),
        help="An exported .onnx file (export-model), run by onnxruntime: no torch needed.")
@_field("out", required=True, type=click.Path(file_okay=False, path_type=Path),
        help="Folder of the outputs: <relative path>.png per image (not inside an input folder).")
@_field("recursive", is_flag=True, help="Read the images of input folders' subfolders too.")
@_field("threshold", type=_Threshold(),
        help="Binary masks (0/255) where the probability p >= T, i.e. v >= 255 T on the 8-bit map (0.5: the "
             "paper's IoU rule); 'none' writes the 8-bit probability v = round(255 p), what eval-seg --pred-dir "
             "scores.")
@_field("overlay", is_flag=True, help="Also write <rel>.overlay.jpg: the mask tinted red over the image.")
@_field("cutout", is_flag=True, help="Also write <rel>.cutout.png: RGBA, the background transparent.")
@_field("boxes", is_flag=True,
        help="Also write boxes.jsonl: per image, the box [x0, y0, x1, y1] of the mask's largest component "
             "(p >= 0.5), as the WSOL protocol draws boxes; null for an empty mask.")
@_field("protocol", metavar="short|crop",
        help="How images reach the model: short (short side to the input size, eval-seg's for photos) or crop "
             "(the centre square at the input size; outside it the mask is 0).")
@_field("input_size", metavar=f"N|{NATIVE}",
        help=f"The input size in pixels; {NATIVE}: the size the model was trained at, from its checkpoint or "
             f"exported file ({PAPER_SIZE}, the paper's, when it records none). {PAPER_SIZE}: the paper's sizing.")
@_field("batch_size", type=click.IntRange(min=1), help="Images per forward pass.")
@_field("workers", type=click.IntRange(min=1), help="Threads decoding inputs and encoding outputs.")
@_field("device", help="auto (a GPU when present), cpu, cuda or cuda:N.")
@_field("fg_prob", type=click.Choice(list(FG_PROB)),
        help="--ckpt only: how the two logits become the foreground probability. "
             + "; ".join(f"{k}: {v}" for k, v in FG_PROB.items()) + ". Default: softmax.")
@_field("max_image_pixels", type=click.IntRange(min=1),
        help="Images with more pixels than this, read from the file header, are skipped before decoding.")
@_field("download_timeout", type=click.FloatRange(min=0, min_open=True, max=86400),
        help="Seconds a URL's whole download may take, redirects included (each read also times out after "
             "30 s of silence); a download past it is skipped.")
@_field("overwrite", is_flag=True, help="Redo every image, even those whose outputs exist.")
@common_options()
def main(inputs, **fields):
    """Segment images with a trained U-Net: a mask per image at its own size.

    INPUT: image files, folders, glob patterns ('photos/**/*.jpg', quoted), http(s) URLs, or @list.txt
    (a path or URL a line). Outputs are <--out>/<relative path>.png. A re-run skips the images its
    journal says were made from the same input and model; unreadable images are reported, skipped and
    counted. At most 2 x --max-image-pixels pixels are decoded at once across images.
    """
    summary = segment(SegmentConfig(inputs=tuple(inputs), **fields), progress=_bar, notify=_note)
    click.echo(summary_text(summary))


def summary_text(summary: dict) -> str:
    """The counts a run ends with, and why images were skipped."""
    lines = [f"segmented {summary['segmented']} of {summary['images']} images into {summary['out']}"
             + (f" ({summary['already_done']} done before, left as they were)" if summary["already_done"] else "")]
    kinds = summary["skipped"]
    if kinds:
        lines.append(f"skipped {sum(kinds.values())}: " + ", ".join(f"{kinds[k]} {k.replace('_', ' ')}"
                                                                   for k in SKIP_KINDS if k in kinds))
        reasons = list(summary["skipped_files"].values())
        lines += [f"  {r}" for r in reasons[:5]]
        if len(reasons) > 5:
            lines.append(f"  ... and {len(reasons) - 5} more (-v logs each)")
    if summary["boxes"]:
        lines.append(f"boxes: {summary['boxes']}")
    return "\n".join(lines)


def _efield(name: str, flag: str | None = None, **kwargs):
    return config_option(ExportConfig, name, flag, **kwargs)


@click.command(cls=Command)
@_efield("ckpt", required=True, type=click.Path(exists=True, path_type=Path),
         help="A train-unet run folder or step-*.safetensors file.")
@_efield("format", type=click.Choice(FORMATS), help="The file format.")
@_efield("out", required=True, type=click.Path(dir_okay=False, path_type=Path),
         help="The .onnx file to write; MODEL.md, the model card, is written beside it.")
@_efield("fg_prob", type=click.Choice(list(FG_PROB)),
         help="The foreground-probability rule the graph ends with. "
              + "; ".join(f"{k}: {v}" for k, v in FG_PROB.items()) + ".")
@_efield("protocol", metavar="short|crop",
         help="The sizing the card and metadata name, at the size the model was trained at (bgw.input_size).")
@_efield("results", type=click.Path(exists=True, dir_okay=False, path_type=Path),
         help="eval-seg's results.json of this checkpoint, quoted in the card (default: one found in the run "
              "folder or a folder inside it).")
@_efield("about", type=click.Path(exists=True, dir_okay=False, path_type=Path),
         help="A markdown file in your words: what the model is, what it is for, where it fails; the card's "
              "first section.")
@common_options()
def export_main(**fields):
    """Export a trained U-Net as a model file that runs without this project.

    ONNX: input 'image_rgb_nchw_pm1' (float32 [N, 3, H, W], RGB in [-1, 1]; batch, height and width
    dynamic), output 'foreground_prob_nhw' (float32 [N, H, W] in [0, 1]); the training provenance
    (shard-set fingerprint, GAN handle and fingerprint, direction sha256, step) in metadata_props.
    """
    done = export_onnx(ExportConfig(**fields))
    click.echo(f"wrote {done['model']} ({done['bytes']:,} bytes; onnxruntime equals PyTorch to "
               f"{done['parity_max_abs_diff']:.1e}, limit {PARITY_ATOL}) and {done['card']}")
    if done["results"] is None:
        click.echo("no eval-seg results.json of this checkpoint in its run folder: the card has no scores")
    prov = done["provenance"]
    click.echo("provenance: " + json.dumps({"shardset": prov["shardset"].get("fingerprint"),
                                            "gan": (prov.get("generator") or {}).get("handle"),
                                            "direction": (prov.get("direction") or {}).get("sha256"),
                                            "step": prov["checkpoint"]["step"],
                                            "input_size": prov["input_size"]}))


if __name__ == "__main__":  # pragma: no cover
    main()
