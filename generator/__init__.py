"""generator: an off-the-shelf GAN -> synthetic (image, mask) shard sets (see docs/ARCHITECTURE.md).

TensorFlow lives in this package only, and is imported inside the functions that need it, so
importing any module here (this file included) stays light.

    gan.py               load_gan(bigbigan | toy | dcgan-faces | PATH | HANDLE) -> Gan; the model contract
    dcgan.py             the DCGAN of gan-face-generate as a SavedModel (--gan dcgan-faces)
    toy.py               the toy GAN, a procedural stand-in with BigBiGAN's signatures (a test fixture)
    directions.py        load and save segmenting directions (.npy, .pth) as unit vectors + sha256
    torchfile.py         read torch.save files (.pth) without torch, admitting nothing but tensors
    affine.py            the two-affine-operator model of a segmenting direction (pure numpy)
    discover.py          learn K interpretable latent directions without labels (Voynov & Babenko 2020)
    direction_search.py  pick the segmenting one among candidates (paper, appendix B)
    directions_cli.py    the `find-direction` command (discover, rank)
    masks.py             mask rules, connected components, size and histogram filters (pure numpy)
    embed.py             E(I) for a dataset's train images, computed once and cached
    latents.py           per-shard reproducible latent streams: prior or embeddings + alpha noise
    config.py            GenConfig (validated where it is resolved) and the shard plan
    inputs.py            what a run loads: model, direction, latent table, manifest params
    render.py            the accelerator/host overlap: render batches, masks + filters, write shards
    pipeline.py          run(): resume, the set's lock, nodes and Ray
    preview.py           the preview picture: accepted pairs and masks, rejected samples per filter
    cli.py               the `gen-synth` command (and `gen-synth embed`)
"""

import os as _os

# TensorFlow's C++ layer prints INFO lines to stderr, which bury gen-synth's own output; keep its
# warnings and errors unless the user set the level. (TF 2.21 still prints the few lines it logs
# before absl initialises, e.g. CUDA probing on a machine without a GPU.)
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
