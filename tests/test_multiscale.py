"""Multiscale and multiscale_realnvp: harness, factor-out order, hand-composed densities, errors."""

from __future__ import annotations

import math

import pytest
import torch

import flowjoint as fj
from flowjoint.nets import ResidualConvNet
from flowjoint.testing import check_transform, randomize_parameters


def gaussian(z):
    """``log N(z; 0, I)`` summed over each row, written with torch.distributions."""
    return torch.distributions.Normal(0.0, 1.0).log_prob(z).flatten(1).sum(1)


def channel_coupling(channels, parity, hidden=4):
    mask = fj.channel_mask(channels, parity)
    net = ResidualConvNet(int((~mask).sum()), 2 * int(mask.sum()), hidden, 1)
    return fj.AffineCoupling(mask, net=net)


def two_scales(channels=1, size=4, seed=0):
    """checkerboard coupling, squeeze, channel coupling | checkerboard coupling."""
    torch.manual_seed(seed)
    shape = (channels, size, size)
    squeezed = (4 * channels, size // 2, size // 2)
    rest = (2 * channels, size // 2, size // 2)
    first = fj.Compose(
        [
            fj.ActNorm(channels),
            fj.AffineCoupling(fj.checkerboard_mask(shape), 4, 1),
            fj.Squeeze(),
            fj.InvertibleConv1x1(squeezed[0], seed=seed),
            channel_coupling(squeezed[0], 0),
        ]
    )
    last = fj.AffineCoupling(fj.checkerboard_mask(rest, 1), 4, 1)
    return fj.Multiscale([first, last], shape)


# -- the Multiscale transform ------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 2], ids=["1x4x4", "2x4x4"])
def test_multiscale_passes_the_harness(channels):
    layer = two_scales(channels)
    report = check_transform(layer, (channels, 4, 4), reload_into=two_scales(channels, seed=3))
    assert report.num_parameters_checked == len(list(layer.parameters()))


def test_multiscale_three_scales_on_8x8_passes_the_harness():
    torch.manual_seed(0)
    scales = [
        fj.Compose([fj.Squeeze(), channel_coupling(4, 0)]),
        fj.Compose([fj.Squeeze(), channel_coupling(8, 1)]),
        fj.AffineCoupling(fj.checkerboard_mask((4, 2, 2)), 4, 1),
    ]
    layer = fj.Multiscale(scales, (1, 8, 8))
    assert layer.output_shapes == [(4, 4, 4), (8, 2, 2), (4, 2, 2)]
    assert layer.factored_shapes == [(2, 4, 4), (4, 2, 2), (4, 2, 2)]
    check_transform(layer, (1, 8, 8), batch_size=2)


def test_multiscale_output_order_and_exact_inverse():
    """Squeezes only: a permutation, so the order can be written out and inverted bit-exactly."""
    layer = fj.Multiscale([fj.Squeeze(), fj.Squeeze()], (1, 4, 4))
    x = torch.randn(3, 1, 4, 4)
    z, logabsdet = layer(x)
    s = fj.Squeeze()(x)[0]  # (3, 4, 2, 2)
    first = s[:, 2:]  # the last half of the channels leaves after scale 1
    last = fj.Squeeze()(s[:, :2])[0]  # (3, 8, 1, 1)
    assert torch.equal(z, torch.cat([first.flatten(1), last.flatten(1)], 1))
    assert torch.equal(logabsdet, torch.zeros(3))
    back, logabsdet_inv = layer.inverse(z)
    assert torch.equal(back, x)
    assert torch.equal(logabsdet_inv, torch.zeros(3))
    noise = torch.randn(3, 16)
    assert torch.equal(layer(layer.inverse(noise)[0])[0], noise)


def test_multiscale_odd_channel_count_factors_out_the_last_floor_half():
    layer = fj.Multiscale([fj.ReversePermutation(3), fj.ReversePermutation(2)], (3, 2, 2))
    assert layer.factored_shapes == [(1, 2, 2), (2, 2, 2)]
    x = torch.randn(2, 3, 2, 2)
    z, _ = layer(x)
    # scale 1 reverses the channels (2, 1, 0): channel 0 leaves, (2, 1) continue and flip
    expected = torch.cat([x[:, 0].flatten(1), x[:, [1, 2]].flatten(1)], 1)
    assert torch.equal(z, expected)
    assert torch.equal(layer.inverse(z)[0], x)


def test_multiscale_construction_leaves_actnorm_uninitialised_and_keeps_modes():
    layer = two_scales()
    actnorm = layer.scales[0][0]
    assert not bool(actnorm.initialized)
    assert layer.training and all(m.training for m in layer.modules())
    layer.eval()
    fj.Multiscale(list(layer.scales), (1, 4, 4))
    assert not any(m.training for m in layer.modules())


@pytest.mark.parametrize(
    ("scales", "shape", "error", "match"),
    [
        ([], (1, 4, 4), ValueError, "at least one transform"),
        ([torch.nn.Identity()], (1, 4, 4), TypeError, r"scales\[0\] must be an nflows"),
        ([fj.UniformDequantization()], (1, 4, 4), ValueError, r"scales\[0\] holds a stochastic"),
        ([fj.Squeeze()], (16,), ValueError, "image shape"),
        (
            [fj.Squeeze(), fj.Squeeze()],
            (1, 3, 4),
            ValueError,
            r"scales\[0\] cannot take.*\(1, 3, 4\)",
        ),
        ([fj.ActNorm(1), fj.ActNorm(1)], (1, 4, 4), ValueError, "at least 2 channels"),
        ([fj.ReversePermutation(2)], (1, 4, 4), ValueError, r"scales\[0\] cannot take"),
    ],
    ids=["empty", "module", "stochastic", "vector", "odd", "one_channel", "wrong_channels"],
)
def test_multiscale_arguments_are_checked(scales, shape, error, match):
    with pytest.raises(error, match=match):
        fj.Multiscale(scales, shape)


def test_multiscale_inputs_are_checked():
    layer = two_scales()
    with pytest.raises(ValueError, match=r"\(batch, 1, 4, 4\).*\(2, 2, 4, 4\)"):
        layer(torch.zeros(2, 2, 4, 4))
    with pytest.raises(ValueError, match=r"\(batch, 16\).*\(2, 15\)"):
        layer.inverse(torch.zeros(2, 15))


# -- the builder against layers composed by hand -----------------------------------------


def by_hand_log_prob(flow, x):
    """The preprocessing, then each layer of each scale in turn, with the factored parts'
    Gaussian terms added as they leave: the second half of the channels of each scale."""
    *preprocessing, multiscale = list(flow.transform)
    total = torch.zeros(x.shape[0], dtype=x.dtype)
    h = x
    for layer in preprocessing:
        h, logabsdet = layer(h)
        total = total + logabsdet
    scales = list(multiscale.scales)
    for k, scale in enumerate(scales):
        for layer in scale:
            h, logabsdet = layer(h)
            total = total + logabsdet
        if k < len(scales) - 1:
            keep = h.shape[1] // 2
            total = total + gaussian(h[:, keep:])
            h = h[:, :keep]
    return total + gaussian(h)


def by_hand_inverse(flow, noise, factored_shapes):
    """Split ``noise`` in the documented order and run every layer's inverse in reverse."""
    *preprocessing, multiscale = list(flow.transform)
    sizes = [math.prod(s) for s in factored_shapes]
    parts = [p.reshape(-1, *s) for p, s in zip(noise.split(sizes, 1), factored_shapes)]
    h = parts[-1]
    scales = list(multiscale.scales)
    for k in reversed(range(len(scales))):
        if k < len(scales) - 1:
            h = torch.cat([h, parts[k]], 1)
        for layer in reversed(list(scales[k])):
            h = layer.inverse(h)[0]
    for layer in reversed(preprocessing):
        h = layer.inverse(h)[0]
    return h


SMALL = {"hidden_channels": 4, "num_residual_blocks": 1, "blocks_per_scale": 2}


def randomized_flow(shape, num_scales, **options):
    """Conditioners randomised (a fresh flow is the identity), ActNorms set from data."""
    torch.manual_seed(0)
    flow = fj.multiscale_realnvp(shape, num_scales, **{**SMALL, **options}).double()
    randomize_parameters(flow, std=0.1, seed=1)
    x = levels(64, shape)
    if options.get("dequantization") == "none":
        x = x + torch.rand_like(x)
    with torch.no_grad():
        flow.transform(x)  # training mode: ActNorm initialises
    return flow.eval()


def levels(batch, shape):
    return torch.randint(0, 256, (batch, *shape)).double()


@pytest.mark.parametrize(
    ("shape", "num_scales", "options"),
    [
        ((1, 8, 8), 3, {"conv1x1": True}),
        ((2, 4, 4), 2, {"actnorm": False}),
        ((1, 4, 4), 1, {"coupling": "additive"}),
        ((1, 4, 4), 2, {"coupling": "spline", "alpha": None}),
    ],
    ids=["1x8x8_3_scales_conv1x1", "2x4x4_no_actnorm", "one_scale_additive", "spline_no_logit"],
)
def test_log_prob_equals_the_layers_composed_by_hand(shape, num_scales, options):
    flow = randomized_flow(shape, num_scales, dequantization="none", **options)
    x = levels(4, shape) + torch.rand(4, *shape, dtype=torch.float64)
    if options.get("alpha", 1e-6) is None:
        x = x / 256  # no logit: the preprocessing only scales
    got, expected = flow.log_prob(x), by_hand_log_prob(flow, x)
    assert ((got - expected).abs() <= 1e-12 * expected.abs().clamp_min(1)).all()


def test_sample_is_the_inverse_image_of_the_base_noise():
    flow = randomized_flow((1, 8, 8), 3, dequantization="none", conv1x1=True)
    factored = [(2, 4, 4), (4, 2, 2), (4, 2, 2)]
    zero = by_hand_inverse(flow, torch.zeros(1, 64, dtype=torch.float64), factored)
    samples = flow.sample(3, temperature=0.0)
    assert samples.shape == (3, 1, 8, 8)
    assert torch.allclose(samples, zero.expand(3, -1, -1, -1), rtol=1e-12, atol=0)
    torch.manual_seed(5)
    samples = flow.sample(3, temperature=0.7)
    torch.manual_seed(5)
    noise = 0.7 * torch.randn(3, 64, dtype=torch.float64)
    assert torch.allclose(samples, by_hand_inverse(flow, noise, factored), rtol=1e-12, atol=0)


def test_sample_through_dequantization_gives_levels():
    flow = randomized_flow((1, 8, 8), 3)
    samples = flow.sample(4, temperature=0.0)
    assert torch.equal(samples, samples.floor())
    assert torch.equal(samples, samples[:1].expand(4, -1, -1, -1))


def test_stochastic_rows_reach_the_multiscale_as_plain_images():
    """elbo/iwae draw K dequantizations per image: the bijective rest sees (batch * K) rows."""
    flow = randomized_flow((1, 4, 4), 2)
    bijective = fj.Flow(fj.Compose(list(flow.transform)[1:]), flow.base)
    x = levels(3, (1, 4, 4))
    torch.manual_seed(7)
    log_weights = flow.log_weights(x, num_samples=4)
    torch.manual_seed(7)
    repeated = x.repeat_interleave(4, 0)
    u = torch.rand_like(repeated).clamp_min(torch.finfo(torch.float64).tiny)
    expected = bijective.log_prob(repeated + u).view(3, 4)
    assert torch.allclose(log_weights, expected, rtol=1e-12, atol=0)
    iwae = flow.iwae(x, num_samples=4)
    assert iwae.shape == (3,) and torch.isfinite(iwae).all()


def test_the_whole_bijective_stack_passes_the_dense_jacobian_check():
    flow = randomized_flow((1, 4, 4), 2, dequantization="none", conv1x1=True)
    x = (levels(3, (1, 4, 4)) + 0.5).double()
    error = fj.check_logabsdet(flow.transform, x)
    assert error < 1e-10 * max(1.0, flow.transform(x)[1].abs().max().item())


def test_gradients_reach_every_parameter_through_elbo_and_sampling():
    flow = randomized_flow((1, 4, 4), 2, dequantization="variational", conv1x1=True)
    flow.elbo(levels(4, (1, 4, 4))).mean().neg().backward()
    missing = [n for n, p in flow.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing
    flow = randomized_flow((1, 4, 4), 2, dequantization="none", conv1x1=True)
    flow.sample(4).square().sum().backward()
    missing = [n for n, p in flow.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing


# -- the builder's architecture ----------------------------------------------------------


def kinds(scale):
    return [type(layer).__name__ for layer in scale]


def test_builder_layout_follows_real_nvp():
    flow = fj.multiscale_realnvp((1, 8, 8), 2, blocks_per_scale=2, hidden_channels=4)
    preprocessing = [type(layer).__name__ for layer in list(flow.transform)[:-1]]
    assert preprocessing == ["UniformDequantization", "Scale", "Logit"]
    first, last = flow.transform[-1].scales
    assert kinds(first) == ["ActNorm", "Coupling"] * 2 + ["Squeeze"] + ["ActNorm", "Coupling"] * 2
    assert kinds(last) == ["ActNorm", "Coupling"] * 3  # final_blocks = blocks_per_scale + 1
    masks = [layer.mask for layer in first if isinstance(layer, fj.Coupling)]
    assert torch.equal(masks[0], fj.checkerboard_mask((1, 8, 8), 0))
    assert torch.equal(masks[1], fj.checkerboard_mask((1, 8, 8), 1))
    assert torch.equal(masks[2], fj.channel_mask(4, 0))
    assert torch.equal(masks[3], fj.channel_mask(4, 1))
    parities = [layer.mask for layer in last if isinstance(layer, fj.Coupling)]
    assert torch.equal(parities[2], fj.checkerboard_mask((2, 4, 4), 0))


def test_builder_conv1x1_goes_before_couplings_on_several_channels():
    flow = fj.multiscale_realnvp((1, 8, 8), 2, blocks_per_scale=1, final_blocks=1, conv1x1=True)
    first, last = flow.transform[-1].scales
    assert kinds(first) == [
        "ActNorm",
        "Coupling",
        "Squeeze",
        "ActNorm",
        "InvertibleConv1x1",
        "Coupling",
    ]
    assert kinds(last) == ["ActNorm", "InvertibleConv1x1", "Coupling"]


def test_fresh_flow_is_the_preprocessing_then_the_identity():
    flow = fj.multiscale_realnvp((1, 8, 8), 2, **SMALL, dequantization="none").double().eval()
    x = levels(2, (1, 8, 8)) + 0.5
    h = x
    for layer in list(flow.transform)[:-1]:
        h = layer(h)[0]
    z, logabsdet = flow.transform[-1](h)
    assert torch.equal(logabsdet, torch.zeros(2, dtype=torch.float64))
    assert torch.equal(torch.sort(z, 1).values, torch.sort(h.flatten(1), 1).values)


@pytest.mark.parametrize(
    ("shape", "num_scales", "outputs", "factored"),
    [
        ((1, 28, 28), 2, [(4, 14, 14), (2, 14, 14)], [(2, 14, 14), (2, 14, 14)]),
        ((1, 28, 28), 3, [(4, 14, 14), (8, 7, 7), (4, 7, 7)], [(2, 14, 14), (4, 7, 7), (4, 7, 7)]),
        ((1, 8, 8), 3, [(4, 4, 4), (8, 2, 2), (4, 2, 2)], [(2, 4, 4), (4, 2, 2), (4, 2, 2)]),
        ((3, 4, 6), 2, [(12, 2, 3), (6, 2, 3)], [(6, 2, 3), (6, 2, 3)]),
    ],
    ids=["mnist_2", "mnist_3", "digits_3", "rgb_4x6"],
)
def test_builder_shapes(shape, num_scales, outputs, factored):
    options = {"hidden_channels": 2, "num_residual_blocks": 0, "blocks_per_scale": 1}
    flow = fj.multiscale_realnvp(shape, num_scales, **options)
    multiscale = flow.transform[-1]
    assert multiscale.output_shapes == outputs
    assert multiscale.factored_shapes == factored
    x = levels(2, shape).float()
    with torch.no_grad():
        assert flow.elbo(x).shape == (2,)
        assert flow.iwae(x, 3).shape == (2,)
        assert flow.sample(2, temperature=0.5).shape == (2, *shape)
    assert all(bool(m.initialized) for m in flow.modules() if isinstance(m, fj.ActNorm))


@pytest.mark.parametrize(
    ("arguments", "error", "match"),
    [
        ({"image_shape": (28, 28)}, ValueError, r"image_shape must be \(C, H, W\), got \(28, 28\)"),
        ({"image_shape": (0, 4, 4)}, ValueError, "image_shape must hold positive ints"),
        ({"num_scales": 4}, ValueError, r"image_shape \(1, 28, 28\) cannot be halved 3 times"),
        ({"image_shape": (1, 6, 6), "num_scales": 3}, ValueError, "multiples of 4"),
        ({"image_shape": (1, 2, 2), "num_scales": 2}, ValueError, "1x1 image at the last scale"),
        ({"num_scales": 0}, ValueError, "num_scales must be >= 1"),
        ({"blocks_per_scale": 0}, ValueError, "blocks_per_scale must be >= 1"),
        ({"final_blocks": 0}, ValueError, "final_blocks must be >= 1"),
        ({"hidden_channels": 2.5}, TypeError, "hidden_channels must be an int"),
        ({"num_residual_blocks": -1}, ValueError, "num_residual_blocks must be >= 0"),
        ({"levels": 1}, ValueError, "levels must be >= 2"),
        ({"alpha": 0.5}, ValueError, "alpha must be < 0.5"),
        ({"dequantization": "gaussian"}, ValueError, "dequantization must be"),
        ({"coupling": "glow"}, ValueError, "coupling must be 'affine'"),
        ({"actnorm": 1}, TypeError, "actnorm must be a bool"),
        ({"conv1x1": "yes"}, TypeError, "conv1x1 must be a bool"),
        ({"log_scale_bound": -1.0}, ValueError, "log_scale_bound must be >= 1e-06"),
    ],
)
def test_builder_arguments_are_checked(arguments, error, match):
    arguments = {"image_shape": (1, 28, 28), **arguments}
    with pytest.raises(error, match=match):
        fj.multiscale_realnvp(**arguments)


def test_builder_flow_refuses_images_of_another_shape():
    flow = fj.multiscale_realnvp((1, 8, 8), 2, **SMALL)
    with pytest.raises(ValueError, match=r"\(batch, 1, 8, 8\).*\(2, 3, 8, 8\)"):
        flow.elbo(levels(2, (3, 8, 8)).float())


def test_multiscale_and_squeeze_take_an_empty_batch():
    layer = two_scales().eval()
    z, logabsdet = layer(torch.zeros(0, 1, 4, 4))
    assert z.shape == (0, 16) and logabsdet.shape == (0,)
    x, logabsdet = layer.inverse(torch.zeros(0, 16))
    assert x.shape == (0, 1, 4, 4) and logabsdet.shape == (0,)
    assert fj.Squeeze()(torch.zeros(0, 1, 4, 4))[0].shape == (0, 4, 2, 2)
