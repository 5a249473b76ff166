"""Units of the reported numbers: nats per example and bits per dimension.

``bits/dim = nll_nats / (D * ln 2)`` for the density of ``x + u`` on ``[0, levels)^D``;
a density of ``(x + u) / levels`` on ``[0, 1]^D`` is converted with
`nll_to_level_scale` first (``+ D * ln(levels)``).
"""

from __future__ import annotations

import math

from torch import Tensor

from flowjoint.checks import check_positive_int

__all__ = ["bits_per_dim_to_nats", "nats_to_bits_per_dim", "nll_to_level_scale"]


def nats_to_bits_per_dim(nll_nats: float | Tensor, dims: int) -> float | Tensor:
    """``nll_nats / (dims * ln 2)``: per-example NLL in nats to bits per dimension.

    The NLL must be of the density on the data's original scale (``[0, levels)^D`` for
    dequantized pixels); see `nll_to_level_scale`.

    Example:
        >>> round(nats_to_bits_per_dim(nll_to_level_scale(-1980.50, 784, 256), 784), 3)
        4.356
    """
    check_positive_int(dims, "dims")
    return nll_nats / (dims * math.log(2.0))


def bits_per_dim_to_nats(bits: float | Tensor, dims: int) -> float | Tensor:
    """Inverse of `nats_to_bits_per_dim`: ``bits * dims * ln 2``."""
    check_positive_int(dims, "dims")
    return bits * dims * math.log(2.0)


def nll_to_level_scale(nll_unit_nats: float | Tensor, dims: int, levels: int) -> float | Tensor:
    """NLL of ``(x + u) / levels`` on ``[0, 1]^D`` -> NLL of ``x + u`` on ``[0, levels)^D``.

    ``log p(x + u) = log p((x + u) / levels) - D * ln(levels)``, so the NLL grows by
    ``D * ln(levels)``. NICE's 1980.50 nats on MNIST (a log-likelihood on ``[0, 1]``)
    becomes ``4347.4 - 1980.5 = 2366.9`` nats, 4.356 bits/dim.
    """
    check_positive_int(dims, "dims")
    check_positive_int(levels, "levels", minimum=2)
    return nll_unit_nats + dims * math.log(levels)
