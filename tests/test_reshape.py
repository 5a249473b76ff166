"""Squeeze: the stated pixel -> channel order, exact inverse, harness, errors."""

from __future__ import annotations

import itertools

import pytest
import torch
from nflows.transforms import SqueezeTransform

import flowjoint as fj
from flowjoint.testing import check_transform


@pytest.mark.parametrize("factor", [2, 3])
def test_squeeze_order_is_the_documented_one(factor):
    f = factor
    x = torch.randn(2, 3, 2 * f, 3 * f)
    y, logabsdet = fj.Squeeze(factor)(x)
    assert y.shape == (2, 3 * f * f, 2, 3)
    assert torch.equal(logabsdet, torch.zeros(2))
    for c, i, j, h, w in itertools.product(range(3), range(f), range(f), range(2), range(3)):
        assert torch.equal(y[:, c * f * f + i * f + j, h, w], x[:, c, f * h + i, f * w + j])


def test_squeeze_first_channels_are_the_corners_of_each_block():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    y, _ = fj.Squeeze()(x)
    # top-left, top-right, bottom-left, bottom-right of the block at (0, 0)
    assert y[0, :, 0, 0].tolist() == [0.0, 1.0, 4.0, 5.0]
    assert y[0, :, 1, 1].tolist() == [10.0, 11.0, 14.0, 15.0]


@pytest.mark.parametrize("shape", [(1, 4, 4), (2, 4, 4), (3, 2, 6)], ids=str)
def test_squeeze_matches_nflows_and_inverts_bit_exactly(shape):
    x = torch.randn(5, *shape, dtype=torch.float64)
    layer = fj.Squeeze()
    y, logabsdet = layer(x)
    assert torch.equal(y, SqueezeTransform()(x)[0])
    back, logabsdet_inv = layer.inverse(y)
    assert torch.equal(back, x)
    assert torch.equal(logabsdet, torch.zeros(5, dtype=torch.float64))
    assert torch.equal(logabsdet_inv, torch.zeros(5, dtype=torch.float64))
    z = torch.randn_like(y)
    assert torch.equal(layer(layer.inverse(z)[0])[0], z)


@pytest.mark.parametrize(
    ("factor", "shape"), [(2, (1, 4, 4)), (2, (2, 4, 4)), (2, (1, 2, 6)), (3, (1, 3, 6))], ids=str
)
def test_squeeze_passes_the_harness(factor, shape):
    report = check_transform(fj.Squeeze(factor), shape, reload_into=fj.Squeeze(factor))
    assert report.inverse_error == 0.0
    assert report.logabsdet_error == 0.0


def test_squeeze_output_shape():
    assert fj.Squeeze().output_shape((3, 28, 28)) == (12, 14, 14)
    assert fj.Squeeze(4).output_shape((1, 8, 12)) == (16, 2, 3)


def test_squeeze_composes_in_a_flow_and_samples():
    layers = [fj.Squeeze(), fj.AffineCoupling(fj.checkerboard_mask((4, 2, 2)), 8)]
    flow = fj.Flow(fj.Compose(layers), fj.StandardNormal((4, 2, 2)))
    x = torch.randn(3, 1, 4, 4)
    assert flow.log_prob(x).shape == (3,)
    assert flow.sample(2).shape == (2, 1, 4, 4)


@pytest.mark.parametrize("shape", [(1, 1, 3, 4), (1, 2, 4, 5), (2, 1, 7, 7)], ids=str)
def test_squeeze_odd_size_names_the_shape(shape):
    with pytest.raises(ValueError, match=r"multiples of 2.*\(C, H, W\) = \(\d+, \d+, \d+\)"):
        fj.Squeeze()(torch.zeros(shape))


def test_squeeze_output_shape_refuses_odd_sizes():
    with pytest.raises(ValueError, match=r"\(1, 7, 7\)"):
        fj.Squeeze().output_shape((1, 7, 7))


def test_squeeze_inverse_needs_a_multiple_of_four_channels():
    with pytest.raises(ValueError, match=r"multiple of 4.*\(2, 3, 2, 2\)"):
        fj.Squeeze().inverse(torch.zeros(2, 3, 2, 2))


@pytest.mark.parametrize("shape", [(2, 16), (2, 1, 4, 4, 4)], ids=str)
def test_squeeze_needs_images(shape):
    with pytest.raises(ValueError, match="images"):
        fj.Squeeze()(torch.zeros(shape))


def test_squeeze_rejects_integer_inputs():
    with pytest.raises(TypeError, match="floating-point"):
        fj.Squeeze()(torch.zeros(1, 1, 4, 4, dtype=torch.long))


@pytest.mark.parametrize(
    ("factor", "error"), [(1, ValueError), (2.0, TypeError), (True, TypeError)]
)
def test_squeeze_factor_is_checked(factor, error):
    with pytest.raises(error, match="factor"):
        fj.Squeeze(factor)
