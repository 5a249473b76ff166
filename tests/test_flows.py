"""Flow: log_prob, sampling, builders, bases."""

from __future__ import annotations

import math

import pytest
import torch
from nflows.distributions import ConditionalDiagonalNormal
from nflows.distributions import StandardNormal as NflowsStandardNormal

import flowjoint as fj
from flowjoint.testing import randomize_parameters

pytestmark = pytest.mark.usefixtures("float64")


def dense_log_prob(flow, x, context=None):
    """Change of variables with a dense Jacobian: log N(f(x)) + log|det df/dx|."""
    z = flow.transform(x, context)[0]
    _, logdet = torch.linalg.slogdet(fj.jacobian(flow.transform, x, context))
    return -0.5 * z.square().sum(1) - 0.5 * x.shape[1] * math.log(2 * math.pi) + logdet


@pytest.mark.parametrize("builder", [fj.realnvp, fj.nice], ids=["realnvp", "nice"])
@pytest.mark.parametrize("context_features", [0, 2])
def test_log_prob_is_change_of_variables(builder, context_features):
    flow = builder(4, num_layers=4, hidden_features=16, context_features=context_features)
    flow.transform(torch.randn(64, 4), torch.randn(64, 2) if context_features else None)
    randomize_parameters(flow).eval()
    x = torch.randn(6, 4)
    c = torch.randn(6, 2) if context_features else None
    torch.testing.assert_close(flow.log_prob(x, c), dense_log_prob(flow, x, c))


def test_affine_flow_matches_closed_form_gaussian():
    """x = (z - shift) / scale with z ~ N(0, I) is N(-shift/scale, 1/scale^2)."""
    layer = fj.ActNorm(3)
    layer.eval()
    with torch.no_grad():
        layer.log_scale.copy_(torch.tensor([0.5, -1.0, 2.0]))
        layer.shift.copy_(torch.tensor([1.0, -2.0, 0.3]))
    flow = fj.Flow(layer, fj.StandardNormal(3))
    scale = layer.log_scale.exp().detach()
    reference = torch.distributions.Normal(-layer.shift.detach() / scale, 1 / scale)
    x = torch.randn(10, 3)
    torch.testing.assert_close(flow.log_prob(x), reference.log_prob(x).sum(1))


def test_sample_and_log_prob_agree_and_carry_gradients():
    flow = randomize_parameters(fj.realnvp(3, num_layers=4, hidden_features=8))
    samples, log_prob = flow.sample_and_log_prob(7)
    assert samples.shape == (7, 3) and log_prob.shape == (7,)
    torch.testing.assert_close(log_prob, flow.log_prob(samples))
    flow.sample(5).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in flow.parameters())


def test_conditional_sampling_shapes_and_density():
    flow = randomize_parameters(fj.realnvp(2, 4, 8, context_features=3))
    context = torch.randn(4, 3)
    samples, log_prob = flow.sample_and_log_prob(5, context)
    assert samples.shape == (4, 5, 2) and log_prob.shape == (4, 5)
    flat = flow.log_prob(samples.reshape(20, 2), context.repeat_interleave(5, 0))
    torch.testing.assert_close(log_prob.reshape(20), flat)
    assert flow.sample(6, context).shape == (4, 6, 2)
    x = torch.randn(4, 2)
    assert not torch.allclose(flow.log_prob(x, context), flow.log_prob(x, context.flip(0)))


def test_standard_normal():
    base = fj.StandardNormal(3)
    x = torch.randn(5, 3)
    reference = torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(1)
    torch.testing.assert_close(base.log_prob(x), reference)
    assert base.sample(4).shape == (4, 3)
    assert base.to(torch.float64).sample(2).dtype == torch.float64
    assert base.sample(2, context=torch.zeros(3, 1)).shape == (3, 2, 3)


def test_nflows_bases_accepted():
    transform = randomize_parameters(fj.AffineCoupling(torch.tensor([False, True]), 8))
    flow = fj.Flow(transform, NflowsStandardNormal([2]))
    x = torch.randn(5, 2)
    ours = fj.Flow(transform, fj.StandardNormal(2))
    torch.testing.assert_close(flow.log_prob(x).double(), ours.log_prob(x))
    conditional = fj.Flow(transform, ConditionalDiagonalNormal([2]))
    context = torch.randn(5, 4)
    mean, log_std = context[:, :2], context[:, 2:]
    z, logabsdet = transform(x)
    reference = torch.distributions.Normal(mean, log_std.exp()).log_prob(z).sum(1) + logabsdet
    torch.testing.assert_close(conditional.log_prob(x, context), reference)


def test_builders_alternate_masks():
    flow = fj.realnvp(6, num_layers=4, actnorm=True)
    couplings = [t for t in flow.transform if isinstance(t, fj.AffineCoupling)]
    assert len(couplings) == 4 and len(flow.transform) == 8
    for a, b in zip(couplings, couplings[1:]):
        assert torch.equal(a.mask, ~b.mask)
    checker = fj.alternating_masks(5, 2, "checkerboard")
    assert checker[0].tolist() == [False, True, False, True, False]
    nice = fj.nice(6, num_layers=3)
    assert sum(isinstance(t, fj.AdditiveCoupling) for t in nice.transform) == 3
    assert isinstance(nice.transform[-1], fj.ActNorm)


def test_elbo_and_iwae_are_log_prob_on_a_bijective_stack():
    flow = randomize_parameters(fj.realnvp(3, 4, 8, context_features=2).double(), 0.5)
    x, c = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    log_prob = flow.log_prob(x, c)
    torch.testing.assert_close(flow.elbo(x, c), log_prob, rtol=0, atol=1e-12)
    torch.testing.assert_close(flow.elbo(x, c, num_samples=5), log_prob, rtol=0, atol=1e-12)
    torch.testing.assert_close(flow.iwae(x, 7, c), log_prob, rtol=0, atol=1e-12)
    weights = flow.log_weights(x, c, num_samples=3)
    assert weights.shape == (6, 3)
    torch.testing.assert_close(weights, log_prob.unsqueeze(1).expand(-1, 3), rtol=0, atol=0)


def test_sample_takes_nflows_batch_size():
    flow = randomize_parameters(fj.realnvp(2, 2, 8), 0.5)
    torch.manual_seed(3)
    parts = flow.sample(25, batch_size=10)  # 10 + 10 + 5, drawn in turn
    torch.manual_seed(3)
    noise = torch.cat([torch.randn(10, 2), torch.randn(10, 2), torch.randn(5, 2)])
    torch.testing.assert_close(parts, flow.transform.inverse(noise)[0])
    conditional = fj.realnvp(2, 2, 8, context_features=1)
    # nflows 0.14 concatenates such batches along dim 0 and gets (12, 3, 2) or fails
    assert conditional.sample(7, context=torch.randn(4, 1), batch_size=3).shape == (4, 7, 2)


def test_temperature_scales_the_base_noise():
    flow = randomize_parameters(fj.realnvp(3, 4, 8), 0.5)
    zero_noise_image = flow.transform.inverse(torch.zeros(5, 3))[0]
    torch.testing.assert_close(flow.sample(5, temperature=0.0), zero_noise_image)
    torch.manual_seed(1)
    noise = torch.randn(4, 3)
    torch.manual_seed(1)
    cold = flow.sample(4, temperature=0.5)
    torch.testing.assert_close(cold, flow.transform.inverse(0.5 * noise)[0])
    nflows_base = fj.Flow(flow.transform, NflowsStandardNormal([3]))
    with pytest.raises(ValueError, match="temperature=0.5 needs a flowjoint base"):
        nflows_base.sample(2, temperature=0.5)


def test_empty_batches_give_empty_results():
    flow = fj.realnvp(2, 2, 8, context_features=1)
    assert flow.sample(3, context=torch.zeros(0, 1)).shape == (0, 3, 2)
    samples, log_prob = flow.sample_and_log_prob(3, context=torch.zeros(0, 1))
    assert samples.shape == (0, 3, 2) and log_prob.shape == (0, 3)
    assert flow.log_prob(torch.zeros(0, 2), torch.zeros(0, 1)).shape == (0,)
    assert flow.elbo(torch.zeros(0, 2), torch.zeros(0, 1)).shape == (0,)
    stochastic = fj.realnvp(2, 2, 8, preprocessing=[fj.UniformDequantization(4)])
    assert stochastic.elbo(torch.zeros(0, 2)).shape == (0,)
    assert stochastic.iwae(torch.zeros(0, 2), 5).shape == (0,)
    assert stochastic.log_weights(torch.zeros(0, 2), num_samples=3).shape == (0, 3)


def test_one_row_batches():
    flow = fj.realnvp(2, 2, 8, preprocessing=[fj.UniformDequantization(4)])
    x = torch.tensor([[1.0, 3.0]])
    assert flow.elbo(x).shape == (1,) and flow.iwae(x, 4).shape == (1,)


def test_actnorm_on_images_standardises_each_channel_over_batch_and_positions():
    x = torch.randn(8, 3, 5, 5) * torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1) + 4.0
    layer = fj.ActNorm(3)
    y, logabsdet = layer(x)
    torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(3), rtol=0, atol=1e-5)
    torch.testing.assert_close(y.std((0, 2, 3)), torch.ones(3), rtol=0, atol=1e-4)
    torch.testing.assert_close(logabsdet, (25 * layer.log_scale.sum()).expand(8))
