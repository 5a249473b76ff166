"""Coupling layers against formulas written out by hand, float64."""

from __future__ import annotations

import pytest
import torch

import flowjoint as fj
from flowjoint.testing import randomize_parameters

pytestmark = pytest.mark.usefixtures("float64")

MASKS = {
    "kept_first": torch.tensor([False, False, False, True, True]),
    "transformed_first": torch.tensor([True, True, False, False, False]),
    "interleaved": torch.tensor([False, True, False, True, True]),
}


def hand_affine(layer, x, context=None):
    """Real NVP written out: y_B = x_B * exp(s) + t, s = 3 tanh(raw / 3)."""
    mask = layer.mask
    condition = x[:, ~mask] if context is None else torch.cat([x[:, ~mask], context], 1)
    params = layer.elementwise.net(condition)
    n = int(mask.sum())
    t, raw = params[:, :n], params[:, n:]
    s = 3.0 * torch.tanh(raw / 3.0)
    y = x.clone()
    y[:, mask] = x[:, mask] * torch.exp(s) + t
    return y, s.sum(1)


@pytest.mark.parametrize("mask", MASKS.values(), ids=MASKS.keys())
@pytest.mark.parametrize("context_features", [0, 2])
def test_affine_coupling_matches_real_nvp_formula(mask, context_features):
    layer = randomize_parameters(fj.AffineCoupling(mask, 32, context_features=context_features))
    x = torch.randn(7, 5)
    context = torch.randn(7, 2) if context_features else None
    y, logabsdet = layer(x, context)
    y_ref, logabsdet_ref = hand_affine(layer, x, context)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-13)
    torch.testing.assert_close(logabsdet, logabsdet_ref, rtol=0, atol=1e-13)


@pytest.mark.parametrize("mask", MASKS.values(), ids=MASKS.keys())
def test_additive_coupling_matches_nice_formula(mask):
    layer = randomize_parameters(fj.AdditiveCoupling(mask, 32))
    x = torch.randn(6, 5)
    y, logabsdet = layer(x)
    y_ref = x.clone()
    y_ref[:, mask] = x[:, mask] + layer.elementwise.net(x[:, ~mask])
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-13)
    assert torch.equal(logabsdet, torch.zeros(6))


@pytest.mark.parametrize("cls", [fj.AffineCoupling, fj.AdditiveCoupling])
@pytest.mark.parametrize("mask", MASKS.values(), ids=MASKS.keys())
def test_mask_true_means_transformed(cls, mask):
    layer = randomize_parameters(cls(mask, 16))
    x = torch.randn(4, 5)
    y, _ = layer(x)
    assert torch.equal(y[:, ~mask], x[:, ~mask])
    assert not torch.allclose(y[:, mask], x[:, mask])
    # The transformed outputs depend on the kept inputs (through the conditioner).
    x2 = x.clone()
    x2[:, ~mask] += 1.0
    assert not torch.allclose(layer(x2)[0][:, mask], y[:, mask])


def test_coupling_reuses_the_conditional_elementwise_map():
    """A coupling is split -> ConditionalElementwise(kept, context) -> merge, the same
    building block as the reparametrization (ConditionalAffine is its affine case)."""
    mask = MASKS["interleaved"]
    layer = randomize_parameters(fj.AffineCoupling(mask, 16, context_features=2))
    assert isinstance(layer.elementwise, fj.ConditionalElementwise)
    assert isinstance(layer.elementwise.function, fj.AffineMap)
    assert layer.elementwise.context_features == 2 + 2  # kept + context
    x, c = torch.randn(5, 5), torch.randn(5, 2)
    z, logabsdet = layer.elementwise(x[:, mask], context=torch.cat([x[:, ~mask], c], 1))
    y, logabsdet_layer = layer(x, c)
    assert torch.equal(y[:, mask], z)
    assert torch.equal(logabsdet_layer, logabsdet)


def test_fresh_layers_are_the_identity():
    for cls in (fj.AffineCoupling, fj.AdditiveCoupling):
        x = torch.randn(3, 5)
        y, logabsdet = cls(MASKS["interleaved"])(x)
        assert torch.equal(y, x) and torch.equal(logabsdet, torch.zeros(3))


def test_scale_range_well_above_and_below_one():
    """Unlike a hidden sigmoid cap at 1.001, one layer can scale by e^±3 (default)."""
    mask = MASKS["kept_first"]
    layer = fj.AffineCoupling(mask, 8)
    last = layer.elementwise.net[-1]
    for raw, expected in [
        (100.0, 3.0),
        (-100.0, -3.0),
        (0.5, 3 * torch.tanh(torch.tensor(0.5 / 3))),
    ]:
        with torch.no_grad():
            last.bias[2:].fill_(raw)
        _, logabsdet = layer(torch.randn(2, 5))
        torch.testing.assert_close(logabsdet, torch.full((2,), 2 * float(expected)))
    unbounded = fj.AffineCoupling(mask, 8, log_scale_bound=None)
    with torch.no_grad():
        unbounded.elementwise.net[-1].bias[2:].fill_(6.0)
    assert torch.allclose(unbounded(torch.randn(2, 5))[1], torch.full((2,), 12.0))


def test_soft_clamp():
    raw = torch.linspace(-50, 50, 101)
    out = fj.soft_clamp(raw, 2.0)
    assert out.abs().max() <= 2.0 and torch.all(out.diff() >= 0)
    small = torch.tensor([1e-4])
    torch.testing.assert_close(fj.soft_clamp(small, 2.0), small, rtol=1e-8, atol=0)
    assert fj.soft_clamp(raw, None) is raw


def test_custom_net():
    mask = MASKS["interleaved"]
    net = torch.nn.Linear(2, 6)
    layer = fj.AffineCoupling(mask, net=net)
    assert layer.elementwise.net is net
    y, _ = layer(torch.randn(3, 5))
    assert y.shape == (3, 5)


@pytest.mark.parametrize("mask", MASKS.values(), ids=MASKS.keys())
def test_all_layouts_agree(mask):
    """The view fast path and the gather path compute the same map."""
    layer = randomize_parameters(fj.AffineCoupling(mask, 16))
    x = torch.randn(4, 5)
    layer._layout = "gather"
    y_gather, l_gather = layer(x)
    layer.__dict__.pop("_layout")
    fresh = fj.AffineCoupling(mask, 16)
    fresh.load_state_dict(layer.state_dict())
    y_fast, l_fast = fresh(x)
    assert torch.equal(y_gather, y_fast) and torch.equal(l_gather, l_fast)


def test_jacobians_share_the_triangular_pattern():
    """NICE, Real NVP and the reparametrization (x, eps) -> (x, z): one pattern."""
    D, d = 4, 3
    encoder_mask = torch.cat([torch.zeros(D, dtype=torch.bool), torch.ones(d, dtype=torch.bool)])
    layers = {
        "nice": (fj.AdditiveCoupling(MASKS["interleaved"], 16), MASKS["interleaved"]),
        "realnvp": (fj.AffineCoupling(MASKS["interleaved"], 16), MASKS["interleaved"]),
        "reparametrization": (fj.AffineCoupling(encoder_mask, 16), encoder_mask),
    }
    for name, (layer, mask) in layers.items():
        randomize_parameters(layer)
        x = torch.randn(3, mask.numel())
        jac = fj.jacobian(layer, x)
        structure = fj.block_structure(jac, mask)
        assert structure.triangular, name
        assert structure.kept_is_identity and structure.transformed_is_diagonal, name
        assert structure.zero_blocks == (("kept", "transformed"),), name
        diagonal = jac[:, mask][:, :, mask].diagonal(dim1=-2, dim2=-1)
        if name == "nice":
            assert torch.equal(diagonal, torch.ones_like(diagonal))
        else:
            torch.testing.assert_close(diagonal.log().sum(-1), layer(x)[1])
