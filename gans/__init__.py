"""gans: the GANs behind gen-synth and find-direction, and their direction files (docs/ARCHITECTURE.md).

What the generator and the finder both need, below them both. TensorFlow is imported inside the
functions that need it, so importing any module here stays light (and torch never: .pth files are
read by torchfile).

    loader.py       load_gan(bigbigan | biggan | toy | dcgan-faces | PATH | HANDLE) -> Gan; the model contract
    classes.py      the classes of a class-conditional GAN (BigGAN): class sets, one uniform draw per sample
    dcgan.py        the DCGAN of gan-face-generate as a SavedModel (--gan dcgan-faces)
    toy.py          the toy GAN, a procedural stand-in with BigBiGAN's signatures (a test fixture)
    directions.py   load and save segmenting directions (.npy, .pth) as unit vectors + sha256
    torchfile.py    read torch.save files (.pth) without torch, admitting nothing but tensors
"""

import os as _os

# TensorFlow's C++ layer prints INFO lines to stderr, which bury the tools' own output; keep its
# warnings and errors unless the user set the level. (TF 2.21 still prints the few lines it logs
# before absl initialises, e.g. CUDA probing on a machine without a GPU.)
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
