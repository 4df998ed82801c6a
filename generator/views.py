"""The renders of one gen-synth batch, made in one accelerator call: the pair its mask rule compares
and the image each sample stores.

The mask rule names the pair (`masking.rules.pair_shifts`): (G(z), G(z + r h)) for the paper's
rules, the centred (G(z - r/2 h), G(z + r/2 h)) for Voynov & Babenko's `background-removal`. A
sample stores G(z), or, when its draw says so (`gen-synth --shifted-images`), the pair's second
render G(z + b h). Every shift is rendered once: for the paper's rules that is [0, r], the very
call `Gan.generate_pair` makes, so their sets are what they were before centred pairs existed;
the centred pair renders [0, -r/2, r/2], three images per latent.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .latents import LatentBatch


@dataclass(frozen=True)
class Shifts:
    """The latent shifts of a run: `pair` = (a, b), the renders the mask rule compares, and
    `rendered`, the distinct shifts one batch renders (0 first: G(z) is the stored image)."""

    pair: tuple[float, float]
    rendered: tuple[float, ...]

    @classmethod
    def of(cls, mask_rule: str, shift: float) -> "Shifts":
        from masking.rules import pair_shifts

        a, b = (float(s) for s in pair_shifts(mask_rule, shift))
        return cls((a, b), tuple(dict.fromkeys((0.0, a, b))))

    def label(self) -> str:
        """The pair as the preview names it, e.g. "G(z) | G(z + 5 h)", "G(z - 2.5 h) | G(z + 2.5 h)"."""
        return " | ".join("G(z)" if s == 0 else f"G(z {'-' if s < 0 else '+'} {abs(s):g} h)" for s in self.pair)


@dataclass(frozen=True)
class Views:
    """A batch's renders, float32 [N, S, S, 3] in [-1, 1]: `a` and `b`, the mask rule's pair;
    `image`, what each sample stores; `image_shift`, float [N], the latent shift of each stored
    image (None when the run stores G(z) always)."""

    a: np.ndarray
    b: np.ndarray
    image: np.ndarray
    image_shift: np.ndarray | None


def render_views(gan, lat: LatentBatch, direction: np.ndarray, shifts: Shifts, size: int) -> Views:
    """The renders of `lat` (its z and, for a class-conditional GAN, its classes) in one call of
    `gan.generate_shifted` over `shifts.rendered`."""
    renders = gan.generate_shifted(lat.z, direction, list(shifts.rendered), size, classes=lat.classes)
    by_shift = {s: np.asarray(x, np.float32) for s, x in zip(shifts.rendered, renders)}
    a, b = (by_shift[s] for s in shifts.pair)
    image, image_shift = by_shift[0.0], None
    if lat.shifted is not None:
        image = np.where(lat.shifted[:, None, None, None], b, image)
        image_shift = np.where(lat.shifted, shifts.pair[1], 0.0)
    return Views(a, b, image, image_shift)
