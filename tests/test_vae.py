"""JointVAE: the identities of DESIGN.md section 1, checked against independent code.

The VAE is the stack ``[Augment(d), encoder coupling (, flow-posterior layers)]`` on
``p(z) p(x|z)``. Everything runs in float64 with randomised parameters. References
are written here with torch.distributions, closed-form Gaussian algebra and dense
Jacobians (torch.func), never with the library's log-det code.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import (
    Bernoulli,
    Independent,
    MultivariateNormal,
    Normal,
    kl_divergence,
)

from flowjoint import (
    MLP,
    AugmentedState,
    JointVAE,
    UniformDequantization,
    block_structure,
    jacobian,
    realnvp,
)
from flowjoint.testing import randomize_parameters

pytestmark = pytest.mark.usefixtures("one_thread")

D, d, H = 5, 3, 8
LOG_2PI = math.log(2 * math.pi)
KINDS = ["bernoulli", "gaussian", "flow_posterior", "flow_prior", "gaussian_unbounded"]


def soft_clamp_ref(raw, bound):
    return raw if bound is None else bound * torch.tanh(raw / bound)


def log_normal(eps):
    """log N(eps; 0, I) per row, with torch.distributions."""
    return Normal(0.0, 1.0).log_prob(eps).sum(-1)


class Case:
    """A randomised float64 JointVAE and the nets it was built from."""

    def __init__(self, kind, seed=0):
        torch.manual_seed(seed)
        self.kind = kind
        self.gaussian = kind.startswith("gaussian")
        self.bound = None if kind == "gaussian_unbounded" else 3.0
        self.encoder = MLP(D, 2 * d, H)
        self.decoder = MLP(d, 2 * D if self.gaussian else D, H)
        self.prior = realnvp(d, num_layers=2, hidden_features=H) if kind == "flow_prior" else None
        self.post = (
            realnvp(d, num_layers=2, hidden_features=H, context_features=D).transform
            if kind == "flow_posterior"
            else None
        )
        self.model = JointVAE(
            D,
            d,
            likelihood="gaussian" if self.gaussian else "bernoulli",
            encoder=self.encoder,
            decoder=self.decoder,
            prior=self.prior,
            posterior_transform=self.post,
            log_scale_bound=self.bound,
        )
        randomize_parameters(self.model, 0.5, seed)
        self.model.double()

    def data(self, batch, seed=1):
        g = torch.Generator().manual_seed(seed)
        if self.gaussian:
            return torch.randn(batch, D, generator=g, dtype=torch.float64)
        return torch.bernoulli(torch.full((batch, D), 0.5, dtype=torch.float64), generator=g)

    # -- independent references -------------------------------------------------------

    def mu_sigma(self, x):
        mu, raw = self.encoder(x).chunk(2, dim=-1)
        return mu, soft_clamp_ref(raw, self.bound).exp()

    def latent(self, x, eps):
        mu, sigma = self.mu_sigma(x)
        z = mu + sigma * eps
        return self.post(z, context=x)[0] if self.post is not None else z

    def log_q(self, x, eps, z):
        if self.post is None:
            return Independent(Normal(*self.mu_sigma(x)), 1).log_prob(z)
        # Dense Jacobian of eps -> z per item; log q(z|x) = log N(eps) - log|det dz/deps|.
        jac = torch.func.jacrev(lambda e: self.latent(x, e).sum(0))(eps).permute(1, 0, 2)
        return log_normal(eps) - torch.linalg.slogdet(jac)[1]

    def log_p_z(self, z):
        if self.prior is not None:
            return self.prior.log_prob(z)
        return log_normal(z)

    def log_p_x_given_z(self, x, z):
        if self.gaussian:
            m, raw = self.decoder(z).chunk(2, dim=-1)
            return Normal(m, soft_clamp_ref(raw, self.bound).exp()).log_prob(x).sum(-1)
        return Bernoulli(logits=self.decoder(z)).log_prob(x).sum(-1)

    def textbook_elbo(self, x, eps):
        """log p(x|z) + log p(z) - log q(z|x) at z = T(x, eps)."""
        z = self.latent(x, eps)
        return self.log_p_x_given_z(x, z) + self.log_p_z(z) - self.log_q(x, eps, z)


@pytest.fixture(params=KINDS)
def case(request):
    return Case(request.param)


# -- the per-eps identity and the expectation --------------------------------------------


def test_one_sample_elbo_is_textbook(case):
    """log p(x, eps) - log N(eps) = log p(x|z) + log p(z) - log q(z|x), for each eps."""
    x = case.data(6)
    eps = torch.randn(6, d, dtype=torch.float64)
    log_w = case.model.log_prob(x, eps) - log_normal(eps)
    torch.testing.assert_close(log_w, case.textbook_elbo(x, eps), rtol=0, atol=1e-10)
    torch.testing.assert_close(case.model.encode(x, eps), case.latent(x, eps), rtol=0, atol=1e-12)


def test_elbo_iwae_and_log_weights_use_the_augment_draws(case):
    """elbo, iwae(K=1) and log_weights are the textbook ELBO at the eps Augment draws.

    Augment draws ``eps`` ``(batch * K, d)``, K consecutive rows per x; seeding the
    generator reproduces them here.
    """
    x, k = case.data(4), 3
    torch.manual_seed(3)
    eps = torch.randn(4 * k, d, dtype=torch.float64)  # row i * k + j: draw j of x_i
    ref = case.textbook_elbo(x.repeat_interleave(k, 0), eps).view(4, k)
    torch.manual_seed(3)
    torch.testing.assert_close(case.model.log_weights(x, num_samples=k), ref, rtol=0, atol=1e-10)
    torch.manual_seed(3)
    elbo = case.model.elbo(x, num_samples=k)
    torch.testing.assert_close(elbo, ref.mean(1), rtol=0, atol=1e-10)
    torch.manual_seed(3)
    iwae = case.model.iwae(x, k)
    torch.testing.assert_close(iwae, ref.logsumexp(1) - math.log(k), rtol=0, atol=1e-10)
    torch.manual_seed(3)
    one = case.textbook_elbo(x, torch.randn(4, d, dtype=torch.float64))  # K = 1
    torch.manual_seed(3)
    torch.testing.assert_close(case.model.iwae(x, 1), one, rtol=0, atol=1e-10)
    torch.manual_seed(3)
    torch.testing.assert_close(case.model.elbo(x), one, rtol=0, atol=1e-10)


@pytest.mark.parametrize("kind", ["bernoulli", "gaussian"])
def test_expected_joint_plus_entropy_is_elbo(kind):
    """E_eps[log p(x, eps)] + d/2 (1 + log 2 pi) = E_q[log p(x|z)] - KL(q || p)."""
    c = Case(kind)
    x, num = c.data(4), 4000
    torch.manual_seed(0)
    eps = torch.randn(4, num, d, dtype=torch.float64)
    x_rep = x.repeat_interleave(num, 0)
    joint = c.model.log_prob(x_rep, eps.reshape(-1, d)).view(4, num)
    entropy = 0.5 * d * (1 + LOG_2PI)  # H[N(0, I_d)]
    assert c.model.noise_entropy == pytest.approx(entropy, rel=1e-15)
    reference = Normal(torch.zeros(d, dtype=torch.float64), 1.0).entropy().sum().item()
    assert reference == pytest.approx(entropy, rel=1e-12)
    lhs = joint.mean(1) + entropy
    mu, sigma = c.mu_sigma(x)
    z = mu.unsqueeze(1) + sigma.unsqueeze(1) * eps  # (4, num, d)
    expected_log_lik = c.log_p_x_given_z(x_rep, z.reshape(-1, d)).view(4, num).mean(1)
    kl = kl_divergence(Normal(mu, sigma), Normal(0.0, 1.0)).sum(-1)
    rhs = expected_log_lik - kl
    # lhs - rhs is the Monte Carlo error of mean_k log p(z_k) alone (the same draws on
    # both sides); allow 5 standard errors. A wrong sign of sum log sigma moves lhs by
    # 2 sum log sigma, a wrong entropy by its own size: both far outside.
    se = log_normal(z).std(1) / math.sqrt(num)
    assert ((lhs - rhs).abs() < 5 * se).all(), (lhs - rhs, se)


def test_analytic_kl_elbo_is_textbook_at_the_same_draws():
    """elbo(analytic_kl=True) = mean_k log p(x | mu + sigma eps_k) - KL, KL from torch."""
    c = Case("bernoulli")
    x, k = c.data(5), 4
    torch.manual_seed(2)
    eps = torch.randn(5 * k, d, dtype=torch.float64)
    mu, sigma = c.mu_sigma(x)
    z = mu.repeat_interleave(k, 0) + sigma.repeat_interleave(k, 0) * eps
    log_lik = c.log_p_x_given_z(x.repeat_interleave(k, 0), z).view(5, k).mean(1)
    standard = Independent(Normal(torch.zeros_like(mu), 1.0), 1)
    kl = kl_divergence(Independent(Normal(mu, sigma), 1), standard)
    torch.manual_seed(2)
    analytic = c.model.elbo(x, num_samples=k, analytic_kl=True)
    torch.testing.assert_close(analytic, log_lik - kl, rtol=0, atol=1e-10)


def test_analytic_and_sampled_kl_agree_in_expectation():
    c = Case("gaussian")
    x, num = c.data(4), 4000
    torch.manual_seed(1)
    sampled = c.model.log_weights(x, num_samples=num)  # (4, num)
    torch.manual_seed(1)
    analytic = c.model.elbo(x, num_samples=num, analytic_kl=True)
    # With the same draws, log p(x|z) cancels: the difference is the sampled KL's error.
    se = sampled.std(1) / math.sqrt(num)
    assert ((sampled.mean(1) - analytic).abs() < 5 * se).all()


# -- the Jacobian of the encoder coupling -------------------------------------------------


def test_encoder_jacobian_is_block_lower_triangular(case):
    """J of (x, eps) -> (x, z) is [[I, 0], [dz/dx, diag sigma(x)]], log-det sum log sigma."""
    x, eps = case.data(4), torch.randn(4, d, dtype=torch.float64)
    state = AugmentedState(x, eps)
    coupling = case.model.encoder_coupling
    jac = jacobian(coupling, state)  # (4, D + d, D + d): x, then eps
    mask = torch.tensor([False] * D + [True] * d)
    structure = block_structure(jac, mask)
    assert structure.zero_blocks == (("kept", "transformed"),)
    assert structure.kept_is_identity and structure.transformed_is_diagonal
    assert structure.triangular
    _, sigma = case.mu_sigma(x)
    torch.testing.assert_close(jac[:, D:, D:].diagonal(dim1=1, dim2=2), sigma, rtol=0, atol=1e-12)
    outputs, logabsdet = coupling(state)
    torch.testing.assert_close(outputs.data, x, rtol=0, atol=0)
    torch.testing.assert_close(logabsdet, sigma.log().sum(-1), rtol=0, atol=1e-12)
    torch.testing.assert_close(logabsdet, torch.linalg.slogdet(jac)[1], rtol=0, atol=1e-10)
    assert bool(jac[:, D:, :D].abs().sum() > 0)  # z really depends on x
    # The whole encoder (with flow-posterior layers) keeps x: still block triangular.
    encoder = case.model.transform[1:]
    jac = jacobian(encoder, state)
    structure = block_structure(jac, mask)
    assert ("kept", "transformed") in structure.zero_blocks and structure.kept_is_identity
    torch.testing.assert_close(encoder(state)[1], torch.linalg.slogdet(jac)[1], rtol=0, atol=1e-10)


# -- the linear-Gaussian VAE ---------------------------------------------------------------


class LinearGaussianDecoder(nn.Module):
    """x = W z + b + s u: outputs the mean, then the (constant) log s."""

    def __init__(self, weight, bias, log_s):
        super().__init__()
        self.weight, self.bias = nn.Parameter(weight), nn.Parameter(bias)
        self.log_s = nn.Parameter(log_s)

    def forward(self, z):
        mean = z @ self.weight.T + self.bias  # (batch, D)
        return torch.cat([mean, self.log_s.expand_as(mean)], dim=1)  # (batch, 2D)


class LinearEncoder(nn.Module):
    """mu = A (x - b), log sigma constant."""

    def __init__(self, a, bias, log_sigma):
        super().__init__()
        self.a, self.bias = nn.Parameter(a), nn.Parameter(bias)
        self.log_sigma = nn.Parameter(log_sigma)

    def forward(self, x):
        mu = (x - self.bias) @ self.a.T  # (batch, d)
        return torch.cat([mu, self.log_sigma.expand_as(mu)], dim=1)  # (batch, 2d)


def linear_gaussian(perturb=0.0):
    """A linear-Gaussian VAE with W^T W diagonal, so that the exact posterior is diagonal.

    Returns the model and the closed-form marginal ``N(b, W W^T + s^2 I)``.
    """
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(D, d, generator=g, dtype=torch.float64))
    weight = q * torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)  # (D, d)
    bias = torch.randn(D, generator=g, dtype=torch.float64)
    s = 0.7
    # Exact posterior: precision I + W^T W / s^2 (diagonal), mean Sigma W^T (x - b) / s^2.
    post_var = 1.0 / (1.0 + (weight.square().sum(0)) / s**2)  # (d,)
    a = post_var.unsqueeze(1) * weight.T / s**2  # (d, D)
    log_sigma = 0.5 * post_var.log()
    if perturb:
        a = a + perturb * torch.randn(a.shape, generator=g, dtype=torch.float64)
        log_sigma = log_sigma + perturb
    model = JointVAE(
        D,
        d,
        likelihood="gaussian",
        encoder=LinearEncoder(a, bias.clone(), log_sigma),
        decoder=LinearGaussianDecoder(
            weight, bias, torch.full((D,), math.log(s), dtype=torch.float64)
        ),
        log_scale_bound=None,
    ).double()
    cov = weight @ weight.T + s**2 * torch.eye(D, dtype=torch.float64)
    return model, MultivariateNormal(bias, covariance_matrix=cov)


def test_optimal_encoder_makes_elbo_equal_log_marginal():
    """With q(z|x) = p(z|x), every importance weight equals p(x) = N(b, W W^T + s^2 I)."""
    model, marginal = linear_gaussian()
    x = marginal.sample((8,))
    log_px = marginal.log_prob(x)
    torch.testing.assert_close(model.elbo(x), log_px, rtol=0, atol=1e-10)
    torch.testing.assert_close(model.iwae(x, 7), log_px, rtol=0, atol=1e-10)
    weights = model.log_weights(x, num_samples=5)
    torch.testing.assert_close(weights, log_px.unsqueeze(1).expand(-1, 5), rtol=0, atol=1e-10)
    # The analytic-KL estimator is right only on average: log p(x|z) still varies with z.
    analytic = model.elbo(x, num_samples=4000, analytic_kl=True)
    torch.testing.assert_close(analytic, log_px, rtol=0, atol=0.05)


def iwae_means(model, x, ks, repeats):
    """Per K: the mean over ``repeats`` of IWAE_K summed over x, and its standard error."""
    means, ses = [], []
    for k in ks:
        values = model.iwae(x.repeat(repeats, 1), k, chunk_size=2**16).view(repeats, -1).sum(1)
        means.append(values.mean().item())
        ses.append(values.std().item() / math.sqrt(repeats))
    return means, ses


def test_iwae_below_marginal_and_approaches_it():
    """With a poor encoder, E[IWAE_K] < log p(x), rising towards it as K grows."""
    model, marginal = linear_gaussian(perturb=0.4)
    torch.manual_seed(0)
    x = marginal.sample((10,))
    log_px = marginal.log_prob(x).sum().item()
    ks = (1, 4, 16, 64, 256)
    means, ses = iwae_means(model, x, ks, repeats=100)
    gaps = [log_px - m for m in means]
    assert all(g > 5 * s for g, s in zip(gaps, ses)), (gaps, ses)
    assert all(a - b > 3 * math.hypot(s, t) for a, b, s, t in zip(gaps, gaps[1:], ses, ses[1:])), (
        gaps,
        ses,
    )
    assert gaps[-1] < 0.1 * gaps[0], gaps


def test_iwae_monotone_in_expectation_and_iwae_1_is_elbo():
    c = Case("bernoulli")
    x = c.data(10)
    torch.manual_seed(0)
    repeats = 200
    means, ses = iwae_means(c.model, x, (1, 2, 4, 16), repeats)
    assert all(
        b - a > 3 * math.hypot(s, t) for a, b, s, t in zip(means, means[1:], ses, ses[1:])
    ), (means, ses)
    elbo = c.model.elbo(x.repeat(repeats, 1)).view(repeats, 10).sum(1)
    se = math.hypot(ses[0], elbo.std().item() / math.sqrt(repeats))
    assert abs(elbo.mean().item() - means[0]) < 4 * se


def test_iwae_streaming_logsumexp_matches_one_pass():
    """Chunks folded by logaddexp give logsumexp over all K weights."""
    c = Case("bernoulli")
    x = c.data(3)
    weights = torch.randn(3, 10, dtype=torch.float64) * 30  # (batch, K), wide range
    position = 0

    def fixed(x_, context, k):
        nonlocal position
        position += k
        return weights[:, position - k : position]

    c.model._log_weights = fixed
    out = c.model.iwae(x, 10, chunk_size=9)  # 3 draws per chunk: 3 + 3 + 3 + 1
    assert position == 10
    torch.testing.assert_close(out, weights.logsumexp(1) - math.log(10), rtol=0, atol=1e-12)


# -- distributions, conveniences ---------------------------------------------------------


def test_posterior_and_likelihood_are_torch_distributions(case):
    x, eps = case.data(4), torch.randn(4, d, dtype=torch.float64)
    posterior = case.model.posterior(x)
    z = case.latent(x, eps)
    torch.testing.assert_close(posterior.log_prob(z), case.log_q(x, eps, z), rtol=0, atol=1e-10)
    assert posterior.rsample().shape == (4, d)
    assert posterior.rsample((2,)).shape == (2, 4, d)
    likelihood = case.model.likelihood(z)
    assert isinstance(likelihood, Independent)
    torch.testing.assert_close(
        likelihood.log_prob(x), case.log_p_x_given_z(x, z), rtol=0, atol=1e-12
    )
    assert case.model.decode(z).shape == (4, D)
    torch.testing.assert_close(case.model.decode(z), likelihood.mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(case.model.encode(x), case.latent(x, torch.zeros_like(eps)))


def test_prior_is_the_base_prior(case):
    z = torch.randn(6, d, dtype=torch.float64)
    torch.testing.assert_close(case.model.prior.log_prob(z), case.log_p_z(z), rtol=0, atol=1e-12)


def test_sample_and_dtype(case):
    samples = case.model.sample(7)
    assert samples.shape == (7, D) and samples.dtype == torch.float64
    if not case.gaussian:
        assert bool(((samples == 0) | (samples == 1)).all())
    assert case.model.sample(7, batch_size=3).shape == (7, D)


def test_gradients_reach_every_parameter(case):
    x = case.data(6)
    case.model.zero_grad()
    (-case.model.elbo(x, num_samples=2).mean()).backward()
    for name, p in case.model.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), name


def test_state_dict_round_trip(case):
    x, eps = case.data(3), torch.randn(3, d, dtype=torch.float64)
    clone = Case(case.kind, seed=5).model
    assert not torch.equal(clone.log_prob(x, eps), case.model.log_prob(x, eps))
    clone.load_state_dict(case.model.state_dict())
    torch.testing.assert_close(clone.log_prob(x, eps), case.model.log_prob(x, eps), rtol=0, atol=0)


def test_default_nets_and_float32():
    vae = JointVAE(784, 32)
    encoder = vae.encoder_coupling.elementwise.net.net
    widths = [m.out_features for m in encoder if hasattr(m, "weight")]
    assert widths == [512, 256, 64]
    widths = [m.out_features for m in vae.decoder.net if hasattr(m, "weight")]
    assert widths == [256, 512, 784]
    assert vae.decoder.family == "bernoulli"
    x = torch.bernoulli(torch.full((2, 784), 0.3))
    assert vae.elbo(x).dtype == torch.float32
    assert vae.iwae(x, 3).shape == (2,)


def test_default_encoder_predicts_log_variance():
    vae = JointVAE(D, d, hidden_features=H).double()
    randomize_parameters(vae, 0.5)
    x = torch.bernoulli(torch.full((4, D), 0.5, dtype=torch.float64))
    mu, log_var = vae.encoder_coupling.elementwise.net.net(x).chunk(2, dim=-1)
    posterior = vae.posterior(x)
    torch.testing.assert_close(posterior.base_dist.loc, mu, rtol=0, atol=1e-12)
    expected = (10 * torch.tanh(0.5 * log_var / 10)).exp()  # default bound 10 on log sigma
    torch.testing.assert_close(posterior.base_dist.scale, expected, rtol=0, atol=1e-12)


def test_gaussian_vae_with_preprocessing_counts_its_log_det():
    """log p(x, eps) with [Scale] before Augment = that of the model on scaled x + log-det."""
    from flowjoint import Scale

    c = Case("gaussian")
    scaled = JointVAE(
        D,
        d,
        likelihood="gaussian",
        encoder=c.encoder,
        decoder=c.decoder,
        log_scale_bound=c.bound,
        preprocessing=[Scale(0.5)],
    ).double()
    x, eps = c.data(4), torch.randn(4, d, dtype=torch.float64)
    expected = c.textbook_elbo(0.5 * x, eps) + log_normal(eps) + D * math.log(0.5)
    torch.testing.assert_close(scaled.log_prob(x, eps), expected, rtol=0, atol=1e-10)


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda m, x: m.log_prob(x[:, :4], torch.zeros(3, d)),
            r"inputs must have shape \(batch, 5\)",
        ),
        (lambda m, x: m.log_prob(x, torch.zeros(3, d + 1)), r"eps must have shape \(batch, 3\)"),
        (lambda m, x: m.log_prob(x, torch.zeros(2, d)), "eps must have the batch size"),
        (lambda m, x: m.log_prob(x), r"Augment.*use elbo\(inputs\) or iwae"),
        (lambda m, x: m.elbo(x, num_samples=0), "num_samples must be >= 1"),
        (lambda m, x: m.elbo(x, torch.zeros(3, 1)), "context must be None"),
        (lambda m, x: m.elbo(x, 5), "context must be None.*num_samples=5 by keyword"),
        (lambda m, x: m.iwae(x, 0), "num_samples must be >= 1"),
        (lambda m, x: m.iwae(x, 5, chunk_size=0), "chunk_size must be >= 1"),
        (lambda m, x: m.sample(0), "num_samples must be >= 1"),
        (lambda m, x: m.elbo(x[0]), r"inputs must have shape \(batch, \*event_shape\)"),
        (lambda m, x: m.likelihood(torch.zeros(3, d + 1)), r"z must have shape \(batch, 3\)"),
        (lambda m, x: m.elbo(x * 0.5), "binary.*likelihood='gaussian'"),
        (lambda m, x: m.iwae(x + 2, 3), "binary.*likelihood='gaussian'"),
        (lambda m, x: m.posterior(x * 0.5), "binary.*likelihood='gaussian'"),
        (lambda m, x: m.elbo(x.masked_fill(x == 1, math.inf)), "inputs must be binary"),
        (lambda m, x: m.elbo(x.masked_fill(x == 1, math.nan)), "inputs must be binary"),
        (lambda m, x: m.elbo(x + 1e-7), "inputs must be binary"),
        (lambda m, x: m.decoder_coupling, "decoder_coupling needs likelihood='gaussian'"),
    ],
    ids=[
        "x-width",
        "eps-width",
        "batch-mismatch",
        "log-prob-without-eps",
        "elbo-num-samples",
        "context",
        "num-samples-as-context",
        "iwae-num-samples",
        "chunk-size",
        "sample-num-samples",
        "x-1d",
        "z-width",
        "non-binary-elbo",
        "non-binary-iwae",
        "non-binary-posterior",
        "inf",
        "nan",
        "near-binary",
        "decoder-coupling",
    ],
)
def test_bad_input(call, match):
    model = JointVAE(D, d, hidden_features=H)
    x = torch.bernoulli(torch.full((3, D), 0.5))
    x[0, 0] = 1.0
    with pytest.raises(ValueError, match=match):
        call(model, x)


def test_bad_construction_and_validation_switch():
    with pytest.raises(ValueError, match="likelihood must be"):
        JointVAE(D, d, likelihood="poisson")
    with pytest.raises(TypeError, match="prior must be"):
        JointVAE(D, d, prior=Normal(0.0, 1.0))
    with pytest.raises(TypeError, match="net must be"):
        JointVAE(D, d, encoder="mlp")
    with pytest.raises(ValueError, match="latent_features must be >= 1"):
        JointVAE(D, 0)
    with pytest.raises(ValueError, match="likelihood='gaussian' with preprocessing"):
        JointVAE(D, d, preprocessing=[UniformDequantization(4)])
    x = torch.full((3, D), 0.5)
    assert JointVAE(D, d, hidden_features=H, validate=False).elbo(x).shape == (3,)
    with pytest.raises(ValueError, match="decoder must map"):
        JointVAE(D, d, decoder=nn.Linear(d, D + 1)).elbo(torch.ones(2, D))


def test_stochastic_preprocessing_refuses_exact_methods():
    vae = JointVAE(
        D, d, hidden_features=H, likelihood="gaussian", preprocessing=[UniformDequantization(4)]
    )
    x = torch.randint(0, 4, (3, D)).float()
    assert vae.elbo(x).shape == (3,) and vae.iwae(x, 4).shape == (3,)
    with pytest.raises(ValueError, match=r"UniformDequantization.*elbo or iwae"):
        vae.log_prob(x, torch.zeros(3, d))
    with pytest.raises(ValueError, match="UniformDequantization draws its output"):
        vae.posterior(x)
    with pytest.raises(ValueError, match="integer levels"):
        vae.elbo(x + 0.5)


@pytest.mark.parametrize("kind", ["flow_posterior", "flow_prior"])
def test_analytic_kl_needs_gaussian_posterior_and_prior(kind):
    c = Case(kind)
    with pytest.raises(ValueError, match="analytic_kl=True needs"):
        c.model.elbo(c.data(2), analytic_kl=True)


@pytest.mark.slow
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_compiles_fullgraph(likelihood):
    """log_prob, elbo and iwae trace without graph breaks (no Python branching on values)."""
    torch.manual_seed(0)
    vae = JointVAE(20, 4, hidden_features=16, likelihood=likelihood)
    x = torch.bernoulli(torch.full((8, 20), 0.5))
    eps = torch.randn(8, 4)
    compiled = torch.compile(vae.log_prob, fullgraph=True)
    torch.testing.assert_close(compiled(x, eps), vae.log_prob(x, eps))
    # Compiled code draws eps from its own random stream, so compare shapes only.
    assert torch.compile(vae.elbo, fullgraph=True)(x).isfinite().all()
    iwae = torch.compile(lambda x: vae.iwae(x, 10, chunk_size=32), fullgraph=True)
    assert iwae(x).shape == (8,)


def test_bernoulli_log_likelihood_of_k_draws_under_vmap_and_promotion():
    from torch.func import vmap

    torch.manual_seed(0)
    from flowjoint import BernoulliDecoder

    decoder = BernoulliDecoder(torch.nn.Linear(3, 5), 5)
    z = torch.randn(6, 3)  # K = 3 draws for each of 2 rows of x
    xs = torch.bernoulli(torch.full((4, 2, 5), 0.5))
    batched = vmap(lambda x: decoder.log_prob(x, z))(xs)
    looped = torch.stack([decoder.log_prob(x, z) for x in xs])
    torch.testing.assert_close(batched, looped)
    logits = decoder.net(z).view(2, 3, 5)
    expected = (logits * xs[0].unsqueeze(1) - torch.nn.functional.softplus(logits)).sum(-1)
    torch.testing.assert_close(looped[0], expected.flatten())
