"""Builders of the usual coupling flows: NICE, Real NVP and spline couplings on vectors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from flowjoint.coupling import AdditiveCoupling, AffineCoupling, SplineCoupling
from flowjoint.distributions import StandardNormal
from flowjoint.flows import Flow
from flowjoint.masks import alternating_masks
from flowjoint.normalization import ActNorm
from flowjoint.transforms import Compose, Transform

__all__ = ["coupling_flow", "nice", "realnvp"]

COUPLINGS = {"additive": AdditiveCoupling, "affine": AffineCoupling, "spline": SplineCoupling}


def coupling_flow(
    features: int,
    num_layers: int = 8,
    hidden_features: int = 128,
    num_hidden_layers: int = 2,
    context_features: int = 0,
    mask_pattern: Literal["halves", "checkerboard"] = "halves",
    coupling: Literal["additive", "affine", "spline"] = "affine",
    actnorm: bool = False,
    preprocessing: Sequence[Transform] = (),
    **map_options: object,
) -> Flow:
    """Couplings on alternating masks (each after an optional ActNorm) on ``StandardNormal``.

    Args:
        features: ``D``.
        num_layers: coupling layers.
        hidden_features: each conditioner MLP's width.
        num_hidden_layers: each conditioner MLP's depth.
        context_features: width of an external context.
        mask_pattern: ``"halves"`` or ``"checkerboard"``
            ([`alternating_masks`][flowjoint.alternating_masks]).
        coupling: the element-wise map: ``"additive"`` (NICE), ``"affine"`` (Real NVP)
            or ``"spline"`` (rational-quadratic).
        actnorm: an [`ActNorm`][flowjoint.ActNorm] before each coupling.
        preprocessing: layers put first in the stack (dequantization, scaling,
            logit; see [`pixel_preprocessing`][flowjoint.pixel_preprocessing]).
        **map_options: passed to the coupling (``log_scale_bound`` for affine,
            ``num_bins`` and ``tail_bound`` for spline).
    """
    if coupling not in COUPLINGS:
        raise ValueError(f"coupling must be one of {', '.join(COUPLINGS)}, got {coupling!r}")
    layers: list[Transform] = list(preprocessing)
    for mask in alternating_masks(features, num_layers, mask_pattern):
        if actnorm:
            layers.append(ActNorm(features))
        layers.append(
            COUPLINGS[coupling](
                mask,
                hidden_features,
                num_hidden_layers,
                context_features=context_features,
                **map_options,
            )
        )
    return Flow(Compose(layers), StandardNormal(features))


def nice(
    features: int,
    num_layers: int = 4,
    hidden_features: int = 256,
    num_hidden_layers: int = 3,
    context_features: int = 0,
    mask_pattern: Literal["halves", "checkerboard"] = "halves",
    preprocessing: Sequence[Transform] = (),
) -> Flow:
    """NICE: additive couplings on alternating masks, then a diagonal scaling.

    The diagonal scaling is an [`ActNorm`][flowjoint.ActNorm] (initialised from the first batch),
    NICE's only volume-changing layer.

    References:
        NICE: Non-linear Independent Components Estimation. Dinh, Krueger, Bengio,
        2014. arXiv:1410.8516.
    """
    flow = coupling_flow(
        features,
        num_layers,
        hidden_features,
        num_hidden_layers,
        context_features,
        mask_pattern,
        coupling="additive",
        preprocessing=preprocessing,
    )
    return Flow(Compose([*flow.transform, ActNorm(features)]), flow.base)


def realnvp(
    features: int,
    num_layers: int = 8,
    hidden_features: int = 128,
    num_hidden_layers: int = 2,
    context_features: int = 0,
    mask_pattern: Literal["halves", "checkerboard"] = "halves",
    actnorm: bool = False,
    log_scale_bound: float | None = 3.0,
    preprocessing: Sequence[Transform] = (),
) -> Flow:
    """Real NVP: affine couplings on alternating masks, optionally each after an ActNorm.

    References:
        Density estimation using Real NVP. Dinh, Sohl-Dickstein, Bengio, 2016.
        arXiv:1605.08803.
    """
    return coupling_flow(
        features,
        num_layers,
        hidden_features,
        num_hidden_layers,
        context_features,
        mask_pattern,
        coupling="affine",
        actnorm=actnorm,
        preprocessing=preprocessing,
        log_scale_bound=log_scale_bound,
    )
