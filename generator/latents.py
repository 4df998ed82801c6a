"""Latent codes for the generator: one reproducible random stream per shard.

Shard ``k`` of a run with seed ``s`` draws from ``np.random.SeedSequence(s, spawn_key=(k,))``, so
any worker can render any shard without knowing about the others, and a resumed run redraws a
shard exactly. Inside a stream, draws are produced in fixed blocks of ``DRAW_BLOCK`` (independent
of the rendering batch size), so the n-th draw of a shard is the same whatever batch sizes
``LatentStream.take`` is called with.

Two sources (paper, section 3.2):

- ``prior``: z ~ N(0, I), untruncated; with ``truncation`` T, BigGAN's truncation trick instead:
  z = T x, x ~ N(0, I) with each coordinate outside [-2, 2] drawn again (``gans.truncation``).
- ``embeddings``: z = E(I_i) + alpha * xi, with i uniform over the dataset's train images and
  xi ~ N(0, I); ``E`` is a precomputed [N, D] table of encoder outputs.

Two optional draws follow the latents in every block, each only when the run asks for it, so a
stream without them is byte for byte what it was before they existed:

- ``class_set`` (a class-conditional GAN such as BigGAN): one class per draw, uniform over the
  set (``gans.classes.draw_classes``), drawn after the block's z.
- ``shifted_images`` P > 0: one uniform u per draw, drawn after the classes; the draw's stored
  image is the shifted render when u < P (Voynov & Babenko's ``shifted_img_prob``).

Pure numpy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Draws per block. Part of the format of a run: changing it changes every shard of every seed.
DRAW_BLOCK = 256

LATENT_SOURCES = ("prior", "embeddings")


def shard_seed_sequence(seed: int, shard_index: int) -> np.random.SeedSequence:
    """The seed sequence of shard ``shard_index``: independent of every other shard's."""
    if seed < 0 or shard_index < 0:
        raise ValueError(f"seed and shard index must be >= 0, got seed={seed}, shard={shard_index}")
    return np.random.SeedSequence(int(seed), spawn_key=(int(shard_index),))


@dataclass(frozen=True)
class LatentBatch:
    """A run of consecutive draws from one shard's stream."""

    z: np.ndarray  # float32 [N, D]
    source_index: np.ndarray  # int64 [N]: train image index, -1 for the prior
    draw_index: np.ndarray  # int64 [N]: position of each draw in the shard's stream
    classes: np.ndarray | None = None  # int64 [N]: the class of each draw; None for an unconditional GAN
    shifted: np.ndarray | None = None  # bool [N]: store the shifted render; None when shifted_images is 0

    def __getitem__(self, rows: slice) -> "LatentBatch":
        return LatentBatch(self.z[rows], self.source_index[rows], self.draw_index[rows],
                           None if self.classes is None else self.classes[rows],
                           None if self.shifted is None else self.shifted[rows])

    def __len__(self) -> int:
        return int(self.z.shape[0])


class LatentStream:
    """The draws of one shard, in order: ``take(n)`` returns the next ``n`` of them.

    ``embeddings`` is None for the prior, else a float32 [N, D] table; ``alpha`` scales the noise
    added to an embedding (unused for the prior). ``class_set`` (int [K], the classes of a
    class-conditional GAN) and ``shifted_images`` (P in [0, 1]) add the draws the module's
    docstring describes.
    """

    def __init__(
        self,
        seed: int,
        shard_index: int,
        latent_dim: int,
        *,
        embeddings: np.ndarray | None = None,
        alpha: float = 0.0,
        class_set: np.ndarray | None = None,
        shifted_images: float = 0.0,
        truncation: float | None = None,
    ):
        if latent_dim <= 0:
            raise ValueError(f"latent_dim must be positive, got {latent_dim}")
        if embeddings is not None:
            embeddings = np.asarray(embeddings, dtype=np.float32)
            if embeddings.ndim != 2 or embeddings.shape[1] != latent_dim or len(embeddings) == 0:
                raise ValueError(
                    f"embeddings must be a non-empty [N, {latent_dim}] array, got shape {embeddings.shape}"
                )
        if not np.isfinite(alpha) or alpha < 0:
            raise ValueError(f"alpha must be a finite number >= 0, got {alpha}")
        if not 0.0 <= shifted_images <= 1.0:
            raise ValueError(f"shifted_images must be in [0, 1], got {shifted_images}")
        if truncation is not None and embeddings is not None:
            raise ValueError("truncation applies to the prior, not to embeddings")
        self.seed = int(seed)
        self.shard_index = int(shard_index)
        self.latent_dim = int(latent_dim)
        self.embeddings = embeddings
        self.alpha = float(alpha)
        self.class_set = None if class_set is None else np.asarray(class_set)
        self.shifted_images = float(shifted_images)
        self.truncation = None if truncation is None else float(truncation)
        self._rng = np.random.Generator(np.random.PCG64(shard_seed_sequence(seed, shard_index)))
        self._block: LatentBatch | None = None
        self._pos = 0  # next unread row of the current block
        self._next_draw = 0  # draw index of the first row of the next block

    def _draw_block(self) -> LatentBatch:
        # Always the same calls in the same order per block, so the stream never depends on
        # how callers slice it.
        first = self._next_draw
        draw_index = np.arange(first, first + DRAW_BLOCK, dtype=np.int64)
        self._next_draw += DRAW_BLOCK
        if self.embeddings is None and self.truncation is not None:
            from gans.truncation import truncated_latents

            z = truncated_latents(self._rng, (DRAW_BLOCK, self.latent_dim), self.truncation)
            source = np.full(DRAW_BLOCK, -1, np.int64)
        elif self.embeddings is None:
            z = self._rng.standard_normal((DRAW_BLOCK, self.latent_dim))
            source = np.full(DRAW_BLOCK, -1, np.int64)
        else:
            source = self._rng.integers(0, len(self.embeddings), size=DRAW_BLOCK, dtype=np.int64)
            xi = self._rng.standard_normal((DRAW_BLOCK, self.latent_dim))
            z = self.embeddings[source].astype(np.float64) + self.alpha * xi
        classes = shifted = None
        if self.class_set is not None:
            from gans.classes import draw_classes

            classes = draw_classes(self._rng, self.class_set, DRAW_BLOCK)
        if self.shifted_images > 0:
            shifted = self._rng.random(DRAW_BLOCK) < self.shifted_images
        return LatentBatch(z.astype(np.float32), source, draw_index, classes, shifted)

    def take(self, n: int) -> LatentBatch:
        """The next ``n`` draws of the stream."""
        if n <= 0:
            raise ValueError(f"take needs n >= 1, got {n}")
        parts = []
        while n > 0:
            if self._block is None or self._pos == DRAW_BLOCK:
                self._block = self._draw_block()
                self._pos = 0
            k = min(n, DRAW_BLOCK - self._pos)
            parts.append(self._block[self._pos:self._pos + k])
            self._pos += k
            n -= k
        if len(parts) == 1:
            return parts[0]

        def joined(field: str):
            values = [getattr(p, field) for p in parts]
            return None if values[0] is None else np.concatenate(values)

        return LatentBatch(*(joined(f) for f in ("z", "source_index", "draw_index", "classes", "shifted")))

