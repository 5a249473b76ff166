"""How a comparison scores the test set: draws, importance samples, pass sizes.

Like `flowjoint.compare.config`, this module imports no torch, so that the command
line can describe its options at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from flowjoint.compare.config import _check_positive_int, data_group

__all__ = ["EvaluationConfig", "default_evaluation"]


@dataclass(frozen=True)
class EvaluationConfig:
    """How the test set is scored.

    Attributes:
        num_draws: ``R``, independent uniform dequantization draws of the test set for
            the rows on ``x + u`` (pixel data; ignored for continuous data).
        iwae_samples: the ``K`` of the ``iwae_K`` rows over ``eps`` (models with an
            augmentation; ``K = 1`` is a second estimate of the ELBO).
        discrete_samples: the ``K`` of the bound on the discrete data, IWAE over the
            dequantization noise (and ``eps``) of the whole stack (pixel data only).
        chunk_size: rows per forward pass of an IWAE or a density (memory against
            speed) for models of vectors.
        image_chunk_size: the same for models of images, whose conv activations are
            tens of times larger than their inputs.
    """

    num_draws: int = 5
    iwae_samples: tuple[int, ...] = (1, 10, 100, 1000)
    discrete_samples: int = 1000
    chunk_size: int = 4096
    image_chunk_size: int = 256

    def __post_init__(self) -> None:
        _check_positive_int(self.num_draws, "num_draws")
        _check_positive_int(self.discrete_samples, "discrete_samples")
        _check_positive_int(self.chunk_size, "chunk_size")
        _check_positive_int(self.image_chunk_size, "image_chunk_size")
        for k in self.iwae_samples:
            _check_positive_int(k, "iwae_samples")


_EVALUATION = {
    # On digits a bound with K = 1000 costs about as much as training a flow (500 x 1000
    # passes); K = 100 is within 0.01 bits/dim of it (docs/results.md) and keeps the
    # default run within ten minutes. 8 x 8 images: passes of 1024 images.
    "digits": EvaluationConfig(
        iwae_samples=(1, 10, 100), discrete_samples=100, image_chunk_size=1024
    ),
    # 28 x 28 images: 3 draws and K up to 100 keep the scoring of the conv models short.
    "mnist5k": EvaluationConfig(num_draws=3, iwae_samples=(1, 100), discrete_samples=100),
    "toy": EvaluationConfig(num_draws=1, iwae_samples=(1, 10, 100), discrete_samples=1),
    "array": EvaluationConfig(iwae_samples=(1, 10, 100), discrete_samples=100),
}
_QUICK_EVALUATION = EvaluationConfig(num_draws=2, iwae_samples=(1, 10), discrete_samples=10)


def default_evaluation(dataset: str, quick: bool = False) -> EvaluationConfig:
    """How ``dataset`` is scored (a few draws and small ``K`` with ``quick``)."""
    if quick:
        return _QUICK_EVALUATION
    return _EVALUATION[data_group(dataset)]
