"""The rational-quadratic spline map and coupling: dense Jacobian, identity, inverse, float32."""

from __future__ import annotations

import math

import pytest
import torch
from nflows.transforms.splines import unconstrained_rational_quadratic_spline

from flowjoint.coupling import SplineCoupling
from flowjoint.splines import SplineMap
from flowjoint.testing import check_transform, randomize_parameters

SETTINGS = {"K2-B1": (2, 1.0), "K8-B3": (8, 3.0), "K16-B4": (16, 4.0)}


@pytest.mark.parametrize("mask", [[False, True], [True, False]], ids=["second", "first"])
@pytest.mark.parametrize("num_bins, tail_bound", SETTINGS.values(), ids=SETTINGS.keys())
def test_coupling_logabsdet_matches_dense_jacobian(mask, num_bins, tail_bound):
    # check_transform randomises the conditioner, works in float64, and compares
    # logabsdet with slogdet of an autograd Jacobian, both directions.
    layer = SplineCoupling(torch.tensor(mask), 16, num_bins=num_bins, tail_bound=tail_bound)
    report = check_transform(layer, 2, batch_size=16)
    assert report.logabsdet_error < 1e-10


def test_coupling_checks_points_on_both_sides_of_the_tail_bound():
    layer = SplineCoupling(torch.tensor([False, True]), 16, num_bins=8, tail_bound=1.0)
    inputs = torch.tensor([[0.3, -2.5], [-0.7, -0.4], [1.5, 0.2], [0.0, 0.95], [2.0, 3.0]])
    check_transform(layer, inputs=inputs.double())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_parameters_give_the_identity(dtype):
    spline = SplineMap(num_bins=8, tail_bound=3.0)
    x = torch.linspace(-5.0, 5.0, 1001, dtype=dtype)[:, None]  # inside and outside
    params = torch.zeros(1001, spline.num_params, dtype=dtype)
    eps = torch.finfo(dtype).eps
    for direction in (spline.forward, spline.inverse):
        y, logabsdet = direction(x, params)
        torch.testing.assert_close(y, x, rtol=0, atol=4 * eps)
        torch.testing.assert_close(logabsdet, torch.zeros_like(x), rtol=0, atol=4 * eps)


def test_fresh_coupling_is_the_identity():
    layer = SplineCoupling(torch.tensor([False, True]), 16, num_bins=8, tail_bound=3.0)
    x = 2.0 * torch.randn(64, 2)
    y, logabsdet = layer(x)
    torch.testing.assert_close(y, x, rtol=0, atol=1e-6)
    torch.testing.assert_close(logabsdet, torch.zeros(64), rtol=0, atol=1e-6)


def test_identity_outside_the_interval_exactly():
    spline = SplineMap(num_bins=8, tail_bound=2.0)
    x = torch.tensor([[-7.0], [-2.0001], [2.0001], [9.0]])
    params = torch.randn(4, spline.num_params)
    y, logabsdet = spline(x, params)
    assert torch.equal(y, x)
    assert torch.equal(logabsdet, torch.zeros_like(x))


def test_continuous_at_the_tail_bound():
    # The ends of the interval are exact knots, so the map meets the identity there.
    spline = SplineMap(num_bins=8, tail_bound=2.5)
    params = 3.0 * torch.randn(2, spline.num_params, dtype=torch.float64)
    x = torch.tensor([[-2.5], [2.5]], dtype=torch.float64)
    y, _ = spline(x, params)
    assert torch.equal(y, x)


def test_matches_nflows_in_float64():
    spline = SplineMap(num_bins=6, tail_bound=3.0)
    x = 2.0 * torch.randn(500, 3, dtype=torch.float64)
    params = 2.0 * torch.randn(500, spline.num_params * 3, dtype=torch.float64)
    theta = params.unflatten(1, (spline.num_params, 3)).movedim(1, -1)  # (500, 3, P)
    for inverse in (False, True):
        expected = unconstrained_rational_quadratic_spline(
            x,
            theta[..., :6],
            theta[..., 6:12],
            theta[..., 12:] + spline.derivative_offset,
            inverse=inverse,
            tail_bound=3.0,
        )
        actual = spline._run(x, params, inverse)
        torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


# A steep float32 spline (knot derivatives 3 and 10 around a bin of slope 0.0013) on
# which nflows 0.14's inverse returns logabsdet NaN: its root t falls just outside
# [0, 1] by rounding, and the denominator of the derivative turns negative. The
# problem is ill-conditioned in float32 (float64: x = 3.98364, logabsdet = -1.529), so
# only a finite answer near the right point is asked for.
STEEP_PARAMS = [
    2.1861984729766846, -11.16703987121582, 2.7982258796691895, 12.021098136901855,
    11.19539737701416, 31.3673095703125, -6.9933061599731445, -8.125067710876465,
    -17.58648681640625, -10.066566467285156, 4.14231014251709, -5.674880027770996,
    2.2840123176574707, 0.1267259269952774, 8.279975891113281, 3.094308376312256,
    -7.060860633850098, 3.0333199501037598, -11.543392181396484, -13.075874328613281,
    2.6565070152282715, 9.105452537536621, 5.730633735656738,
]  # fmt: skip


def test_float32_inverse_of_a_steep_spline_is_finite():
    spline = SplineMap(num_bins=8, tail_bound=4.0)
    y = torch.tensor([[-3.8091931343078613]])
    params = torch.tensor([STEEP_PARAMS])
    x, logabsdet = spline.inverse(y, params)
    x64, logabsdet64 = spline.inverse(y.double(), params.double())
    assert torch.isfinite(x).all() and torch.isfinite(logabsdet).all()
    assert abs(x.item() - x64.item()) < 1e-2
    assert math.isfinite(logabsdet64.item())


def test_float32_inverse_is_finite_for_extreme_parameters():
    spline = SplineMap(num_bins=8, tail_bound=4.0)
    generator = torch.Generator().manual_seed(1)
    params = 10.0 * torch.randn(50_000, spline.num_params, generator=generator)
    y = 8.0 * torch.rand(50_000, 1, generator=generator) - 4.0
    x, inverse_logabsdet = spline.inverse(y, params)
    _, logabsdet = spline(x, params)
    assert torch.isfinite(x).all() and torch.isfinite(inverse_logabsdet).all()
    assert torch.isfinite(logabsdet).all()
    assert x.abs().max() <= 4.0


def test_gradients_reach_every_parameter_and_the_inputs():
    layer = randomize_parameters(SplineCoupling(torch.tensor([False, True]), 16, num_bins=4))
    x = (3.0 * torch.randn(32, 2)).requires_grad_()  # some points outside [-3, 3]
    y, logabsdet = layer(x)
    (y.square().sum() + logabsdet.sum()).backward()
    assert torch.isfinite(x.grad).all()
    for name, parameter in layer.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_derivative_offset_gives_unit_inner_derivatives():
    spline = SplineMap(num_bins=4, min_derivative=1e-3)
    derivative = 1e-3 + torch.nn.functional.softplus(torch.tensor(spline.derivative_offset))
    assert math.isclose(derivative.item(), 1.0, rel_tol=1e-6)
