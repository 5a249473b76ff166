"""The VAE as a flow on ``(x, eps)``.

The encoder's reparametrization ``z = mu(x) + sigma(x) * eps`` is an affine coupling
``T: (x, eps) -> (x, z)`` (x kept, eps transformed). Pulled back through ``T``, the
generative model ``p(z) p(x|z)`` is a density on ``(x, eps)``::

    log p(x, eps) = log p(x|z) + log p(z) + sum log sigma(x),   z = T(x, eps)
    log p(x, eps) - log N(eps) = log p(x|z) + log p(z) - log q(z|x)   # one-sample ELBO

:class:`JointVAE` is literally ``Flow(T, p(z) p(x|z))``; its ELBO and IWAE come from
that flow's ``log_prob`` (:class:`~flowjoint.augmented.AugmentedModel`).

References:
    Auto-Encoding Variational Bayes. Kingma, Welling, 2013. arXiv:1312.6114.

    Importance Weighted Autoencoders. Burda, Grosse, Salakhutdinov, 2015.
    arXiv:1509.00519.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from nflows.distributions import Distribution
from torch import Tensor, nn
from torch.distributions import Bernoulli, Independent, Normal, TransformedDistribution, constraints
from torch.distributions import Transform as TorchTransform

from flowjoint.augmented import (
    LOG_SCALE_BOUND,
    AugmentedModel,
    LatentTransform,
    LogVarianceEncoder,
    _check_net,
    _decoder_widths,
    decoder_coupling,
    encoder_coupling,
)
from flowjoint.distributions import StandardNormal
from flowjoint.flows import Flow
from flowjoint.nets import MLP
from flowjoint.transforms import (
    Compose,
    ConditionalAffine,
    Transform,
    check_inputs,
    check_positive_int,
)

__all__ = ["BernoulliLikelihood", "GaussianLikelihood", "JointBase", "JointVAE"]


def _check_params(params: Tensor, batch: int, features: int, name: str) -> None:
    if params.shape != (batch, features):
        raise ValueError(
            f"{name} must map (batch, latent_features) to (batch, {features}), "
            f"got output shape {tuple(params.shape)}"
        )


class BernoulliLikelihood(nn.Module):
    """``p(x|z) = prod_i Bernoulli(x_i; sigmoid(logits(z)_i))`` for binary data.

    Args:
        net: maps ``z`` ``(batch, d)`` to logits ``(batch, D)``.
        data_features: ``D``.
    """

    def __init__(self, net: nn.Module, data_features: int) -> None:
        super().__init__()
        self.net = _check_net(net, "decoder")
        self.data_features = data_features

    def logits(self, z: Tensor) -> Tensor:
        """``(batch, d)`` -> ``(batch, D)``."""
        logits = self.net(z)
        _check_params(logits, z.shape[0], self.data_features, "decoder")
        return logits

    def log_prob(self, x: Tensor, z: Tensor) -> Tensor:
        """``log p(x|z)``: ``x`` ``(batch, D)``, ``z`` ``(batch, d)`` -> ``(batch,)``."""
        return -F.binary_cross_entropy_with_logits(self.logits(z), x, reduction="none").sum(-1)

    def distribution(self, z: Tensor) -> Independent:
        """``p(x|z)`` as ``Independent(Bernoulli(logits), 1)``, batch shape ``(batch,)``."""
        return Independent(Bernoulli(logits=self.logits(z)), 1)

    def mean(self, z: Tensor) -> Tensor:
        """``E[x|z] = sigmoid(logits)``, ``(batch, D)``."""
        return torch.sigmoid(self.logits(z))

    def sample(self, z: Tensor) -> Tensor:
        """``x ~ p(x|z)``, ``(batch, D)``."""
        return torch.bernoulli(self.mean(z))


class GaussianLikelihood(nn.Module):
    """``p(x|z) = N(x; m(z), diag s(z)^2)``, the decoder ``x = m(z) + s(z) * u``.

    The decoder is a :class:`~flowjoint.transforms.ConditionalAffine` (``u`` -> ``x``
    given ``z``), so ``log p(x|z) = log N(u; 0, I) - sum log s(z)`` with
    ``u = (x - m(z)) / s(z)`` is computed by its inverse: the change of variables
    again, not a separate Gaussian formula.

    Args:
        net: maps ``z`` ``(batch, d)`` to ``(batch, 2D)``: ``m``, then the
            unconstrained ``log s``.
        data_features: ``D``.
        latent_features: ``d``.
        log_scale_bound: soft bound on ``log s``.
    """

    def __init__(
        self,
        net: nn.Module,
        data_features: int,
        latent_features: int,
        log_scale_bound: float | None = LOG_SCALE_BOUND,
    ) -> None:
        super().__init__()
        self.affine = ConditionalAffine(
            data_features,
            latent_features,
            net=_check_net(net, "decoder"),
            log_scale_bound=log_scale_bound,
        )
        self.standard = StandardNormal(data_features)

    @property
    def net(self) -> nn.Module:
        return self.affine.net

    def log_prob(self, x: Tensor, z: Tensor) -> Tensor:
        """``log p(x|z)``: ``x`` ``(batch, D)``, ``z`` ``(batch, d)`` -> ``(batch,)``."""
        u, logabsdet = self.affine.map_inverse(x, z)  # (batch, D), (batch,)
        return self.standard.log_prob(u) + logabsdet

    def mean_and_scale(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``m(z)`` and ``s(z)``, both ``(batch, D)``."""
        mean, log_scale = self.affine.shift_and_log_scale(z)
        return mean, log_scale.exp()

    def distribution(self, z: Tensor) -> Independent:
        """``p(x|z)`` as ``Independent(Normal(m, s), 1)``, batch shape ``(batch,)``."""
        return Independent(Normal(*self.mean_and_scale(z)), 1)

    def mean(self, z: Tensor) -> Tensor:
        """``E[x|z] = m(z)``, ``(batch, D)``."""
        return self.mean_and_scale(z)[0]

    def sample(self, z: Tensor) -> Tensor:
        """``x = m(z) + s(z) * u``, ``u ~ N(0, I)``, ``(batch, D)``."""
        mean, scale = self.mean_and_scale(z)
        return torch.addcmul(mean, scale, torch.randn_like(mean))


class JointBase(Distribution):
    """The base density of the VAE flow: ``p(x, z) = p(z) p(x|z)`` on ``(x, z)``.

    ``log_prob(cat([x, z]))`` is ``prior.log_prob(z) + likelihood.log_prob(x, z)``.

    Args:
        prior: a distribution on ``z`` (flowjoint/nflows, ``log_prob(z)`` and
            ``sample(n)``).
        likelihood: a :class:`BernoulliLikelihood` or :class:`GaussianLikelihood`
            (any module with ``log_prob(x, z)`` and ``sample(z)``).
        data_features: ``D``; inputs are ``(batch, D + d)``.
    """

    def __init__(self, prior: Distribution, likelihood: nn.Module, data_features: int) -> None:
        super().__init__()
        self.prior = prior
        self.likelihood = likelihood
        self.data_features = data_features

    def log_prob(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        """``inputs`` ``(batch, D + d)`` -> ``log p(z) + log p(x|z)`` ``(batch,)``."""
        x, z = inputs.split([self.data_features, inputs.shape[1] - self.data_features], dim=1)
        return self.prior.log_prob(z) + self.likelihood.log_prob(x, z)

    def _log_prob(self, inputs: Tensor, context: Tensor | None) -> Tensor:
        return self.log_prob(inputs, context)

    def sample(self, num_samples: int, context: Tensor | None = None) -> Tensor:
        """``(num_samples, D + d)``: ``z ~ p(z)``, then ``x ~ p(x|z)``."""
        if context is not None:
            raise ValueError("context must be None: the VAE's base density is unconditional")
        z = self.prior.sample(num_samples)  # (n, d)
        return torch.cat([self.likelihood.sample(z), z], dim=1)  # (n, D + d)

    def _sample(self, num_samples: int, context: Tensor | None) -> Tensor:
        return self.sample(num_samples, context)


class _ConditionedTransform(TorchTransform):
    """A flowjoint transform with a fixed context as a ``torch.distributions`` transform.

    Used by :meth:`JointVAE.posterior` with flow layers; sample shapes
    ``(..., batch, d)`` broadcast against the context ``(batch, D)``.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, transform: Transform, context: Tensor) -> None:
        super().__init__(cache_size=1)
        self.transform = transform
        self.context = context

    def _run(self, inputs: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        lead = inputs.shape[:-1]
        context = self.context.expand(*lead, self.context.shape[-1]).reshape(
            -1, self.context.shape[-1]
        )
        fn = self.transform.inverse if inverse else self.transform
        outputs, logabsdet = fn(inputs.reshape(-1, inputs.shape[-1]), context=context)
        return outputs.reshape(inputs.shape), logabsdet.reshape(lead)

    def _call(self, x: Tensor) -> Tensor:
        return self._run(x, inverse=False)[0]

    def _inverse(self, y: Tensor) -> Tensor:
        return self._run(y, inverse=True)[0]

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        return self._run(x, inverse=False)[1]


class JointVAE(AugmentedModel):
    """A VAE computed as the exact log-density of a flow on ``(x, eps)``.

    ``self.flow = Flow(T, p(z) p(x|z))`` with ``T`` the encoder coupling
    ``(x, eps) -> (x, mu(x) + sigma(x) * eps)`` (then, optionally, flow-posterior
    layers on ``z`` given ``x``)::

        log p(x, eps) = log p(x|z) + log p(z) + sum log sigma(x) [+ flow log-dets]
        elbo(x)  = mean_k log p(x, eps_k) - log N(eps_k)
        iwae(x)  = logsumexp_k (log p(x, eps_k) - log N(eps_k)) - log K

    Args:
        data_features: ``D``.
        latent_features: ``d``.
        hidden_features: hidden width(s) of the encoder MLP, an int or a sequence
            such as ``(512, 256)`` (the default, 784-512-256-d for MNIST); the decoder
            mirrors it (d-256-512-784). The default encoder predicts ``mu`` and
            ``log sigma^2`` (:class:`~flowjoint.augmented.LogVarianceEncoder`), as in
            the usual VAE.
        likelihood: ``"bernoulli"`` (binary data; the decoder gives logits) or
            ``"gaussian"`` (continuous data; the decoder gives a mean and a learned
            per-pixel log-scale, both functions of ``z``).
        num_hidden_layers: MLP depth when ``hidden_features`` is an int.
        encoder: optional module ``(batch, D) -> (batch, 2d)`` (``mu``, then the
            unconstrained ``log sigma``) replacing the MLP.
        decoder: optional module ``(batch, d) -> (batch, D)`` (Bernoulli logits) or
            ``(batch, 2D)`` (Gaussian ``m``, then the unconstrained ``log s``).
        prior: distribution on ``z``; default ``StandardNormal(d)``; any flowjoint or
            nflows ``Flow`` on ``z`` gives a flow prior.
        posterior_transform: optional flowjoint/nflows transform on ``z``
            ``(batch, d)`` with context ``x`` ``(batch, D)``, applied after the
            reparametrization: a flow posterior ``z = g(mu + sigma * eps; x)``.
        log_scale_bound: soft bound ``b`` of :func:`flowjoint.soft_clamp` on
            ``log sigma`` (and on the Gaussian decoder's ``log s``): ``log sigma =
            b tanh(raw / b)``. The default 10 allows ``sigma`` from ``4.5e-5`` to
            ``2.2e4``, keeps the map's slope above 0.9 for ``|log sigma| <= 3`` and
            still stops a diverging encoder from producing ``inf``. The core's
            default 3 is too tight for a VAE posterior: on MNIST-5k (784-512-256-32,
            20 epochs) trained posteriors reach ``log sigma = -2.9``, where a bound of
            3 has flattened the slope to 0.07, and longer training or more data push
            ``sigma`` lower still. ``None`` removes the bound (the raw ``exp``).
        validate: check at every public entry that Bernoulli data is binary
            (``ValueError`` naming ``x`` otherwise). The check reads tensor values,
            so it is skipped while ``torch.compile`` traces the model.

    Example:
        >>> import torch
        >>> vae = JointVAE(6, 2, hidden_features=8)
        >>> x = torch.bernoulli(torch.full((5, 6), 0.5))
        >>> vae.log_prob(x, torch.randn(5, 2)).shape, vae.elbo(x).shape
        (torch.Size([5]), torch.Size([5]))
        >>> vae.posterior(x).log_prob(torch.zeros(5, 2)).shape
        torch.Size([5])
    """

    def __init__(
        self,
        data_features: int,
        latent_features: int,
        hidden_features: int | Sequence[int] = (512, 256),
        likelihood: Literal["bernoulli", "gaussian"] = "bernoulli",
        num_hidden_layers: int = 2,
        *,
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
        prior: Distribution | None = None,
        posterior_transform: Transform | None = None,
        log_scale_bound: float | None = LOG_SCALE_BOUND,
        validate: bool = True,
    ) -> None:
        super().__init__(data_features, latent_features)
        D, d = self.data_features, self.latent_features
        if likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(f"likelihood must be 'bernoulli' or 'gaussian', got {likelihood!r}")
        self.likelihood_name = likelihood
        self.validate = bool(validate)
        if encoder is None:
            encoder = LogVarianceEncoder(MLP(D, 2 * d, hidden_features, num_hidden_layers), d)
        out = D if likelihood == "bernoulli" else 2 * D
        if decoder is None:
            decoder = MLP(d, out, _decoder_widths(hidden_features), num_hidden_layers)
        if likelihood == "bernoulli":
            conditional: nn.Module = BernoulliLikelihood(decoder, D)
        else:
            conditional = GaussianLikelihood(decoder, D, d, log_scale_bound)
        if prior is None:
            prior = StandardNormal(d)
        elif not isinstance(prior, Distribution):
            raise TypeError(
                f"prior must be an nflows/flowjoint Distribution on z, got {type(prior).__name__}"
            )
        transform: Transform = encoder_coupling(D, d, encoder, log_scale_bound)
        if posterior_transform is not None:
            transform = Compose([transform, LatentTransform(posterior_transform, D)])
        self.flow = Flow(transform, JointBase(prior, conditional, D))

    # -- the parts of the flow ------------------------------------------------------

    @property
    def encoder_coupling(self) -> Transform:
        """The coupling ``(x, eps) -> (x, mu(x) + sigma(x) * eps)``."""
        transform = self.flow.transform
        return transform[0] if isinstance(transform, Compose) else transform

    @property
    def posterior_transform(self) -> Transform | None:
        """The flow-posterior layers on ``z`` given ``x``, or ``None``."""
        transform = self.flow.transform
        return transform[1].transform if isinstance(transform, Compose) else None

    @property
    def prior(self) -> Distribution:
        """The prior on ``z``."""
        return self.flow.base.prior

    @property
    def conditional(self) -> nn.Module:
        """The likelihood module (``log_prob(x, z)``, ``distribution(z)``, ``mean(z)``)."""
        return self.flow.base.likelihood

    def check_data(self, x: Tensor, name: str = "x") -> None:
        """``x`` must be floating ``(batch, D)``; binary for a Bernoulli likelihood."""
        check_inputs(x, self.data_features, name)
        # x - x^2 vanishes exactly on {0, 1} (NaN for inf or NaN): one fused kernel,
        # a third of the cost of (x == 0) | (x == 1) on the training hot path.
        if (
            self.validate
            and self.likelihood_name == "bernoulli"
            and not torch.compiler.is_compiling()
            and bool(torch.addcmul(x, x, x, value=-1).any())
        ):
            bad = x[(x != 0) & (x != 1)][:3].tolist()
            raise ValueError(
                f"{name} must be binary (0 or 1) for the Bernoulli likelihood, got values "
                f"such as {bad}; binarise the data or pass validate=False"
            )

    def _check_latent(self, z: Tensor, name: str = "z") -> None:
        check_inputs(z, self.latent_features, name)

    # -- distributions ----------------------------------------------------------------

    def posterior(self, x: Tensor) -> torch.distributions.Distribution:
        """``q(z|x)``: ``Independent(Normal(mu(x), sigma(x)), 1)``, batch shape ``(batch,)``.

        With flow-posterior layers, the Gaussian pushed through them
        (a ``TransformedDistribution``; ``log_prob`` subtracts their log-det).

        Args:
            x: ``(batch, D)``.
        """
        self.check_data(x)
        mu, log_sigma = self.encoder_coupling.elementwise.shift_and_log_scale(x)
        gaussian = Independent(Normal(mu, log_sigma.exp()), 1)
        if self.posterior_transform is None:
            return gaussian
        return TransformedDistribution(
            gaussian, [_ConditionedTransform(self.posterior_transform, x)]
        )

    def likelihood(self, z: Tensor) -> Independent:
        """``p(x|z)`` as ``Independent(Bernoulli | Normal, 1)``; ``z`` ``(batch, d)``."""
        self._check_latent(z)
        return self.conditional.distribution(z)

    def encode(self, x: Tensor, eps: Tensor | None = None) -> Tensor:
        """``z = T(x, eps)`` ``(batch, d)``; ``eps=None`` uses ``eps = 0`` (giving ``mu(x)``).

        With flow-posterior layers, ``eps = 0`` gives ``g(mu(x); x)``.
        """
        self.check_data(x)
        if eps is None:
            eps = x.new_zeros(x.shape[0], self.latent_features)
        check_inputs(eps, self.latent_features, "eps")
        if eps.shape[0] != x.shape[0]:
            raise ValueError(
                f"eps must have the batch size of x ({x.shape[0]}), got shape {tuple(eps.shape)}"
            )
        outputs = self.flow.transform_to_noise(torch.cat([x, eps], dim=1))
        return outputs[:, self.data_features :]

    def decode(self, z: Tensor) -> Tensor:
        """``E[x|z]`` ``(batch, D)``: Bernoulli probabilities or the Gaussian mean."""
        self._check_latent(z)
        return self.conditional.mean(z)

    def sample(self, num_samples: int) -> Tensor:
        """``x ~ p(x) = E_z p(x|z)``, ``(num_samples, D)``."""
        check_positive_int(num_samples, "num_samples")
        return self.flow.base.sample(num_samples)[:, : self.data_features]

    # -- objectives --------------------------------------------------------------------

    def elbo(self, x: Tensor, num_samples: int = 1, analytic_kl: bool = False) -> Tensor:
        """ELBO, ``(batch,)``: ``mean_k [log p(x, eps_k) - log N(eps_k)]`` by default.

        With ``analytic_kl=True`` the lower-variance form
        ``mean_k log p(x | mu + sigma * eps_k) - KL(N(mu, sigma^2) || N(0, I))``, with
        the KL in closed form; valid only for the Gaussian posterior (no
        ``posterior_transform``) and the standard normal prior (``ValueError``
        otherwise). Both have the same expectation.

        Args:
            x: ``(batch, D)``.
            num_samples: draws of ``eps`` per item (>= 1).
            analytic_kl: use the closed-form KL.
        """
        if not analytic_kl:
            return super().elbo(x, num_samples)
        self.check_data(x)
        check_positive_int(num_samples, "num_samples")
        if self.posterior_transform is not None or type(self.prior) is not StandardNormal:
            raise ValueError(
                "analytic_kl=True needs the Gaussian posterior (no posterior_transform) and "
                f"the standard normal prior, got posterior_transform="
                f"{type(self.posterior_transform).__name__}, prior={type(self.prior).__name__}"
            )
        batch, D, d = x.shape[0], self.data_features, self.latent_features
        mu, log_sigma = self.encoder_coupling.elementwise.shift_and_log_scale(x)  # (batch, d)
        eps = torch.randn(batch, num_samples, d, dtype=x.dtype, device=x.device)
        z = torch.addcmul(mu.unsqueeze(1), log_sigma.exp().unsqueeze(1), eps)  # (batch, K, d)
        x_rep = x.unsqueeze(1).expand(-1, num_samples, -1).reshape(-1, D)  # (batch * K, D)
        log_lik = self.conditional.log_prob(x_rep, z.reshape(-1, d)).view(batch, num_samples)
        kl = 0.5 * (mu.square() + (2 * log_sigma).exp() - 1.0 - 2 * log_sigma).sum(-1)
        return log_lik.mean(1) - kl

    # -- the flow view of a Gaussian VAE --------------------------------------------------

    def decoder_coupling(self) -> Transform:
        """The Gaussian decoder as a coupling ``(x, z) -> (u, z)`` sharing this model's net.

        ``Flow(Compose([vae.encoder_coupling, vae.decoder_coupling()]),
        StandardNormal(D + d))`` then has the same ``log_prob`` as ``vae`` (standard
        normal prior, no flow-posterior layers).
        """
        if self.likelihood_name != "gaussian":
            raise ValueError(
                f"decoder_coupling needs likelihood='gaussian' (a bijective decoder), "
                f"got {self.likelihood_name!r}"
            )
        affine = self.conditional.affine
        return decoder_coupling(
            self.data_features, self.latent_features, affine.net, affine.log_scale_bound
        )
