"""Base densities. nflows distributions are accepted wherever these are."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from nflows.distributions import Distribution
from torch import Tensor

from flowjoint.checks import check_event_shape, check_inputs, check_positive_int

__all__ = [
    "BaseDistribution",
    "Distribution",
    "LOG_2PI",
    "StandardNormal",
    "standard_normal_log_prob",
    "standard_normal_nll",
]

LOG_2PI = math.log(2 * math.pi)


def standard_normal_log_prob(inputs: Tensor) -> Tensor:
    """``log N(inputs; 0, I)`` summed over the event: ``(batch, *event)`` -> ``(batch,)``."""
    size = math.prod(inputs.shape[1:])
    # Scalars as operands, not as alpha=: inductor drops an alpha whose operand is
    # symbolic (here the event size under dynamic shapes).
    return _squared_norm(inputs).mul(-0.5).sub_(0.5 * size * LOG_2PI)


def standard_normal_nll(inputs: Tensor) -> Tensor:
    """``-log N(inputs; 0, I)`` summed over the event, ``(batch,)``."""
    size = math.prod(inputs.shape[1:])
    return _squared_norm(inputs).mul(0.5).add_(0.5 * size * LOG_2PI)


def _squared_norm(inputs: Tensor) -> Tensor:
    """``|x|^2`` over the event dimensions, ``(batch,)``, in one kernel (integers are
    taken in the default floating dtype)."""
    flat = inputs if inputs.dim() == 2 else inputs.flatten(1)
    if not flat.is_floating_point():
        flat = flat.to(torch.get_default_dtype())
    return torch.linalg.vecdot(flat, flat)


class BaseDistribution(Distribution):
    """A flowjoint base density: ``sample`` also takes a ``temperature``.

    ``sample(num_samples, context=None, batch_size=None, temperature=1.0)``; the
    temperature scales the standard deviation of the Gaussian noise the density is
    built on (Glow's convention), so ``temperature=0`` gives its mode's noise.
    """

    def sample(
        self,
        num_samples: int,
        context: Tensor | None = None,
        batch_size: int | None = None,
        temperature: float = 1.0,
    ) -> Tensor:
        raise NotImplementedError


class StandardNormal(BaseDistribution):
    """The standard normal ``N(0, I)`` on events of ``shape``, the usual base of a flow.

    ``log_prob(x) = -0.5 * |x|^2 - size / 2 * log(2 pi)``, summed over the event. The
    context, if any, is ignored but for its batch size. Samples take the dtype and
    device of the module (``.to(...)`` it), or of the context when one is given.

    Args:
        shape: the event shape, as in nflows (``[D]``, ``(C, H, W)``); an int ``D``
            means ``(D,)``.

    Example:
        >>> import torch
        >>> StandardNormal(2).log_prob(torch.zeros(1, 2))
        tensor([-1.8379])
    """

    def __init__(self, shape: int | Sequence[int]) -> None:
        super().__init__()
        self.event_shape = check_event_shape(shape, "shape")
        self.features = math.prod(self.event_shape)
        # Carries the module's dtype and device for sampling without a context.
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def extra_repr(self) -> str:
        return f"shape={self.event_shape}"

    def log_prob(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        """Log-density of ``inputs`` ``(batch, *shape)``; returns ``(batch,)``."""
        check_inputs(inputs, self.event_shape)
        return self._log_prob(inputs, context)

    def _log_prob(self, inputs: Tensor, context: Tensor | None) -> Tensor:
        return standard_normal_log_prob(inputs)

    def sample(
        self,
        num_samples: int,
        context: Tensor | None = None,
        batch_size: int | None = None,
        temperature: float = 1.0,
    ) -> Tensor:
        """``(num_samples, *shape)``, or ``(context_batch, num_samples, *shape)``.

        ``temperature`` scales the standard deviation (Glow's convention); 0 gives zeros.
        ``batch_size`` is accepted for nflows' signature; the draw is one tensor.
        """
        check_positive_int(num_samples, "num_samples", minimum=0)
        if context is None:
            noise = torch.randn(
                num_samples, *self.event_shape, dtype=self._anchor.dtype, device=self._anchor.device
            )
        else:
            check_inputs(context, None, "context")
            noise = torch.randn(
                context.shape[0],
                num_samples,
                *self.event_shape,
                dtype=context.dtype,
                device=context.device,
            )
        return noise if temperature == 1.0 else noise * temperature

    def _sample(self, num_samples: int, context: Tensor | None) -> Tensor:
        return self.sample(num_samples, context)

    def _mean(self, context: Tensor | None) -> Tensor:
        if context is None:
            return self._anchor.new_zeros(self.event_shape)
        return context.new_zeros(context.shape[0], *self.event_shape)
