"""flowjoint and nflows compose in either order; densities checked by dense Jacobian."""

from __future__ import annotations

import math

import pytest
import torch
from nflows.distributions import StandardNormal as NflowsStandardNormal
from nflows.flows import Flow as NflowsFlow
from nflows.nn.nets import ResidualNet
from nflows.transforms import (
    CompositeTransform,
    LULinear,
    PiecewiseRationalQuadraticCouplingTransform,
    ReversePermutation,
)

import flowjoint as fj
from flowjoint.testing import randomize_parameters

pytestmark = pytest.mark.usefixtures("float64")

D = 4


def change_of_variables(transform, x, context=None):
    z, _ = transform(x, context)
    _, logdet = torch.linalg.slogdet(fj.jacobian(transform, x, context))
    return -0.5 * z.square().sum(1) - 0.5 * D * math.log(2 * math.pi) + logdet


def nflows_spline():
    return PiecewiseRationalQuadraticCouplingTransform(
        mask=torch.tensor([1, 0, 1, 0]),
        transform_net_create_fn=lambda i, o: ResidualNet(i, o, 16, context_features=2),
        tails="linear",
        tail_bound=4.0,
    )


def mixed_layers():
    return [
        fj.AffineCoupling(torch.tensor([False, False, True, True]), 16, context_features=2),
        LULinear(D),
        nflows_spline(),
        ReversePermutation(D),
        fj.AdditiveCoupling(torch.tensor([True, False, True, False]), 16),
    ]


def test_flowjoint_flow_holding_nflows_layers():
    flow = fj.Flow(fj.Compose(mixed_layers()), fj.StandardNormal(D))
    randomize_parameters(flow, 0.3)
    x, c = torch.randn(5, D), torch.randn(5, 2)
    torch.testing.assert_close(flow.log_prob(x, c), change_of_variables(flow.transform, x, c))
    samples = flow.sample(3, torch.randn(2, 2))
    assert samples.shape == (2, 3, D)


def test_nflows_flow_holding_flowjoint_layers():
    transform = CompositeTransform(mixed_layers())
    flow = NflowsFlow(transform, NflowsStandardNormal([D]))
    randomize_parameters(flow, 0.3)
    x, c = torch.randn(5, D), torch.randn(5, 2)
    torch.testing.assert_close(flow.log_prob(x, c).double(), change_of_variables(transform, x, c))


def test_flowjoint_flow_as_nflows_base():
    inner = randomize_parameters(fj.realnvp(D, 2, 8))
    outer = NflowsFlow(randomize_parameters(LULinear(D)), inner)
    x = torch.randn(3, D)
    z, logabsdet = outer._transform(x)
    torch.testing.assert_close(outer.log_prob(x), inner.log_prob(z) + logabsdet)
