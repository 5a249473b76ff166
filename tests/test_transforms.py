"""ConditionalAffine (the reparametrization) and Compose."""

from __future__ import annotations

import pytest
import torch

import flowjoint as fj
from flowjoint.testing import randomize_parameters

pytestmark = pytest.mark.usefixtures("float64")


def test_conditional_affine_is_the_gaussian_reparametrization():
    """z = mu(x) + sigma(x) * eps, and log q(z|x) = log N(eps) - sum log sigma(x)."""
    layer = randomize_parameters(fj.ConditionalAffine(3, context_features=4, hidden_features=16))
    x, eps = torch.randn(6, 4), torch.randn(6, 3)
    z, logabsdet = layer(eps, context=x)
    params = layer.net(x)
    mu, sigma = params[:, :3], torch.exp(3 * torch.tanh(params[:, 3:] / 3))
    torch.testing.assert_close(z, mu + sigma * eps, rtol=0, atol=1e-13)
    torch.testing.assert_close(logabsdet, sigma.log().sum(1), rtol=0, atol=1e-13)
    q = torch.distributions.Independent(torch.distributions.Normal(mu, sigma), 1)
    log_n_eps = torch.distributions.Normal(0.0, 1.0).log_prob(eps).sum(1)
    torch.testing.assert_close(q.log_prob(z), log_n_eps - logabsdet, rtol=0, atol=1e-12)


def test_conditional_affine_additive():
    layer = randomize_parameters(fj.ConditionalAffine(2, 3, 8, additive=True))
    eps, x = torch.randn(4, 2), torch.randn(4, 3)
    z, logabsdet = layer(eps, x)
    torch.testing.assert_close(z, eps + layer.net(x))
    assert torch.equal(logabsdet, torch.zeros(4))


def test_compose_runs_in_list_order_and_inverts_in_reverse():
    mask = torch.tensor([False, True, True])
    layers = [
        randomize_parameters(fj.AffineCoupling(mask, 8), seed=1),
        fj.Permutation(torch.tensor([2, 0, 1])),
        randomize_parameters(fj.AffineCoupling(~mask, 8), seed=2),
    ]
    composed = fj.Compose(layers)
    x = torch.randn(5, 3)
    h, total = x, torch.zeros(5)
    for layer in layers:
        h, logabsdet = layer(h)
        total = total + logabsdet
    y, logabsdet = composed(x)
    assert torch.equal(y, h) and torch.equal(logabsdet, total)
    # The reverse of the list order is not the same map (the test can fail).
    h_wrong = x
    for layer in reversed(layers):
        h_wrong = layer(h_wrong)[0]
    assert not torch.allclose(h_wrong, y)
    x_back, logabsdet_inv = composed.inverse(y)
    torch.testing.assert_close(x_back, x)
    torch.testing.assert_close(logabsdet_inv, -logabsdet)
    assert len(composed) == 3 and composed[1] is layers[1]


def test_compose_passes_context_and_follows_input_dtype():
    mask = torch.tensor([True, False])
    composed = fj.Compose([fj.AffineCoupling(mask, 8, context_features=1), fj.ActNorm(2)])
    composed.to(torch.float32)
    y, logabsdet = composed(torch.randn(3, 2, dtype=torch.float32), torch.randn(3, 1).float())
    assert y.dtype == logabsdet.dtype == torch.float32
    with pytest.raises(ValueError, match="context is required"):
        composed(torch.randn(3, 2).float())


def test_module_apply_still_recurses():
    """nn.Module.apply (used for weight initialisation) is not shadowed by a layer."""
    flow = fj.realnvp(4, num_layers=2, hidden_features=8)
    seen = []
    flow.apply(lambda module: seen.append(type(module).__name__))
    assert seen.count("ConditionalElementwise") == 2 and "Linear" in seen
