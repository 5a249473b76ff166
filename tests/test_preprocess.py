"""Preprocessing layers (Scale, Logit) and the units of reported numbers.

Preprocessing is layers of the stack: a model of pixels is ``[dequantization, Scale,
Logit, ...flow]`` and its log-density counts every preprocessing log-det.
"""

import math

import pytest
import torch

from flowjoint import Compose, Flow, StandardNormal, realnvp
from flowjoint.preprocess import Logit, Scale, pixel_preprocessing
from flowjoint.testing import check_transform
from flowjoint.units import bits_per_dim_to_nats, nats_to_bits_per_dim, nll_to_level_scale

TRANSFORMS = {
    "scale": lambda: Scale(1 / 17),
    "logit": lambda: Logit(0.05),
    "logit_plain": lambda: Logit(0.0),
    "pixels": lambda: Compose(pixel_preprocessing(17, alpha=0.1, dequantization="none")),
}


@pytest.mark.parametrize("name", TRANSFORMS)
def test_logabsdet_against_dense_jacobian(name):
    layer = TRANSFORMS[name]().double()
    x = torch.rand(6, 5, dtype=torch.float64) * 0.9 + 0.05
    if name == "pixels":
        x = x * 17
    jac = torch.func.jacrev(lambda v: layer(v)[0].sum(0))(x).permute(1, 0, 2)
    expected = torch.linalg.slogdet(jac).logabsdet
    y, logabsdet = layer(x)
    torch.testing.assert_close(logabsdet, expected)
    back, logabsdet_inv = layer.inverse(y)
    torch.testing.assert_close(back, x)
    torch.testing.assert_close(logabsdet_inv, -logabsdet)


def test_logit_formula_written_out():
    alpha = 0.05
    x = torch.tensor([[0.0, 0.25, 1.0]], dtype=torch.float64)
    y, logabsdet = Logit(alpha)(x)
    s = alpha + (1 - 2 * alpha) * x
    torch.testing.assert_close(y, torch.log(s / (1 - s)))
    # d/dx logit(s) = (1 - 2 alpha) / (s (1 - s))
    torch.testing.assert_close(logabsdet, torch.log((1 - 2 * alpha) / (s * (1 - s))).sum(-1))


def test_scale_and_logit_pass_conformance():
    check_transform(Scale(0.3), 4)


def test_preprocessing_bad_arguments():
    with pytest.raises(ValueError, match="alpha"):
        Logit(0.5)
    with pytest.raises(ValueError, match="factor"):
        Scale(0.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Logit()(torch.tensor([[1.5]]))
    with pytest.raises(ValueError, match="levels"):
        pixel_preprocessing(1)
    with pytest.raises(ValueError, match="dequantization must be"):
        pixel_preprocessing(17, dequantization="gaussian")
    with pytest.raises(ValueError, match="shape is required"):
        pixel_preprocessing(17, dequantization="variational")
    with pytest.raises(ValueError, match="alpha must be finite"):
        Logit(float("nan"))


def test_logit_validate_reads_values_and_can_be_switched_off():
    x = torch.tensor([[1.5, float("nan")]])
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        Logit(0.05)(x)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        Logit(0.05)(torch.tensor([[float("nan")]]))  # NaN is outside the domain too
    y, _ = Logit(0.05, validate=False)(x)
    assert y.isnan().any()


def test_a_stack_with_preprocessing_is_the_change_of_variables():
    """[Scale, Logit, flow]: log p(x) = log p_flow(h) + log|dh/dx|, written out by hand."""
    torch.manual_seed(0)
    flow = realnvp(3, num_layers=2).double()
    layers = pixel_preprocessing(17, alpha=0.05, dequantization="none")
    model = Flow(Compose([*layers, *flow.transform]), flow.base)
    x = torch.rand(10, 3, dtype=torch.float64) * 17
    s = 0.05 + 0.9 * x / 17
    h = torch.log(s / (1 - s))
    by_hand = flow.log_prob(h) + torch.log(0.9 / (17 * s * (1 - s))).sum(-1)
    torch.testing.assert_close(model.log_prob(x), by_hand)
    torch.testing.assert_close(model.elbo(x), by_hand)  # bijective: elbo is log_prob
    samples = model.sample(50)
    # the logit's image of [0, 1] is squeezed: its support is (-a, 1 + a) * 17, a = 0.05 / 0.9
    margin = 17 * 0.05 / 0.9
    assert samples.shape == (50, 3)
    assert samples.min() > -margin and samples.max() < 17 + margin


def test_a_preprocessed_density_integrates_to_one():
    # Numerical integral of exp(log p(x)) over the support of the squeezed logit,
    # ((0 - a) / (1 - 2a), (1 - a) / (1 - 2a)) * levels, equals 1.
    flow = realnvp(2, num_layers=2, preprocessing=pixel_preprocessing(4, 0.1, "none")).double()
    lo, hi = -0.1 / 0.8 * 4, 0.9 / 0.8 * 4
    grid = torch.linspace(lo, hi, 401, dtype=torch.float64)[1:-1]
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
    with torch.no_grad():
        density = Flow(flow.transform, StandardNormal(2)).log_prob(pts).exp()
    step = (hi - lo) / 400
    assert density.sum().item() * step**2 == pytest.approx(1.0, abs=0.01)


def test_preprocessing_on_images_counts_every_pixel():
    """Scale and Logit on (batch, C, H, W): the log-det sums over the whole event."""
    x = torch.rand(4, 2, 3, 3, dtype=torch.float64)
    flat = x.flatten(1)
    for layer in (Scale(0.25), Logit(0.05)):
        y, logabsdet = layer(x)
        y_flat, logabsdet_flat = layer(flat)
        torch.testing.assert_close(y.flatten(1), y_flat)
        torch.testing.assert_close(logabsdet, logabsdet_flat)


def test_nice_published_figure_in_bits_per_dim():
    # NICE: log-likelihood 1980.50 nats on MNIST, continuous data on [0, 1], 256 levels.
    nll = nll_to_level_scale(-1980.50, 784, 256)
    assert nll == pytest.approx(784 * math.log(256) - 1980.50)
    assert nats_to_bits_per_dim(nll, 784) == pytest.approx(4.356, abs=5e-4)
    assert bits_per_dim_to_nats(nats_to_bits_per_dim(nll, 784), 784) == pytest.approx(nll)
    # a uniform density on [0, 256)^D is exactly 8 bits/dim
    assert nats_to_bits_per_dim(784 * math.log(256), 784) == pytest.approx(8.0)


def test_dividing_by_the_levels_keeps_the_top_value_below_one():
    """Pixel preprocessing divides by ``levels``: the largest float32 below ``levels``
    maps below 1 for every level count, where multiplying by ``1 / levels`` does not."""
    levels = torch.arange(2, 257, dtype=torch.float32).unsqueeze(1)  # (255, 1)
    top = torch.nextafter(levels, torch.zeros_like(levels))  # largest value below levels
    divided = torch.cat([Scale(divisor=int(n))(t.view(1, 1))[0] for n, t in zip(levels, top)])
    multiplied = torch.cat([Scale(1 / int(n))(t.view(1, 1))[0] for n, t in zip(levels, top)])
    assert bool((divided < 1).all())
    assert bool((multiplied >= 1).any())  # e.g. 255: the reason pixel_preprocessing divides
    layers = pixel_preprocessing(255, alpha=0.0, dequantization="none")
    h = torch.nextafter(torch.tensor([[255.0]]), torch.tensor([[254.0]]))
    for layer in layers:
        h, logabsdet = layer(h)
        assert bool(torch.isfinite(h).all() & torch.isfinite(logabsdet).all())


def test_scale_takes_one_of_factor_and_divisor():
    with pytest.raises(ValueError, match="exactly one of factor and divisor"):
        Scale()
    with pytest.raises(ValueError, match="exactly one of factor and divisor"):
        Scale(0.5, divisor=2)
    x = torch.rand(3, 4, dtype=torch.float64)
    y_mul, lad_mul = Scale(0.25)(x)
    y_div, lad_div = Scale(divisor=4)(x)
    torch.testing.assert_close(y_mul, y_div)
    torch.testing.assert_close(lad_mul, lad_div)
    torch.testing.assert_close(Scale(divisor=4).inverse(y_div)[0], x)
