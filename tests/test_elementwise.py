"""The element-wise maps: the affine and additive maps' contract."""

from __future__ import annotations

import pytest
import torch

import flowjoint as fj
from flowjoint.elementwise import AdditiveMap, AffineMap


def test_affine_and_additive_maps_invert_and_report_their_log_derivative():
    x = torch.randn(4, 3, dtype=torch.float64)
    params = torch.randn(4, 6, dtype=torch.float64)
    for elementwise in (AffineMap(2.0), AffineMap(None)):
        y, logabsdet = elementwise(x, params)
        back, logabsdet_inverse = elementwise.inverse(y, params)
        torch.testing.assert_close(back, x)
        torch.testing.assert_close(logabsdet_inverse, -logabsdet)
        derivative = torch.func.vmap(torch.func.jacrev(lambda v, p, f=elementwise: f(v, p)[0]))(
            x.unsqueeze(1), params.unsqueeze(1)
        )  # (4, 1, 3, 1, 3)
        diagonal = derivative.reshape(4, 3, 3).diagonal(dim1=-2, dim2=-1)
        torch.testing.assert_close(logabsdet, diagonal.log())
    y, logabsdet = AdditiveMap()(x, params[:, :3])
    torch.testing.assert_close(y, x + params[:, :3])
    assert logabsdet is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bound", [0.5, 3.0, 10.0, None])
def test_the_inverse_uses_exactly_the_negated_forward_log_scale(dtype, bound):
    """The inverse folds the sign into the clamp: bit for bit -log_scale of the forward,
    also for huge, infinite and strided conditioner outputs."""
    layer = AffineMap(bound)
    params = torch.randn(64, 2, 40, dtype=dtype)[:, :, ::2] * 30  # (64, 2, 20), strided
    params[0, 1, :4] = torch.tensor([float("inf"), -float("inf"), 1e30, -1e30])
    params = params.reshape(64, 40)[:, ::2]  # shift (64, 10), raw (64, 10); not contiguous
    x = torch.randn(64, 10, dtype=dtype)
    _, log_scale = layer(x, params)
    _, negated = layer.inverse(x, params)
    assert torch.equal(negated, -log_scale)


def test_a_log_scale_set_on_an_instance_is_used_by_both_directions():
    layer = AffineMap(3.0)
    original = layer.shift_and_log_scale
    layer.shift_and_log_scale = lambda params: (original(params)[0], original(params)[1] * 0.5)
    x, params = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 4, dtype=torch.float64)
    y, log_scale = layer(x, params)
    back, negated = layer.inverse(y, params)
    torch.testing.assert_close(back, x)
    torch.testing.assert_close(negated, -log_scale)


def test_standard_normal_densities_of_integers_and_images_match_the_textbook():
    from flowjoint.distributions import LOG_2PI, standard_normal_log_prob, standard_normal_nll

    images = torch.randn(3, 2, 4, 6, dtype=torch.float64).transpose(2, 3)  # not contiguous
    want = -0.5 * images.square().sum((1, 2, 3)) - 0.5 * 48 * LOG_2PI
    torch.testing.assert_close(standard_normal_log_prob(images), want)
    torch.testing.assert_close(standard_normal_nll(images), -want)
    integers = torch.tensor([[1, 2], [0, -3]])
    torch.testing.assert_close(
        standard_normal_log_prob(integers), torch.tensor([-2.5, -4.5]) - LOG_2PI
    )


def test_the_inverse_does_not_negate_a_subclass_log_scale_in_place():
    seen = []

    class Recording(fj.AffineMap):
        def shift_and_log_scale(self, params):
            shift, log_scale = super().shift_and_log_scale(params)
            seen.append(log_scale)
            return shift, log_scale

    layer = Recording(3.0)
    params = torch.randn(4, 4)
    _, logabsdet = layer.inverse(torch.randn(4, 2), params)
    torch.testing.assert_close(seen[0], -logabsdet)
    assert not Recording._own_log_scale and fj.AffineMap._own_log_scale
