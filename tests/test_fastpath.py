"""Compose's block chain (couplings sharing a contiguous split) equals layer-by-layer calls."""

from __future__ import annotations

import pytest
import torch

import flowjoint as fj
from flowjoint.testing import randomize_parameters
from flowjoint.transforms import has_hooks


def layer_by_layer(compose, inputs, context=None, inverse=False):
    """The unfused reference: each layer's own public forward/inverse, summed log-dets."""
    layers = list(compose.transforms)
    total = torch.zeros(inputs.shape[0], dtype=inputs.dtype)
    outputs = inputs
    for layer in reversed(layers) if inverse else layers:
        outputs, logabsdet = (layer.inverse if inverse else layer.forward)(outputs, context)
        total = total + logabsdet
    return outputs, total


def halves(features, n):
    return fj.alternating_masks(features, n, "halves")


FACTORIES = {
    "realnvp-halves": lambda: fj.realnvp(5, num_layers=4, hidden_features=8).transform,
    "realnvp-context": lambda: (
        fj.realnvp(4, num_layers=3, hidden_features=8, context_features=2).transform
    ),
    "mixed-chain": lambda: fj.Compose(
        [
            fj.AffineCoupling(halves(6, 1)[0], hidden_features=8),
            fj.AdditiveCoupling(~halves(6, 1)[0], hidden_features=8),
            fj.ReversePermutation(6),  # breaks the chain
            fj.AffineCoupling(halves(6, 1)[0], hidden_features=8),
            fj.AffineCoupling(torch.tensor([True, False, True, False, True, False])),  # gather
            fj.AffineCoupling(torch.tensor([True] * 2 + [False] * 4), hidden_features=8),
            fj.AffineCoupling(torch.tensor([False] * 2 + [True] * 4), hidden_features=8),
        ]
    ),
}


@pytest.mark.parametrize("factory", list(FACTORIES.values()), ids=list(FACTORIES))
@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
def test_chain_equals_layer_by_layer(factory, inverse):
    torch.manual_seed(0)
    transform = factory().double()
    randomize_parameters(transform, std=0.5)
    features = transform[0].features
    context_features = transform[0].context_features
    x = torch.randn(7, features, dtype=torch.float64, requires_grad=True)
    c = torch.randn(7, context_features, dtype=torch.float64) if context_features else None
    got = (transform.inverse if inverse else transform)(x, c)
    want = layer_by_layer(transform, x, c, inverse)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=1e-12)
    g_got = torch.autograd.grad(got[0].sum() + got[1].sum(), x)[0]
    g_want = torch.autograd.grad(want[0].sum() + want[1].sum(), x)[0]
    torch.testing.assert_close(g_got, g_want, rtol=0, atol=1e-12)


def test_chain_is_taken_for_halves():
    """realnvp's halves couplings chain: the layers' own forward is not called."""
    flow = fj.realnvp(4, num_layers=4, hidden_features=8)
    assert all(layer.can_fuse() for layer in flow.transform)
    calls = []
    original = fj.Coupling.split
    fj.Coupling.split = lambda self, inputs: calls.append(1) or original(self, inputs)
    try:
        flow.log_prob(torch.randn(3, 4))
    finally:
        fj.Coupling.split = original
    assert calls == []


def test_forward_hooks_disable_the_chain():
    flow = fj.realnvp(4, num_layers=2, hidden_features=8)
    seen = []
    flow.transform[1].register_forward_hook(lambda module, args, out: seen.append(out[1]))
    assert has_hooks(flow.transform[1]) and not has_hooks(flow.transform[0])
    flow.log_prob(torch.randn(3, 4))
    assert len(seen) == 1 and seen[0].shape == (3,)


def _register(kind, layer, seen):
    """Register a hook of ``kind`` on ``layer`` (or globally); returns its handle."""
    hook = lambda module, *args: seen.append(module)  # noqa: E731
    if kind == "forward_pre":
        return layer.register_forward_pre_hook(hook)
    if kind == "full_backward":
        return layer.register_full_backward_hook(hook)
    if kind == "full_backward_pre":
        return layer.register_full_backward_pre_hook(hook)
    if kind == "global_forward":
        return torch.nn.modules.module.register_module_forward_hook(hook)
    if kind == "global_full_backward":
        return torch.nn.modules.module.register_module_full_backward_hook(hook)
    return torch.nn.modules.module.register_module_full_backward_pre_hook(hook)


@pytest.mark.parametrize(
    "kind",
    [
        "forward_pre",
        "full_backward",
        "full_backward_pre",
        "global_forward",
        "global_full_backward",
        "global_full_backward_pre",
    ],
)
def test_every_kind_of_hook_fires_inside_a_chain(kind):
    """A hook on a chained coupling (or a global one) fires as if each layer were called."""
    flow = fj.realnvp(4, num_layers=3, hidden_features=8)
    randomize_parameters(flow, std=0.5)
    coupling = flow.transform[1]
    seen = []
    handle = _register(kind, coupling, seen)
    try:
        flow.log_prob(torch.randn(3, 4)).sum().backward()
    finally:
        handle.remove()
    assert any(module is coupling for module in seen)


@pytest.mark.parametrize(
    "factory",
    [
        lambda: fj.realnvp(4, num_layers=3, hidden_features=8).transform[1],
        lambda: next(
            m
            for m in fj.multiscale_realnvp((1, 4, 4), num_scales=1, hidden_channels=4).modules()
            if isinstance(m, fj.Coupling) and m.mask.dim() > 1
        ),
    ],
    ids=["vector", "checkerboard"],
)
def test_a_hook_on_the_elementwise_map_fires(factory):
    """Couplings call their map as a plain method, except when the map carries a hook."""
    coupling = factory()
    assert isinstance(coupling, fj.Coupling)
    seen = []
    coupling.elementwise.function.register_forward_hook(lambda m, args, out: seen.append(m))
    shape = (3, *coupling.mask.shape) if coupling.mask.dim() > 1 else (3, coupling.features)
    coupling(torch.randn(shape))
    assert seen == [coupling.elementwise.function]


def test_overridden_forward_disables_the_chain():
    class Doubled(fj.AffineCoupling):
        def forward(self, inputs, context=None):
            outputs, logabsdet = super().forward(inputs, context)
            return outputs, 2 * logabsdet

    mask = torch.tensor([False, False, True, True])
    layer = Doubled(mask, hidden_features=8)
    randomize_parameters(layer, std=0.5)
    assert not layer.can_fuse()
    x = torch.randn(3, 4)
    _, logabsdet = fj.Compose([layer])(x)
    torch.testing.assert_close(logabsdet, layer(x)[1])


def test_chain_checks_inputs():
    flow = fj.realnvp(4, num_layers=2, hidden_features=8)
    with pytest.raises(ValueError, match="4 features"):
        flow.transform(torch.randn(3, 5))
    with pytest.raises(ValueError, match="4 features"):
        flow.transform.inverse(torch.randn(3, 5))
