"""Jacobian tools against independent computations."""

from __future__ import annotations

import math

import pytest
import torch

import flowjoint as fj
from flowjoint.testing import randomize_parameters

pytestmark = pytest.mark.usefixtures("float64")


def test_jacobian_matches_autograd_row_by_row():
    layer = randomize_parameters(fj.AffineCoupling(torch.tensor([True, False, True, False]), 8))
    x = torch.randn(3, 4)
    jac = fj.jacobian(layer, x)
    assert jac.shape == (3, 4, 4)
    for b in range(3):
        reference = torch.autograd.functional.jacobian(lambda row: layer(row[None])[0][0], x[b])
        torch.testing.assert_close(jac[b], reference)
    jac_inv = fj.jacobian(layer, layer(x)[0], inverse=True)
    torch.testing.assert_close(jac_inv @ jac, torch.eye(4).expand(3, 4, 4))


def test_jacobian_with_context():
    layer = randomize_parameters(fj.ConditionalAffine(2, 3, 8))
    x, c = torch.randn(4, 2), torch.randn(4, 3)
    scale = torch.exp(3 * torch.tanh(layer.net(c)[:, 2:] / 3))
    torch.testing.assert_close(fj.jacobian(layer, x, c), torch.diag_embed(scale))


def test_block_structure_on_handmade_matrices():
    mask = torch.tensor([False, True, True])
    lower = torch.tensor([[1.0, 0, 0], [2.0, 3.0, 0], [4.0, 0, 5.0]])
    s = fj.block_structure(lower, mask)
    assert s.triangular and s.kept_is_identity and s.transformed_is_diagonal
    assert s.zero_blocks == (("kept", "transformed"),)
    upper = lower.T.contiguous()
    s = fj.block_structure(upper, mask)
    assert not s.triangular and s.zero_blocks == (("transformed", "kept"),)
    full = torch.full((3, 3), 2.0)
    s = fj.block_structure(full, mask)
    assert not (s.triangular or s.kept_is_identity or s.transformed_is_diagonal)
    # A reordering makes an interleaved coupling triangular.
    interleaved = torch.tensor([True, False, True])
    jac = torch.tensor([[2.0, 7.0, 0], [0, 1.0, 0], [0, 8.0, 3.0]])
    assert fj.block_structure(jac, interleaved).triangular


class WrongLogdet(fj.AffineCoupling):
    def forward(self, inputs, context=None):
        outputs, logabsdet = super().forward(inputs, context)
        return outputs, logabsdet + 0.01


def test_check_logabsdet_measures_the_error():
    mask = torch.tensor([False, True, True])
    good = randomize_parameters(fj.AffineCoupling(mask, 8))
    assert fj.check_logabsdet(good, torch.randn(5, 3)) < 1e-12
    bad = randomize_parameters(WrongLogdet(mask, 8))
    assert math.isclose(fj.check_logabsdet(bad, torch.randn(5, 3)), 0.01, rel_tol=1e-6)


def test_plot_patterns_side_by_side(tmp_path):
    pytest.importorskip("matplotlib")
    D, d = 5, 3
    enc_mask = torch.arange(D + d) >= D
    nice_mask = torch.arange(6) % 2 == 1
    panels = {
        "NICE": randomize_parameters(fj.AdditiveCoupling(nice_mask, 8)),
        "Real NVP": randomize_parameters(fj.AffineCoupling(nice_mask, 8)),
        "(x, eps) -> (x, z)": randomize_parameters(fj.AffineCoupling(enc_mask, 8)),
    }
    masks = {"NICE": nice_mask, "Real NVP": nice_mask, "(x, eps) -> (x, z)": enc_mask}
    jacobians = {
        name: fj.jacobian(layer, torch.randn(4, masks[name].numel()))
        for name, layer in panels.items()
    }
    path = tmp_path / "patterns.png"
    fig = fj.plot_jacobian_patterns(jacobians, masks, path=str(path))
    assert path.stat().st_size > 1000 and len(fig.axes) == 3
    image = fig.axes[2].images[0].get_array()
    assert image.shape == (D + d, D + d) and not image[:D, D:].any()  # the zero block
