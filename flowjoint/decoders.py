"""The VAE's decoder ``p(x | z)`` and the base density ``p(z) p(x | z)`` of the VAE's flow.

A Bernoulli or other discrete decoder is not a bijection: it is the conditional
base density of the flow on ``(x, eps)``, as [`JointBase`][flowjoint.JointBase]. A Gaussian decoder
is a bijection, but as a base density it gives the same numbers (the change of
variables through [`ConditionalAffine`][flowjoint.ConditionalAffine]).

Each decoder handles a latent with ``K`` rows per data row (``K`` draws of ``eps``
for one ``x``, see [`AugmentedState`][flowjoint.AugmentedState]) without copying
``x`` where it can.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from nflows.distributions import Distribution
from torch import Tensor, nn
from torch.distributions import Bernoulli, Independent, Normal

from flowjoint.checks import check_event_shape, check_number, is_functorch_wrapped, sum_event
from flowjoint.distributions import BaseDistribution, standard_normal_log_prob
from flowjoint.elementwise import ConditionalAffine
from flowjoint.flows import Flow
from flowjoint.stochastic import AugmentedState, repeat_rows

__all__ = ["BernoulliDecoder", "EventDistribution", "GaussianDecoder", "JointBase"]


class EventDistribution(Independent):
    """``torch.distributions.Independent`` whose ``log_prob`` also takes an empty batch.

    torch sums the event dimensions after ``reshape(..., -1)``, which a tensor with no
    elements cannot take; flattening them first gives the same sums and ``(0,)``.
    """

    def log_prob(self, value: Tensor) -> Tensor:
        log_prob = self.base_dist.log_prob(value)
        return log_prob.flatten(-self.reinterpreted_batch_ndims).sum(-1)


def _check_net(net: object, name: str) -> nn.Module:
    if not isinstance(net, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(net).__name__}")
    return net


class BernoulliDecoder(nn.Module):
    """``p(x|z) = prod_i Bernoulli(x_i; sigmoid(logits(z)_i))`` for binary data.

    Args:
        net: maps ``z`` ``(batch, d)`` to logits ``(batch, *data_shape)``.
        data_shape: the event shape of ``x``.
    """

    family = "bernoulli"

    def __init__(self, net: nn.Module, data_shape: int | Sequence[int]) -> None:
        super().__init__()
        self.net = _check_net(net, "decoder")
        self.data_shape = check_event_shape(data_shape, "data_shape")

    def logits(self, z: Tensor) -> Tensor:
        """``(batch, d)`` -> ``(batch, *data_shape)``."""
        logits = self.net(z)
        if logits.shape != (z.shape[0], *self.data_shape):
            raise ValueError(
                f"decoder must map (batch, latent_features) to (batch, "
                f"{', '.join(map(str, self.data_shape))}), got output shape {tuple(logits.shape)}"
            )
        return logits

    def log_prob(self, x: Tensor, z: Tensor) -> Tensor:
        """``log p(x|z)``: ``x`` ``(rows_x, *shape)``, ``z`` ``(rows, d)`` -> ``(rows,)``."""
        logits = self.logits(z)
        if x.shape[0] == z.shape[0]:
            return -sum_event(F.binary_cross_entropy_with_logits(logits, x, reduction="none"))
        # K rows of z per row of x: broadcast x instead of copying it K times.
        grouped = logits.view(x.shape[0], -1, *self.data_shape)  # (rows_x, K, *shape)
        # x * logits - softplus(logits) in the softplus's own buffer: one (rows, *shape)
        # temporary instead of three, which matters for iwae's large chunks. Out of place
        # when x cannot be written into it (another dtype; x wrapped by torch.func).
        log_p = F.softplus(grouped).neg_()
        if x.dtype == log_p.dtype and not is_functorch_wrapped(x):
            log_p = log_p.addcmul_(grouped, x.unsqueeze(1))
        else:
            log_p = torch.addcmul(log_p, grouped, x.unsqueeze(1))
        return sum_event(log_p.flatten(0, 1))

    def distribution(self, z: Tensor) -> Independent:
        """``p(x|z)`` as ``Independent(Bernoulli(logits), event dims)``, batch ``(batch,)``."""
        return EventDistribution(Bernoulli(logits=self.logits(z)), len(self.data_shape))

    def mean(self, z: Tensor) -> Tensor:
        """``E[x|z] = sigmoid(logits)``, ``(batch, *data_shape)``."""
        return torch.sigmoid(self.logits(z))

    def sample(self, z: Tensor, temperature: float = 1.0) -> Tensor:
        """``x ~ p(x|z)``, ``(batch, *data_shape)``.

        ``temperature`` is accepted for the decoders' common signature; Bernoulli draws
        have no Gaussian noise to scale, so it does not change them.
        """
        return torch.bernoulli(self.mean(z))


class GaussianDecoder(nn.Module):
    """``p(x|z) = N(x; m(z), diag s(z)^2)``, the decoder ``x = m(z) + s(z) * u``.

    The decoder is a [`ConditionalAffine`][flowjoint.ConditionalAffine] (``u`` -> ``x``
    given ``z``), so ``log p(x|z) = log N(u; 0, I) - sum log s(z)`` with
    ``u = (x - m(z)) / s(z)`` is computed by its inverse: the change of variables again,
    not a separate formula.

    Args:
        net: maps ``z`` ``(batch, d)`` to ``(batch, 2C, *rest)``: ``m``, then the
            unconstrained ``log s``.
        data_shape: the event shape of ``x`` (``(C, *rest)``).
        latent_features: ``d``.
        log_scale_bound: soft bound on ``log s``.
    """

    family = "gaussian"

    def __init__(
        self,
        net: nn.Module,
        data_shape: int | Sequence[int],
        latent_features: int,
        log_scale_bound: float | None = 10.0,
    ) -> None:
        super().__init__()
        self.data_shape = check_event_shape(data_shape, "data_shape")
        self.affine = ConditionalAffine(
            self.data_shape,
            latent_features,
            net=_check_net(net, "decoder"),
            log_scale_bound=log_scale_bound,
        )

    @property
    def net(self) -> nn.Module:
        return self.affine.net

    def log_prob(self, x: Tensor, z: Tensor) -> Tensor:
        """``log p(x|z)``: ``x`` ``(rows_x, *shape)``, ``z`` ``(rows, d)`` -> ``(rows,)``."""
        u, logabsdet = self.affine.run(repeat_rows(x, z.shape[0]), z, inverse=True)
        return standard_normal_log_prob(u) + logabsdet

    def mean_and_scale(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``m(z)`` and ``s(z)``, both ``(batch, *data_shape)``."""
        mean, log_scale = self.affine.shift_and_log_scale(z)
        return mean, log_scale.exp()

    def distribution(self, z: Tensor) -> Independent:
        """``p(x|z)`` as ``Independent(Normal(m, s), event dims)``, batch ``(batch,)``."""
        return EventDistribution(Normal(*self.mean_and_scale(z)), len(self.data_shape))

    def mean(self, z: Tensor) -> Tensor:
        """``E[x|z] = m(z)``, ``(batch, *data_shape)``."""
        return self.mean_and_scale(z)[0]

    def sample(self, z: Tensor, temperature: float = 1.0) -> Tensor:
        """``x = m(z) + s(z) * u``, ``u ~ N(0, T^2 I)``, ``(batch, *data_shape)``.

        ``temperature`` ``T`` scales the decoder's noise ``u`` as it scales the prior's,
        so that the Gaussian VAE and the one-step augmented flow sample alike.
        """
        mean, scale = self.mean_and_scale(z)
        noise = torch.randn_like(mean)
        return torch.addcmul(mean, scale, noise if temperature == 1.0 else noise * temperature)


class JointBase(BaseDistribution):
    """The base density of the VAE's flow: ``p(x, z) = p(z) p(x|z)`` on ``(x, z)``.

    ``log_prob(AugmentedState(x, z))`` is ``prior.log_prob(z) + decoder.log_prob(x, z)``.

    Args:
        prior: a distribution on ``z`` (flowjoint/nflows, ``log_prob(z)`` and
            ``sample(n)``).
        decoder: a [`BernoulliDecoder`][flowjoint.BernoulliDecoder] or
            [`GaussianDecoder`][flowjoint.GaussianDecoder] (any module with
            ``log_prob(x, z)`` and ``sample(z)``).
    """

    def __init__(self, prior: Distribution, decoder: nn.Module) -> None:
        super().__init__()
        if not isinstance(prior, Distribution):
            raise TypeError(
                f"prior must be an nflows/flowjoint Distribution on z, got {type(prior).__name__}"
            )
        self.prior = prior
        self.decoder = _check_net(decoder, "decoder")

    def log_prob(self, inputs: AugmentedState, context: Tensor | None = None) -> Tensor:
        """``log p(z) + log p(x|z)``, ``(rows,)``."""
        if not isinstance(inputs, AugmentedState):
            raise TypeError(f"inputs must be an AugmentedState (x, z), got {type(inputs).__name__}")
        return self._log_prob(inputs, context)

    def _log_prob(self, inputs: AugmentedState, context: Tensor | None) -> Tensor:
        x, z = inputs
        return self.prior.log_prob(z) + self.decoder.log_prob(x, z)

    def sample(
        self,
        num_samples: int,
        context: Tensor | None = None,
        batch_size: int | None = None,
        temperature: float = 1.0,
    ) -> AugmentedState:
        """``z ~ p(z)`` (``temperature`` scales a flowjoint prior's noise), ``x ~ p(x|z)``."""
        if context is not None:
            raise ValueError("context must be None: the VAE's base density is unconditional")
        check_number(temperature, "temperature", low=0.0)
        if temperature == 1.0:
            z = self.prior.sample(num_samples)
        elif isinstance(self.prior, (BaseDistribution, Flow)):
            z = self.prior.sample(num_samples, temperature=temperature)
        else:
            raise ValueError(
                f"temperature={temperature} needs a flowjoint prior, got "
                f"{type(self.prior).__name__}"
            )
        return AugmentedState(self.decoder.sample(z, temperature), z)

    def _sample(self, num_samples: int, context: Tensor | None) -> AugmentedState:
        return self.sample(num_samples, context)
