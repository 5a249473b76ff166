"""flowjoint: normalizing flows in which the VAE is a flow.

One contract (``forward(inputs, context) -> (outputs, logabsdet)``, data towards
noise) computes the likelihood of NICE, Real NVP and the VAE alike; stochastic
layers (augmentation, dequantization) return their likelihood contribution in the
same place, so every model is one stack on one base density.
"""

from flowjoint.augmented import (
    AugmentedFlow,
    DecoderCoupling,
    EncoderCoupling,
    JointNormal,
    LatentTransform,
    decoder_coupling,
    encoder_coupling,
)
from flowjoint.builders import alternating_masks, coupling_flow, nice, realnvp
from flowjoint.coupling import (
    AdditiveCoupling,
    AffineCoupling,
    Coupling,
    SplineCoupling,
    channel_mask,
    checkerboard_mask,
)
from flowjoint.decoders import BernoulliDecoder, GaussianDecoder, JointBase
from flowjoint.distributions import StandardNormal
from flowjoint.elementwise import (
    AdditiveMap,
    AffineMap,
    ConditionalAffine,
    ConditionalElementwise,
    ElementwiseMap,
    SplineMap,
    soft_clamp,
)
from flowjoint.flows import Flow
from flowjoint.jacobian import (
    block_structure,
    check_logabsdet,
    jacobian,
    plot_jacobian_patterns,
)
from flowjoint.linear import InvertibleConv1x1
from flowjoint.multiscale import Multiscale, multiscale_realnvp
from flowjoint.nets import MLP, ConvDecoder, ConvEncoder, ResidualConvNet
from flowjoint.normalization import ActNorm, BatchNorm
from flowjoint.permutations import Permutation, RandomPermutation, ReversePermutation
from flowjoint.preprocess import Logit, Scale, pixel_preprocessing
from flowjoint.reshape import Squeeze
from flowjoint.stochastic import (
    Augment,
    AugmentedState,
    UniformDequantization,
    VariationalDequantization,
)
from flowjoint.transforms import Compose, StochasticTransform, Transform
from flowjoint.vae import JointVAE

__version__ = "0.2.0"

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
