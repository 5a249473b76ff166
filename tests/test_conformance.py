"""The conformance harness over every public layer, randomised, float64.

Every layer is also loaded with the state of one built with other arguments (another
mask, another seed): it must then compute exactly like the saved layer or refuse.
"""

from __future__ import annotations

import pytest
import torch
from nflows.nn.nets import ResidualNet
from nflows.transforms import LULinear, PiecewiseRationalQuadraticCouplingTransform
from nflows.transforms import ReversePermutation as NflowsReverse

import flowjoint as fj
from flowjoint.testing import check_transform


def interleaved(features):
    return torch.arange(features) % 3 == 1


def interleaved_other(features):
    """Another mask with as many transformed features as ``interleaved``."""
    return interleaved(features).flip(0)


def halves(features):
    return torch.arange(features) >= features // 2


def spline(features, context_features):
    return PiecewiseRationalQuadraticCouplingTransform(
        mask=(torch.arange(features) % 2).int(),
        transform_net_create_fn=lambda i, o: ResidualNet(
            i, o, 16, context_features=context_features or None
        ),
        tails="linear",
        tail_bound=5.0,
    )


# Relative tolerances from the layers' numerics. Affine, additive and permutation
# arithmetic in float64 loses a few ulps per layer (measured worst 2e-14); 1e-10 leaves
# four orders of margin. A rational-quadratic spline is inverted by solving a quadratic,
# whose root loses precision where the discriminant nearly cancels (up to about
# sqrt(eps) = 1.5e-8 relative in the worst bin; measured 1.6e-10 here).
TOLERANCE = 1e-10
SPLINE_TOLERANCE = 1e-7
SPLINES = {"spline_interleaved", "compose_with_nflows", "checkerboard_spline"}

# name -> factory(features, context_features, other): ``other`` builds the same kind of
# layer with other constructor arguments (mask, seed), for the state_dict check.
LAYERS = {
    "conditional_affine": lambda d, c, o: fj.ConditionalAffine(d, max(c, 2), hidden_features=16),
    "affine_halves": lambda d, c, o: fj.AffineCoupling(
        ~halves(d) if o else halves(d), 16, context_features=c
    ),
    "affine_halves_reversed": lambda d, c, o: fj.AffineCoupling(~halves(d), 16, context_features=c),
    "affine_interleaved": lambda d, c, o: fj.AffineCoupling(
        interleaved_other(d) if o else interleaved(d), 16, context_features=c
    ),
    "affine_unbounded": lambda d, c, o: fj.AffineCoupling(
        interleaved(d), 16, context_features=c, log_scale_bound=None
    ),
    "additive_halves": lambda d, c, o: fj.AdditiveCoupling(halves(d), 16, context_features=c),
    "additive_interleaved": lambda d, c, o: fj.AdditiveCoupling(
        interleaved_other(d) if o else interleaved(d), 16, 1, context_features=c
    ),
    "spline_interleaved": lambda d, c, o: fj.SplineCoupling(
        interleaved_other(d) if o else interleaved(d), 16, context_features=c, num_bins=5
    ),
    "permutation": lambda d, c, o: fj.Permutation(torch.arange(d).roll(2 if o else 1)),
    "random_permutation": lambda d, c, o: fj.RandomPermutation(d, seed=4 if o else 3),
    "reverse_permutation": lambda d, c, o: fj.ReversePermutation(d),
    "actnorm": lambda d, c, o: fj.ActNorm(d),
    "batchnorm": lambda d, c, o: fj.BatchNorm(d),
    "compose": lambda d, c, o: fj.Compose(
        [
            fj.ActNorm(d),
            fj.AffineCoupling(halves(d), 16, context_features=c),
            fj.RandomPermutation(d, seed=1 if o else 0),
            fj.AdditiveCoupling(interleaved(d), 16, context_features=c),
            fj.BatchNorm(d),
        ]
    ),
    "compose_with_nflows": lambda d, c, o: fj.Compose(
        [
            LULinear(d),
            fj.AffineCoupling(interleaved(d), 16, context_features=c),
            NflowsReverse(d),
            spline(d, c),
        ]
    ),
    "realnvp": lambda d, c, o: (
        fj.realnvp(
            d, 4, 16, context_features=c, mask_pattern="checkerboard" if o else "halves"
        ).transform
    ),
    "nice": lambda d, c, o: fj.nice(d, 4, 16, context_features=c).transform,
}


@pytest.mark.parametrize("context_features", [0, 3], ids=["no_context", "context"])
@pytest.mark.parametrize("features,batch_size", [(2, 1), (5, 4), (12, 9)])
@pytest.mark.parametrize("name", list(LAYERS))
def test_every_layer_conforms(name, features, batch_size, context_features):
    layer = LAYERS[name](features, context_features, False)
    other = LAYERS[name](features, context_features, True)
    if name == "conditional_affine":
        context_features = max(context_features, 2)
    tolerance = SPLINE_TOLERANCE if name in SPLINES else TOLERANCE
    report = check_transform(
        layer,
        features,
        context_features,
        batch_size,
        randomize=0.3,
        reload_into=other,
        tolerance=tolerance,
    )
    assert report.logabsdet_error <= tolerance


IMAGE_LAYERS = {
    "checkerboard_affine": lambda o: fj.AffineCoupling(
        fj.checkerboard_mask((2, 4, 4), 1 if o else 0), 8, 1
    ),
    "checkerboard_additive": lambda o: fj.AdditiveCoupling(fj.checkerboard_mask((2, 4, 4)), 8, 1),
    "checkerboard_spline": lambda o: fj.SplineCoupling(
        fj.checkerboard_mask((2, 4, 4)), 8, 1, num_bins=4
    ),
    "channel_affine": lambda o: fj.AffineCoupling(
        fj.channel_mask(2, 1 if o else 0), net=fj.ResidualConvNet(1, 2, 8, 1)
    ),
    "actnorm": lambda o: fj.ActNorm(2),
    "batchnorm": lambda o: fj.BatchNorm(2),
    "random_permutation": lambda o: fj.RandomPermutation(2, seed=2 if o else 1),
    "logit": lambda o: fj.Logit(0.05),
    "scale": lambda o: fj.Scale(0.25),
}


@pytest.mark.parametrize("name", list(IMAGE_LAYERS))
def test_every_layer_conforms_on_images(name):
    """The same checks on (batch, 2, 4, 4) images: dense Jacobian over the flattened event."""
    inputs = torch.rand(3, 2, 4, 4, dtype=torch.float64) if name == "logit" else None
    report = check_transform(
        IMAGE_LAYERS[name](False),
        (2, 4, 4),
        batch_size=3,
        inputs=inputs,
        reload_into=IMAGE_LAYERS[name](True),
        tolerance=SPLINE_TOLERANCE if name in SPLINES else TOLERANCE,
    )
    assert report.logabsdet_error <= TOLERANCE
