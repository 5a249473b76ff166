"""The Gaussian VAE as a two-coupling flow on (x, eps), and augmented normalizing flows."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal

from flowjoint import (
    MLP,
    AugmentedFlow,
    Compose,
    Flow,
    JointVAE,
    StandardNormal,
    decoder_coupling,
    encoder_coupling,
    jacobian,
    realnvp,
)
from flowjoint.augmented import LatentTransform
from flowjoint.testing import check_transform, randomize_parameters

D, d, H = 5, 3, 8


def x_kept_mask():
    return torch.tensor([False] * D + [True] * d)


@pytest.mark.parametrize("bound", [3.0, None], ids=["bound3", "unbounded"])
@pytest.mark.parametrize(
    "factory, mask",
    [
        (lambda b: encoder_coupling(D, d, MLP(D, 2 * d, H), b), x_kept_mask()),
        (lambda b: decoder_coupling(D, d, MLP(d, 2 * D, H), b), ~x_kept_mask()),
        (
            lambda b: LatentTransform(
                realnvp(d, num_layers=2, hidden_features=H, context_features=D).transform, D
            ),
            x_kept_mask(),
        ),
    ],
    ids=["encoder", "decoder", "latent-transform"],
)
def test_conformance(factory, mask, bound):
    report = check_transform(factory(bound), D + d, mask=mask, randomize=0.5)
    assert report.num_parameters_checked > 0


def shared_models(seed=0):
    torch.manual_seed(seed)
    encoder, decoder = MLP(D, 2 * d, H), MLP(d, 2 * D, H)
    vae = JointVAE(D, d, likelihood="gaussian", encoder=encoder, decoder=decoder)
    randomize_parameters(vae, 0.5, seed)
    vae.double()
    flow = AugmentedFlow(D, d, num_steps=1, encoder_nets=[encoder], decoder_nets=[decoder])
    return vae, flow


def test_gaussian_vae_is_a_two_coupling_flow():
    """JointVAE(gaussian) = Flow(Compose([encoder, decoder coupling]), N(0, I_{D+d}))."""
    vae, augmented = shared_models()
    x = torch.randn(7, D, dtype=torch.float64)
    eps = torch.randn(7, d, dtype=torch.float64)
    two_couplings = Flow(
        Compose([vae.encoder_coupling, vae.decoder_coupling()]), StandardNormal(D + d)
    ).double()
    expected = vae.log_prob(x, eps)
    inputs = torch.cat([x, eps], dim=1)
    torch.testing.assert_close(two_couplings.log_prob(inputs), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(augmented.log_prob(x, eps), expected, rtol=0, atol=1e-12)


def test_augmented_flow_log_prob_against_dense_jacobian():
    """log p(x, eps) = log N(f(x, eps)) + log|det J_f| for a two-step augmented flow."""
    torch.manual_seed(0)
    model = AugmentedFlow(D, d, num_steps=2, hidden_features=H, log_scale_bound=3.0)
    randomize_parameters(model, 0.3)
    model.double()
    x, eps = torch.randn(4, D, dtype=torch.float64), torch.randn(4, d, dtype=torch.float64)
    inputs = torch.cat([x, eps], dim=1)
    jac = jacobian(model.flow.transform, inputs)  # (4, D + d, D + d)
    noise = model.flow.transform(inputs)[0]
    ref = Normal(0.0, 1.0).log_prob(noise).sum(-1) + torch.linalg.slogdet(jac)[1]
    torch.testing.assert_close(model.log_prob(x, eps), ref, rtol=0, atol=1e-10)
    torch.manual_seed(1)
    elbo = model.elbo(x)
    torch.manual_seed(1)
    eps = torch.randn(4, 1, d, dtype=torch.float64).squeeze(1)
    ref = model.log_prob(x, eps) - Normal(0.0, 1.0).log_prob(eps).sum(-1)
    torch.testing.assert_close(elbo, ref, rtol=0, atol=1e-12)


def test_augmented_flow_methods_and_gradients():
    torch.manual_seed(0)
    model = AugmentedFlow(D, d, num_steps=2, hidden_features=(H, 4))
    x = torch.randn(6, D)
    assert model.elbo(x, 3).shape == (6,)
    assert model.iwae(x, 20, chunk_size=12).shape == (6,)
    assert model.sample(4).shape == (4, D)
    (-model.elbo(x).mean()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), name


def test_augmented_flow_bad_input():
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        AugmentedFlow(D, d, num_steps=0)
    with pytest.raises(ValueError, match="encoder_nets must hold num_steps=2"):
        AugmentedFlow(D, d, num_steps=2, encoder_nets=[MLP(D, 2 * d)])
    model = AugmentedFlow(D, d, hidden_features=H)
    with pytest.raises(ValueError, match="x must have 5 features"):
        model.elbo(torch.randn(3, D + 1))
    with pytest.raises(ValueError, match="eps must have the batch size"):
        model.log_prob(torch.randn(3, D), torch.randn(4, d))
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        model.iwae(torch.randn(3, D), 0)
    with pytest.raises(TypeError, match="net must be"):
        encoder_coupling(D, d, "mlp")


def test_decoder_coupling_needs_gaussian():
    with pytest.raises(ValueError, match="likelihood='gaussian'"):
        JointVAE(D, d, hidden_features=H).decoder_coupling()
