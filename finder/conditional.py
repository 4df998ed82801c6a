"""Class-conditional GANs (BigGAN) in the finder: which classes a run draws, and rendering with them.

A direction moves z only: the class of a latent is held fixed across G(z) and G(z + s h), as in
Voynov & Babenko's ConditionedBigGAN, which passes the same classes to both images. Each latent's
class is drawn uniformly over the run's class set (`--classes`, default all) from the same seeded
generator as its z, after every draw an unconditional run makes, so an unconditional run (and
every direction file it writes) is what it was before classes existed.

Everything here takes any object with `generate(z)` and `latent_dim`: one without `num_classes`
(the tests' stand-ins) is unconditional, and is called without `classes`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gans.classes import NotConditionalError, class_set_of, class_set_record, draw_classes

ClassesNotConditionalError = NotConditionalError  # `--classes` given for a GAN that takes no class (exit 2)


@dataclass(frozen=True)
class ClassSet:
    """The classes a run draws from: the user's ``spec``, its class ids and the GAN's class count."""

    spec: str
    ids: np.ndarray
    num_classes: int

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` classes, uniform over the set, from ``rng`` (int64 [n])."""
        return draw_classes(rng, self.ids, n)

    def record(self) -> dict:
        """What config.json, summary.json and ranking.json say of the set."""
        return class_set_record(self.spec, self.ids, self.num_classes)


def class_set(gan, spec: str | None) -> ClassSet | None:
    """The class set of a run on ``gan``: None for an unconditional GAN (an error when ``spec`` is
    given), else ``spec`` parsed against the GAN's classes (None: "all"). Raises a UserError."""
    num = getattr(gan, "num_classes", None)
    ids = class_set_of(spec, num, getattr(gan, "handle", "this GAN"))
    if ids is None:
        return None
    return ClassSet("all" if spec is None else str(spec), np.asarray(ids), int(num))


def draw_samples(n: int, dim: int, seed: int, classes: ClassSet | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """``n`` latents z ~ N(0, I) from ``seed`` (float32), then their classes from the same stream
    (None when ``classes`` is None): the latents are those an unconditional draw gives."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, dim)).astype(np.float32)
    return z, (None if classes is None else classes.draw(rng, n))


def generate(gan, z, classes: np.ndarray | None = None) -> np.ndarray:
    """G(z) in [-1, 1]; ``classes`` [N] only for a conditional GAN."""
    return gan.generate(z) if classes is None else gan.generate(z, classes=classes)


def generate_pair(gan, z, direction, shift: float, classes: np.ndarray | None = None):
    """(G(z), G(z + shift h)) at the GAN's size, both with the same ``classes``."""
    if classes is None:
        return gan.generate_pair(z, direction, shift)
    return gan.generate_pair(z, direction, shift, classes=classes)


def differentiable_generator(gan):
    """A TF callable (z, classes=None) -> G(z) [N, S, S, 3] that gradients pass through to z.

    `gans.loader.Gan.tf_generator` when the object has it (classes: an int32 tensor [N], or None
    for an unconditional GAN); else the ``generate`` signature of its ``module`` (the tests'
    stand-ins), or of the module that ``path`` or ``handle`` names, which takes no class."""
    tf_generator = getattr(gan, "tf_generator", None)
    if tf_generator is not None:
        return tf_generator()
    module = getattr(gan, "module", None)
    if module is None:
        from gans.loader import import_hub

        module = import_hub().load(str(getattr(gan, "path", None) or gan.handle))
    sig = module.signatures["generate"]

    def generate_z(z, classes=None):
        if classes is not None:
            raise ValueError("this generator takes no class; pass classes=None")
        return sig(z=z)["default"]

    return generate_z
