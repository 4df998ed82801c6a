"""BigGAN's truncation trick, the one place its sampling rule lives.

With truncation T in (0, 1], a latent is z = T * x with x ~ N(0, I) truncated to [-2, 2] (each
coordinate outside is drawn again until it falls inside), and the module's `truncation` input is
fed T: BigGAN's TF Hub modules keep batch-norm statistics per truncation, and their own example
samples z this way (`truncnorm(-2, 2) * truncation`). Without it, z ~ N(0, I) untruncated and a
module that takes a truncation is fed 1.0, as Voynov & Babenko sample. Pure numpy.
"""
from __future__ import annotations

import math

import numpy as np

from core.errors import UserError

__all__ = ["TRUNCATION_BOUND", "TruncationError", "check_truncation", "truncated_normal", "truncated_latents",
           "truncation_record"]

TRUNCATION_BOUND = 2.0  # |x| of the standard normal before scaling, as BigGAN's truncnorm(-2, 2)


class TruncationError(UserError, ValueError):
    """A truncation outside (0, 1]; the message is one line."""


def check_truncation(value) -> float:
    """`value` as a float in (0, 1], or TruncationError."""
    try:
        t = float(value)
    except (TypeError, ValueError):
        t = math.nan
    if not (math.isfinite(t) and 0.0 < t <= 1.0):
        raise TruncationError(f"truncation {value!r} must be a number in (0, 1] (BigGAN's samples use 0.4-1; "
                              f"leave it out for untruncated z ~ N(0, I))")
    return t


def truncated_normal(rng: np.random.Generator, shape: tuple[int, ...], bound: float = TRUNCATION_BOUND) -> np.ndarray:
    """float64 `shape`: standard normal values, each one outside [-bound, bound] drawn again from `rng`
    (in index order, round after round) until none is; the same rng state gives the same array."""
    x = rng.standard_normal(shape)
    out = np.abs(x) > bound
    while out.any():
        x[out] = rng.standard_normal(int(out.sum()))
        out = np.abs(x) > bound
    return x


def truncated_latents(rng: np.random.Generator, shape: tuple[int, ...], truncation: float) -> np.ndarray:
    """float64 latents z = truncation * truncated_normal: inside [-2T, 2T] coordinate by coordinate."""
    return check_truncation(truncation) * truncated_normal(rng, shape)


def truncation_record(truncation: float) -> dict:
    """What a manifest says of the rule."""
    return {"value": float(truncation), "rule": f"z = T * x, x ~ N(0, I) with each coordinate redrawn until "
                                                f"|x| <= {TRUNCATION_BOUND:g}; the module is fed T"}
