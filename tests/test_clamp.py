"""The soft clamp of log-scales: its function, rounding, cache and derivatives."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import flowjoint as fj
import flowjoint.clamp as clamp_module
from flowjoint.clamp import _add_is_fused, _clamp_factors, _signed_soft_clamp


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bound", [1e-3, 0.3, 0.5, 3.0, 4.51, 10.0, 33.3])
def test_soft_clamp_is_bound_tanh_within_its_rounding(dtype, bound):
    """b tanh(x / b), computed through sigmoid: equal to 2.5 eps b (bounds whose 2 / b
    rounds badly included), bounded, monotone."""
    eps = torch.finfo(dtype).eps
    x = torch.linspace(-40 * bound, 40 * bound, 200_001, dtype=dtype)
    got = fj.soft_clamp(x, bound)
    reference = bound * torch.tanh(x.double() / bound)
    assert (got.double() - reference).abs().max().item() <= 2.5 * eps * bound
    assert bool((got.abs() <= bound).all())
    assert bool((got[1:] >= got[:-1]).all())  # monotone
    huge = torch.tensor([-torch.finfo(dtype).max, -1e30, 1e30, torch.finfo(dtype).max], dtype=dtype)
    torch.testing.assert_close(
        fj.soft_clamp(huge, bound), torch.tensor([-1.0, -1, 1, 1]).to(dtype) * bound
    )
    special = fj.soft_clamp(
        torch.tensor([-float("inf"), float("inf"), float("nan")], dtype=dtype), bound
    )
    b = torch.tensor(bound, dtype=dtype).item()  # the bound in the input's dtype
    assert special[0].item() == -b and special[1].item() == b and special[2].isnan()


def test_soft_clamp_has_slope_one_at_zero_and_none_is_unbounded():
    raw = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    fj.soft_clamp(raw, 3.0).sum().backward()
    torch.testing.assert_close(raw.grad, torch.ones(3, dtype=torch.float64))
    x = torch.tensor([1e6])
    assert fj.soft_clamp(x, None) is x


def _python_number_clamp(raw, bound, sign):
    """The clamp written with Python numbers: the path taken under torch.compile."""
    return (torch.sigmoid(raw * (2.0 / bound)) - 0.5) * (2.0 * sign * bound)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bound", [0.5, 2.7, 3.0, 80.0])
def test_the_cached_factor_clamp_equals_the_python_number_one(dtype, bound, monkeypatch):
    """One FMA of the exact ``2 b sigma - b``: the same bits as ``(sigma - 1/2) 2b`` wherever
    ``sigma - 1/2`` is exact (``sigma >= 1/4``), one rounding of b's size elsewhere; and the
    compile path (Python numbers) computes the same function."""
    gen = torch.Generator().manual_seed(5)
    raw = torch.randn(10_007, generator=gen, dtype=dtype) * 2 * bound  # odd length: a tail
    ulp = torch.finfo(dtype).eps * 2 * bound
    for sign in (1.0, -1.0):
        fast = _signed_soft_clamp(raw, bound, sign)
        slow = _python_number_clamp(raw, bound, sign)
        exact_half = torch.sigmoid(raw * (2.0 / bound)) >= 0.25
        assert torch.equal(fast[exact_half], slow[exact_half])
        assert (fast - slow).abs().max().item() <= ulp
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
        assert torch.equal(_signed_soft_clamp(raw, bound, sign), slow)
        monkeypatch.undo()
    assert torch.equal(_signed_soft_clamp(raw, bound, -1.0), -_signed_soft_clamp(raw, bound, 1.0))


def test_the_clamp_first_called_in_inference_mode_still_trains():
    """Its cached factors are made outside inference mode: a later training step can save
    them for backward."""
    _clamp_factors.cache_clear()
    with torch.inference_mode():
        fj.soft_clamp(torch.randn(4), 1.25)
    raw = torch.randn(4, requires_grad=True)
    fj.soft_clamp(raw, 1.25).sum().backward()
    torch.testing.assert_close(raw.grad, 1 - torch.tanh(raw.detach() / 1.25) ** 2)


def test_a_fake_tensor_never_enters_the_clamps_cache():
    from torch._subclasses.fake_tensor import FakeTensorMode

    _clamp_factors.cache_clear()
    with FakeTensorMode() as mode:
        out = fj.soft_clamp(mode.from_tensor(torch.randn(3)), 1.75)
    assert out.shape == (3,) and _clamp_factors.cache_info().currsize == 0
    x = torch.randn(3, dtype=torch.float64)
    torch.testing.assert_close(fj.soft_clamp(x, 1.75), 1.75 * torch.tanh(x / 1.75))
    factors = _clamp_factors(1.75, 1.0, torch.float64, "cpu")
    assert factors is None or all(type(f) is torch.Tensor for f in factors)


def test_the_clamps_derivatives_in_every_mode_of_autodiff():
    """Reverse (first and second order), forward mode and vmap through the in-place sigmoid."""
    raw = torch.randn(7, dtype=torch.float64, requires_grad=True) * 3
    clamp = lambda v: fj.soft_clamp(v, 3.0)  # noqa: E731
    assert torch.autograd.gradcheck(clamp, (raw,))
    assert torch.autograd.gradgradcheck(clamp, (raw,))
    x = raw.detach()
    forward = torch.func.jacfwd(clamp)(x)
    torch.testing.assert_close(forward, torch.diag(1 - torch.tanh(x / 3) ** 2))
    torch.testing.assert_close(torch.func.vmap(clamp)(x.reshape(7, 1)).flatten(), clamp(x))


@pytest.mark.parametrize(
    ("bound", "error"),
    [(True, TypeError), ("3", TypeError), ([3.0], TypeError), (float("nan"), ValueError),
     (float("inf"), ValueError), (0.0, ValueError), (-1.0, ValueError)],
)
def test_soft_clamp_refuses_a_bound_that_is_not_positive_and_finite(bound, error):
    with pytest.raises(error, match="bound"):
        fj.soft_clamp(torch.randn(3), bound)


def test_soft_clamp_takes_numpy_scalars_large_bounds_and_a_tensor_bound_with_its_gradient():
    import numpy as np

    x = torch.randn(50, dtype=torch.float64) * 5
    for bound in (np.float32(2.5), np.int64(3), 100.0):
        b = float(bound)
        torch.testing.assert_close(fj.soft_clamp(x, bound), b * torch.tanh(x / b))
    bound = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    fj.soft_clamp(x, bound).sum().backward()
    u = x / 2.0
    expected = (torch.tanh(u) - u * (1 - torch.tanh(u) ** 2)).sum()  # d/db of b tanh(x / b)
    torch.testing.assert_close(bound.grad, expected)


def test_where_add_is_not_fused_the_clamp_is_the_python_number_one(monkeypatch):
    raw = torch.randn(1000, dtype=torch.float64) * 6
    monkeypatch.setattr(clamp_module, "_clamp_factors", lambda *args: None)
    for sign in (1.0, -1.0):
        assert torch.equal(_signed_soft_clamp(raw, 3.0, sign), _python_number_clamp(raw, 3.0, sign))
    assert not _add_is_fused(torch.float32, "meta")  # only CPU and CUDA are probed


def test_a_cpu_without_fused_multiply_add_keeps_the_clamps_rounding():
    """ATen's kernels without a vector unit round ``c + a x`` twice: the probe sees it and
    the clamp keeps its documented error (2 eps b) with the exact-subtraction form."""
    code = (
        "import torch, flowjoint as fj\n"
        "from flowjoint.clamp import _add_is_fused\n"
        "x = torch.linspace(-120, 120, 200_001)\n"
        "err = (fj.soft_clamp(x, 3.0).double() - 3 * torch.tanh(x.double() / 3)).abs().max()\n"
        "print(_add_is_fused(torch.float32, 'cpu'), float(err / (torch.finfo().eps * 3)))\n"
    )
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    fused, error = out.stdout.split()
    assert fused == "False" and float(error) <= 2.0


def _first_clamp_of_a_fresh_cache(fn):
    _clamp_factors.cache_clear()
    _add_is_fused.cache_clear()
    return fn()


def test_the_cache_stays_plain_when_a_transform_or_tracer_comes_first():
    """The first clamp of a process may run under hessian, jit.trace, make_fx or a device
    context: none of them may leave a wrapped or traced tensor in the cache, or make the
    probe read a traced value."""
    from torch.fx.experimental.proxy_tensor import make_fx

    flow = fj.realnvp(4, num_layers=2, hidden_features=8).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    _first_clamp_of_a_fresh_cache(
        lambda: torch.func.hessian(lambda v: flow.log_prob(v.unsqueeze(0)).sum())(x[0])
    )
    grad = torch.func.grad(lambda v: flow.log_prob(v).sum())(x)
    x_ = x.clone().requires_grad_(True)
    flow.log_prob(x_).sum().backward()
    torch.testing.assert_close(grad, x_.grad)
    clamp = lambda v: fj.soft_clamp(v, 3.0)  # noqa: E731
    v = torch.randn(6)
    traced = _first_clamp_of_a_fresh_cache(lambda: torch.jit.trace(clamp, (v,)))
    torch.testing.assert_close(traced(v * 2), clamp(v * 2))
    graph = _first_clamp_of_a_fresh_cache(lambda: make_fx(clamp)(v))
    torch.testing.assert_close(graph(v * 2), clamp(v * 2))
    with torch.device("meta"):
        out = _first_clamp_of_a_fresh_cache(lambda: clamp(v))
    torch.testing.assert_close(out, 3.0 * torch.tanh(v / 3.0))
    for factors in (_clamp_factors(3.0, 1.0, torch.float64, "cpu"),):
        assert factors is None or all(type(f) is torch.Tensor for f in factors)


def test_a_compiled_function_takes_a_second_bound():
    """The bound becomes symbolic when one compiled function meets a second one: the
    public function does not check it then, and the clamp avoids ``alpha=``."""
    torch._dynamo.reset()
    compiled = torch.compile(lambda v, b: fj.soft_clamp(v, b), fullgraph=True, backend="eager")
    v = torch.randn(8)
    for bound in (3.0, 1.5, 0.7):
        torch.testing.assert_close(compiled(v, bound), bound * torch.tanh(v / bound))


def test_an_affine_map_scripts():
    scripted = torch.jit.script(fj.AffineMap(3.0))
    x, params = torch.randn(4, 3), torch.randn(4, 6) * 4
    for got, expected in zip(scripted(x, params), fj.AffineMap(3.0)(x, params)):
        torch.testing.assert_close(got, expected)
