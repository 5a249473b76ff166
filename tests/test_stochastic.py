"""Stochastic layers and the objectives of Flow, checked against independent computations.

* On a bijective stack, ``elbo``, ``iwae`` and ``log_weights`` are ``log_prob``.
* ``[UniformDequantization, flow]`` on integer data: IWAE_K over ``u`` rises with K
  towards ``log P(x) = log int_cell p(y) dy``, computed here by Gauss-Legendre
  quadrature over the unit cells (1-D and 2-D); its ELBO is ``int_cell log p(y) dy``.
* ``VariationalDequantization``: its contribution is ``-log q(u|x)`` with ``q`` a
  ``TransformedDistribution(Normal(mu, sigma), SigmoidTransform())``; its ELBO
  matches Gauss-Hermite quadrature over ``eps`` and its IWAE stays below ``log P(x)``.
* ``Augment``: its contribution is ``-log N(eps)``.
* K draws per x: the layers before and inside the stochastic layer that depend on x
  alone run once per x (counted with forward hooks), and the K log-weights equal K
  one-sample passes with the same noise.
* Convolutional JointVAE and AugmentedFlow on (1, 8, 8) images; bad input; empty
  batches and a batch of one.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from nflows.transforms import PiecewiseRationalQuadraticCDF
from torch.distributions import (
    Bernoulli,
    Independent,
    Normal,
    SigmoidTransform,
    TransformedDistribution,
)

from flowjoint import (
    AffineCoupling,
    Augment,
    AugmentedFlow,
    AugmentedState,
    Compose,
    Flow,
    JointNormal,
    JointVAE,
    Logit,
    Scale,
    StandardNormal,
    UniformDequantization,
    VariationalDequantization,
    checkerboard_mask,
    coupling_flow,
    nice,
    realnvp,
)
from flowjoint.testing import check_transform, randomize_parameters

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64


def log_normal(values):
    """log N(values; 0, I) summed over the event, with torch.distributions."""
    return Normal(0.0, 1.0).log_prob(values).flatten(1).sum(1)


def soft_clamp_ref(raw, bound):
    return raw if bound is None else bound * torch.tanh(raw / bound)


# -- models on which the references are computed ----------------------------------------


def spline_density(levels, seed=0):
    """A bijective 1-D flow on ``[0, levels)``: scale, logit, a randomised spline."""
    torch.manual_seed(seed)
    spline = PiecewiseRationalQuadraticCDF([1], num_bins=6, tails="linear", tail_bound=3.0)
    randomize_parameters(spline, 0.5, seed)
    return Flow(Compose([Scale(1 / levels), Logit(0.05), spline]), StandardNormal(1)).double()


def realnvp_density(levels, seed=0):
    """A bijective 2-D flow on ``[0, levels)^2``: scale, logit, two randomised couplings."""
    torch.manual_seed(seed)
    flow = realnvp(2, num_layers=2, hidden_features=8)
    randomize_parameters(flow, 0.15, seed)
    layers = [Scale(1 / levels), Logit(0.05), *flow.transform]
    return Flow(Compose(layers), StandardNormal(2)).double()


def dequantized(layer, density):
    """The stack ``[layer, *density's layers]`` on ``density``'s base."""
    return Flow(Compose([layer, *density.transform]), density.base).double()


def cells(levels, dims):
    """Every integer point of ``{0..levels-1}^dims``, ``(levels^dims, dims)``."""
    grid = torch.cartesian_prod(*[torch.arange(levels, dtype=F64)] * dims)
    return grid.view(-1, dims)


def gauss_legendre(subintervals, points):
    """Composite Gauss-Legendre nodes and weights on ``[0, 1]``."""
    t, w = np.polynomial.legendre.leggauss(points)
    left = np.arange(subintervals)[:, None] / subintervals
    nodes = (left + (t[None, :] + 1) / (2 * subintervals)).ravel()
    weights = np.tile(w / (2 * subintervals), subintervals)
    return torch.tensor(nodes), torch.tensor(weights)


@torch.no_grad()
def integrate_cells(density, points, subintervals):
    """Per cell ``x``: ``log int p(x + u) du`` and ``int log p(x + u) du`` over ``[0, 1)^D``."""
    dims = points.shape[1]
    u, w = gauss_legendre(subintervals, 4)
    nodes = torch.cartesian_prod(*[u] * dims).view(-1, dims)  # (n^D, D)
    weights = torch.cartesian_prod(*[w] * dims).view(-1, dims).prod(1)  # (n^D,)
    log_p = torch.stack([density.log_prob(x + nodes) for x in points])  # (cells, n^D)
    return (log_p + weights.log()).logsumexp(1), (log_p * weights).sum(1)


@torch.no_grad()
def iwae_totals(stack, points, ks, repeats):
    """Per K: the mean over ``repeats`` of ``sum_x IWAE_K(x)`` and its standard error."""
    means, ses = [], []
    for k in ks:
        values = stack.iwae(points.repeat(repeats, 1), k).view(repeats, -1).sum(1)
        means.append(values.mean().item())
        ses.append(values.std().item() / math.sqrt(repeats))
    return means, ses


# -- bijective stacks: every objective is log_prob ----------------------------------------


def _image_flow():
    mask = checkerboard_mask((1, 4, 4))
    layers = [AffineCoupling(mask, hidden_features=4), AffineCoupling(~mask, hidden_features=4)]
    return Flow(Compose(layers), StandardNormal((1, 4, 4)))


def _augmented_couplings():
    vae = JointVAE(3, 2, hidden_features=8, likelihood="gaussian")
    return Flow(Compose([vae.encoder_coupling, vae.decoder_coupling]), JointNormal(3, 2))


BIJECTIVE = {
    "realnvp": (lambda: realnvp(3, num_layers=4, hidden_features=8), (3,), 0),
    "nice": (lambda: nice(3, num_layers=2, hidden_features=8), (3,), 0),
    "spline": (lambda: coupling_flow(3, 2, 8, coupling="spline"), (3,), 0),
    "context": (lambda: realnvp(3, num_layers=2, hidden_features=8, context_features=2), (3,), 2),
    "preprocessed": (
        lambda: realnvp(3, num_layers=2, hidden_features=8, preprocessing=[Scale(0.25), Logit()]),
        (3,),
        0,
    ),
    "image": (_image_flow, (1, 4, 4), 0),
    "vae-couplings": (_augmented_couplings, None, 0),
}


@pytest.mark.parametrize("name", list(BIJECTIVE))
def test_bijective_stack_objectives_are_log_prob(name):
    factory, shape, context_features = BIJECTIVE[name]
    flow = randomize_parameters(factory(), 0.3).double()
    assert not flow.stochastic
    if shape is None:  # a stack after Augment takes (x, eps)
        inputs = AugmentedState(torch.randn(6, 3, dtype=F64), torch.randn(6, 2, dtype=F64))
    else:
        inputs = torch.rand(6, *shape, dtype=F64) * 4
    context = torch.randn(6, context_features, dtype=F64) if context_features else None
    log_prob = flow.log_prob(inputs, context)
    assert log_prob.shape == (6,) and bool(log_prob.isfinite().all())
    tol = {"rtol": 1e-12, "atol": 1e-12}
    torch.testing.assert_close(flow.elbo(inputs, context), log_prob, **tol)
    torch.testing.assert_close(flow.elbo(inputs, context, num_samples=4), log_prob, **tol)
    torch.testing.assert_close(flow.iwae(inputs, 7, context), log_prob, **tol)
    torch.testing.assert_close(flow.iwae(inputs, 7, context, chunk_size=1), log_prob, **tol)
    weights = flow.log_weights(inputs, context, num_samples=3)
    torch.testing.assert_close(weights, log_prob.unsqueeze(1).expand(6, 3), **tol)


# -- uniform dequantization against quadrature over the cells ----------------------------


@pytest.mark.parametrize("dims", [1, 2], ids=["1d", "2d"])
def test_uniform_dequantization_iwae_below_and_towards_integrated_log_p(dims):
    levels = 4 if dims == 1 else 3
    density = spline_density(levels) if dims == 1 else realnvp_density(levels)
    stack = dequantized(UniformDequantization(levels), density)
    points = cells(levels, dims)
    subintervals = 400 if dims == 1 else 20
    log_p, elbo = integrate_cells(density, points, subintervals)
    coarse, _ = integrate_cells(density, points, subintervals // 2)
    assert (log_p - coarse).abs().max() < 1e-4  # the quadrature has converged
    assert log_p.exp().sum() <= 1.0  # probabilities of disjoint cells
    # E_u[log p(x + u)] with q(u) = 1: the uniform layer contributes exactly 0.
    torch.manual_seed(0)
    repeats = 2000
    with torch.no_grad():
        sampled = stack.elbo(points.repeat(repeats, 1)).view(repeats, -1).sum(1)
    se = sampled.std().item() / math.sqrt(repeats)
    assert abs(sampled.mean().item() - elbo.sum().item()) < 4 * se
    # IWAE_K: below log P(x) in expectation, rising towards it.
    ks = (1, 8, 64)
    means, ses = iwae_totals(stack, points, ks, repeats=1200)  # 300 left K = 8 and 64 within 3 SE
    gaps = [log_p.sum().item() - m for m in means]
    assert gaps[0] > 5 * ses[0], (gaps, ses)  # the test has room to fail
    assert all(g > -3 * s for g, s in zip(gaps, ses)), (gaps, ses)
    # Non-decreasing in K (within 3 standard errors: the later steps are small), and
    # clearly rising from K = 1 to the largest K.
    for a, b, s, t in zip(gaps, gaps[1:], ses, ses[1:]):
        assert a - b > -3 * math.hypot(s, t), (gaps, ses)
    assert gaps[0] - gaps[-1] > 5 * math.hypot(ses[0], ses[-1]), (gaps, ses)
    assert gaps[-1] < 0.05 * gaps[0], gaps


# -- variational dequantization ---------------------------------------------------------


def vd_log_q(layer, inputs, u, bound=3.0):
    """log q(u | x): a logit-normal density from torch.distributions, (rows,)."""
    params = layer.affine.net(inputs / layer.levels - 0.5)  # (rows, 2C, *rest)
    mu, raw = params.chunk(2, dim=1)
    q = TransformedDistribution(Normal(mu, soft_clamp_ref(raw, bound).exp()), SigmoidTransform())
    return q.log_prob(u).flatten(1).sum(1)


def variational(shape, levels, seed=1):
    """A randomised layer whose draws stay well inside (0, 1) (the conv net is deeper)."""
    layer = VariationalDequantization(shape, levels, hidden_features=8)
    std = 0.5 if isinstance(shape, int) or len(shape) == 1 else 0.1
    return randomize_parameters(layer, std, seed).double()


@pytest.mark.parametrize("shape", [(3,), (1, 4, 4)], ids=["vector", "image"])
def test_variational_dequantization_contribution_is_minus_log_q(shape):
    levels = 8
    layer = variational(shape, levels)
    x = torch.randint(0, levels, (5, *shape)).to(F64)
    torch.manual_seed(2)
    y, log_weight = layer(x, num_samples=3)
    assert y.shape == (15, *shape) and log_weight.shape == (15,)
    repeated = x.repeat_interleave(3, 0)
    u = y - repeated
    assert bool(((u > 0) & (u < 1)).all())
    torch.testing.assert_close(log_weight, -vd_log_q(layer, repeated, u), rtol=1e-10, atol=1e-10)
    # The draws are the documented map of eps ~ N(0, I): u = sigmoid(mu + sigma * eps).
    torch.manual_seed(2)
    eps = torch.randn(15, *shape, dtype=F64)
    mu, raw = layer.affine.net(repeated / levels - 0.5).chunk(2, dim=1)
    expected = torch.sigmoid(mu + soft_clamp_ref(raw, 3.0).exp() * eps)
    torch.testing.assert_close(u, expected, rtol=0, atol=1e-12)


def test_variational_dequantization_elbo_and_iwae_against_quadrature():
    """ELBO = E_eps[log p(x + u) - log q(u|x)] by Gauss-Hermite; IWAE_K <= log P(x)."""
    levels = 4
    density = spline_density(levels)
    layer = variational(1, levels)
    stack = dequantized(layer, density)
    points = cells(levels, 1)
    log_p, _ = integrate_cells(density, points, 400)
    t, w = np.polynomial.hermite_e.hermegauss(80)  # weight exp(-eps^2 / 2)
    eps, w = torch.tensor(t), torch.tensor(w) / math.sqrt(2 * math.pi)
    with torch.no_grad():
        mu, raw = layer.affine.net(points / levels - 0.5).chunk(2, dim=1)  # (levels, 1)
        u = torch.sigmoid(mu + soft_clamp_ref(raw, 3.0).exp() * eps)  # (levels, n)
        log_q = TransformedDistribution(
            Normal(mu, soft_clamp_ref(raw, 3.0).exp()), SigmoidTransform()
        ).log_prob(u)
        log_py = density.log_prob((points + u).reshape(-1, 1)).view(levels, -1)
        elbo = ((log_py - log_q) * w).sum(1)  # (levels,)
        torch.manual_seed(0)
        sampled = stack.elbo(points.repeat(2000, 1)).view(2000, -1).sum(1)
    se = sampled.std().item() / math.sqrt(2000)
    assert abs(sampled.mean().item() - elbo.sum().item()) < 4 * se
    # The bound holds for any q; this q is narrow, so IWAE rises slowly.
    means, ses = iwae_totals(stack, points, (1, 8, 64), repeats=200)
    gaps = [log_p.sum().item() - m for m in means]
    assert all(g > 5 * s for g, s in zip(gaps, ses)), (gaps, ses)
    for a, b, s, t in zip(gaps, gaps[1:], ses, ses[1:]):
        assert a - b > 3 * math.hypot(s, t), (gaps, ses)


# -- the harness on each stochastic layer -----------------------------------------------


def _integers(levels, shape):
    return torch.randint(0, levels, (5, *shape)).to(F64)


@pytest.mark.parametrize("shape", [(4,), (1, 4, 4)], ids=["vector", "image"])
def test_harness_augment(shape):
    def reference(inputs, outputs, context):
        return -log_normal(outputs.latent)

    report = check_transform(Augment(3), shape, reference_log_weight=reference)
    assert report.logabsdet_error <= 1e-10


@pytest.mark.parametrize("shape", [(4,), (1, 4, 4)], ids=["vector", "image"])
def test_harness_uniform_dequantization(shape):
    def reference(inputs, outputs, context):
        u = outputs - inputs
        assert bool(((u > 0) & (u < 1)).all())
        return inputs.new_zeros(inputs.shape[0])  # log 1 - log 1

    layer = UniformDequantization(6)
    check_transform(layer, inputs=_integers(6, shape), reference_log_weight=reference)


@pytest.mark.parametrize("shape", [(4,), (1, 4, 4)], ids=["vector", "image"])
def test_harness_variational_dequantization(shape):
    layer = variational(shape, 6)

    def reference(inputs, outputs, context):
        return -vd_log_q(layer, inputs, outputs - inputs)

    report = check_transform(
        layer,
        inputs=_integers(6, shape),
        randomize=None,
        reference_log_weight=reference,
        reload_into=variational(shape, 6, seed=7),
    )
    assert report.num_parameters_checked > 0


# -- K draws per x: what depends on x runs once, and equals K one-sample passes ----------


class Calls:
    """Rows seen by each call of a module, recorded by a forward hook."""

    def __init__(self, module):
        self.rows = []
        self.handle = module.register_forward_hook(
            lambda mod, args, out: self.rows.append(args[0].shape[0])
        )


def gaussian_vae(preprocessing=(), seed=0):
    torch.manual_seed(seed)
    vae = JointVAE(4, 2, hidden_features=8, likelihood="gaussian", preprocessing=preprocessing)
    return randomize_parameters(vae, 0.3, seed).double()


def test_vae_encoder_runs_once_per_x_and_chunk():
    vae = gaussian_vae()
    calls = Calls(vae.encoder_coupling.elementwise.net)
    x = torch.randn(4, 4, dtype=F64)
    vae.iwae(x, 10)
    assert calls.rows == [4]  # one call for the 10 draws of each x
    calls.rows.clear()
    vae.elbo(x, num_samples=10)
    assert calls.rows == [4]
    calls.rows.clear()
    vae.iwae(x, 10, chunk_size=12)  # 3 draws per x per chunk: 4 chunks
    assert calls.rows == [4, 4, 4, 4]


def test_augmented_flow_first_encoder_runs_once_per_x():
    torch.manual_seed(0)
    model = AugmentedFlow(4, 2, num_steps=2, hidden_features=8).double()
    first = Calls(model.encoder_couplings[0].elementwise.net)
    second = Calls(model.encoder_couplings[1].elementwise.net)
    model.iwae(torch.randn(3, 4, dtype=F64), 5)
    assert first.rows == [3]  # x alone
    assert second.rows == [15]  # after the first decoder, x depends on z


def test_variational_dequantization_conditioner_runs_once_per_x():
    layer = variational(3, 8)
    calls = Calls(layer.affine.net)
    stack = dequantized(layer, realnvp(3, num_layers=2, hidden_features=8))
    stack.iwae(torch.randint(0, 8, (4, 3)).to(F64), 6)
    assert calls.rows == [4]


def test_vae_k_draws_equal_k_one_sample_passes():
    vae = gaussian_vae()
    x, k = torch.randn(3, 4, dtype=F64), 5
    torch.manual_seed(1)
    weights = vae.log_weights(x, num_samples=k)  # (3, k)
    torch.manual_seed(1)
    eps = torch.randn(3 * k, 2, dtype=F64)  # Augment's draws: row i * k + j for x_i
    for j in range(k):
        e = eps[j::k]
        torch.testing.assert_close(
            weights[:, j], vae.log_prob(x, e) - log_normal(e), rtol=1e-12, atol=1e-12
        )


def test_uniform_dequantization_k_draws_with_context_equal_one_sample_passes():
    """With a context, Compose repeats it for the K draws of each x."""
    torch.manual_seed(0)
    density = randomize_parameters(
        realnvp(2, num_layers=2, hidden_features=8, context_features=3), 0.3
    ).double()
    stack = Flow(
        Compose([UniformDequantization(4), Scale(0.25), Logit(0.05), *density.transform]),
        density.base,
    )
    bijective = Flow(Compose(list(stack.transform)[1:]), density.base)
    x, c, k = torch.randint(0, 4, (3, 2)).to(F64), torch.randn(3, 3, dtype=F64), 4
    torch.manual_seed(1)
    weights = stack.log_weights(x, c, num_samples=k)
    torch.manual_seed(1)
    u = torch.rand(3 * k, 2, dtype=F64)
    for j in range(k):
        expected = bijective.log_prob(x + u[j::k], c)
        torch.testing.assert_close(weights[:, j], expected, rtol=1e-12, atol=1e-12)


def test_variational_dequantization_k_draws_equal_one_sample_passes():
    layer = variational(2, 4)
    density = randomize_parameters(realnvp(2, num_layers=2, hidden_features=8), 0.3).double()
    stack = dequantized(layer, density)
    x, k = torch.randint(0, 4, (3, 2)).to(F64), 4
    torch.manual_seed(1)
    weights = stack.log_weights(x, num_samples=k)
    torch.manual_seed(1)
    eps = torch.randn(3 * k, 2, dtype=F64)
    mu, raw = layer.affine.net(x / 4 - 0.5).chunk(2, dim=1)
    sigma = soft_clamp_ref(raw, 3.0).exp()
    for j in range(k):
        u = torch.sigmoid(mu + sigma * eps[j::k])
        expected = density.log_prob(x + u) - vd_log_q(layer, x, u)
        torch.testing.assert_close(weights[:, j], expected, rtol=1e-10, atol=1e-10)


def test_two_stochastic_layers_dequantized_vae():
    """[UniformDequantization, Augment, encoder]: u then eps, both K times per x."""
    vae = gaussian_vae(preprocessing=[UniformDequantization(4)])
    plain = JointVAE(
        4,
        2,
        likelihood="gaussian",
        encoder=vae.encoder_coupling.elementwise.net,
        decoder=vae.decoder.net,
    ).double()
    x, k = torch.randint(0, 4, (3, 4)).to(F64), 3
    torch.manual_seed(1)
    weights = vae.log_weights(x, num_samples=k)
    torch.manual_seed(1)
    u = torch.rand(3 * k, 4, dtype=F64)
    eps = torch.randn(3 * k, 2, dtype=F64)
    expected = plain.log_prob(x.repeat_interleave(k, 0) + u, eps) - log_normal(eps)
    torch.testing.assert_close(weights, expected.view(3, k), rtol=1e-12, atol=1e-12)


# -- images ----------------------------------------------------------------------------

IMAGE = (1, 8, 8)


def test_convolutional_vae_on_images():
    torch.manual_seed(0)
    vae = randomize_parameters(JointVAE(IMAGE, 3, hidden_features=16), 0.1).double()
    x = torch.bernoulli(torch.full((4, *IMAGE), 0.5, dtype=F64))
    eps = torch.randn(4, 3, dtype=F64)
    # The per-eps identity, written with torch.distributions.
    net = vae.encoder_coupling.elementwise.net
    mu, log_sigma = net(x).chunk(2, dim=1)
    sigma = soft_clamp_ref(log_sigma, 10.0).exp()
    z = mu + sigma * eps
    log_lik = Independent(Bernoulli(logits=vae.decoder.net(z)), 3).log_prob(x)
    textbook = log_lik + log_normal(z) - Independent(Normal(mu, sigma), 1).log_prob(z)
    torch.testing.assert_close(
        vae.log_prob(x, eps) - log_normal(eps), textbook, rtol=1e-12, atol=1e-10
    )
    calls = Calls(net)
    assert vae.elbo(x, num_samples=3).shape == (4,)
    assert vae.iwae(x, 5).shape == (4,)
    assert calls.rows == [4, 4]  # once per x for the K draws
    samples = vae.sample(3)
    assert samples.shape == (3, *IMAGE) and bool(((samples == 0) | (samples == 1)).all())
    assert vae.decode(z).shape == (4, *IMAGE) and vae.encode(x).shape == (4, 3)
    assert vae.posterior(x).rsample().shape == (4, 3)


def test_convolutional_gaussian_vae_with_pixel_preprocessing():
    torch.manual_seed(0)
    preprocessing = [UniformDequantization(4), Scale(0.25), Logit(0.05)]
    vae = JointVAE(IMAGE, 3, hidden_features=16, likelihood="gaussian", preprocessing=preprocessing)
    x = torch.randint(0, 4, (2, *IMAGE)).float()
    assert vae.elbo(x, num_samples=2).shape == (2,) and vae.iwae(x, 3).shape == (2,)
    samples = vae.sample(3)
    assert samples.shape == (3, *IMAGE) and torch.equal(samples, samples.floor())


def test_convolutional_augmented_flow_on_images():
    torch.manual_seed(0)
    model = randomize_parameters(AugmentedFlow(IMAGE, 3, num_steps=2, hidden_features=16), 0.1)
    model.double()
    x, eps = torch.randn(4, *IMAGE, dtype=F64), torch.randn(4, 3, dtype=F64)
    noise, logabsdet = model.transform[1:](AugmentedState(x, eps))
    expected = log_normal(noise.data) + log_normal(noise.latent) + logabsdet
    torch.testing.assert_close(model.log_prob(x, eps), expected, rtol=1e-12, atol=1e-12)
    back, _ = model.transform[1:].inverse(noise)
    torch.testing.assert_close(back.data, x, rtol=1e-9, atol=1e-9)
    calls = Calls(model.encoder_couplings[0].elementwise.net)
    assert model.elbo(x, num_samples=3).shape == (4,)
    assert model.iwae(x, 5).shape == (4,)
    assert calls.rows == [4, 4]
    assert model.sample(3).shape == (3, *IMAGE)


# -- bad input, empty batches, a batch of one --------------------------------------------


def test_log_prob_of_a_stochastic_stack_names_the_layer():
    stack = Flow(
        Compose([Scale(1.0), Compose([UniformDequantization(4), Scale(0.25)])]), StandardNormal(2)
    )
    x = torch.zeros(3, 2)
    assert stack.stochastic
    message = r"transform\[1\]\[0\] \(UniformDequantization\).*elbo\(inputs\) or iwae"
    with pytest.raises(ValueError, match=message):
        stack.log_prob(x)
    with pytest.raises(ValueError, match=message):
        stack.sample_and_log_prob(2)
    assert stack.elbo(x).shape == (3,)


@pytest.mark.parametrize(
    "layer",
    [UniformDequantization(), UniformDequantization(4), VariationalDequantization(2, 4)],
    ids=["uniform", "uniform-levels", "variational"],
)
@pytest.mark.parametrize(
    "value", [0.5, -1.0, math.nan, math.inf, 4.0], ids=["half", "negative", "nan", "inf", "top"]
)
def test_dequantization_refuses_non_integer_levels(layer, value):
    x = torch.tensor([[0.0, value]])
    if value == 4.0 and layer.levels is None:
        assert layer(x)[0].shape == (1, 2)  # no top without levels
        return
    with pytest.raises(ValueError, match=f"inputs of {type(layer).__name__} must be integer"):
        layer(x)
    stack = Flow(Compose([layer, Scale(0.25)]), StandardNormal(2))
    with pytest.raises(ValueError, match="must be integer levels"):
        stack.elbo(x)


def test_dequantization_validate_false_skips_the_check():
    layer = UniformDequantization(4, validate=False)
    assert layer(torch.tensor([[0.5, 1.0]]))[0].shape == (1, 2)


def _empty_and_single_models():
    torch.manual_seed(0)
    conditional = realnvp(2, num_layers=2, hidden_features=8, context_features=3)
    return {
        "vae": (JointVAE(4, 2, hidden_features=8), torch.ones(5, 4), None),
        "conv-vae": (JointVAE(IMAGE, 2, hidden_features=8), torch.ones(5, *IMAGE), None),
        "augmented": (AugmentedFlow(4, 2, hidden_features=8), torch.randn(5, 4), None),
        "uniform-context": (
            dequantized(UniformDequantization(4), conditional).float(),
            torch.ones(5, 2),
            torch.randn(5, 3),
        ),
        "variational": (
            dequantized(VariationalDequantization(2, 4, hidden_features=8), realnvp(2, 2, 8)),
            torch.ones(5, 2, dtype=F64),
            None,
        ),
    }


@pytest.mark.parametrize("name", ["vae", "conv-vae", "augmented", "uniform-context", "variational"])
def test_empty_batch_and_batch_of_one(name):
    model, x, c = _empty_and_single_models()[name]
    for rows in (0, 1):
        xs, cs = x[:rows], None if c is None else c[:rows]
        assert model.elbo(xs, cs).shape == (rows,)
        assert model.elbo(xs, cs, num_samples=3).shape == (rows,)
        assert model.iwae(xs, 4, cs).shape == (rows,)
        assert model.iwae(xs, 4, cs, chunk_size=1).shape == (rows,)
        assert model.log_weights(xs, cs, num_samples=3).shape == (rows, 3)
        if rows:
            assert bool(model.iwae(xs, 4, cs).isfinite().all())
    event = tuple(x.shape[1:])
    if c is None:
        assert model.sample(1).shape == (1, *event)
    else:
        assert model.sample(3, c[:0]).shape == (0, 3, *event)
        assert model.sample(2, c[:1]).shape == (1, 2, *event)


def test_generative_direction_floors_and_drops_eps():
    x = torch.tensor([[0.0, 3.0]], dtype=F64)
    y, _ = UniformDequantization(4)(x, num_samples=50)
    assert bool((y < 4).all()) and torch.equal(
        UniformDequantization(4).inverse(y)[0], x.expand(50, 2)
    )
    state, _ = Augment(3)(x, num_samples=4)
    assert torch.equal(Augment(3).inverse(state)[0], x)
    assert bool(Augment(3).inverse(state)[1].isnan().all())
    with pytest.raises(TypeError, match="AugmentedState"):
        Augment(3).inverse(x)


class ConstantNet(torch.nn.Module):
    """A conditioner giving ``mu = value`` and ``log sigma = 0`` everywhere."""

    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, context):
        mu = torch.full_like(context, self.value)
        return torch.cat([mu, torch.zeros_like(context)], dim=1)  # (batch, 2C, ...)


def test_dequantized_values_stay_below_the_next_level_in_float32(monkeypatch):
    """255 + u rounds to 256 in float32 for u > 1 - 2^-17; the layers keep x + u < x + 1."""
    x = torch.tensor([[0.0, 255.0]])
    largest_below_one = 1 - 2**-24  # float32
    monkeypatch.setattr(torch, "rand_like", lambda t: torch.full_like(t, largest_below_one))
    y, _ = UniformDequantization(256)(x)
    assert bool((y < x + 1).all()) and torch.equal(y.floor(), x)
    monkeypatch.undo()
    # sigmoid(30) is 1.0 in float32.
    layer = VariationalDequantization(2, 256, net=ConstantNet(30.0))
    y, log_weight = layer(x, num_samples=3)
    assert bool((y < x + 1).all()) and torch.equal(y.floor(), x.expand(3, 2))
    assert bool(log_weight.isfinite().all())


@pytest.mark.parametrize(
    "layer",
    [UniformDequantization(4), VariationalDequantization(2, 4)],
    ids=["uniform", "variational"],
)
def test_samples_of_a_dequantized_flow_are_levels(layer):
    """The logit's squeeze lets a flow's samples fall just outside [0, levels): floor,
    then the nearest level."""
    torch.manual_seed(0)
    flow = realnvp(2, num_layers=2, hidden_features=8)
    stack = Flow(Compose([layer, Scale(0.25), Logit(0.05), *flow.transform]), flow.base)
    samples = stack.sample(5000)  # about 0.3% land beyond each end
    assert torch.equal(samples, samples.floor())
    assert bool(((samples >= 0) & (samples <= 3)).all())
    outside = torch.tensor([[-0.2, 4.2]])
    assert layer.inverse(outside)[0].tolist() == [[0.0, 3.0]]
    assert UniformDequantization().inverse(outside)[0].tolist() == [[0.0, 4.0]]
