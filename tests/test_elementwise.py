"""The element-wise maps: the soft clamp of the affine log-scale, and the maps' contract."""

from __future__ import annotations

import pytest
import torch

import flowjoint as fj
from flowjoint.clamp import _clamp_factors, _signed_soft_clamp
from flowjoint.elementwise import AdditiveMap, AffineMap


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bound", [0.5, 3.0, 10.0])
def test_soft_clamp_is_bound_tanh_within_its_rounding(dtype, bound):
    """b tanh(x / b), computed through sigmoid: equal to 2 eps b, bounded, monotone."""
    eps = torch.finfo(dtype).eps
    x = torch.linspace(-40 * bound, 40 * bound, 200_001, dtype=dtype)
    got = fj.soft_clamp(x, bound)
    reference = bound * torch.tanh(x.double() / bound)
    assert (got.double() - reference).abs().max().item() <= 2 * eps * bound
    assert bool((got.abs() <= bound).all())
    assert bool((got[1:] >= got[:-1]).all())  # monotone
    huge = torch.tensor([-torch.finfo(dtype).max, -1e30, 1e30, torch.finfo(dtype).max], dtype=dtype)
    torch.testing.assert_close(
        fj.soft_clamp(huge, bound), torch.tensor([-1.0, -1, 1, 1]).to(dtype) * bound
    )
    special = fj.soft_clamp(
        torch.tensor([-float("inf"), float("inf"), float("nan")], dtype=dtype), bound
    )
    assert special[0].item() == -bound and special[1].item() == bound and special[2].isnan()


def test_soft_clamp_has_slope_one_at_zero_and_none_is_unbounded():
    raw = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    fj.soft_clamp(raw, 3.0).sum().backward()
    torch.testing.assert_close(raw.grad, torch.ones(3, dtype=torch.float64))
    x = torch.tensor([1e6])
    assert fj.soft_clamp(x, None) is x


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


def _python_number_clamp(raw, bound, sign):
    """The clamp written with Python numbers: the path taken under torch.compile."""
    return (torch.sigmoid(raw * (2.0 / bound)) - 0.5) * (2.0 * sign * bound)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bound", [0.5, 2.7, 3.0, 80.0])
def test_the_cached_factor_clamp_equals_the_python_number_one(dtype, bound, monkeypatch):
    """One FMA of the exact ``2 b sigma - b``: the same bits as ``(sigma - 1/2) 2b`` wherever
    ``sigma - 1/2`` is exact (``sigma >= 1/4``), one rounding of b's size elsewhere; and the
    compile path (Python numbers) computes the same function."""
    gen = torch.Generator().manual_seed(5)
    raw = torch.randn(10_007, generator=gen, dtype=dtype) * 2 * bound  # odd length: a tail
    ulp = torch.finfo(dtype).eps * 2 * bound
    for sign in (1.0, -1.0):
        fast = _signed_soft_clamp(raw, bound, sign)
        slow = _python_number_clamp(raw, bound, sign)
        exact_half = torch.sigmoid(raw * (2.0 / bound)) >= 0.25
        assert torch.equal(fast[exact_half], slow[exact_half])
        assert (fast - slow).abs().max().item() <= ulp
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
        assert torch.equal(_signed_soft_clamp(raw, bound, sign), slow)
        monkeypatch.undo()
    assert torch.equal(_signed_soft_clamp(raw, bound, -1.0), -_signed_soft_clamp(raw, bound, 1.0))


def test_the_clamp_first_called_in_inference_mode_still_trains():
    """Its cached factors are made outside inference mode: a later training step can save
    them for backward."""
    _clamp_factors.cache_clear()
    with torch.inference_mode():
        fj.soft_clamp(torch.randn(4), 1.25)
    raw = torch.randn(4, requires_grad=True)
    fj.soft_clamp(raw, 1.25).sum().backward()
    torch.testing.assert_close(raw.grad, 1 - torch.tanh(raw.detach() / 1.25) ** 2)


def test_a_fake_tensor_never_enters_the_clamps_cache():
    from torch._subclasses.fake_tensor import FakeTensorMode

    _clamp_factors.cache_clear()
    with FakeTensorMode() as mode:
        out = fj.soft_clamp(mode.from_tensor(torch.randn(3)), 1.75)
    assert out.shape == (3,) and _clamp_factors.cache_info().currsize == 0
    x = torch.randn(3, dtype=torch.float64)
    torch.testing.assert_close(fj.soft_clamp(x, 1.75), 1.75 * torch.tanh(x / 1.75))
    assert all(type(f) is torch.Tensor for f in _clamp_factors(1.75, 1.0, torch.float64))


def test_the_clamps_derivatives_in_every_mode_of_autodiff():
    """Reverse (first and second order), forward mode and vmap through the in-place sigmoid."""
    raw = torch.randn(7, dtype=torch.float64, requires_grad=True) * 3
    clamp = lambda v: fj.soft_clamp(v, 3.0)  # noqa: E731
    assert torch.autograd.gradcheck(clamp, (raw,))
    assert torch.autograd.gradgradcheck(clamp, (raw,))
    x = raw.detach()
    forward = torch.func.jacfwd(clamp)(x)
    torch.testing.assert_close(forward, torch.diag(1 - torch.tanh(x / 3) ** 2))
    torch.testing.assert_close(torch.func.vmap(clamp)(x.reshape(7, 1)).flatten(), clamp(x))


@pytest.mark.parametrize(
    ("bound", "error"),
    [(torch.tensor(3.0), TypeError), (True, TypeError), ("3", TypeError),
     (float("nan"), ValueError), (float("inf"), ValueError), (0.0, ValueError), (-1.0, ValueError),
     (81.0, ValueError)],
)
def test_soft_clamp_refuses_a_bound_that_is_not_a_layers_bound(bound, error):
    with pytest.raises(error, match="bound"):
        fj.soft_clamp(torch.randn(3), bound)
