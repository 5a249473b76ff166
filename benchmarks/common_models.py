"""What the peer benchmarks share: the model record, the soft clamp, weights, the float64 check."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

LOG_2PI = math.log(2 * math.pi)


@dataclass
class Model:
    """One library's model and the calls the benchmark times or checks."""

    module: nn.Module
    log_prob: Callable[[Tensor], Tensor]
    sample: Callable[[int], Tensor]
    to_noise: Callable[[Tensor], Tensor]  # data -> flat noise, for the Jacobian check


def clamp(raw: Tensor, bound: float | None) -> Tensor:
    """flowjoint's soft clamp written out: ``b tanh(raw / b) = 2b sigmoid(2 raw / b) - b``,
    computed as flowjoint computes it in eager mode where ``torch.add(..., alpha=)`` is a
    fused multiply-add, as on the benchmark machine (a product, an in-place sigmoid and
    the add, the factors 0-dim tensors made once)."""
    if bound is None:
        return raw
    key = (bound, raw.dtype)
    if key not in _CLAMP_FACTORS:
        _CLAMP_FACTORS[key] = (
            torch.tensor(2.0 / bound, dtype=raw.dtype),
            torch.tensor(-bound, dtype=raw.dtype),
        )
    scale, offset = _CLAMP_FACTORS[key]
    return torch.add(offset, (raw * scale).sigmoid_(), alpha=2.0 * bound)


_CLAMP_FACTORS: dict[tuple[float, torch.dtype], tuple[Tensor, Tensor]] = {}


def randomize(module: nn.Module, seed: int) -> None:
    """The same weight distribution for every library (no layer starts as the identity)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, (nn.Linear, nn.Conv2d)):
                std = 0.5 / math.sqrt(layer.weight[0].numel())  # 0.5 / sqrt(fan-in)
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * std)
                layer.bias.copy_(torch.randn(layer.bias.shape, generator=gen) * 0.05)


def num_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def copy_weights(src: nn.Module, dst: nn.Module) -> None:
    """Copy every Linear and Conv2d, in module order, from ``src`` to ``dst``."""
    kinds = (nn.Linear, nn.Conv2d)
    a = [m for m in src.modules() if isinstance(m, kinds)]
    b = [m for m in dst.modules() if isinstance(m, kinds)]
    with torch.no_grad():
        for s, d in zip(a, b, strict=True):
            d.weight.copy_(s.weight)
            d.bias.copy_(s.bias)


def dense_log_prob(to_noise: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """log N(f(x); 0, I) + log|det df/dx|, one dense Jacobian per point (torch.func)."""
    out = []
    for point in x:

        def f(v: Tensor) -> Tensor:
            return to_noise(v.unsqueeze(0)).reshape(-1)

        try:
            jac = torch.func.jacrev(f)(point)
        except RuntimeError:  # in-place writes that vmap cannot batch (zuko's merge)
            jac = torch.autograd.functional.jacobian(f, point)
        z = f(point)
        base = -0.5 * z.square().sum() - 0.5 * z.numel() * LOG_2PI
        out.append(base + torch.linalg.slogdet(jac.reshape(z.numel(), -1))[1])
    return torch.stack(out)
