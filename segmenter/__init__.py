"""segmenter: a trained U-Net applied to anyone's images (`segment`) and shipped as a model file that
runs without this project (`export-model`). Upper floor: imports core, shardset, benchdata and
segmodel, no other tool.

    inputs.py    what `segment` reads: files, folders, globs, @lists of paths and http(s) URLs; where
                 each one's outputs go; the refusal of an --out inside an input folder
    outputs.py   what it writes per image: the mask (8-bit probability or binary), the overlay, the
                 cutout, the box of the largest component; the journal that says what is done
    segment.py   SegmentConfig and `segment()`: decode in threads -> the inference path of
                 segmodel.runtime under a benchdata protocol -> encode and write atomically
    export.py    `export_onnx()`: the ONNX file, its metadata and its parity check
    card.py      provenance of a checkpoint (sidecar, run config, shard-set manifest) and MODEL.md
    cli.py       the `segment` and `export-model` commands

`segment --model file.onnx` needs numpy, OpenCV and onnxruntime only: nothing here imports torch
at module level, and the torch backend is loaded only for --ckpt.
"""
