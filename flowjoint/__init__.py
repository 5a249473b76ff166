"""flowjoint: normalizing flows in which the VAE is a flow.

One contract (``forward(inputs, context) -> (outputs, logabsdet)``, data towards
noise) computes the likelihood of NICE, Real NVP and the VAE alike; stochastic
layers (augmentation, dequantization) return their likelihood contribution in the
same place, so every model is one stack on one base density.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flowjoint.augmented import (
        AugmentedFlow,
        DecoderCoupling,
        EncoderCoupling,
        JointNormal,
        LatentTransform,
        decoder_coupling,
        encoder_coupling,
    )
    from flowjoint.builders import coupling_flow, nice, realnvp
    from flowjoint.clamp import soft_clamp
    from flowjoint.coupling import AdditiveCoupling, AffineCoupling, Coupling, SplineCoupling
    from flowjoint.decoders import BernoulliDecoder, GaussianDecoder, JointBase
    from flowjoint.distributions import StandardNormal
    from flowjoint.elementwise import (
        AdditiveMap,
        AffineMap,
        ConditionalAffine,
        ConditionalElementwise,
        ElementwiseMap,
    )
    from flowjoint.flows import Flow
    from flowjoint.image_flows import multiscale_realnvp
    from flowjoint.jacobians import (
        block_structure,
        check_logabsdet,
        jacobian,
        plot_jacobian_patterns,
    )
    from flowjoint.linear import InvertibleConv1x1
    from flowjoint.masks import alternating_masks, channel_mask, checkerboard_mask
    from flowjoint.multiscale import Multiscale
    from flowjoint.nets import MLP, ConvDecoder, ConvEncoder, ResidualConvNet
    from flowjoint.normalization import ActNorm, BatchNorm
    from flowjoint.permutations import Permutation, RandomPermutation, ReversePermutation
    from flowjoint.preprocess import Logit, Scale, pixel_preprocessing
    from flowjoint.reshape import Squeeze
    from flowjoint.splines import SplineMap
    from flowjoint.stochastic import (
        Augment,
        AugmentedState,
        UniformDequantization,
        VariationalDequantization,
    )
    from flowjoint.transforms import Compose, StochasticTransform, Transform
    from flowjoint.vae import JointVAE

__version__ = "0.2.0"

# The public names are imported from their modules on first use (PEP 562), so that
# ``import flowjoint`` and ``flowjoint --help`` do not load torch; the imports above
# are for type checkers and the API reference.
#: module (under ``flowjoint``) -> the public names it provides.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "augmented": (
        "AugmentedFlow",
        "DecoderCoupling",
        "EncoderCoupling",
        "JointNormal",
        "LatentTransform",
        "decoder_coupling",
        "encoder_coupling",
    ),
    "builders": ("coupling_flow", "nice", "realnvp"),
    "clamp": ("soft_clamp",),
    "coupling": ("AdditiveCoupling", "AffineCoupling", "Coupling", "SplineCoupling"),
    "decoders": ("BernoulliDecoder", "GaussianDecoder", "JointBase"),
    "distributions": ("StandardNormal",),
    "elementwise": (
        "AdditiveMap",
        "AffineMap",
        "ConditionalAffine",
        "ConditionalElementwise",
        "ElementwiseMap",
    ),
    "flows": ("Flow",),
    "jacobians": ("block_structure", "check_logabsdet", "jacobian", "plot_jacobian_patterns"),
    "linear": ("InvertibleConv1x1",),
    "masks": ("alternating_masks", "channel_mask", "checkerboard_mask"),
    "image_flows": ("multiscale_realnvp",),
    "multiscale": ("Multiscale",),
    "nets": ("MLP", "ConvDecoder", "ConvEncoder", "ResidualConvNet"),
    "normalization": ("ActNorm", "BatchNorm"),
    "permutations": ("Permutation", "RandomPermutation", "ReversePermutation"),
    "preprocess": ("Logit", "Scale", "pixel_preprocessing"),
    "reshape": ("Squeeze",),
    "splines": ("SplineMap",),
    "stochastic": (
        "Augment",
        "AugmentedState",
        "UniformDequantization",
        "VariationalDequantization",
    ),
    "transforms": ("Compose", "StochasticTransform", "Transform"),
    "vae": ("JointVAE",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "ActNorm",
    "AdditiveCoupling",
    "AdditiveMap",
    "AffineCoupling",
    "AffineMap",
    "Augment",
    "AugmentedFlow",
    "AugmentedState",
    "BatchNorm",
    "BernoulliDecoder",
    "Compose",
    "ConditionalAffine",
    "ConditionalElementwise",
    "ConvDecoder",
    "ConvEncoder",
    "Coupling",
    "DecoderCoupling",
    "ElementwiseMap",
    "EncoderCoupling",
    "Flow",
    "GaussianDecoder",
    "InvertibleConv1x1",
    "JointBase",
    "JointNormal",
    "JointVAE",
    "LatentTransform",
    "Logit",
    "MLP",
    "Multiscale",
    "Permutation",
    "RandomPermutation",
    "ResidualConvNet",
    "ReversePermutation",
    "Scale",
    "SplineCoupling",
    "Squeeze",
    "SplineMap",
    "StandardNormal",
    "StochasticTransform",
    "Transform",
    "UniformDequantization",
    "VariationalDequantization",
    "alternating_masks",
    "block_structure",
    "channel_mask",
    "check_logabsdet",
    "checkerboard_mask",
    "coupling_flow",
    "decoder_coupling",
    "encoder_coupling",
    "jacobian",
    "multiscale_realnvp",
    "nice",
    "pixel_preprocessing",
    "plot_jacobian_patterns",
    "realnvp",
    "soft_clamp",
]


def __getattr__(name: str) -> object:
    module = _MODULE_OF.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f"flowjoint.{module}"), name)
    elif importlib.util.find_spec(f"flowjoint.{name}") is not None:
        value = importlib.import_module(f"flowjoint.{name}")  # a submodule: flowjoint.vae
    else:
        raise AttributeError(f"module 'flowjoint' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
