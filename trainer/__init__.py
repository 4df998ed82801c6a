"""trainer: train-unet, the paper's U-Net fitted on a shard set (PyTorch; never imports TensorFlow).

The U-Net, its checkpoint format and its inference rules are segmodel's; the benchmark datasets
are benchdata's; the metrics are scoring's (SegmentationMetrics). It imports no other tool.

    config.py      TrainConfig: the frozen dataclass of every knob, paper defaults
    data.py        shard stream: seeded rounds split by rank and worker, safe decode (the shards of
                   --shards: shardset.select)
    train.py       the training loop, and beside it its set-up (devices and DDP via torchrun, resume
                   checks, model), validation, logs and checkpoints
    validate.py    held-out loss / IoU / maxF (scoring.SegmentationMetrics) and a real benchmark
    checkpoint.py  save_run_state / load_run_state: segmodel's checkpoint plus the resume state
                   (optimizer, RNG, data position)
    toy.py         a tiny learnable disc shard set for tests and smoke runs
    cli.py         the `train-unet` command

Importing the package imports nothing heavy; use the submodules.
"""
