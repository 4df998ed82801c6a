"""trainer: train-unet, the paper's U-Net fitted on a shard set (PyTorch; never imports TensorFlow).

    unet.py        UNet (milesial layout, widths w-2w-4w-8w-8w), foreground_proba, normalize_images
    config.py      TrainConfig: the frozen dataclass of every knob, paper defaults
    data.py        shard stream: resolve --shards, seeded rounds split by rank and worker, safe decode
    train.py       the training loop (DDP via torchrun, AMP, validation, logs, checkpoints)
    validate.py    held-out loss / IoU / maxF (evaluator.metrics when present) and a real benchmark
    checkpoint.py  safetensors + JSON sidecar, resume state, load_for_inference
    toy.py         a tiny learnable disc shard set for tests and smoke runs
    cli.py         the `train-unet` command

Importing the package imports nothing heavy; use the submodules.
"""
