"""torch.compile(fullgraph=True): flows and JointVAE trace without graph breaks and agree
with eager in outputs and gradients."""

from __future__ import annotations

import pytest
import torch

import flowjoint as fj
from flowjoint.distributions import LOG_2PI, standard_normal_log_prob, standard_normal_nll
from flowjoint.testing import randomize_parameters

# The default run uses the "aot_eager" backend: dynamo traces the same fullgraph
# forward and AOTAutograd the same backward graph as with inductor, without the
# C++ code generation that takes ~25 s on two cores. The inductor runs are slow tests.
INDUCTOR = pytest.param("inductor", marks=pytest.mark.slow)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def small_flow():
    torch.manual_seed(0)
    flow = fj.realnvp(4, num_layers=4, hidden_features=8)
    randomize_parameters(flow, std=0.5)
    return flow


def grads(module):
    return [p.grad.clone() for p in module.parameters()]


def assert_same_log_prob_and_grads(make_fn, module, *inputs, backend):
    eager = make_fn(module)(*inputs)
    eager.sum().backward()
    eager_grads = grads(module)
    module.zero_grad(set_to_none=True)
    compiled = torch.compile(make_fn(module), fullgraph=True, backend=backend)(*inputs)
    compiled.sum().backward()
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads(module), eager_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", [INDUCTOR, "aot_eager"])
def test_flow_log_prob_compiles(backend):
    flow = small_flow()
    x = torch.randn(16, 4)
    assert_same_log_prob_and_grads(lambda f: f.log_prob, flow, x, backend=backend)


def test_flow_inverse_and_sample_compile():
    flow = small_flow()
    noise = torch.randn(16, 4)
    eager_x, eager_ld = flow.transform.inverse(noise)
    x, ld = torch.compile(flow.transform.inverse, fullgraph=True, backend="aot_eager")(noise)
    torch.testing.assert_close(x, eager_x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ld, eager_ld, rtol=1e-5, atol=1e-5)
    samples = torch.compile(flow.sample, fullgraph=True, backend="aot_eager")(8)
    assert samples.shape == (8, 4) and bool(torch.isfinite(samples).all())


def test_conditional_flow_compiles():
    torch.manual_seed(0)
    flow = fj.realnvp(3, num_layers=3, hidden_features=8, context_features=2)
    randomize_parameters(flow, std=0.5)
    x, c = torch.randn(16, 3), torch.randn(16, 2)
    assert_same_log_prob_and_grads(lambda f: f.log_prob, flow, x, c, backend="aot_eager")


@pytest.mark.parametrize("backend", [INDUCTOR, "aot_eager"])
def test_joint_vae_compiles(backend):
    torch.manual_seed(0)
    vae = fj.JointVAE(12, 3, hidden_features=(16, 8))
    randomize_parameters(vae, std=0.3)
    x = torch.bernoulli(torch.full((10, 12), 0.5))
    eps = torch.randn(10, 3)
    assert_same_log_prob_and_grads(lambda m: m.log_prob, vae, x, eps, backend=backend)


def test_joint_vae_elbo_compiles():
    """The training objective (fresh noise inside the graph) traces without a break."""
    torch.manual_seed(0)
    vae = fj.JointVAE(12, 3, hidden_features=(16, 8))
    x = torch.bernoulli(torch.full((10, 12), 0.5))
    elbo = torch.compile(vae.elbo, fullgraph=True, backend="aot_eager")(x)
    elbo.mean().backward()
    assert elbo.shape == (10,) and all(p.grad is not None for p in vae.parameters())


def test_compiled_flow_still_checks_arguments():
    flow = small_flow()
    compiled = torch.compile(flow.log_prob, fullgraph=True, backend="aot_eager")
    # Under fullgraph=True dynamo reports the ValueError it traced, message included.
    with pytest.raises((ValueError, torch._dynamo.exc.Unsupported), match="4 features"):
        compiled(torch.randn(3, 5))


@pytest.mark.slow
def test_inductor_agrees_when_bounds_and_event_sizes_change():
    """A second bound, or another event size, makes a scalar symbolic in the recompiled
    graph; the soft clamp and the standard-normal density must still agree with eager
    (inductor drops an ``alpha=`` whose operand is symbolic, so they do not use one)."""
    clamp = torch.compile(fj.soft_clamp, fullgraph=True)
    raw = torch.tensor([-50.0, 0.3, 50.0])
    for bound in (3.0, 0.1, 0.5):
        torch.testing.assert_close(clamp(raw, bound), fj.soft_clamp(raw, bound))
    for bound in (3.0, 2.0):
        torch.manual_seed(1)
        flow = fj.realnvp(4, 2, 16, log_scale_bound=bound)
        randomize_parameters(flow, std=0.5)
        x = torch.randn(8, 4)
        compiled = torch.compile(flow.log_prob, fullgraph=True)
        torch.testing.assert_close(compiled(x), flow.log_prob(x), rtol=1e-5, atol=1e-5)
        noise = torch.randn(8, 4)
        inverse = torch.compile(flow.transform.inverse, fullgraph=True)
        torch.testing.assert_close(inverse(noise)[0], flow.transform.inverse(noise)[0])
    density = torch.compile(standard_normal_log_prob, fullgraph=True, dynamic=True)
    nll = torch.compile(standard_normal_nll, fullgraph=True, dynamic=True)
    for features in (4, 6):
        x = torch.full((2, features), 2.0)
        want = -0.5 * x.square().sum(1) - 0.5 * features * LOG_2PI
        torch.testing.assert_close(density(x), want)
        torch.testing.assert_close(nll(x), -want)
