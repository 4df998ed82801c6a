"""Where a checkpoint comes from, and the model card that says so.

`provenance(backend)` gathers, as JSON: the checkpoint (file, sha256, step, architecture), the
size it was trained at and the sizing named at that size (e.g. short64), the training settings (the
sidecar's copy of the run's config), the shard set it was trained on (name and fingerprint from the
sidecar) and, when that set's manifest is still where the run read it and its fingerprint matches,
the manifest's generation facts: the GAN (spec, handle, fingerprint), the direction (source,
sha256), the latents, the dataset of the embeddings, the filters, and any `licence` / `license`
field they carry.

`find_results(run, sha256)` finds eval-seg's results.json for exactly this checkpoint (in the run
folder or one folder below it, or a path given). `model_card(...)` renders MODEL.md.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from benchdata.sizing import Sizing
from core.errors import UserError, first_line
from segmodel.runtime import META_INPUT_SIZE
from shardset import manifest_fingerprint, resolve

log = logging.getLogger(__name__)

__all__ = ["provenance", "find_results", "model_card", "TRAINING_KEYS"]

TRAINING_KEYS = ("steps", "batch", "lr", "lr_milestones", "lr_gamma", "size", "width", "seed")
_GENERATION_KEYS = ("generator", "direction", "latents", "dataset", "filters")
# the numbers the card quotes, per evaluation protocol: the paper's and the saliency toolkits' headline
_PROTOCOL_STEPS = {  # benchdata.sizing's kinds of sizing, in words, at size {s}
    "short": "resize the image so its short side is {s}, predict, resize the map back bilinearly",
    "crop": "centre-crop the image to a square, resize it to {s} x {s}, predict; the map covers that square",
}
_SIZE_FROM = {"recorded": "recorded by the checkpoint", "config": "the size in its training config",
              "default": "the paper's: the checkpoint records no training size"}
_CARD_METRICS = {"paper": ("max_f", "iou", "accuracy"), "sod-toolkit": ("max_f", "s_measure", "mae")}


def _manifests(specs: list[str]) -> list[tuple[str, dict]]:
    """(manifest location, manifest) of each training spec whose manifest can still be read."""
    found = []
    for spec in specs:
        try:
            ref = resolve(spec)
        except (UserError, OSError) as e:  # moved, deleted, offline: provenance says so
            log.warning("shard-set manifest of %s not readable (%s); the model card names the set by its "
                        "fingerprint only", spec, first_line(e))
            continue
        if ref.manifest is not None:
            found.append((str(ref.manifest_url or spec), ref.manifest))
    return found


def provenance(backend, fg_prob: str, protocol: str) -> dict:
    """JSON facts about a TorchBackend's checkpoint and its training inputs (module docstring);
    `protocol` is the kind of sizing (short, crop), named at the model's training size."""
    meta = backend.meta
    config = dict(meta.get("config") or {})
    shardset = dict(meta.get("shardset") or {})
    out = {
        "checkpoint": {"file": backend.weights_path.name, "sha256": backend.fingerprint, "step": meta.get("step"),
                       "model": meta.get("model")},
        "fg_prob": fg_prob,
        "protocol": Sizing(protocol, backend.input_size).name,
        "input_size": backend.input_size,
        "input_size_from": backend.input_size_from,
        "training": {k: config[k] for k in TRAINING_KEYS if k in config},
        "validation": meta.get("val") or None,
        "shardset": {**shardset, "specs": list(config.get("shards") or [])},
    }
    manifests = _manifests(out["shardset"]["specs"])
    if len(manifests) == 1:
        where, manifest = manifests[0]
        matches = manifest_fingerprint(manifest) == shardset.get("fingerprint")
        out["shardset"].update(manifest=where, manifest_matches=matches,
                               samples=(manifest.get("totals") or {}).get("samples"))
        if matches:
            params = manifest.get("params") or {}
            out.update({k: params[k] for k in _GENERATION_KEYS if params.get(k) is not None})
        else:
            log.warning("the manifest at %s has another fingerprint than the one %s was trained on; its "
                        "generation facts are left out of the provenance", where, backend.weights_path)
    elif manifests:
        out["shardset"]["manifests"] = [where for where, _ in manifests]  # several sets: named, not merged
    return out


def licences(prov: dict) -> dict[str, str | None]:
    """The licence fields the inputs' records carry (None where a record has none)."""
    return {what: next((str(prov[what][k]) for k in ("licence", "license") if (prov.get(what) or {}).get(k)), None)
            for what in ("generator", "dataset", "direction")}


def find_results(run_dir: Path, sha256: str, given: Path | None = None) -> tuple[Path, dict] | None:
    """eval-seg's results for this checkpoint alone: `given`, else results.json in the run folder or a
    folder inside it. Results of other or several checkpoints are passed over."""
    candidates = [given] if given is not None else [run_dir / "results.json", *sorted(run_dir.glob("*/results.json"))]
    for path in candidates:
        try:
            results = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            if given is not None:
                raise UserError(f"--results {path} is not a readable results.json ({first_line(e)})") from e
            continue
        shas = [s.get("sha256") for s in results.get("sources") or []]
        if shas == [sha256]:
            return path, results
        if given is not None:
            raise UserError(f"--results {path} scores {len(shas)} other source(s), not this checkpoint "
                            f"(sha256 {sha256[:12]}); give the results of eval-seg --ckpt on it")
    return None


def _steps(protocol: str) -> str:
    """A sizing's steps in words: short64 -> 'resize the image so its short side is 64, ...'."""
    sizing = Sizing.parse(protocol)
    return _PROTOCOL_STEPS[sizing.kind].format(s=sizing.size)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def _results_table(results: dict) -> list[str]:
    lines = ["| dataset | images | input | protocol | " + " | ".join(
        f"{p} {m}" for p, ms in _CARD_METRICS.items() for m in ms) + " |"]
    lines.append("|" + " --- |" * (4 + sum(len(ms) for ms in _CARD_METRICS.values())))
    for name, ds in (results.get("datasets") or {}).items():
        protos = ds.get("protocols") or {}
        cells = [_fmt((protos.get(p, {}).get("summary", {}).get(m) or {}).get("mean"))
                 for p, ms in _CARD_METRICS.items() for m in ms]
        lines.append(f"| {name} | {ds.get('n_images')} | {ds.get('protocol')} | paper / sod-toolkit | "
                     + " | ".join(cells) + " |")
    return lines


def model_card(model_name: str, prov: dict, metadata: dict[str, str], results: tuple[Path, dict] | None,
               input_name: str, output_name: str, version: str, *, model_sha256: str | None = None,
               about: str | None = None) -> str:
    """MODEL.md: what the file is, how to run it, what it was trained on, how it scores, licences.
    `about` (the exporter's own words: what the model is for, its limits) comes first."""
    ck = prov["checkpoint"]
    ss = prov["shardset"]
    gen, direction = prov.get("generator") or {}, prov.get("direction") or {}
    lines = [
        f"# {model_name}: an unsupervised foreground segmenter (bgw-seg U-Net)",
        "",
        f"Exported by `export-model` (bgw-seg {version}) from checkpoint `{ck['file']}` "
        f"(step {ck['step']}, sha256 `{ck['sha256']}`), a U-Net of width {(ck.get('model') or {}).get('width')} "
        "trained without labels on synthetic masks from a GAN (Voynov et al., \"Big GANs Are Watching You\").",
        "",
        *([f"## About this model", "", about.strip(), ""] if about and about.strip() else []),
        "## Use",
        "",
        *([f"- File: `{model_name}.onnx`, sha256 `{model_sha256}` (`sha256sum` checks a copy)."] if model_sha256
          else []),
        f"- Input `{input_name}`: float32 [N, 3, H, W], RGB, x = uint8 / 127.5 - 1 (range [-1, 1]). Batch, height "
        "and width are dynamic; height and width of at least 16 pixels.",
        f"- Output `{output_name}`: float32 [N, H, W], the foreground probability in [0, 1] "
        f"(rule `{prov['fg_prob']}` over the U-Net's two logits).",
        f"- Input size: {prov['input_size']} px, the size it was trained at "
        f"({_SIZE_FROM.get(prov.get('input_size_from'), '?')}); `{META_INPUT_SIZE}` in the metadata.",
        f"- Protocol: `{prov['protocol']}` ({_steps(prov['protocol'])}; foreground at p >= 0.5 for IoU).",
        "- With this project: `segment --model THIS.onnx photos/ --out masks/` (numpy, OpenCV and onnxruntime; "
        "no torch). The model's `metadata_props` repeat the facts below under `bgw.*` keys.",
        "",
        "## Trained on",
        "",
        f"- Shard set `{ss.get('name')}`, fingerprint `{ss.get('fingerprint')}`"
        + (f", {ss['samples']} samples" if ss.get("samples") else "") + ".",
    ]
    if gen:
        lines.append(f"- GAN `{gen.get('spec')}` (handle `{gen.get('handle')}`, fingerprint `{gen.get('fingerprint')}`).")
    if direction:
        lines.append(f"- Direction `{direction.get('source')}`, sha256 `{direction.get('sha256')}`, "
                     f"shift {direction.get('shift')}.")
    if prov.get("latents"):
        lat = prov["latents"]
        lines.append(f"- Latents: `{lat.get('source')}`" + (f", alpha {lat['alpha']}" if lat.get("alpha") is not None
                                                           else "") + ".")
    if prov.get("dataset"):
        ds = prov["dataset"]
        lines.append(f"- Embedded images: `{ds.get('spec')}` ({ds.get('train_images')} images, "
                     f"fingerprint `{ds.get('fingerprint')}`).")
    if not gen:
        lines.append("- The shard set's manifest was not found (or did not match), so the GAN and direction are not "
                     "recorded here.")
    if prov.get("training"):
        lines.append("- Training: " + ", ".join(f"{k} {v}" for k, v in prov["training"].items()) + ".")
    lines += ["", "## Evaluation", ""]
    if results is None:
        lines.append("No eval-seg results.json for this checkpoint was found in its run folder; run "
                     "`eval-seg --ckpt RUN --dataset ... --out RUN/eval` and export again (or pass --results).")
    else:
        path, res = results
        # the results' folder and name only: an absolute path of the exporter's machine means nothing to a reader
        where = f"{Path(path).parent.name}/{Path(path).name}"
        lines += [f"eval-seg's numbers for this checkpoint (`{where}`, foreground rule `{res.get('fg_prob')}`):", ""]
        lines += _results_table(res)
        if res.get("fg_prob") != prov["fg_prob"]:
            lines += ["", f"These were scored with rule `{res.get('fg_prob')}`; this file computes `{prov['fg_prob']}`."]
    lines += ["", "## Licences", ""]
    for what, value in licences(prov).items():
        lines.append(f"- {what}: {value or 'not recorded in the training records; check its source before shipping'}")
    lines += ["- bgw-seg (the code that trained and exported this file): MIT.", "",
              "## Metadata", "", "| key | value |", "| --- | --- |"]
    lines += [f"| `{k}` | `{v}` |" for k, v in sorted(metadata.items()) if k != "bgw.provenance"]
    return "\n".join(lines) + "\n"
