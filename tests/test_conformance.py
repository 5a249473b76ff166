"""The conformance harness over every public layer, randomised, float64."""

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


# name -> (factory(features, context_features), supports context)
LAYERS = {
    "conditional_affine": lambda d, c: fj.ConditionalAffine(d, max(c, 2), hidden_features=16),
    "affine_halves": lambda d, c: fj.AffineCoupling(halves(d), 16, context_features=c),
    "affine_halves_reversed": lambda d, c: fj.AffineCoupling(~halves(d), 16, context_features=c),
    "affine_interleaved": lambda d, c: fj.AffineCoupling(interleaved(d), 16, context_features=c),
    "affine_unbounded": lambda d, c: fj.AffineCoupling(
        interleaved(d), 16, context_features=c, log_scale_bound=None
    ),
    "additive_halves": lambda d, c: fj.AdditiveCoupling(halves(d), 16, context_features=c),
    "additive_interleaved": lambda d, c: fj.AdditiveCoupling(
        interleaved(d), 16, 1, context_features=c
    ),
    "permutation": lambda d, c: fj.Permutation(torch.arange(d).roll(1)),
    "random_permutation": lambda d, c: fj.RandomPermutation(d, seed=3),
    "reverse_permutation": lambda d, c: fj.ReversePermutation(d),
    "actnorm": lambda d, c: fj.ActNorm(d),
    "batchnorm": lambda d, c: fj.BatchNorm(d),
    "compose": lambda d, c: fj.Compose(
        [
            fj.ActNorm(d),
            fj.AffineCoupling(halves(d), 16, context_features=c),
            fj.RandomPermutation(d),
            fj.AdditiveCoupling(interleaved(d), 16, context_features=c),
            fj.BatchNorm(d),
        ]
    ),
    "compose_with_nflows": lambda d, c: fj.Compose(
        [
            LULinear(d),
            fj.AffineCoupling(interleaved(d), 16, context_features=c),
            NflowsReverse(d),
            spline(d, c),
        ]
    ),
    "realnvp": lambda d, c: fj.realnvp(d, 4, 16, context_features=c).transform,
    "nice": lambda d, c: fj.nice(d, 4, 16, context_features=c).transform,
}


@pytest.mark.parametrize("context_features", [0, 3], ids=["no_context", "context"])
@pytest.mark.parametrize("features,batch_size", [(2, 1), (5, 4), (12, 9)])
@pytest.mark.parametrize("name", list(LAYERS))
def test_every_layer_conforms(name, features, batch_size, context_features):
    layer = LAYERS[name](features, context_features)
    if name == "conditional_affine":
        context_features = max(context_features, 2)
    report = check_transform(
        layer, features, context_features, batch_size, atol=1e-9, randomize=0.3
    )
    assert report.logabsdet_error < 1e-9
