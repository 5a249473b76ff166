"""Preprocessing as layers of the stack: fixed bijections whose log-dets are counted.

A model of pixel data is one stack, e.g. ``[UniformDequantization(levels),
Scale(divisor=levels), Logit(alpha), ...flow layers]``: dequantization gives
``x + u`` on the data's original scale ``[0, levels)^D``, [`Scale`][flowjoint.Scale] maps it to
``[0, 1)`` and [`Logit`][flowjoint.Logit] to the real line. Because the preprocessing layers are
transforms, their log-dets enter the same sum as the flow's, and every number a
stack reports is a density (or bound) of the data on its original scale: a flow and
a VAE are compared on the same density.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from flowjoint.checks import check_inputs, check_number, check_positive_int, sum_event
from flowjoint.stochastic import UniformDequantization, VariationalDequantization
from flowjoint.transforms import SavedSettings, Transform

__all__ = ["Logit", "Scale", "pixel_preprocessing"]


class Scale(SavedSettings, Transform):
    """Multiply by a fixed positive constant, or divide by one: ``y = x * factor``.

    Forward and log-det::

        y = factor * x                       # or x / divisor
        logabsdet = size * log(factor)       # size: entries per example

    Dividing by the number of levels maps ``[0, levels)`` into ``[0, 1)`` exactly: the
    largest value below ``levels`` divided by ``levels`` stays below 1, whereas
    multiplying it by the rounded ``1 / levels`` reaches 1.0 for some levels (255 in
    float32), where a logit without squeeze is infinite.

    Args:
        factor: the positive constant to multiply by.
        divisor: the positive constant to divide by (instead of ``factor``).

    Example:
        >>> y, logabsdet = Scale(divisor=17)(torch.full((2, 64), 17.0))
        >>> y[0, 0].item(), round(logabsdet[0].item(), 4)
        (1.0, -181.3257)
    """

    def __init__(self, factor: float | None = None, *, divisor: float | None = None) -> None:
        super().__init__()
        if (factor is None) == (divisor is None):
            raise ValueError(
                f"give exactly one of factor and divisor, got factor={factor!r}, "
                f"divisor={divisor!r}"
            )
        if divisor is None:
            self.factor = check_number(factor, "factor", low=0.0, low_open=True)
            self.divisor = None
        else:
            self.divisor = check_number(divisor, "divisor", low=0.0, low_open=True)
            self.factor = 1.0 / self.divisor
        self.log_factor = math.log(self.factor) if self.divisor is None else -math.log(self.divisor)

    def extra_repr(self) -> str:
        if self.divisor is not None:
            return f"divisor={self.divisor}"
        return f"factor={self.factor}"

    def settings(self) -> dict[str, object]:
        return {"factor": self.factor, "divisor": self.divisor}

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_inputs(inputs)
        size = math.prod(inputs.shape[1:])
        logabsdet = inputs.new_full((inputs.shape[0],), size * self.log_factor)
        if self.divisor is not None:
            return inputs / self.divisor, logabsdet
        return inputs * self.factor, logabsdet

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_inputs(inputs)
        size = math.prod(inputs.shape[1:])
        logabsdet = inputs.new_full((inputs.shape[0],), -size * self.log_factor)
        if self.divisor is not None:
            return inputs * self.divisor, logabsdet
        return inputs / self.factor, logabsdet


class Logit(SavedSettings, Transform):
    """Logit of a squeezed unit interval, as in Real NVP's preprocessing.

    Forward (``[0, 1] -> R``) and log-det::

        s = alpha + (1 - 2 alpha) * x
        y = log(s) - log(1 - s)
        logabsdet = sum(log(1 - 2 alpha) - log(s) - log(1 - s))

    The squeeze by ``alpha`` keeps the logit finite at 0 and 1 (it maps ``[0, 1]`` to
    ``[logit(alpha), logit(1 - alpha)]``). Real NVP used 0.05 on CIFAR-10 and 1e-6 on
    MNIST. The default 0.01 was the best of 0.05, 0.01, 0.001 and 0.0001 for Real NVP
    on digits (best validation bits/dim within 40-60 epochs: 2.256, 2.164, 2.202,
    2.236; most digit pixels sit at the extreme levels, so the squeeze shapes the
    tails the model must fit).

    Args:
        alpha: squeeze, ``0 <= alpha < 0.5`` (0 is the plain logit, infinite at the ends).
        validate: raise ``ValueError`` if an input lies outside the map's domain
            ``[-alpha, 1 - alpha] / (1 - 2 alpha)`` (which contains ``[0, 1]``; a model's
            samples mapped back by the inverse can lie anywhere in it). Reads tensor
            values (one device synchronisation per call).

    References:
        Density estimation using Real NVP. Dinh, Sohl-Dickstein, Bengio, 2016.
        arXiv:1605.08803 (Section 4.1).

    Example:
        >>> y, _ = Logit(0.05)(torch.tensor([[0.0, 0.5, 1.0]]))
        >>> [round(v, 4) for v in y[0].tolist()]
        [-2.9444, 0.0, 2.9444]
    """

    def __init__(self, alpha: float = 0.01, validate: bool = True) -> None:
        super().__init__()
        self.alpha = check_number(alpha, "alpha", low=0.0, high=0.5, high_open=True)
        self.validate = bool(validate)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"

    def settings(self) -> dict[str, object]:
        return {"alpha": self.alpha}

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_inputs(inputs)
        s = self.alpha + (1 - 2 * self.alpha) * inputs
        if (
            self.validate
            and s.numel()
            and not torch.compiler.is_compiling()
            and not bool(((s >= 0) & (s <= 1)).all())  # False for NaN too
        ):
            raise ValueError(
                f"inputs of Logit(alpha={self.alpha}) must lie in [0, 1] (at most "
                f"[-alpha, 1 - alpha] / (1 - 2 alpha)), got values in "
                f"[{inputs.min().item():.4g}, {inputs.max().item():.4g}]"
            )
        log_s, log_1ms = torch.log(s), torch.log1p(-s)
        logabsdet = sum_event(math.log1p(-2 * self.alpha) - log_s - log_1ms)
        return log_s - log_1ms, logabsdet

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_inputs(inputs)
        s = torch.sigmoid(inputs)
        # log s + log(1 - s) = -softplus(-y) - softplus(y), stable for large |y|.
        log_s_1ms = -nn.functional.softplus(-inputs) - nn.functional.softplus(inputs)
        logabsdet = sum_event(log_s_1ms - math.log1p(-2 * self.alpha))
        return (s - self.alpha) / (1 - 2 * self.alpha), logabsdet


def pixel_preprocessing(
    levels: int,
    alpha: float | None = 0.01,
    dequantization: str = "uniform",
    shape: int | Sequence[int] | None = None,
    hidden_features: int = 64,
    num_hidden_layers: int = 2,
) -> list[Transform]:
    """The layers that turn pixel levels into a continuous input: dequantize, scale, logit.

    ``[UniformDequantization(levels) | VariationalDequantization(shape, levels),
    Scale(divisor=levels), Logit(alpha)]`` (no logit if ``alpha`` is None). Put them at the
    start of a stack; their contributions are counted like any layer's.

    Args:
        levels: the number of levels (17 for digits, 256 for MNIST).
        alpha: the logit squeeze (see [`Logit`][flowjoint.Logit]), or ``None`` for no logit.
        dequantization: ``"uniform"``, ``"variational"`` or ``"none"`` (the data is
            already continuous on ``[0, levels)``).
        shape: the event shape, required for variational dequantization.
        num_hidden_layers: hidden layers (vectors) or residual blocks (images) of the
            variational dequantization's default conditioner.
        hidden_features: width (vectors) or channels (images) of the variational
            dequantization's default conditioner.
    """
    check_positive_int(levels, "levels", minimum=2)
    if dequantization == "uniform":
        layers: list[Transform] = [UniformDequantization(levels)]
    elif dequantization == "variational":
        if shape is None:
            raise ValueError("shape is required for dequantization='variational'")
        layers = [
            VariationalDequantization(
                shape,
                levels,
                hidden_features=hidden_features,
                num_hidden_layers=num_hidden_layers,
            )
        ]
    elif dequantization == "none":
        layers = []
    else:
        raise ValueError(
            f"dequantization must be 'uniform', 'variational' or 'none', got {dequantization!r}"
        )
    layers.append(Scale(divisor=levels))
    if alpha is not None:
        layers.append(Logit(alpha))
    return layers
