"""ActNorm and BatchNorm beyond the conformance harness."""

from __future__ import annotations

import io

import pytest
import torch

import flowjoint as fj

pytestmark = pytest.mark.usefixtures("float64")


def test_actnorm_initialises_from_first_batch_only():
    layer = fj.ActNorm(3)
    x = 5.0 + 3.0 * torch.randn(500, 3)
    y, logabsdet = layer(x)
    torch.testing.assert_close(y.mean(0), torch.zeros(3), atol=1e-10, rtol=0)
    torch.testing.assert_close(y.std(0), torch.ones(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(logabsdet, -x.std(0).log().sum().expand(500), atol=1e-5, rtol=0)
    before = layer.log_scale.detach().clone()
    layer(torch.randn(10, 3))
    assert torch.equal(layer.log_scale, before)


def test_actnorm_initialisation_survives_state_dict_round_trip():
    layer = fj.ActNorm(2)
    layer(4.0 * torch.randn(100, 2))
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    fresh = fj.ActNorm(2)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.randn(50, 2) + 100.0  # would re-initialise a fresh layer
    assert torch.equal(fresh(x)[0], layer(x)[0])


def test_batchnorm_train_uses_batch_statistics_eval_uses_running():
    layer = fj.BatchNorm(2, momentum=1.0)
    x = 2.0 + 3.0 * torch.randn(256, 2)
    y, logabsdet = layer(x)
    torch.testing.assert_close(y.mean(0), torch.zeros(2), atol=1e-10, rtol=0)
    var = x.var(0, unbiased=False)
    torch.testing.assert_close(logabsdet, (-0.5 * torch.log(var + 1e-5)).sum().expand(256))
    layer.eval()
    y_eval, _ = layer(x)  # momentum 1: running statistics are this batch's
    torch.testing.assert_close(y_eval, y)
    with pytest.raises(RuntimeError, match="eval"):
        layer.train().inverse(y)


def test_functional_call_uses_the_supplied_initialised_state():
    """torch.func supplies buffers without load_state_dict: the supplied flag is read."""
    from torch.func import functional_call

    torch.manual_seed(0)
    trained = fj.ActNorm(2)
    trained(torch.randn(100, 2) * 5 + 3)  # initialised on its first batch
    state = {k: v.clone() for k, v in trained.state_dict().items()}
    before = {k: v.clone() for k, v in state.items()}
    fresh = fj.ActNorm(2)
    x = torch.randn(4, 2)
    outputs = functional_call(fresh, state, (x,))[0]
    torch.testing.assert_close(outputs, trained(x)[0], rtol=0, atol=0)
    assert all(torch.equal(state[k], before[k]) for k in state)  # the caller's tensors
    assert not bool(fresh.initialized)
    fresh(torch.randn(100, 2) * 5 + 3)  # its own first batch still initialises it
    assert bool(fresh.initialized) and fresh.log_scale.abs().sum() > 0


def test_vmap_over_an_ensemble_and_compile_after_loading_in_training_mode():
    """Neither may branch on the flag's value: the module's own knowledge is used."""
    from torch.func import functional_call, stack_module_state, vmap

    torch.manual_seed(0)
    layers = [fj.ActNorm(4) for _ in range(3)]
    for layer in layers:
        layer(torch.randn(50, 4) * 3 + 1)
    params, buffers = stack_module_state(layers)
    x = torch.randn(16, 4)

    def run(p, b):
        return functional_call(layers[0], (p, b), (x,))[0]

    outputs = vmap(run)(params, buffers)
    for i, layer in enumerate(layers):
        torch.testing.assert_close(outputs[i], layer(x)[0])
    loaded = fj.ActNorm(4)
    loaded.load_state_dict(layers[1].state_dict())
    compiled = torch.compile(loaded, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x)[0], layers[1](x)[0])
