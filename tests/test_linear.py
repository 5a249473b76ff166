"""InvertibleConv1x1: harness, LU parametrisation against dense algebra, no stale state."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import flowjoint as fj
from flowjoint.testing import check_transform, randomize_parameters


@pytest.mark.parametrize("shape", [(4,), (2, 4, 4), (3, 2, 2), (4, 1, 3)], ids=str)
def test_conv1x1_passes_the_harness_and_reloads_into_another_seed(shape):
    layer = fj.InvertibleConv1x1(shape[0], seed=1)
    other = fj.InvertibleConv1x1(shape[0], seed=7)
    report = check_transform(layer, shape, reload_into=other)
    assert report.num_parameters_checked == 3


def test_conv1x1_refuses_a_state_of_another_width():
    state = fj.InvertibleConv1x1(3).state_dict()
    with pytest.raises(RuntimeError, match="size mismatch"):
        fj.InvertibleConv1x1(4).load_state_dict(state)


def test_conv1x1_starts_as_a_rotation(float64):
    layer = fj.InvertibleConv1x1(5, seed=3).double()
    w = layer.weight().detach()
    assert torch.allclose(w @ w.T, torch.eye(5, dtype=torch.float64), atol=1e-12)
    _, logabsdet = layer(torch.randn(2, 5, 3, 3, dtype=torch.float64))
    assert logabsdet.abs().max() < 1e-12
    assert not torch.allclose(w, torch.eye(5, dtype=torch.float64))  # channels are mixed
    other = fj.InvertibleConv1x1(5, seed=4).double().weight().detach()
    assert not torch.allclose(w, other)


@pytest.fixture
def randomized():
    layer = fj.InvertibleConv1x1(4, seed=2).double()
    return randomize_parameters(layer, std=0.5, seed=1)


def test_conv1x1_is_a_1x1_convolution_with_the_slogdet_of_its_weight(randomized):
    x = torch.randn(3, 4, 5, 6, dtype=torch.float64)
    y, logabsdet = randomized(x)
    w = randomized.weight().detach()
    expected = F.conv2d(x, w.view(4, 4, 1, 1))
    assert torch.allclose(y, expected, atol=1e-12)
    sign, log_abs_det = torch.linalg.slogdet(w)
    assert torch.allclose(logabsdet, (30 * log_abs_det).expand(3), atol=1e-10)


def test_conv1x1_weight_is_p_l_u(randomized):
    lower, upper = randomized._factors()
    lower, upper = lower.detach(), upper.detach()
    assert torch.equal(lower.triu(1), torch.zeros_like(lower))
    assert torch.equal(lower.diagonal(), torch.ones(4, dtype=torch.float64))
    assert torch.equal(upper.tril(-1), torch.zeros_like(upper))
    diagonal = randomized.sign * randomized.log_abs_diagonal.detach().exp()
    assert torch.allclose(upper.diagonal(), diagonal)
    p = torch.eye(4, dtype=torch.float64)[randomized.permutation]  # P[i, perm[i]] = 1
    assert torch.allclose(randomized.weight().detach(), p @ lower @ upper, atol=1e-14)
    w_inv = randomized.inverse_weight().detach()
    assert torch.allclose(w_inv @ randomized.weight().detach(), torch.eye(4).double(), atol=1e-12)


def test_conv1x1_nothing_goes_stale_after_an_optimizer_step():
    torch.manual_seed(0)
    layer = fj.InvertibleConv1x1(4).double()
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    x = torch.randn(8, 4, 2, 2, dtype=torch.float64)
    for _ in range(3):
        optimizer.zero_grad()
        y, logabsdet = layer(x)
        (y.square().mean() - logabsdet.mean()).backward()
        before = layer.weight().detach()
        optimizer.step()
        assert not torch.allclose(layer.weight(), before)
        y, logabsdet = layer(x)
        back, logabsdet_inv = layer.inverse(y)
        assert torch.allclose(back, x, atol=1e-10)
        assert torch.allclose(logabsdet, -logabsdet_inv)
        assert torch.allclose(logabsdet[0], 4 * torch.linalg.slogdet(layer.weight())[1])


def test_conv1x1_loaded_state_computes_like_the_saved_layer(randomized):
    target = fj.InvertibleConv1x1(4, seed=9).double()
    target.load_state_dict(randomized.state_dict())
    y = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    assert torch.equal(target.inverse(y)[0], randomized.inverse(y)[0])
    assert torch.equal(target(y)[0], randomized(y)[0])


def test_conv1x1_refuses_a_loaded_state_that_is_not_lu():
    state = fj.InvertibleConv1x1(3).state_dict()
    bad = dict(state, permutation=torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="permutation must hold each of 0..2 once"):
        fj.InvertibleConv1x1(3).load_state_dict(bad)
    bad = dict(state, sign=torch.tensor([1.0, 0.5, -1.0]))
    with pytest.raises(ValueError, match="sign must hold only -1 and 1"):
        fj.InvertibleConv1x1(3).load_state_dict(bad)


@pytest.mark.parametrize(
    ("arguments", "error", "match"),
    [
        ({"channels": 1}, ValueError, "channels must be >= 2, got 1"),
        ({"channels": 2.0}, TypeError, "channels must be an int"),
        ({"channels": 3, "seed": -1}, ValueError, "seed must be >= 0"),
    ],
    ids=["one_channel", "float_channels", "negative_seed"],
)
def test_conv1x1_arguments_are_checked(arguments, error, match):
    with pytest.raises(error, match=match):
        fj.InvertibleConv1x1(**arguments)


def test_conv1x1_inputs_are_checked():
    layer = fj.InvertibleConv1x1(3)
    with pytest.raises(ValueError, match=r"3 channels.*\(2, 4, 5, 5\)"):
        layer(torch.zeros(2, 4, 5, 5))
    with pytest.raises(ValueError, match=r"3 channels.*\(2, 2, 5, 5\)"):
        layer.inverse(torch.zeros(2, 2, 5, 5))
