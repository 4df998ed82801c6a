"""finder: find-direction, a GAN's segmenting latent direction found without labels (docs/ARCHITECTURE.md).

Beside the generator on the TensorFlow side; both load GANs through `gans` and use `masking`'s rules.

    optimize.py     one direction fitted directly (Melas-Kyriazi et al. 2022)
    discover.py     learn K interpretable latent directions (Voynov & Babenko 2020)
    affine.py       the two-affine-operator model of a segmenting direction (pure numpy)
    rank.py         pick the segmenting one among candidates (paper, appendix B); the pictures
    conditional.py  class-conditional GANs (BigGAN): each latent's class, drawn over --classes
    cli.py          the `find-direction` command (optimize, discover, rank)
"""

import gans as _gans  # noqa: F401 - sets TensorFlow's log level before anything imports it
