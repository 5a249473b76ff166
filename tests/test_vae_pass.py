"""JointVAE's one-function pass of the plain stack equals the stack's generic pass: the
same bits, gradients and draws, and it steps aside whenever a hook must fire."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import flowjoint as fj
from flowjoint.stochastic import Augment
from flowjoint.testing import randomize_parameters
from flowjoint.vae_pass import standard_stack

pytestmark = pytest.mark.usefixtures("one_thread")


def build(likelihood, dtype, prior=None):
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.3), nn.ReLU(), nn.Linear(16, 4))
    vae = fj.JointVAE(6, 2, 16, likelihood=likelihood, encoder=encoder, prior=prior)
    randomize_parameters(vae, 0.5, seed=1)
    return vae.to(dtype)  # train mode: the dropout draws, so the order of draws is checked


def data(vae, dtype):
    g = torch.Generator().manual_seed(2)
    if vae.decoder.family == "bernoulli":
        return torch.bernoulli(torch.full((5, 6), 0.5, dtype=dtype), generator=g)
    return torch.randn(5, 6, dtype=dtype, generator=g)


def generic(vae):
    """Force the stack's generic pass with a no-op hook on its Compose."""
    return vae.transform.register_forward_hook(lambda *args: None)


def run_all(vae, x):
    results = []
    for fn in (
        lambda: vae.elbo(x),
        lambda: vae.elbo(x, num_samples=3),
        lambda: vae.iwae(x, 7, chunk_size=10),
        lambda: vae.log_weights(x, num_samples=4),
    ):
        torch.manual_seed(3)
        results.append(fn())
    vae.zero_grad(set_to_none=True)
    torch.manual_seed(4)
    vae.elbo(x, num_samples=2).sum().backward()
    grads = [p.grad.clone() for p in vae.parameters()]
    return results, grads


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "flow prior"])
def test_the_one_function_pass_gives_the_generic_bits_grads_and_draws(likelihood, dtype):
    prior = fj.realnvp(2, 2, 8) if likelihood == "flow prior" else None
    vae = build("bernoulli" if prior is not None else likelihood, dtype, prior)
    x = data(vae, dtype)
    assert standard_stack(vae.transform, vae.base) is not None
    fast, fast_grads = run_all(vae, x)
    handle = generic(vae)
    assert standard_stack(vae.transform, vae.base) is None
    slow, slow_grads = run_all(vae, x)
    handle.remove()
    for got, want in zip(fast, slow, strict=True):
        assert torch.equal(got, want)
    for got, want in zip(fast_grads, slow_grads, strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize("where", ["compose", "augment", "coupling", "elementwise", "map"])
def test_a_hook_on_a_layer_of_the_stack_fires(where):
    vae = build("bernoulli", torch.float64)
    coupling = vae.transform[1]
    module = {
        "compose": vae.transform,
        "augment": vae.transform[0],
        "coupling": coupling,
        "elementwise": coupling.elementwise,
        "map": coupling.elementwise.function,
    }[where]
    calls = []
    handle = module.register_forward_hook(lambda *args: calls.append(1))
    vae.elbo(data(vae, torch.float64))
    handle.remove()
    assert calls, f"the forward hook on the {where} did not fire"


def test_a_global_hook_and_a_subclassed_layer_take_the_generic_pass():
    vae = build("bernoulli", torch.float64)
    x = data(vae, torch.float64)
    calls = []
    handle = nn.modules.module.register_module_forward_hook(lambda *args: calls.append(1))
    vae.elbo(x)
    handle.remove()
    assert len(calls) >= 3  # Compose, Augment, the coupling (and the nets)

    class Counting(Augment):
        def forward(self, inputs, context=None, num_samples=1):
            calls.append("augment")
            return super().forward(inputs, context, num_samples)

    vae.transform.transforms[0] = Counting(2)
    vae.elbo(x)
    assert calls[-1] == "augment"


def test_a_replaced_layer_of_another_width_is_refused_as_by_the_stack():
    vae = build("bernoulli", torch.float64)
    x = data(vae, torch.float64)
    vae.transform.transforms[0] = Augment(1)  # the coupling expects eps of width 2
    with pytest.raises(ValueError, match=r"inputs.latent must have shape \(batch, 2\)"):
        vae.elbo(x)


def test_replaced_methods_and_in_place_compilation_take_the_generic_pass(monkeypatch):
    vae = build("bernoulli", torch.float64)
    x = data(vae, torch.float64)
    coupling, calls = vae.transform[1], []

    def recording(method, name):
        def wrapper(*args, **kwargs):
            calls.append(name)
            return method(*args, **kwargs)

        return wrapper

    coupling.forward = recording(coupling.forward, "instance forward")
    vae.base.log_prob = recording(vae.base.log_prob, "base log_prob")
    vae.elbo(x)
    assert calls == ["instance forward", "base log_prob"]
    del coupling.forward, vae.base.log_prob
    monkeypatch.setattr(Augment, "forward", recording(Augment.forward, "class forward"))
    vae.elbo(x)
    assert calls[-1] == "class forward"
    monkeypatch.undo()
    assert standard_stack(vae.transform, vae.base) is not None
    vae.transform[1].compile(backend="eager")
    assert standard_stack(vae.transform, vae.base) is None
