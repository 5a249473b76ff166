"""Flows: a transform plus a base density, and the NICE and Real NVP builders."""

from __future__ import annotations

from typing import Literal

import torch
from nflows.distributions import Distribution
from torch import Tensor

from flowjoint.coupling import AdditiveCoupling, AffineCoupling
from flowjoint.distributions import StandardNormal, check_flow_context
from flowjoint.normalization import ActNorm
from flowjoint.transforms import Compose, Transform, check_inputs, check_positive_int

__all__ = ["Flow", "alternating_masks", "nice", "realnvp"]


class Flow(Distribution):
    """A normalizing flow: ``log p(x | c) = log p_base(f(x, c) | c) + logabsdet``.

    ``f`` is the transform in the data -> noise direction; sampling draws from the
    base and applies ``f.inverse``. Gradients flow through both directions.

    Non-finite inputs: a row of ``inputs`` (or ``context``) holding NaN or +-inf gets a
    non-finite ``log_prob`` (NaN, or -inf where an infinite coordinate reaches the base
    density), never a finite number, and the other rows are unaffected (in eval mode;
    ``ActNorm``'s first call and ``BatchNorm`` in training mode use batch statistics).
    With ``validate=True`` such inputs raise ``ValueError`` instead; the check reads
    tensor values (one device synchronisation per call), so it is off by default.

    Args:
        transform: a flowjoint or nflows transform.
        base: a flowjoint or nflows distribution on the transform's outputs.
        validate: raise on NaN or infinite ``inputs`` or ``context`` in
            :meth:`log_prob` and :meth:`transform_to_noise` (also settable later as
            the attribute ``validate``).

    Example:
        >>> import torch
        >>> flow = realnvp(2, num_layers=4)
        >>> flow.log_prob(torch.randn(5, 2)).shape
        torch.Size([5])
        >>> flow.sample(3).shape
        torch.Size([3, 2])
    """

    def __init__(self, transform: Transform, base: Distribution, *, validate: bool = False) -> None:
        super().__init__()
        if not isinstance(transform, Transform):
            raise TypeError(
                f"transform must be an nflows/flowjoint Transform, got {type(transform).__name__}"
            )
        if not isinstance(base, Distribution):
            raise TypeError(
                f"base must be an nflows/flowjoint Distribution, got {type(base).__name__}"
            )
        self.transform = transform
        self.base = base
        self.validate = bool(validate)

    def _check_finite(self, inputs: Tensor, context: Tensor | None) -> None:
        for name, value in (("inputs", inputs), ("context", context)):
            if value is None:
                continue
            bad = ~torch.isfinite(value).all(-1)  # (batch,)
            if bool(bad.any()):
                rows = bad.nonzero().squeeze(-1)[:10].tolist()
                raise ValueError(f"{name} must be finite, got NaN or inf in rows {rows}")

    def log_prob(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        """Log-density of ``inputs`` ``(batch, features)`` given ``context``; ``(batch,)``."""
        check_inputs(inputs, None)
        check_flow_context(context, inputs.shape[0])
        if self.validate:
            self._check_finite(inputs, context)
        noise, logabsdet = self.transform(inputs, context=context)
        return self.base.log_prob(noise, context=context) + logabsdet

    def _log_prob(self, inputs: Tensor, context: Tensor | None) -> Tensor:
        return self.log_prob(inputs, context)

    def transform_to_noise(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        """``f(inputs)``: ``(batch, features)`` -> ``(batch, features)``."""
        check_inputs(inputs, None)
        check_flow_context(context, inputs.shape[0])
        if self.validate:
            self._check_finite(inputs, context)
        return self.transform(inputs, context=context)[0]

    def sample_and_log_prob(
        self, num_samples: int, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Draw samples and their log-density in one pass.

        Returns ``(num_samples, features)`` and ``(num_samples,)`` without context, or
        ``(batch, num_samples, features)`` and ``(batch, num_samples)`` with a context
        ``(batch, context_features)``.
        """
        check_positive_int(num_samples, "num_samples")
        check_flow_context(context)
        noise, base_log_prob = self.base.sample_and_log_prob(num_samples, context=context)
        if context is None:
            samples, logabsdet = self.transform.inverse(noise)
            return samples, base_log_prob - logabsdet
        batch = context.shape[0]
        flat_context = context.repeat_interleave(num_samples, dim=0)  # (batch * n, ctx)
        samples, logabsdet = self.transform.inverse(
            noise.reshape(batch * num_samples, -1), context=flat_context
        )
        log_prob = base_log_prob.reshape(-1) - logabsdet
        return samples.reshape(batch, num_samples, -1), log_prob.reshape(batch, num_samples)

    def sample(self, num_samples: int, context: Tensor | None = None) -> Tensor:
        """``(num_samples, features)``, or ``(batch, num_samples, features)`` with context."""
        check_positive_int(num_samples, "num_samples")
        check_flow_context(context)
        noise = self.base.sample(num_samples, context=context)
        if context is None:
            return self.transform.inverse(noise)[0]
        batch = context.shape[0]
        samples, _ = self.transform.inverse(
            noise.reshape(batch * num_samples, -1),
            context=context.repeat_interleave(num_samples, dim=0),
        )
        return samples.reshape(batch, num_samples, -1)

    def _sample(self, num_samples: int, context: Tensor | None) -> Tensor:
        return self.sample(num_samples, context)


def alternating_masks(
    features: int, num_layers: int, pattern: Literal["halves", "checkerboard"] = "halves"
) -> list[Tensor]:
    """Coupling masks (True = transformed) that alternate between complementary sets.

    ``"halves"``: the second half is transformed, then the first (two contiguous
    blocks, which coupling layers split with views). ``"checkerboard"``: odd
    features, then even ones.
    """
    check_positive_int(features, "features", minimum=2)
    check_positive_int(num_layers, "num_layers")
    index = torch.arange(features)
    if pattern == "halves":
        first = index >= features // 2
    elif pattern == "checkerboard":
        first = index % 2 == 1
    else:
        raise ValueError(f"pattern must be 'halves' or 'checkerboard', got {pattern!r}")
    return [first if i % 2 == 0 else ~first for i in range(num_layers)]


def nice(
    features: int,
    num_layers: int = 4,
    hidden_features: int = 256,
    num_hidden_layers: int = 3,
    context_features: int = 0,
    mask_pattern: Literal["halves", "checkerboard"] = "halves",
) -> Flow:
    """NICE: additive couplings on alternating masks, then a diagonal scaling.

    The diagonal scaling is an :class:`ActNorm` (initialised from the first batch),
    NICE's only volume-changing layer.

    References:
        NICE: Non-linear Independent Components Estimation. Dinh, Krueger, Bengio,
        2014. arXiv:1410.8516.
    """
    layers: list[Transform] = [
        AdditiveCoupling(
            mask, hidden_features, num_hidden_layers, context_features=context_features
        )
        for mask in alternating_masks(features, num_layers, mask_pattern)
    ]
    layers.append(ActNorm(features))
    return Flow(Compose(layers), StandardNormal(features))


def realnvp(
    features: int,
    num_layers: int = 8,
    hidden_features: int = 128,
    num_hidden_layers: int = 2,
    context_features: int = 0,
    mask_pattern: Literal["halves", "checkerboard"] = "halves",
    actnorm: bool = False,
    log_scale_bound: float | None = 3.0,
) -> Flow:
    """Real NVP: affine couplings on alternating masks, optionally each after an ActNorm.

    References:
        Density estimation using Real NVP. Dinh, Sohl-Dickstein, Bengio, 2016.
        arXiv:1605.08803.
    """
    layers: list[Transform] = []
    for mask in alternating_masks(features, num_layers, mask_pattern):
        if actnorm:
            layers.append(ActNorm(features))
        layers.append(
            AffineCoupling(
                mask,
                hidden_features,
                num_hidden_layers,
                context_features=context_features,
                log_scale_bound=log_scale_bound,
            )
        )
    return Flow(Compose(layers), StandardNormal(features))
