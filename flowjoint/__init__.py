"""flowjoint: normalizing flows in which the VAE is a flow.

One log-det contract (``forward(inputs, context) -> (outputs, logabsdet)``, data
towards noise) computes the likelihood of NICE, Real NVP and the VAE alike.
"""

from flowjoint.augmented import AugmentedFlow, decoder_coupling, encoder_coupling
from flowjoint.coupling import AdditiveCoupling, AffineCoupling, Coupling
from flowjoint.distributions import StandardNormal
from flowjoint.flows import Flow, alternating_masks, nice, realnvp
from flowjoint.jacobian import (
    block_structure,
    check_logabsdet,
    jacobian,
    plot_jacobian_patterns,
)
from flowjoint.nets import MLP
from flowjoint.normalization import ActNorm, BatchNorm
from flowjoint.permutations import Permutation, RandomPermutation, ReversePermutation
from flowjoint.transforms import Compose, ConditionalAffine, Transform, soft_clamp
from flowjoint.vae import JointVAE

__version__ = "0.1.0"

__all__ = [
    "ActNorm",
    "AdditiveCoupling",
    "AffineCoupling",
    "AugmentedFlow",
    "BatchNorm",
    "Compose",
    "ConditionalAffine",
    "Coupling",
    "Flow",
    "JointVAE",
    "MLP",
    "Permutation",
    "RandomPermutation",
    "ReversePermutation",
    "StandardNormal",
    "Transform",
    "alternating_masks",
    "block_structure",
    "check_logabsdet",
    "decoder_coupling",
    "encoder_coupling",
    "jacobian",
    "nice",
    "plot_jacobian_patterns",
    "realnvp",
    "soft_clamp",
]
