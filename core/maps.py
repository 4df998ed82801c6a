"""The 8-bit form of a probability map: v = round(255 p), what an 8-bit PNG stores.

Here, below every package, because the model side (segmodel.inference, the segmenter) writes maps
with it and the scoring side (scoring's metrics) reads float maps through it: one rule, so a map
scored straight from a model and the same map saved and read back give the same numbers.

numpy only.
"""
from __future__ import annotations

import numpy as np

__all__ = ["probability_to_uint8"]


def probability_to_uint8(prob) -> np.ndarray:
    """8-bit map v = round(255 p) (round half to even) of a float probability map, p clipped to [0, 1].

    The product is taken in the map's own precision, at least float32: the model's float32 maps
    are quantised in float32, as every 8-bit map this project has scored or saved was, and a
    float64 map in float64 (float16 widens to float32, where its product is exact)."""
    p = np.asarray(prob)
    if not np.issubdtype(p.dtype, np.floating):
        raise TypeError(f"probability_to_uint8 wants a float map, got {p.dtype}")
    p = p.astype(np.result_type(p.dtype, np.float32), copy=False)
    return np.rint(np.clip(p, 0.0, 1.0) * 255.0).astype(np.uint8)
