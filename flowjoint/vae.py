"""The VAE as a flow on ``(x, eps)``: a stack ``[Augment(d), encoder coupling]`` on ``p(z) p(x|z)``.

The encoder's reparametrization ``z = mu(x) + sigma(x) * eps`` is an affine coupling
``T: (x, eps) -> (x, z)`` (x kept, eps transformed). Pulled back through ``T``, the
generative model ``p(z) p(x|z)`` is a density on ``(x, eps)``::

    log p(x, eps) = log p(x|z) + log p(z) + sum log sigma(x),   z = T(x, eps)
    log p(x, eps) - log N(eps) = log p(x|z) + log p(z) - log q(z|x)   # one-sample ELBO

The augmentation ``x -> (x, eps)`` is the stochastic layer
[`Augment`][flowjoint.Augment], whose contribution is ``-log N(eps)``; so
the ELBO and IWAE of [`JointVAE`][flowjoint.JointVAE] are those of every [`Flow`][flowjoint.Flow].

References:
    Auto-Encoding Variational Bayes. Kingma, Welling, 2013. arXiv:1312.6114.

    Importance Weighted Autoencoders. Burda, Grosse, Salakhutdinov, 2015.
    arXiv:1509.00519.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from nflows.distributions import Distribution
from torch import Tensor, nn
from torch.distributions import Independent, Normal, TransformedDistribution, constraints
from torch.distributions import Transform as TorchTransform

from flowjoint.augmented import (
    LOG_SCALE_BOUND,
    DecoderCoupling,
    EncoderCoupling,
    LatentTransform,
    encoder_coupling,
)
from flowjoint.checks import check_event_shape, check_inputs, check_positive_int
from flowjoint.decoders import BernoulliDecoder, EventDistribution, GaussianDecoder, JointBase
from flowjoint.distributions import LOG_2PI, StandardNormal
from flowjoint.flows import Flow
from flowjoint.nets import default_decoder_net, default_encoder_net
from flowjoint.stochastic import Augment, AugmentedState
from flowjoint.transforms import Compose, Transform, is_stochastic
from flowjoint.vae_pass import standard_log_weights

__all__ = ["JointVAE"]


class _ConditionedTransform(TorchTransform):
    """A flowjoint transform with a fixed context as a ``torch.distributions`` transform.

    Used by `JointVAE.posterior` with flow layers; sample shapes
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


class JointVAE(Flow):
    """A VAE computed as a flow: the stack ``[Augment(d), T]`` on ``p(z) p(x|z)``.

    ``T`` is the encoder coupling ``(x, eps) -> (x, mu(x) + sigma(x) * eps)`` (then,
    optionally, flow-posterior layers on ``z`` given ``x``)::

        log p(x, eps) = log p(x|z) + log p(z) + sum log sigma(x) [+ flow log-dets]
        elbo(x)  = mean_k log p(x, eps_k) - log N(eps_k)
        iwae(x)  = logsumexp_k (log p(x, eps_k) - log N(eps_k)) - log K

    Args:
        data_features: ``D``, or the data's event shape ``(C, H, W)`` (the default
            encoder and decoder are then convolutional).
        latent_features: ``d``.
        hidden_features: hidden width(s) of the encoder MLP, an int or a sequence
            such as ``(512, 256)`` (the default, 784-512-256-d for MNIST); the decoder
            mirrors it (d-256-512-784). For images, the width of the conv nets' hidden
            linear layer. The default encoder predicts ``mu`` and ``log sigma^2``
            (`LogVarianceEncoder`), as in the usual VAE.
        likelihood: the decoder's family: ``"bernoulli"`` (binary data; the decoder
            gives logits) or ``"gaussian"`` (continuous data; the decoder gives a mean
            and a learned per-entry log-scale, both functions of ``z``).
        num_hidden_layers: MLP depth when ``hidden_features`` is an int.
        encoder: optional module ``(batch, *data_shape) -> (batch, 2d)`` (``mu``, then
            the unconstrained ``log sigma``) replacing the default.
        decoder: optional module ``(batch, d) -> (batch, *data_shape)`` (Bernoulli
            logits) or ``(batch, 2C, *rest)`` (Gaussian ``m``, then the unconstrained
            ``log s``).
        prior: distribution on ``z``; default ``StandardNormal(d)``; any flowjoint or
            nflows ``Flow`` on ``z`` gives a flow prior.
        posterior_transform: optional flowjoint/nflows transform on ``z``
            ``(batch, d)`` with context ``x`` ``(batch, D)``, applied after the
            reparametrization: a flow posterior ``z = g(mu + sigma * eps; x)``.
        log_scale_bound: soft bound ``b`` of [`soft_clamp`][flowjoint.soft_clamp] on
            ``log sigma`` (and on the Gaussian decoder's ``log s``). The default 10
            allows ``sigma`` from ``4.5e-5`` to ``2.2e4`` and still stops a diverging
            encoder from producing ``inf``; trained posteriors reach
            ``log sigma = -3``, where a bound of 3 would flatten the map.
            ``None`` removes the bound.
        validate: check that the data lies in the model's support at every public
            entry: binary for the Bernoulli decoder (which also rejects NaN and inf),
            finite otherwise; ``ValueError`` naming ``inputs`` if not. The check reads
            tensor values, so it is skipped while ``torch.compile`` traces the model.
            With ``validate=False`` the Bernoulli log-likelihood of non-binary data
            is a number but not the density of anything.
        preprocessing: bijective layers applied to ``x`` before the augmentation
            ([`Scale`][flowjoint.Scale], [`Logit`][flowjoint.Logit])
            and stochastic ones (dequantization); only with the Gaussian decoder.

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
        data_features: int | Sequence[int],
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
        preprocessing: Sequence[Transform] = (),
    ) -> None:
        shape = check_event_shape(data_features, "data_features")
        d = check_positive_int(latent_features, "latent_features")
        if likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(f"likelihood must be 'bernoulli' or 'gaussian', got {likelihood!r}")
        if likelihood == "bernoulli" and preprocessing:
            raise ValueError(
                "preprocessing makes the data continuous, but likelihood='bernoulli' models "
                "binary data: use likelihood='gaussian' with preprocessing"
            )
        if encoder is None:
            encoder = default_encoder_net(shape, d, hidden_features, num_hidden_layers)
        params = 1 if likelihood == "bernoulli" else 2
        if decoder is None:
            decoder = default_decoder_net(shape, d, params, hidden_features, num_hidden_layers)
        if likelihood == "bernoulli":
            decoder_module: nn.Module = BernoulliDecoder(decoder, shape)
        else:
            decoder_module = GaussianDecoder(decoder, shape, d, log_scale_bound)
        layers: list[Transform] = [*preprocessing, Augment(d)]
        layers.append(encoder_coupling(shape, d, encoder, log_scale_bound))
        if posterior_transform is not None:
            layers.append(LatentTransform(posterior_transform))
        base = JointBase(StandardNormal(d) if prior is None else prior, decoder_module)
        super().__init__(Compose(layers), base, validate=validate)
        self.data_shape, self.latent_features = shape, d
        self.num_preprocessing = len(preprocessing)
        self.has_posterior_transform = posterior_transform is not None

    # -- the parts of the stack -------------------------------------------------------

    @property
    def encoder_coupling(self) -> EncoderCoupling:
        """The coupling ``(x, eps) -> (x, mu(x) + sigma(x) * eps)``."""
        return self.transform[self.num_preprocessing + 1]

    @property
    def decoder_coupling(self) -> DecoderCoupling:
        """The Gaussian decoder as a coupling ``(x, z) -> (u, z)`` sharing this model's net.

        ``Flow(Compose([vae.encoder_coupling, vae.decoder_coupling]), JointNormal(D, d))``
        has the same density on ``(x, eps)`` as ``vae`` (standard normal prior, no
        flow-posterior layers).
        """
        if not isinstance(self.decoder, GaussianDecoder):
            raise ValueError(
                "decoder_coupling needs likelihood='gaussian' (a bijective decoder), "
                f"got {self.decoder.family!r}"
            )
        return DecoderCoupling(self.decoder.affine)

    @property
    def posterior_transform(self) -> Transform | None:
        """The flow-posterior layers on ``z`` given ``x``, or ``None``."""
        if not self.has_posterior_transform:
            return None
        return self.transform[self.num_preprocessing + 2].transform

    @property
    def prior(self) -> Distribution:
        """The prior on ``z``."""
        return self.base.prior

    @property
    def decoder(self) -> nn.Module:
        """The decoder ``p(x|z)`` (``log_prob(x, z)``, ``distribution(z)``, ``mean(z)``)."""
        return self.base.decoder

    @property
    def noise_entropy(self) -> float:
        """``H[N(0, I_d)] = d/2 (1 + log 2 pi)``, so ``ELBO = E[log p(x, eps)] + H``."""
        return 0.5 * self.latent_features * (1.0 + LOG_2PI)

    # -- inputs -------------------------------------------------------------------------

    def _check(self, inputs: Tensor, context: Tensor | None) -> None:
        check_inputs(inputs, self.data_shape)
        self._check_dtype(inputs)
        if context is not None:
            # elbo(x, K) passes K as the context: say where it belongs.
            hint = f" (pass num_samples={context} by keyword)" if isinstance(context, int) else ""
            raise ValueError(f"context must be None: JointVAE is unconditional{hint}")
        if not self.validate or torch.compiler.is_compiling():
            return
        if self.decoder.family != "bernoulli":
            super()._check(inputs, context)
        # x - x^2 vanishes exactly on {0, 1} (NaN for inf or NaN); its min and max in one
        # pass (about half the time of .any() on a float tensor).
        elif _not_all_zero(torch.addcmul(inputs, inputs, inputs, value=-1)):
            bad = inputs[(inputs != 0) & (inputs != 1)][:3].tolist()
            raise ValueError(
                f"inputs must be binary (0 or 1) for the Bernoulli decoder, got values such as "
                f"{bad}; binarise the data, or model continuous data with "
                "likelihood='gaussian'"
            )

    def _draw_log_weights(self, inputs: Tensor, context: Tensor | None, num_samples: int) -> Tensor:
        """The stack's pass; the plain VAE stack without hooks in one function (same bits)."""
        log_weights = standard_log_weights(self.transform, self.base, inputs, num_samples)
        if log_weights is None:
            return super()._draw_log_weights(inputs, context, num_samples)
        return log_weights

    def _encoder_input(self, x: Tensor) -> Tensor:
        """``x`` through the preprocessing layers (bijective ones only)."""
        self._check(x, None)
        for layer in list(self.transform)[: self.num_preprocessing]:
            if is_stochastic(layer):
                raise ValueError(
                    f"this method needs bijective preprocessing, but {type(layer).__name__} "
                    "draws its output: pass dequantized data to a model built without it"
                )
            x = layer(x)[0]
        return x

    # -- densities ----------------------------------------------------------------------

    def log_prob(self, inputs: Tensor, eps: Tensor | None = None) -> Tensor:
        """Exact ``log p(x, eps)`` of the flow after the augmentation.

        Args:
            inputs: ``x`` ``(batch, *data_shape)``.
            eps: ``(batch, d)``. Without it, ``log p(x)`` has no closed form and this
                raises ``ValueError`` like every stochastic stack (use `elbo` or
                `iwae`).

        Returns:
            ``(batch,)``.
        """
        if eps is None:
            return Flow.log_prob(self, inputs)
        return self.joint_log_prob(inputs, eps)

    def elbo(
        self,
        inputs: Tensor,
        context: Tensor | None = None,
        num_samples: int = 1,
        *,
        analytic_kl: bool = False,
    ) -> Tensor:
        """ELBO, ``(batch,)``: ``mean_k [log p(x, eps_k) - log N(eps_k)]`` by default.

        With ``analytic_kl=True`` the lower-variance form
        ``mean_k log p(x | mu + sigma * eps_k) - KL(N(mu, sigma^2) || N(0, I))``, with
        the KL in closed form; valid only for the Gaussian posterior (no
        ``posterior_transform``), the standard normal prior and no preprocessing
        (``ValueError`` otherwise). Both have the same expectation.
        """
        if not analytic_kl:
            return super().elbo(inputs, context, num_samples)
        self._check(inputs, context)
        check_positive_int(num_samples, "num_samples")
        if self.has_posterior_transform or type(self.prior) is not StandardNormal:
            raise ValueError(
                "analytic_kl=True needs the Gaussian posterior (no posterior_transform) and "
                f"the standard normal prior, got posterior_transform="
                f"{type(self.posterior_transform).__name__}, prior={type(self.prior).__name__}"
            )
        if self.num_preprocessing:
            raise ValueError("analytic_kl=True needs a model without preprocessing layers")
        mu, log_sigma = self.encoder_coupling.elementwise.shift_and_log_scale(inputs)  # (b, d)
        eps = torch.randn(
            inputs.shape[0] * num_samples, self.latent_features, dtype=mu.dtype, device=mu.device
        )
        z = torch.addcmul(
            mu.repeat_interleave(num_samples, 0),
            log_sigma.exp().repeat_interleave(num_samples, 0),
            eps,
        )  # (batch * K, d)
        log_lik = self.decoder.log_prob(inputs, z).view(inputs.shape[0], num_samples)
        kl = 0.5 * (mu.square() + (2 * log_sigma).exp() - 1.0 - 2 * log_sigma).sum(-1)
        return log_lik.mean(1) - kl

    # -- distributions ------------------------------------------------------------------

    def posterior(self, x: Tensor) -> torch.distributions.Distribution:
        """``q(z|x)``: ``Independent(Normal(mu(x), sigma(x)), 1)``, batch shape ``(batch,)``.

        With flow-posterior layers, the Gaussian pushed through them
        (a ``TransformedDistribution``; ``log_prob`` subtracts their log-det).

        Args:
            x: ``(batch, *data_shape)``.
        """
        h = self._encoder_input(x)
        mu, log_sigma = self.encoder_coupling.elementwise.shift_and_log_scale(h)
        gaussian = EventDistribution(Normal(mu, log_sigma.exp()), 1)
        if self.posterior_transform is None:
            return gaussian
        return TransformedDistribution(
            gaussian, [_ConditionedTransform(self.posterior_transform, h.flatten(1))]
        )

    def likelihood(self, z: Tensor) -> Independent:
        """``p(x|z)`` as ``Independent(Bernoulli | Normal, event dims)``; ``z`` ``(batch, d)``."""
        check_inputs(z, self.latent_features, "z")
        return self.decoder.distribution(z)

    def encode(self, x: Tensor, eps: Tensor | None = None) -> Tensor:
        """``z = T(x, eps)`` ``(batch, d)``; ``eps=None`` uses ``eps = 0`` (giving ``mu(x)``).

        With flow-posterior layers, ``eps = 0`` gives ``g(mu(x); x)``.
        """
        h = self._encoder_input(x)
        if eps is None:
            eps = h.new_zeros(h.shape[0], self.latent_features)
        check_inputs(eps, self.latent_features, "eps")
        if eps.shape[0] != h.shape[0]:
            raise ValueError(
                f"eps must have the batch size of x ({h.shape[0]}), got shape {tuple(eps.shape)}"
            )
        state = AugmentedState(h, eps)
        for layer in list(self.transform)[self.num_preprocessing + 1 :]:
            state = layer(state)[0]
        return state.latent

    def decode(self, z: Tensor) -> Tensor:
        """``E[x|z]`` ``(batch, *data_shape)``: Bernoulli probabilities or the Gaussian mean."""
        check_inputs(z, self.latent_features, "z")
        return self.decoder.mean(z)


def _not_all_zero(values: Tensor) -> bool:
    """True if any entry is non-zero or NaN (False for an empty tensor)."""
    if values.numel() == 0:
        return False
    low, high = torch.aminmax(values)
    return bool(low) or bool(high)  # NaN is true
