"""2-D toy densities (the FFJORD / nflows definitions) with their true entropies."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from flowjoint.checks import check_positive_int

__all__ = ["TOY_DATASETS", "TOY_ENTROPIES", "ToyData", "make_toy", "toy_data"]


def _moons(n: int, rng: np.random.Generator) -> np.ndarray:
    # sklearn.datasets.make_moons(noise=0.1) * 2 + (-1, -0.2), with the angle drawn
    # uniformly rather than on sklearn's linspace grid (the continuous limit).
    half = rng.integers(0, 2, n)
    t = rng.uniform(0.0, math.pi, n)
    x = np.where(half == 0, np.cos(t), 1.0 - np.cos(t))
    y = np.where(half == 0, np.sin(t), 0.5 - np.sin(t))
    points = np.stack([x, y], 1) + rng.normal(scale=0.1, size=(n, 2))
    return points * 2.0 + np.array([-1.0, -0.2])


def _eight_gaussians(n: int, rng: np.random.Generator) -> np.ndarray:
    s = 1.0 / math.sqrt(2.0)
    centers = 4.0 * np.array(
        [(1, 0), (-1, 0), (0, 1), (0, -1), (s, s), (s, -s), (-s, s), (-s, -s)], dtype=float
    )
    points = rng.normal(scale=0.5, size=(n, 2)) + centers[rng.integers(0, 8, n)]
    return points / 1.414


def _checkerboard(n: int, rng: np.random.Generator) -> np.ndarray:
    x1 = rng.uniform(size=n) * 4 - 2
    x2_ = rng.uniform(size=n) - rng.integers(0, 2, n) * 2
    x2 = x2_ + (np.floor(x1) % 2)
    return np.stack([x1, x2], 1) * 2


def _rings(n: int, rng: np.random.Generator) -> np.ndarray:
    # Four concentric circles of radii 3, 2.25, 1.5, 0.75 with equal weight, plus
    # N(0, 0.08^2) noise; the angle is uniform (FFJORD uses an even grid).
    ring = rng.integers(0, 4, n)
    radius = 3.0 * (ring + 1) / 4.0
    angle = rng.uniform(0.0, 2 * math.pi, n)
    points = np.stack([np.cos(angle), np.sin(angle)], 1) * radius[:, None]
    return points + rng.normal(scale=0.08, size=(n, 2))


def _two_spirals(n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.sqrt(rng.uniform(size=(n, 1))) * 540 * (2 * math.pi) / 360
    d1x = -np.cos(t) * t + rng.uniform(size=(n, 1)) * 0.5
    d1y = np.sin(t) * t + rng.uniform(size=(n, 1)) * 0.5
    sign = np.where(rng.integers(0, 2, (n, 1)) == 0, 1.0, -1.0)
    points = sign * np.hstack([d1x, d1y]) / 3
    return points + rng.normal(size=points.shape) * 0.1


_TOYS: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {
    "moons": _moons,
    "8gaussians": _eight_gaussians,
    "checkerboard": _checkerboard,
    "rings": _rings,
    "2spirals": _two_spirals,
}

TOY_DATASETS: tuple[str, ...] = tuple(_TOYS)

#: Differential entropy (nats) of each toy's true density: the best achievable
#: expected test NLL. Checkerboard is exact (``log 32``, uniform on 8 squares of side 2);
#: the others were computed by Monte Carlo with the exact density (see docs/results.md).
TOY_ENTROPIES: dict[str, float] = {
    "checkerboard": 3.466,
    "8gaussians": 2.833,
    "moons": 2.388,
    "rings": 2.626,
    "2spirals": 2.650,
}


def make_toy(name: str, num_samples: int, seed: int | None = None) -> Tensor:
    """Draw ``num_samples`` points from a 2-D toy density (FFJORD's definitions).

    ``"moons"``: sklearn's two moons with noise 0.1, times 2, shifted by ``(-1, -0.2)``;
    ``"8gaussians"``: eight N(c, 0.5^2 I) at radius 4, divided by 1.414;
    ``"checkerboard"``: uniform on 8 of the 16 squares of side 2 tiling ``[-4, 4]^2``;
    ``"rings"``: four concentric circles (radii 3, 2.25, 1.5, 0.75) plus N(0, 0.08^2);
    ``"2spirals"``: two interleaved spirals plus uniform and N(0, 0.1^2) noise.

    Args:
        name: one of `TOY_DATASETS`.
        num_samples: number of points.
        seed: seed of ``numpy.random.default_rng``.

    Returns:
        float32 ``(num_samples, 2)``.

    References:
        FFJORD: Free-form Continuous Dynamics for Scalable Reversible Generative
        Models. Grathwohl, Chen, Bettencourt, Sutskever, Duvenaud, 2018. arXiv:1810.01367.

    Example:
        >>> make_toy("moons", 5, seed=0).shape
        torch.Size([5, 2])
    """
    if name not in _TOYS:
        raise ValueError(f"name must be one of {list(_TOYS)}, got {name!r}")
    check_positive_int(num_samples, "num_samples")
    rng = np.random.default_rng(seed)
    return torch.as_tensor(_TOYS[name](num_samples, rng), dtype=torch.float32)


@dataclass(frozen=True)
class ToyData:
    """Train/validation/test draws from a 2-D toy density, and its true entropy (nats)."""

    name: str
    train: Tensor
    val: Tensor
    test: Tensor
    entropy: float

    @property
    def features(self) -> int:
        return 2


def toy_data(
    name: str,
    num_train: int = 20000,
    num_val: int = 5000,
    num_test: int = 20000,
    seed: int = 0,
) -> ToyData:
    """Independent train/validation/test draws (seeds ``seed``, ``seed + 1``, ``seed + 2``)."""
    if name not in TOY_ENTROPIES:
        raise ValueError(f"name must be one of {list(TOY_ENTROPIES)}, got {name!r}")
    check_positive_int(seed, "seed", minimum=0)
    return ToyData(
        name,
        make_toy(name, num_train, seed),
        make_toy(name, num_val, seed + 1),
        make_toy(name, num_test, seed + 2),
        TOY_ENTROPIES[name],
    )
