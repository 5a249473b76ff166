"""Base densities. nflows distributions are accepted wherever these are."""

from __future__ import annotations

import math

import torch
from nflows.distributions import Distribution
from torch import Tensor

from flowjoint.transforms import check_context, check_inputs, check_positive_int

__all__ = ["Distribution", "StandardNormal", "LOG_2PI"]

LOG_2PI = math.log(2 * math.pi)


class StandardNormal(Distribution):
    """The standard normal ``N(0, I_features)``, the usual base of a flow.

    ``log_prob(x) = -0.5 * |x|^2 - features / 2 * log(2 pi)``. The context, if any,
    is ignored but for its batch size. Samples take the dtype and device of the
    module (``.to(...)`` it), or of the context when one is given.

    Args:
        features: dimension of the space.

    Example:
        >>> import torch
        >>> StandardNormal(2).log_prob(torch.zeros(1, 2))
        tensor([-1.8379])
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.features = check_positive_int(features, "features")
        # Carries the module's dtype and device for sampling without a context.
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def extra_repr(self) -> str:
        return f"features={self.features}"

    def log_prob(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        """Log-density of ``inputs`` ``(batch, features)``; returns ``(batch,)``."""
        check_inputs(inputs, self.features)
        return inputs.square().sum(-1).mul(-0.5) - 0.5 * self.features * LOG_2PI

    def _log_prob(self, inputs: Tensor, context: Tensor | None) -> Tensor:
        return self.log_prob(inputs, context)

    def sample(self, num_samples: int, context: Tensor | None = None) -> Tensor:
        """``(num_samples, features)``, or ``(context_batch, num_samples, features)``."""
        check_positive_int(num_samples, "num_samples")
        if context is None:
            return torch.randn(
                num_samples, self.features, dtype=self._anchor.dtype, device=self._anchor.device
            )
        check_inputs(context, None, "context")
        return torch.randn(
            context.shape[0],
            num_samples,
            self.features,
            dtype=context.dtype,
            device=context.device,
        )

    def _sample(self, num_samples: int, context: Tensor | None) -> Tensor:
        return self.sample(num_samples, context)

    def _mean(self, context: Tensor | None) -> Tensor:
        if context is None:
            return self._anchor.new_zeros(self.features)
        return context.new_zeros(context.shape[0], self.features)


def check_flow_context(context: object, batch_size: int | None = None) -> None:
    """A given context must be a floating ``(batch, n)`` tensor, ``batch_size`` rows if set."""
    if context is None:
        return
    check_inputs(context, None, "context")
    if batch_size is not None:
        check_context(context, batch_size, context.shape[1])
