"""Layers on the augmented variable ``(x, eps)``, and the augmented normalizing flow.

After [`Augment`][flowjoint.Augment], the state is an
[`AugmentedState`][flowjoint.AugmentedState] ``(x, eps)``: data ``x``
``(rows_x, *data_shape)`` (a vector or an image) and noise ``eps`` ``(rows, d)``. Two
coupling layers act on it, both built on the conditional element-wise affine map:

* the encoder coupling ``(x, eps) -> (x, z)``, ``z = mu(x) + sigma(x) * eps``, log-det
  ``sum log sigma(x)`` ([`EncoderCoupling`][flowjoint.EncoderCoupling]): the VAE's
  reparametrization, with ``x`` kept. ``mu`` and ``sigma`` are computed once per row of
  ``x``, whatever the number of draws of ``eps``;
* the decoder coupling ``(x, z) -> (u, z)``, ``u = (x - m(z)) / s(z)``, log-det
  ``-sum log s(z)`` ([`DecoderCoupling`][flowjoint.DecoderCoupling]): a Gaussian decoder,
  with ``z`` kept.

On a standard normal base ([`JointNormal`][flowjoint.JointNormal]) one pair is a Gaussian VAE and
several pairs an augmented normalizing flow ([`AugmentedFlow`][flowjoint.AugmentedFlow])::

    log w(x, eps) = log p(x, eps) - log N(eps; 0, I)     # one-sample ELBO
    ELBO(x)   = E_eps[log w]  = E_eps[log p(x, eps)] + d/2 (1 + log 2 pi)
    IWAE_K(x) = E[logsumexp_k log w(x, eps_k) - log K]   <= log p(x)

References:
    Augmented Normalizing Flows: Bridging the Gap Between Generative Flows and
    Latent Variable Models. Huang, Dinh, Courville, 2020. arXiv:2002.07101.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from flowjoint.checks import (
    check_event_shape,
    check_inputs,
    check_positive_int,
)
from flowjoint.distributions import BaseDistribution, standard_normal_log_prob
from flowjoint.elementwise import ConditionalAffine
from flowjoint.flows import Flow
from flowjoint.nets import default_decoder_net, default_encoder_net
from flowjoint.stochastic import Augment, AugmentedState, repeat_rows
from flowjoint.transforms import Compose, Transform, spreads_over

__all__ = [
    "AugmentedFlow",
    "DecoderCoupling",
    "EncoderCoupling",
    "JointNormal",
    "LOG_SCALE_BOUND",
    "LatentTransform",
    "decoder_coupling",
    "encoder_coupling",
]

#: Default bound of the soft clamp on every log-scale in this module and in
#: [`JointVAE`][flowjoint.JointVAE] (see ``log_scale_bound`` there for why).
LOG_SCALE_BOUND = 10.0


def check_state(state: object, data_shape: tuple[int, ...], latent_features: int) -> None:
    """Raise unless ``state`` is an ``AugmentedState`` with these shapes."""
    if not isinstance(state, AugmentedState):
        raise TypeError(f"inputs must be an AugmentedState (x, eps), got {type(state).__name__}")
    check_inputs(state.data, data_shape, "inputs.data")
    check_inputs(state.latent, latent_features, "inputs.latent")
    rows_x, rows = state.data.shape[0], state.latent.shape[0]
    if not spreads_over(rows_x, rows):
        raise ValueError(
            f"inputs.data must have as many rows as inputs.latent ({rows}) or a divisor of "
            f"it (K draws per data row), got {rows_x}"
        )


class EncoderCoupling(Transform):
    """The reparametrization ``(x, eps) -> (x, mu(x) + sigma(x) * eps)`` as a coupling.

    ``x`` is kept and conditions the map, ``eps`` is transformed; ``.elementwise`` is a
    [`ConditionalAffine`][flowjoint.ConditionalAffine] on ``eps`` with context ``x``. Its Jacobian
    is ``[[I, 0], [dz/dx, diag sigma(x)]]``, log-det ``sum log sigma(x)``.

    Args:
        elementwise: the ``ConditionalAffine(d, context_features=C)`` whose net maps
            ``x`` ``(batch, *data_shape)`` to ``(batch, 2d)``: ``mu``, then the
            unconstrained ``log sigma``.
        data_shape: the event shape of ``x``.
    """

    def __init__(self, elementwise: ConditionalAffine, data_shape: Sequence[int]) -> None:
        super().__init__()
        if not isinstance(elementwise, ConditionalAffine):
            raise TypeError(f"elementwise must be a ConditionalAffine, got {elementwise!r}")
        self.elementwise = elementwise
        self.data_shape = check_event_shape(data_shape, "data_shape")
        self.latent_features = elementwise.features

    def extra_repr(self) -> str:
        return f"data_shape={self.data_shape}, latent_features={self.latent_features}"

    def forward(
        self, inputs: AugmentedState, context: Tensor | None = None
    ) -> tuple[AugmentedState, Tensor]:
        """``(x, eps) -> (x, z)``; logabsdet ``(rows,)``."""
        check_state(inputs, self.data_shape, self.latent_features)
        x, eps = inputs
        z, logabsdet = self.elementwise.map(eps, x)
        return AugmentedState(x, z), logabsdet

    def inverse(
        self, inputs: AugmentedState, context: Tensor | None = None
    ) -> tuple[AugmentedState, Tensor]:
        """``(x, z) -> (x, eps)``, ``eps = (z - mu(x)) / sigma(x)``; logabsdet of the inverse."""
        check_state(inputs, self.data_shape, self.latent_features)
        x, z = inputs
        eps, logabsdet = self.elementwise.map(z, x, inverse=True)
        return AugmentedState(x, eps), logabsdet


class DecoderCoupling(Transform):
    """A Gaussian decoder ``(x, z) -> (u, z)``, ``u = (x - m(z)) / s(z)``, as a coupling.

    It is the inverse of the conditional affine map ``x = m(z) + s(z) * u`` given ``z``
    (``z`` kept), so that its conditioner is the decoder itself. Log-det
    ``-sum log s(z)``, hence with a standard normal on ``u``:
    ``log N(u) - sum log s(z) = log N(x; m(z), s(z)^2)``.

    Args:
        elementwise: the ``ConditionalAffine(data_shape, context_features=d)`` whose net
            maps ``z`` ``(batch, d)`` to ``(batch, 2C, *rest)``: ``m``, then the
            unconstrained ``log s``.
    """

    def __init__(self, elementwise: ConditionalAffine) -> None:
        super().__init__()
        if not isinstance(elementwise, ConditionalAffine):
            raise TypeError(f"elementwise must be a ConditionalAffine, got {elementwise!r}")
        self.elementwise = elementwise
        self.data_shape = elementwise.event_shape
        self.latent_features = elementwise.context_features

    def extra_repr(self) -> str:
        return f"data_shape={self.data_shape}, latent_features={self.latent_features}"

    def forward(
        self, inputs: AugmentedState, context: Tensor | None = None
    ) -> tuple[AugmentedState, Tensor]:
        """``(x, z) -> (u, z)``; logabsdet ``(rows,)``. ``x`` is repeated for ``z``'s rows."""
        check_state(inputs, self.data_shape, self.latent_features)
        x, z = inputs
        u, logabsdet = self.elementwise.map(repeat_rows(x, z.shape[0]), z, inverse=True)
        return AugmentedState(u, z), logabsdet

    def inverse(
        self, inputs: AugmentedState, context: Tensor | None = None
    ) -> tuple[AugmentedState, Tensor]:
        """``(u, z) -> (x, z)``, ``x = m(z) + s(z) * u``; logabsdet of the inverse."""
        check_state(inputs, self.data_shape, self.latent_features)
        u, z = inputs
        x, logabsdet = self.elementwise.map(repeat_rows(u, z.shape[0]), z)
        return AugmentedState(x, z), logabsdet


def encoder_coupling(
    data_features: int | Sequence[int],
    latent_features: int,
    net: nn.Module,
    log_scale_bound: float | None = LOG_SCALE_BOUND,
) -> EncoderCoupling:
    """The encoder coupling with conditioner ``net`` ``(batch, *data_shape) -> (batch, 2d)``.

    Args:
        data_features: ``D`` or the data's event shape.
        latent_features: ``d``.
        net: maps ``x`` to ``mu``, then the unconstrained ``log sigma``.
        log_scale_bound: soft bound on ``log sigma`` ([`soft_clamp`][flowjoint.soft_clamp]).
    """
    shape = check_event_shape(data_features, "data_features")
    check_positive_int(latent_features, "latent_features")
    elementwise = ConditionalAffine(
        latent_features, shape[0], net=net, log_scale_bound=log_scale_bound
    )
    return EncoderCoupling(elementwise, shape)


def decoder_coupling(
    data_features: int | Sequence[int],
    latent_features: int,
    net: nn.Module,
    log_scale_bound: float | None = LOG_SCALE_BOUND,
) -> DecoderCoupling:
    """The decoder coupling with conditioner ``net`` ``(batch, d) -> (batch, 2C, *rest)``.

    Args:
        data_features: ``D`` or the data's event shape.
        latent_features: ``d``.
        net: maps ``z`` to ``m``, then the unconstrained ``log s``.
        log_scale_bound: soft bound on ``log s``.
    """
    shape = check_event_shape(data_features, "data_features")
    check_positive_int(latent_features, "latent_features")
    elementwise = ConditionalAffine(
        shape, latent_features, net=net, log_scale_bound=log_scale_bound
    )
    return DecoderCoupling(elementwise)


class LatentTransform(Transform):
    """Apply a conditional transform to the latent part of ``(x, z)``, conditioned on ``x``.

    ``(x, z) -> (x, g(z; x))`` with log-det that of ``g``. Stacked after the encoder
    coupling, ``g`` turns the Gaussian posterior into a flow posterior
    ``z = g(mu(x) + sigma(x) * eps; x)``.

    Args:
        transform: a flowjoint or nflows transform on ``(batch, d)`` with context
            ``(batch, D)`` (``x`` flattened).
    """

    def __init__(self, transform: Transform) -> None:
        super().__init__()
        if not isinstance(transform, Transform):
            raise TypeError(
                f"transform must be an nflows/flowjoint Transform, got {type(transform).__name__}"
            )
        self.transform = transform

    def _run(self, inputs: AugmentedState, inverse: bool) -> tuple[AugmentedState, Tensor]:
        if not isinstance(inputs, AugmentedState):
            raise TypeError(f"inputs must be an AugmentedState (x, z), got {type(inputs).__name__}")
        x, z = inputs
        context = repeat_rows(x, z.shape[0]).flatten(1)  # (rows, D)
        fn = self.transform.inverse if inverse else self.transform
        z, logabsdet = fn(z, context=context)
        return AugmentedState(x, z), logabsdet

    def forward(
        self, inputs: AugmentedState, context: Tensor | None = None
    ) -> tuple[AugmentedState, Tensor]:
        """``(x, z) -> (x, g(z; x))``; logabsdet ``(rows,)``."""
        return self._run(inputs, inverse=False)

    def inverse(
        self, inputs: AugmentedState, context: Tensor | None = None
    ) -> tuple[AugmentedState, Tensor]:
        """Inverse map; logabsdet ``(rows,)`` of the inverse."""
        return self._run(inputs, inverse=True)


class JointNormal(BaseDistribution):
    """The standard normal on the augmented space: ``N(u; 0, I) N(z; 0, I)`` on ``(u, z)``.

    Args:
        data_shape: the event shape of the data part (``D`` or ``(C, H, W)``).
        latent_features: ``d``.
    """

    def __init__(self, data_shape: int | Sequence[int], latent_features: int) -> None:
        super().__init__()
        self.data_shape = check_event_shape(data_shape, "data_shape")
        self.latent_features = check_positive_int(latent_features, "latent_features")
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def log_prob(self, inputs: AugmentedState, context: Tensor | None = None) -> Tensor:
        """``log N(u) + log N(z)``, ``(rows,)``."""
        check_state(inputs, self.data_shape, self.latent_features)
        return self._log_prob(inputs, context)

    def _log_prob(self, inputs: AugmentedState, context: Tensor | None) -> Tensor:
        u, z = inputs
        rows = z.shape[0]
        return repeat_rows(standard_normal_log_prob(u), rows) + standard_normal_log_prob(z)

    def sample(
        self,
        num_samples: int,
        context: Tensor | None = None,
        batch_size: int | None = None,
        temperature: float = 1.0,
    ) -> AugmentedState:
        """``(u, z)`` with ``u`` ``(num_samples, *data_shape)``, ``z`` ``(num_samples, d)``."""
        if context is not None:
            raise ValueError("context must be None: JointNormal is unconditional")
        options = {"dtype": self._anchor.dtype, "device": self._anchor.device}
        u = torch.randn(num_samples, *self.data_shape, **options) * temperature
        z = torch.randn(num_samples, self.latent_features, **options) * temperature
        return AugmentedState(u, z)

    def _sample(self, num_samples: int, context: Tensor | None) -> AugmentedState:
        return self.sample(num_samples, context)


class AugmentedFlow(Flow):
    """A stack of encoder/decoder coupling pairs on ``(x, eps)``: an augmented normalizing flow.

    The stack is ``[Augment(d), encoder_1, decoder_1, ..., encoder_K, decoder_K]`` on
    [`JointNormal`][flowjoint.JointNormal]; each step is two affine couplings::

        eps <- mu_k(x) + sigma_k(x) * eps         # encoder coupling, x kept
        x   <- (x - m_k(eps)) / s_k(eps)          # decoder coupling, eps kept

    With one step this is exactly a Gaussian VAE (``eps`` becomes ``z``, ``x`` becomes
    the decoder's noise ``u``): the same ``log p(x, eps)`` as
    ``JointVAE(..., likelihood="gaussian")`` with the same nets. ``elbo``, ``iwae``
    and ``sample`` are those of every [`Flow`][flowjoint.Flow].

    Args:
        data_features: ``D``, or the data's event shape ``(C, H, W)`` (the default
            nets are then a conv encoder and decoder).
        latent_features: ``d``.
        num_steps: number of encoder/decoder pairs ``K`` (>= 1).
        hidden_features: hidden width(s) of the default encoders (an int, or a
            sequence such as ``(512, 256)``); the decoders mirror them. The default
            encoders predict a log-variance (`LogVarianceEncoder`).
        num_hidden_layers: depth of the MLPs when ``hidden_features`` is an int.
        encoder_nets: optional ``K`` modules ``(batch, *data_shape) -> (batch, 2d)``
            (``mu``, then the unconstrained ``log sigma``).
        decoder_nets: optional ``K`` modules ``(batch, d) -> (batch, 2C, *rest)``
            (``m``, then the unconstrained ``log s``).
        log_scale_bound: soft bound on every log-scale; see ``JointVAE``.
        preprocessing: layers applied before the augmentation (dequantization,
            [`Scale`][flowjoint.Scale], [`Logit`][flowjoint.Logit]).
        validate: check that the data (and ``eps`` given to ``log_prob``) are finite
            at every public entry, as ``Flow(validate=True)`` does (reads values).

    Example:
        >>> import torch
        >>> model = AugmentedFlow(6, 2, num_steps=2, hidden_features=8)
        >>> model.elbo(torch.randn(5, 6)).shape, model.iwae(torch.randn(5, 6), 10).shape
        (torch.Size([5]), torch.Size([5]))
    """

    def __init__(
        self,
        data_features: int | Sequence[int],
        latent_features: int,
        num_steps: int = 1,
        hidden_features: int | Sequence[int] = (512, 256),
        num_hidden_layers: int = 2,
        *,
        encoder_nets: Sequence[nn.Module] | None = None,
        decoder_nets: Sequence[nn.Module] | None = None,
        log_scale_bound: float | None = LOG_SCALE_BOUND,
        preprocessing: Sequence[Transform] = (),
        validate: bool = False,
    ) -> None:
        shape = check_event_shape(data_features, "data_features")
        d = check_positive_int(latent_features, "latent_features")
        check_positive_int(num_steps, "num_steps")
        if encoder_nets is None:
            encoder_nets = [
                default_encoder_net(shape, d, hidden_features, num_hidden_layers)
                for _ in range(num_steps)
            ]
        if decoder_nets is None:
            decoder_nets = [
                default_decoder_net(shape, d, 2, hidden_features, num_hidden_layers)
                for _ in range(num_steps)
            ]
        for name, nets in (("encoder_nets", encoder_nets), ("decoder_nets", decoder_nets)):
            if len(nets) != num_steps:
                raise ValueError(f"{name} must hold num_steps={num_steps} modules, got {len(nets)}")
        layers: list[Transform] = [*preprocessing, Augment(d)]
        for encoder, decoder in zip(encoder_nets, decoder_nets):
            layers.append(encoder_coupling(shape, d, encoder, log_scale_bound))
            layers.append(decoder_coupling(shape, d, decoder, log_scale_bound))
        super().__init__(Compose(layers), JointNormal(shape, d), validate=validate)
        self.data_shape, self.latent_features, self.num_steps = shape, d, num_steps
        self.num_preprocessing = len(preprocessing)

    @property
    def encoder_couplings(self) -> tuple[EncoderCoupling, ...]:
        """The ``K`` encoder couplings, in stack order."""
        start = self.num_preprocessing + 1
        return tuple(self.transform[start::2])

    @property
    def decoder_couplings(self) -> tuple[DecoderCoupling, ...]:
        """The ``K`` decoder couplings, in stack order."""
        start = self.num_preprocessing + 2
        return tuple(self.transform[start::2])

    def log_prob(self, inputs: Tensor, eps: Tensor | None = None) -> Tensor:
        """Exact ``log p(x, eps)`` of the flow after the augmentation; ``(batch,)``.

        Without ``eps`` it raises like every stochastic stack's ``log_prob`` (use
        `elbo` or `iwae`). See [`log_prob`][flowjoint.JointVAE.log_prob].
        """
        if eps is None:
            return Flow.log_prob(self, inputs)
        return self.joint_log_prob(inputs, eps)
