"""Stochastic layers: augmentation and dequantization as layers of the one stack.

Each layer draws its output in the data -> noise direction and returns its
one-sample likelihood contribution ``log p(inputs | outputs) - log q(outputs | inputs)``
(see `transforms`)::

    Augment(d)                  x -> (x, eps), eps ~ N(0, I_d)      -log N(eps)
    UniformDequantization()     x -> x + u,    u ~ U[0, 1)^D        0
    VariationalDequantization   x -> x + u,    u = sigmoid(mu(x) + sigma(x) * eps)
                                                                    -log q(u | x)

The generative directions are: drop ``eps``; ``floor`` (to the nearest level). With
``num_samples=K`` each layer draws ``K`` outputs per input row (consecutive rows),
computing what depends on the input alone once per row.

References:
    SurVAE Flows: Surjections to Bridge the Gap between VAEs and Flows. Nielsen,
    Jaini, Hoogeboom, Winther, Welling, 2020. arXiv:2007.02731.

    Flow++: Improving Flow-Based Generative Models with Variational Dequantization
    and Architecture Design. Ho, Chen, Srinivas, Duan, Abbeel, 2019. arXiv:1902.00275.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowjoint.checks import (
    check_event_shape,
    check_inputs,
    check_positive_int,
    sum_event,
)
from flowjoint.distributions import standard_normal_log_prob, standard_normal_nll
from flowjoint.elementwise import ConditionalAffine
from flowjoint.nets import MLP, ResidualConvNet
from flowjoint.transforms import SavedSettings, StochasticTransform, repeat_rows

__all__ = [
    "Augment",
    "AugmentedState",
    "UniformDequantization",
    "VariationalDequantization",
    "repeat_rows",
]


class AugmentedState(NamedTuple):
    """The augmented variable ``(x, eps)`` as two tensors.

    Attributes:
        data: ``(rows_x, *data_shape)``, the data part (``x``, or ``u`` after a
            decoder coupling).
        latent: ``(rows, d)``, the augmented part (``eps``, or ``z`` after an encoder
            coupling). ``rows`` is the batch size of the state; ``rows_x`` divides it:
            when ``rows = K * rows_x``, data row ``i`` belongs to latent rows
            ``i K .. i K + K - 1`` (``K`` draws of ``eps`` for the same ``x``), so what
            depends on ``x`` alone is computed once per ``x``.
    """

    data: Tensor
    latent: Tensor


def _nan(rows: int, like: Tensor) -> Tensor:
    return like.new_full((rows,), math.nan)


class Augment(SavedSettings, StochasticTransform):
    """``x -> (x, eps)``, ``eps ~ N(0, I_d)``: the VAE's augmentation as a layer.

    Forward (data -> noise) and its contribution::

        eps ~ N(0, I_d)                      # K draws per row with num_samples=K
        outputs = AugmentedState(x, eps)     # x kept once, not repeated
        log_weight = -log N(eps; 0, I)

    The inverse (generative direction) drops ``eps``.

    Args:
        features: ``d``, the dimension of ``eps``.

    Example:
        >>> import torch
        >>> state, log_weight = Augment(2)(torch.randn(3, 4), num_samples=5)
        >>> state.data.shape, state.latent.shape, log_weight.shape
        (torch.Size([3, 4]), torch.Size([15, 2]), torch.Size([15]))
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.features = check_positive_int(features, "features")

    def extra_repr(self) -> str:
        return f"features={self.features}"

    def settings(self) -> dict[str, object]:
        return {"features": self.features}

    def forward(
        self, inputs: Tensor, context: Tensor | None = None, num_samples: int = 1
    ) -> tuple[AugmentedState, Tensor]:
        """``(batch, *shape)`` -> state with ``eps`` ``(batch * K, d)``; ``(batch * K,)``."""
        check_inputs(inputs)
        check_positive_int(num_samples, "num_samples")
        eps = self.draw(inputs, num_samples)
        return AugmentedState(inputs, eps), standard_normal_nll(eps)

    def draw(self, inputs: Tensor, num_samples: int) -> Tensor:
        """``eps`` ``(batch * K, d)`` for ``inputs`` ``(batch, ...)``, unchecked."""
        return torch.randn(
            inputs.shape[0] * num_samples, self.features, dtype=inputs.dtype, device=inputs.device
        )

    def inverse(
        self, inputs: AugmentedState, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Drop ``eps``: ``(x, eps) -> x``; the second value is NaN (no density here)."""
        if not isinstance(inputs, AugmentedState):
            raise TypeError(
                f"inputs must be an AugmentedState (x, eps), got {type(inputs).__name__}"
            )
        return inputs.data, _nan(inputs.data.shape[0], inputs.data)


class _Dequantization(SavedSettings, StochasticTransform):
    """Shared checks, the clamp below ``x + 1`` and the generative ``floor``."""

    def __init__(self, levels: int | None, validate: bool) -> None:
        super().__init__()
        if levels is not None:
            check_positive_int(levels, "levels", minimum=2)
        self.levels = levels
        self.validate = bool(validate)

    def extra_repr(self) -> str:
        return f"levels={self.levels}"

    def settings(self) -> dict[str, object]:
        return {"levels": self.levels}

    def _check(self, inputs: Tensor, num_samples: int) -> None:
        check_inputs(inputs)
        check_positive_int(num_samples, "num_samples")
        # Below 1 / eps the representable values are less than 1 apart, so x + u keeps
        # some of its noise; above it, x + u rounds back to an integer.
        finest = 1 / torch.finfo(inputs.dtype).eps
        if self.levels is not None and self.levels > finest:
            raise ValueError(
                f"levels={self.levels} is too many for {inputs.dtype} inputs: above "
                f"{int(finest)} the dequantization noise is rounded away; use float64 inputs"
            )
        if not self.validate or inputs.numel() == 0 or torch.compiler.is_compiling():
            return
        # floor(inf) == inf, so +inf passes the integer test: refuse it explicitly.
        bad = (inputs != inputs.floor()) | (inputs < 0) | inputs.isinf()
        if self.levels is not None:
            bad = bad | (inputs > self.levels - 1)
        if bool(bad.any()):
            top = "" if self.levels is None else f" up to {self.levels - 1}"
            raise ValueError(
                f"inputs of {type(self).__name__} must be integer levels from 0{top}, got "
                f"values such as {inputs[bad][:3].tolist()} (pass validate=False to skip "
                "this check)"
            )

    @staticmethod
    def _add(inputs: Tensor, noise: Tensor) -> Tensor:
        """``x + u`` kept inside ``(x, x + 1)`` where the dtype allows.

        Below ``x + 1``: float32 rounds ``255 + 0.99999997`` up to 256. Above ``x``: a
        zero ``u`` (``rand`` can return 0; a sigmoid underflows to 0 below about -100
        in float32) becomes the dtype's smallest positive normal number, so that
        ``x + u`` is never exactly 0 and a logit of it stays finite.
        """
        noise = noise.clamp_min(torch.finfo(noise.dtype).tiny)
        top = torch.nextafter(inputs + 1, inputs)  # the largest value below x + 1
        return torch.minimum(inputs + noise, top)

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``floor(inputs)`` clamped to ``[0, levels - 1]``; the second value is NaN.

        A flow's samples can land just outside ``[0, levels)`` (a logit squeezed by
        ``alpha`` maps the real line a fraction of a level past each end); they are
        given the nearest level. There is no density in this direction.
        """
        check_inputs(inputs)
        top = None if self.levels is None else self.levels - 1
        return inputs.floor().clamp(0, top), _nan(inputs.shape[0], inputs)


class UniformDequantization(_Dequantization):
    """``x -> x + u``, ``u ~ U[0, 1)^D``: uniform dequantization as a layer.

    Forward (data -> noise) and its contribution::

        u ~ U[0, 1)^D                        # K draws per row with num_samples=K
        outputs = x + u                      # kept below x + 1 in floating point
        log_weight = log P(x | x + u) - log q(u | x) = 0 - 0

    so a stack ``[UniformDequantization(), flow]`` gives ``E_u[log p(x + u)] <= log P(x)``
    (Theis et al., 2016) as its ELBO and tighter IWAE bounds with ``K`` draws. A zero
    ``u`` is replaced by the dtype's smallest positive normal number, so that ``x + u``
    is never exactly 0 (a logit of it stays finite). The inverse is ``floor``, clamped
    to the levels.

    Args:
        levels: the number of levels of the data (e.g. 256), or ``None``; with
            ``validate`` inputs must be integers in ``[0, levels - 1]``.
        validate: check that inputs are integer levels (reads tensor values: one
            device synchronisation per call), ``ValueError`` naming them otherwise.

    Example:
        >>> import torch
        >>> y, log_weight = UniformDequantization(256)(torch.tensor([[0.0, 255.0]]))
        >>> bool(((y >= 0) & (y < 256)).all()), log_weight.tolist()
        (True, [0.0])
    """

    def __init__(self, levels: int | None = None, validate: bool = True) -> None:
        super().__init__(levels, validate)

    def forward(
        self, inputs: Tensor, context: Tensor | None = None, num_samples: int = 1
    ) -> tuple[Tensor, Tensor]:
        """``inputs`` ``(batch, *shape)`` -> ``(batch * K, *shape)``, zeros ``(batch * K,)``."""
        self._check(inputs, num_samples)
        inputs = repeat_rows(inputs, inputs.shape[0] * num_samples)
        return self._add(inputs, torch.rand_like(inputs)), inputs.new_zeros(inputs.shape[0])


def _default_conditioner(shape: tuple[int, ...], hidden_features: int, depth: int) -> nn.Module:
    if len(shape) == 1:
        return MLP(shape[0], 2 * shape[0], hidden_features, depth, zero_init=True)
    if len(shape) == 3:
        return ResidualConvNet(shape[0], 2 * shape[0], hidden_features, depth, zero_init=True)
    raise ValueError(
        f"net is required for data of shape {shape} (the default conditioners take "
        "vectors (D,) or images (C, H, W))"
    )


class VariationalDequantization(_Dequantization):
    """``x -> x + u`` with a learned ``q(u | x)``: the seed's conditional affine map, squashed.

    Forward (data -> noise) and its contribution::

        eps ~ N(0, I)                                  # K draws per row
        a = mu(x) + sigma(x) * eps                     # ConditionalAffine given x
        u = sigmoid(a)                                 # in (0, 1)^D
        log q(u | x) = log N(eps) - sum log sigma(x) - sum log sigmoid'(a)
        log_weight = -log q(u | x)

    ``mu`` and ``sigma`` are computed once per ``x`` for its ``K`` draws. Trained with the
    flow above it, ``q`` moves ``u`` to where the flow's density is high, which
    tightens ``E_q[log p(x + u) - log q(u | x)] <= log P(x)`` (Flow++). The inverse is
    ``floor``, clamped to the levels.

    Args:
        shape: the event shape of ``x`` (an int ``D`` or ``(C, H, W)``).
        levels: the number of levels of the data (e.g. 256). The conditioner sees
            ``x / levels - 0.5``, centred and of unit range.
        net: the conditioner, mapping ``(batch, *shape)`` to ``(batch, 2C, *rest)``
            (``mu``, then the unconstrained ``log sigma``); default an MLP (vectors)
            or a [`ResidualConvNet`][flowjoint.ResidualConvNet] (images), zero-initialised
            (then ``u = sigmoid(eps)``).
        hidden_features: width (MLP) or channels (conv net) of the default conditioner.
        num_hidden_layers: hidden layers (MLP) or residual blocks (conv net) of the
            default conditioner.
        log_scale_bound: soft bound on ``log sigma`` ([`soft_clamp`][flowjoint.soft_clamp]).
        validate: check that inputs are integer levels (reads tensor values).
    """

    def __init__(
        self,
        shape: int | Sequence[int],
        levels: int,
        net: nn.Module | None = None,
        hidden_features: int = 64,
        num_hidden_layers: int = 2,
        log_scale_bound: float | None = 3.0,
        validate: bool = True,
    ) -> None:
        check_positive_int(levels, "levels", minimum=2)
        super().__init__(levels, validate)
        self.event_shape = check_event_shape(shape, "shape")
        if net is None:
            net = _default_conditioner(self.event_shape, hidden_features, num_hidden_layers)
        self.affine = ConditionalAffine(
            self.event_shape,
            self.event_shape[0],
            net=net,
            log_scale_bound=log_scale_bound,
        )

    def extra_repr(self) -> str:
        return f"shape={self.event_shape}, levels={self.levels}"

    def draw(self, inputs: Tensor, num_samples: int) -> tuple[Tensor, Tensor]:
        """``u`` ``(batch * K, *shape)`` and ``log q(u | x)`` ``(batch * K,)``, unchecked."""
        eps = torch.randn(
            inputs.shape[0] * num_samples,
            *inputs.shape[1:],
            dtype=inputs.dtype,
            device=inputs.device,
        )
        context = inputs / self.levels - 0.5
        a, log_sigma = self.affine.run(eps, context)  # (batch * K, *shape), (batch * K,)
        # log sigmoid'(a) = log s + log(1 - s) = -softplus(-a) - softplus(a)
        log_squash = -sum_event(F.softplus(-a) + F.softplus(a))
        log_q = standard_normal_log_prob(eps) - log_sigma - log_squash
        return torch.sigmoid(a), log_q

    def forward(
        self, inputs: Tensor, context: Tensor | None = None, num_samples: int = 1
    ) -> tuple[Tensor, Tensor]:
        """``(batch, *shape)`` -> ``(batch * K, *shape)``, ``-log q`` ``(batch * K,)``."""
        self._check(inputs, num_samples)
        check_inputs(inputs, self.event_shape)
        noise, log_q = self.draw(inputs, num_samples)
        inputs = repeat_rows(inputs, noise.shape[0])
        return self._add(inputs, noise), -log_q
