"""generator: gen-synth, an off-the-shelf GAN -> synthetic (image, mask) shard sets (docs/ARCHITECTURE.md).

It loads GANs through `gans` and makes masks with `masking`; TensorFlow is imported inside the
functions that need it, so importing any module here (this file included) stays light.

    embed.py             E(I) for a dataset's train images, computed once and cached
    latents.py           per-shard reproducible latent streams: prior or embeddings + alpha noise
    config.py            GenConfig (validated where it is resolved) and the shard plan
    inputs.py            what a run loads: model, direction, latent table, manifest params, --max-fg auto
    render.py            the accelerator/host overlap: render batches, masks + filters, write shards
    pipeline.py          run(): resume, the set's lock, nodes and Ray
    preview.py           the preview picture: accepted pairs and masks, rejected samples per filter
    cli.py               the `gen-synth` command (and `gen-synth embed`)
"""

import gans as _gans  # noqa: F401 - sets TensorFlow's log level before anything imports it
