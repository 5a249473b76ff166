"""Scoring a trained model on the test set: exact densities and bounds, with intervals.

For pixel data with ``levels`` levels, two kinds of rows (``D`` pixels per image):

* **the density of** ``x + u`` on ``[0, levels)^D`` at ``R`` fixed uniform
  dequantization draws of the test set (`dequantize`), scored by
  the model's stack *without* its dequantization layer
  (``Flow(model.transform[1:], model.base)``): exact for a flow (``exact``); for a
  model with an augmentation ``x -> (x, eps)`` the bounds ``elbo`` and ``iwae_K``
  over ``eps``, and ``joint``, the exact ``-log p(x + u, eps)`` over ``D + d``
  dimensions, whose mean is ``-(ELBO - H[N(0, I_d)])``. The 95% interval is over
  the ``R`` draws (Student t with ``R - 1`` degrees of freedom on the per-draw means).
* **the bound on the discrete data**, ``log P(x) >= IWAE_K`` over the dequantization
  noise (and ``eps``): ``model.iwae(x, K)`` of the whole stack on the integer test
  images. The 95% interval is over test images (normal approximation).

For continuous data (the 2-D toys, a user's array without levels) the rows are the
same density rows on ``x`` itself, with intervals over test points.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from flowjoint.compare.scoring import EvaluationConfig
from flowjoint.data import dequantize
from flowjoint.fitting import evaluate
from flowjoint.flows import Flow
from flowjoint.stochastic import Augment, UniformDequantization, VariationalDequantization
from flowjoint.transforms import Compose
from flowjoint.units import nats_to_bits_per_dim

__all__ = [
    "augmentation_features",
    "continuous_part",
    "evaluate_model",
    "interval",
    "student_t_quantile",
]

#: The standard normal's 0.975 quantile: the half-width of a 95% normal interval.
NORMAL_975 = 1.959963984540054


def continuous_part(model: Flow) -> Flow:
    """``model`` without its first layer if that layer dequantizes; else ``model`` itself.

    The result is a density (or, with an augmentation, a bound) of ``x + u``.
    """
    stack = model.transform
    dequantizations = (UniformDequantization, VariationalDequantization)
    if isinstance(stack, Compose) and isinstance(stack[0], dequantizations):
        return Flow(stack[1:], model.base)
    return model


def augmentation_features(flow: Flow) -> int | None:
    """``d`` of the first [`Augment`][flowjoint.Augment] layer of the stack, or None."""
    for layer in flow.transform.modules():
        if isinstance(layer, Augment):
            return layer.features
    return None


def student_t_quantile(probability: float, df: int) -> float:
    """The ``probability`` quantile (> 0.5) of Student's t with ``df`` degrees of freedom.

    Bisection on the closed form of ``A(t | df) = P(|T| <= t)`` for integer ``df``
    (Abramowitz & Stegun 26.7.3-4), so that no statistics package is needed.

    Example:
        >>> round(student_t_quantile(0.975, 4), 4)
        2.7764
    """
    if not 0.5 < probability < 1:
        raise ValueError(f"probability must be in (0.5, 1), got {probability}")
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise ValueError(f"df must be a positive int, got {df!r}")

    def central(t: float) -> float:  # P(|T| <= t)
        theta = math.atan(t / math.sqrt(df))
        c2 = math.cos(theta) ** 2
        if df % 2 == 1:
            term, total = math.cos(theta), 0.0
            for k in range(1, (df - 1) // 2 + 1):
                total += term
                term *= c2 * (2 * k) / (2 * k + 1)
            return (2 / math.pi) * (theta + math.sin(theta) * total)
        term, total = 1.0, 0.0
        for k in range(1, df // 2 + 1):
            total += term
            term *= c2 * (2 * k - 1) / (2 * k)
        return math.sin(theta) * total

    target = 2 * probability - 1
    low, high = 0.0, 1.0
    while central(high) < target:
        high *= 2
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if central(middle) < target else (low, middle)
    return (low + high) / 2


def interval(values: Tensor, over_draws: bool) -> tuple[float, float] | None:
    """95% interval of the mean of ``values`` ``(n,)``; None when ``n < 2``.

    Student t with ``n - 1`` degrees of freedom for a few dequantization draws, the
    normal approximation for many test examples.
    """
    n = values.numel()
    if n < 2:
        return None
    quantile = student_t_quantile(0.975, n - 1) if over_draws else NORMAL_975
    mean = values.double().mean().item()
    half = quantile * values.double().std().item() / math.sqrt(n)
    return mean - half, mean + half


def _row(
    density_of: str,
    metric: str,
    kind: str,
    nll: Tensor,
    dims: int,
    levels: int | None,
    interval_over: str,
    over_draws: bool,
    samples: int | None = None,
) -> dict[str, object]:
    """One table row from per-draw means ``(R,)`` or per-example values ``(n,)``."""
    bounds = interval(nll, over_draws)
    mean = nll.double().mean().item()
    row: dict[str, object] = {
        "density_of": density_of,
        "metric": metric,
        "kind": kind,
        "samples": samples,
        "dims": dims,
        "nll_nats": mean,
        "ci95_nats": list(bounds) if bounds else None,
        "interval_over": interval_over,
    }
    if levels is not None:
        row["bits_per_dim"] = nats_to_bits_per_dim(mean, dims)
        row["ci95_bits_per_dim"] = (
            [nats_to_bits_per_dim(b, dims) for b in bounds] if bounds else None
        )
    return row


def _density_metrics(
    flow: Flow, settings: EvaluationConfig
) -> dict[str, tuple[str, int | None, int, Callable[[Tensor], Tensor]]]:
    """``metric -> (kind, K, extra dims, log-density or bound (batch,))`` of ``flow``."""
    if not flow.stochastic:
        return {"exact": ("exact", None, 0, flow.log_prob)}
    d = augmentation_features(flow)
    chunk = settings.chunk_size
    metrics = {"elbo": ("bound", 1, 0, flow.elbo)}
    for k in settings.iwae_samples:
        metrics[f"iwae_{k}"] = ("bound", k, 0, lambda x, k=k: flow.iwae(x, k, chunk_size=chunk))
    if d is not None:

        def joint(x: Tensor) -> Tensor:
            eps = torch.randn(x.shape[0], d, dtype=x.dtype, device=x.device)
            return flow.joint_log_prob(x, eps)

        metrics["joint"] = ("joint", None, d, joint)
    return metrics


@torch.no_grad()
def evaluate_model(
    model: Flow,
    test: Tensor,
    levels: int | None,
    settings: EvaluationConfig,
    seed: int = 0,
    batch_size: int = 500,
) -> list[dict[str, object]]:
    """Test-set rows (see the module docstring), nats per example and bits/dim.

    Args:
        model: a trained model; on pixel data its stack starts with a dequantization
            layer.
        test: ``(n, *event)`` test data, integer levels if ``levels`` is set.
        levels: the number of levels of pixel data, or None for continuous data.
        settings: draws and ``K`` (`EvaluationConfig`).
        seed: seeds the dequantization draws (the same for every model) and the
            model's own draws.
        batch_size: test examples per pass (an IWAE splits its ``K`` draws further).

    Returns:
        One dict per row: ``density_of`` (``"x + u"`` or ``"x"``), ``metric``, ``kind``
        (``exact``, ``bound`` or ``joint``), ``samples`` (``K``), ``dims``, ``nll_nats``,
        ``ci95_nats`` (None without an interval), ``interval_over``, and for pixel
        data ``bits_per_dim`` and ``ci95_bits_per_dim``.
    """
    model.eval()
    dims = math.prod(test.shape[1:])
    continuous = continuous_part(model)
    if levels is not None and continuous is model:
        raise ValueError("a model of pixel data must start with a dequantization layer")
    generator = torch.Generator().manual_seed(seed)
    if levels is None:
        draws, density_of, over = [test], "x", f"{test.shape[0]} test points"
    else:
        draws = [dequantize(test, levels, generator) for _ in range(settings.num_draws)]
        density_of, over = "x + u", f"{len(draws)} dequantization draws"
    rows = []
    torch.manual_seed(seed)
    for metric, (kind, k, extra, fn) in _density_metrics(continuous, settings).items():
        size = max(1, min(batch_size, settings.chunk_size // (k or 1)))
        nll = torch.stack([-evaluate(fn, x, size) for x in draws])  # (R, n)
        values = nll[0] if levels is None else nll.mean(1)  # per point, or per draw
        rows.append(
            _row(
                density_of, metric, kind, values, dims + extra, levels, over, levels is not None, k
            )
        )
    if levels is not None:
        k = settings.discrete_samples
        bound = -evaluate(
            lambda x: model.iwae(x, k, chunk_size=settings.chunk_size),
            test,
            min(batch_size, settings.chunk_size),
        )  # (n,)
        over = f"{test.shape[0]} test images"
        rows.append(_row("x", f"iwae_{k}", "bound", bound, dims, levels, over, False, k))
    return rows
