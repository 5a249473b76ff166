"""Building the compared models: each one a [`Flow`][flowjoint.Flow] stack.

On pixel data a model's stack starts with the preprocessing layers
([`pixel_preprocessing`][flowjoint.pixel_preprocessing]: dequantization, scaling to
``[0, 1)``, logit),
so that every model is a density (or a bound) of the data on its original scale and
is trained by `fit` on its ``elbo``; on continuous data the
stack has no preprocessing. The builders are registered in
`MODELS`; `build_model` calls one.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass

from flowjoint.augmented import AugmentedFlow
from flowjoint.builders import coupling_flow, nice, realnvp
from flowjoint.compare.config import ModelConfig, ModelSpec, model_spec
from flowjoint.flows import Flow
from flowjoint.image_flows import multiscale_realnvp
from flowjoint.preprocess import pixel_preprocessing
from flowjoint.transforms import Transform
from flowjoint.vae import JointVAE

__all__ = [
    "DataSpec",
    "build_augmented",
    "build_convaugmented",
    "build_convvae",
    "build_model",
    "build_msrealnvp",
    "build_spline",
    "build_nice",
    "build_realnvp",
    "build_vae",
    "preprocessing",
]


@dataclass(frozen=True)
class DataSpec:
    """What a builder needs to know of the data.

    Attributes:
        features: ``D``, entries per example.
        image_shape: ``(C, H, W)`` if the examples are images, else None.
        levels: the number of integer levels of pixel data, or None for continuous data.
    """

    features: int
    image_shape: tuple[int, int, int] | None = None
    levels: int | None = None

    def __post_init__(self) -> None:
        if self.image_shape is not None and math.prod(self.image_shape) != self.features:
            raise ValueError(
                f"image_shape {self.image_shape} does not hold features={self.features} entries"
            )

    def event_shape(self, images: bool) -> tuple[int, ...]:
        """``(C, H, W)`` for a model that takes images, ``(D,)`` otherwise."""
        if images:
            if self.image_shape is None:
                raise ValueError("this model takes images, but the data has no image shape")
            return self.image_shape
        return (self.features,)


def preprocessing(data: DataSpec, config: ModelConfig, images: bool = False) -> list[Transform]:
    """The first layers of a model of ``data``: none for continuous data.

    For pixel data: ``config.dequantization`` (uniform or variational), ``Scale(1 /
    levels)`` and ``Logit(config.alpha)``, on vectors or (``images``) on images.
    """
    if data.levels is None:
        return []
    shape = data.event_shape(images)
    return pixel_preprocessing(
        data.levels, config.alpha, dequantization=config.dequantization, shape=shape
    )


def build_nice(data: DataSpec, config: ModelConfig) -> Flow:
    """NICE on vectors: ``config.num_layers`` additive couplings, then an ActNorm."""
    return nice(
        data.features,
        config.num_layers,
        config.hidden_features,
        config.num_hidden_layers,
        mask_pattern=config.mask_pattern,
        preprocessing=preprocessing(data, config),
    )


def build_realnvp(data: DataSpec, config: ModelConfig) -> Flow:
    """Real NVP on vectors: affine couplings, each after an ActNorm if ``config.actnorm``."""
    return realnvp(
        data.features,
        config.num_layers,
        config.hidden_features,
        config.num_hidden_layers,
        mask_pattern=config.mask_pattern,
        actnorm=config.actnorm,
        preprocessing=preprocessing(data, config),
    )


def build_vae(data: DataSpec, config: ModelConfig) -> Flow:
    """A VAE on vectors with a Gaussian decoder (the data is continuous after preprocessing)."""
    return JointVAE(
        data.features,
        config.latent_features,
        hidden_features=config.hidden_features,
        likelihood="gaussian",
        num_hidden_layers=config.num_hidden_layers,
        preprocessing=preprocessing(data, config),
    )


def build_augmented(data: DataSpec, config: ModelConfig) -> Flow:
    """An augmented flow on vectors: ``config.num_layers`` encoder/decoder coupling pairs."""
    return AugmentedFlow(
        data.features,
        config.latent_features,
        num_steps=config.num_layers,
        hidden_features=config.hidden_features,
        num_hidden_layers=config.num_hidden_layers,
        preprocessing=preprocessing(data, config),
    )


def build_spline(data: DataSpec, config: ModelConfig) -> Flow:
    """Spline couplings on vectors (rational-quadratic, ``config.num_bins`` bins)."""
    return coupling_flow(
        data.features,
        config.num_layers,
        config.hidden_features,
        config.num_hidden_layers,
        mask_pattern=config.mask_pattern,
        coupling="spline",
        actnorm=config.actnorm,
        preprocessing=preprocessing(data, config),
        num_bins=config.num_bins,
        tail_bound=config.tail_bound,
    )


def build_msrealnvp(data: DataSpec, config: ModelConfig) -> Flow:
    """Real NVP's multi-scale image flow ([`multiscale_realnvp`][flowjoint.multiscale_realnvp])."""
    if data.levels is None:
        raise ValueError("the multi-scale Real NVP models pixel levels; the data are continuous")
    return multiscale_realnvp(
        data.event_shape(images=True),
        num_scales=config.num_scales,
        blocks_per_scale=config.num_layers,
        hidden_channels=config.hidden_features,
        num_residual_blocks=config.num_hidden_layers,
        levels=data.levels,
        alpha=config.alpha,
        dequantization=config.dequantization,
        actnorm=config.actnorm,
        conv1x1=config.conv1x1,
    )


def build_convvae(data: DataSpec, config: ModelConfig) -> Flow:
    """A VAE on images: convolutional encoder and Gaussian decoder, vector latent."""
    return JointVAE(
        data.event_shape(images=True),
        config.latent_features,
        hidden_features=config.hidden_features,
        likelihood="gaussian",
        preprocessing=preprocessing(data, config, images=True),
    )


def build_convaugmented(data: DataSpec, config: ModelConfig) -> Flow:
    """An augmented flow on images: convolutional encoder/decoder coupling pairs."""
    return AugmentedFlow(
        data.event_shape(images=True),
        config.latent_features,
        num_steps=config.num_layers,
        hidden_features=config.hidden_features,
        preprocessing=preprocessing(data, config, images=True),
    )


def builder(spec: ModelSpec) -> Callable[[DataSpec, ModelConfig], Flow]:
    """The function named by ``spec.builder`` (``"module:function"``)."""
    module_name, _, function_name = spec.builder.partition(":")
    function = getattr(importlib.import_module(module_name), function_name, None)
    if not callable(function):
        raise ValueError(f"model {spec.name!r}: builder {spec.builder!r} does not name a function")
    return function


def build_model(model: str, data: DataSpec, config: ModelConfig) -> Flow:
    """A fresh ``model`` (a name of `MODELS`) for ``data``.

    Raises:
        ValueError: an unknown model, or a model that takes images on data without an
            image shape.

    Example:
        >>> from flowjoint.compare.config import default_config
        >>> flow = build_model("realnvp", DataSpec(64, levels=17),
        ...                    default_config("digits", "realnvp", quick=True))
        >>> type(flow.transform[0]).__name__
        'UniformDequantization'
    """
    spec = model_spec(model)
    if spec.images and data.image_shape is None:
        raise ValueError(f"model {model!r} takes images, but the data are vectors")
    flow = builder(spec)(data, config)
    if not isinstance(flow, Flow):
        raise TypeError(
            f"model {model!r}: its builder must return a flowjoint Flow, got {type(flow).__name__}"
        )
    return flow
