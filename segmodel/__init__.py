"""segmodel: the U-Net and its checkpoint contract. The trainer writes checkpoints; the evaluator
(and the trainer's own validation) read them and run the model through the same inference rules.

torch + safetensors; never TensorFlow. Imports `core` and no other package of this project.

    unet.py        UNet (milesial layout, widths w-2w-4w-8w-8w): the paper's architecture
    checkpoint.py  the checkpoint format: safetensors weights + JSON sidecar + last.json; save,
                   find_sidecar, load_checkpoint, load_for_inference (never unpickles)
    inference.py   image normalisation for the model, foreground_probability (softmax | sigmoid1),
                   probability_to_uint8 (the one 8-bit quantisation of a probability map)

`inference` imports torch only inside the functions that need it, so `probability_to_uint8`
costs no torch import (it is core.maps', which the scoring package uses too).
"""
