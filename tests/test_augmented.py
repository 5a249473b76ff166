"""The Gaussian VAE as a two-coupling flow on (x, eps), and augmented normalizing flows.

After ``Augment``, the state is ``AugmentedState(x, eps)``. The references here are
written independently: plain :class:`AffineCoupling` layers on the concatenated
``(D + d)`` vector, dense Jacobians from ``torch.func`` and ``slogdet``, and
torch.distributions densities.
"""

from __future__ import annotations

import pytest
import torch
from nflows.transforms import InverseTransform
from torch.distributions import Normal

import flowjoint as fj
from flowjoint import (
    MLP,
    AffineCoupling,
    AugmentedFlow,
    AugmentedState,
    Compose,
    Flow,
    JointNormal,
    JointVAE,
    LatentTransform,
    StandardNormal,
    decoder_coupling,
    encoder_coupling,
    jacobian,
    realnvp,
)
from flowjoint.testing import check_transform, randomize_parameters

pytestmark = pytest.mark.usefixtures("one_thread")

D, d, H = 5, 3, 8


def log_normal(values):
    return Normal(0.0, 1.0).log_prob(values).sum(-1)


def state(batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, D, generator=g, dtype=torch.float64)
    return AugmentedState(x, torch.randn(batch, d, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("bound", [3.0, None], ids=["bound3", "unbounded"])
@pytest.mark.parametrize(
    "factory, kept",
    [
        (lambda b: encoder_coupling(D, d, MLP(D, 2 * d, H), b), "data"),
        (lambda b: decoder_coupling(D, d, MLP(d, 2 * D, H), b), "latent"),
        (
            lambda b: LatentTransform(
                realnvp(d, num_layers=2, hidden_features=H, context_features=D).transform
            ),
            "data",
        ),
    ],
    ids=["encoder", "decoder", "latent-transform"],
)
def test_conformance(factory, kept, bound):
    """Inverse both ways, log-det against the dense Jacobian of (x, eps), gradients, state."""
    layer = factory(bound)
    report = check_transform(layer, inputs=state(5), randomize=0.5)
    assert report.num_parameters_checked > 0
    # The kept part passes through bit-identical, both ways.
    randomize_parameters(layer.double(), 0.5)
    inputs = state(4, seed=1)
    outputs, _ = layer(inputs)
    assert torch.equal(getattr(outputs, kept), getattr(inputs, kept))
    back, _ = layer.inverse(inputs)
    assert torch.equal(getattr(back, kept), getattr(inputs, kept))


def shared_models(bound=3.0, seed=0):
    """A Gaussian JointVAE, an AugmentedFlow with one step and plain couplings, one pair of nets."""
    torch.manual_seed(seed)
    encoder, decoder = MLP(D, 2 * d, H), MLP(d, 2 * D, H)
    randomize_parameters(encoder, 0.5, seed)
    randomize_parameters(decoder, 0.5, seed + 1)
    encoder.double(), decoder.double()
    vae = JointVAE(
        D, d, likelihood="gaussian", encoder=encoder, decoder=decoder, log_scale_bound=bound
    )
    augmented = AugmentedFlow(
        D, d, num_steps=1, encoder_nets=[encoder], decoder_nets=[decoder], log_scale_bound=bound
    )
    # Written without the augmented layers: on cat([x, eps]), the encoder transforms eps
    # given x; the decoder maps x to u = (x - m(z)) / s(z) given z, the inverse of Real
    # NVP's y = t + exp(s) * x with x transformed and z kept.
    eps_transformed = torch.tensor([False] * D + [True] * d)
    plain = Flow(
        Compose(
            [
                AffineCoupling(eps_transformed, net=encoder, log_scale_bound=bound),
                InverseTransform(
                    AffineCoupling(~eps_transformed, net=decoder, log_scale_bound=bound)
                ),
            ]
        ),
        StandardNormal(D + d),
    )
    return vae, augmented, plain


@pytest.mark.parametrize("bound", [3.0, None], ids=["bound3", "unbounded"])
def test_gaussian_vae_is_a_two_coupling_flow(bound):
    """JointVAE(gaussian) = two plain affine couplings on (x, eps) = AugmentedFlow(1 step)."""
    vae, augmented, plain = shared_models(bound)
    x, eps = state(7)
    expected = vae.log_prob(x, eps)
    torch.testing.assert_close(
        plain.log_prob(torch.cat([x, eps], dim=1)), expected, rtol=1e-12, atol=1e-12
    )
    torch.testing.assert_close(augmented.log_prob(x, eps), expected, rtol=1e-12, atol=1e-12)
    # The VAE's own couplings on the standard normal of (u, z): the same density.
    couplings = Flow(Compose([vae.encoder_coupling, vae.decoder_coupling]), JointNormal(D, d))
    torch.testing.assert_close(
        couplings.log_prob(AugmentedState(x, eps)), expected, rtol=1e-12, atol=1e-12
    )
    # And the same bounds at the same draws of eps.
    for method in ("elbo", "iwae"):
        args = (x,) if method == "elbo" else (x, 4)
        torch.manual_seed(5)
        from_vae = getattr(vae, method)(*args)
        torch.manual_seed(5)
        from_flow = getattr(augmented, method)(*args)
        torch.testing.assert_close(from_flow, from_vae, rtol=1e-12, atol=1e-12)


def test_gaussian_vae_noise_is_the_decoder_noise():
    """The stack maps (x, eps) to (u, z) with z = mu + sigma eps and x = m(z) + s(z) u."""
    vae, augmented, _ = shared_models()
    x, eps = state(6)
    noise, _ = augmented.transform[1:](AugmentedState(x, eps))
    mu, raw = vae.encoder_coupling.elementwise.net(x).chunk(2, dim=-1)
    z = mu + (3.0 * torch.tanh(raw / 3.0)).exp() * eps
    m, raw_s = vae.decoder.net(z).chunk(2, dim=-1)
    u = (x - m) / (3.0 * torch.tanh(raw_s / 3.0)).exp()
    torch.testing.assert_close(noise.latent, z, rtol=0, atol=1e-12)
    torch.testing.assert_close(noise.data, u, rtol=0, atol=1e-12)


def test_augmented_flow_log_prob_against_dense_jacobian():
    """log p(x, eps) = log N(f(x, eps)) + log|det J_f| for a two-step augmented flow."""
    torch.manual_seed(0)
    model = AugmentedFlow(D, d, num_steps=2, hidden_features=H, log_scale_bound=3.0)
    randomize_parameters(model, 0.3)
    model.double()
    x, eps = state(4)
    inputs = AugmentedState(x, eps)
    after_augment = model.transform[1:]
    jac = jacobian(after_augment, inputs)  # (4, D + d, D + d)
    noise = after_augment(inputs)[0]
    ref = log_normal(noise.data) + log_normal(noise.latent) + torch.linalg.slogdet(jac)[1]
    torch.testing.assert_close(model.log_prob(x, eps), ref, rtol=0, atol=1e-10)
    torch.manual_seed(1)
    elbo = model.elbo(x)
    torch.manual_seed(1)
    eps = torch.randn(4, d, dtype=torch.float64)
    ref = model.log_prob(x, eps) - log_normal(eps)
    torch.testing.assert_close(elbo, ref, rtol=0, atol=1e-12)


def test_augmented_flow_sample_inverts_the_stack():
    """sample() is the stack's inverse of JointNormal noise with eps dropped."""
    torch.manual_seed(0)
    model = randomize_parameters(AugmentedFlow(D, d, num_steps=2, hidden_features=H), 0.3)
    model.double()
    torch.manual_seed(4)
    samples = model.sample(6)
    torch.manual_seed(4)
    noise = JointNormal(D, d).double().sample(6)
    x_eps, _ = model.transform[1:].inverse(noise)
    torch.testing.assert_close(samples, x_eps.data, rtol=0, atol=1e-12)
    assert model.sample(5, batch_size=2).shape == (5, D)


def test_augmented_flow_methods_and_gradients():
    torch.manual_seed(0)
    model = AugmentedFlow(D, d, num_steps=2, hidden_features=(H, 4))
    x = torch.randn(6, D)
    assert model.elbo(x, num_samples=3).shape == (6,)
    assert model.iwae(x, 20, chunk_size=12).shape == (6,)
    assert model.sample(4).shape == (4, D)
    assert len(model.encoder_couplings) == 2 and len(model.decoder_couplings) == 2
    (-model.elbo(x).mean()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), name


def test_augmented_flow_bad_input():
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        AugmentedFlow(D, d, num_steps=0)
    with pytest.raises(ValueError, match="encoder_nets must hold num_steps=2"):
        AugmentedFlow(D, d, num_steps=2, encoder_nets=[MLP(D, 2 * d)])
    model = AugmentedFlow(D, d, hidden_features=H)
    with pytest.raises(ValueError, match=r"inputs\.data must have shape \(batch, 5\)"):
        model.elbo(torch.randn(3, D + 1))
    with pytest.raises(ValueError, match="eps must have the batch size"):
        model.log_prob(torch.randn(3, D), torch.randn(4, d))
    with pytest.raises(ValueError, match=r"Augment.*elbo\(inputs\) or iwae"):
        model.log_prob(torch.randn(3, D))
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        model.iwae(torch.randn(3, D), 0)
    with pytest.raises(TypeError, match="net must be"):
        encoder_coupling(D, d, "mlp")
    with pytest.raises(TypeError, match="AugmentedState"):
        model.encoder_couplings[0](torch.randn(3, D + d))


def test_temperature_scales_the_decoder_noise_like_the_augmented_flow():
    """At temperature 0 the Gaussian VAE and the one-step augmented flow are deterministic
    and agree: the decoder's noise u is scaled like the prior's."""
    torch.manual_seed(0)
    vae = fj.JointVAE(4, 2, 8, likelihood="gaussian").double()
    randomize_parameters(vae, 0.5)
    flow = fj.AugmentedFlow(
        4,
        2,
        1,
        encoder_nets=[vae.encoder_coupling.elementwise.net],
        decoder_nets=[vae.decoder.net],
    ).double()
    cold = vae.sample(3, temperature=0.0)
    assert torch.equal(cold, vae.sample(3, temperature=0.0))
    torch.testing.assert_close(cold, flow.sample(3, temperature=0.0), rtol=0, atol=1e-12)


def test_augmented_flow_validates_like_every_flow():
    model = fj.AugmentedFlow(3, 2, 1, hidden_features=8, validate=True)
    with pytest.raises(ValueError, match="inputs must be finite"):
        model.elbo(torch.tensor([[0.0, float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="eps must be finite"):
        model.log_prob(torch.zeros(1, 3), torch.tensor([[float("inf"), 0.0]]))
