"""A conformance harness any user can run on their own transform.

``check_transform(layer, features)`` checks, in float64 on a copy of the layer with
randomised parameters (so no layer is trivially the identity):

* the inverse both ways: ``f^-1(f(x)) = x`` and ``f(f^-1(y)) = y``;
* ``logabsdet`` against ``slogdet`` of the dense Jacobian, forward and inverse;
* forward and inverse log-dets cancel at matching points;
* shapes: outputs ``(batch, features)``, logabsdet ``(batch,)``, dtype kept;
* features left unchanged by a coupling (``mask`` False) are bit-identical;
* gradients reach every parameter, through ``forward`` and through ``inverse``;
* a ``state_dict`` round trip through ``torch.save``/``torch.load(weights_only=True)``
  reproduces the outputs exactly.

It raises ``AssertionError`` naming the failed property, so it drops into pytest.
"""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from flowjoint.jacobian import check_logabsdet
from flowjoint.transforms import Transform, check_positive_int

__all__ = ["ConformanceReport", "check_transform", "randomize_parameters"]


@torch.no_grad()
def randomize_parameters(module: nn.Module, std: float = 0.3, seed: int = 0) -> nn.Module:
    """Add ``N(0, std^2)`` noise to every parameter in place (seeded); returns ``module``.

    A coupling's conditioner starts with a zero last layer, which makes the layer
    the identity and lets every check pass trivially; this removes that.
    """
    generator = torch.Generator().manual_seed(seed)
    for parameter in module.parameters():
        noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
        parameter.add_(std * noise.to(parameter))
    return module


@dataclass(frozen=True)
class ConformanceReport:
    """Worst errors seen by :func:`check_transform` (absolute, in the checked dtype)."""

    inverse_error: float
    logabsdet_error: float
    cancel_error: float
    num_parameters_checked: int


def _max_abs(a: Tensor, b: Tensor) -> float:
    return (a - b).abs().max().item() if a.numel() else 0.0


def check_transform(
    transform: Transform,
    features: int,
    context_features: int = 0,
    batch_size: int = 5,
    *,
    mask: Tensor | None = None,
    inputs: Tensor | None = None,
    context: Tensor | None = None,
    dtype: torch.dtype = torch.float64,
    atol: float = 1e-8,
    randomize: float | None = 0.3,
    seed: int = 0,
) -> ConformanceReport:
    """Run every conformance check on a float64 copy of ``transform``.

    The copy is put through one forward call in training mode (so ``ActNorm`` and
    ``BatchNorm`` initialise their statistics), then checked in eval mode.

    Args:
        transform: the layer under test; it is not modified.
        features: its feature count ``D``.
        context_features: width of its context (0 for none).
        batch_size: rows of the random inputs.
        mask: bool ``(D,)``, True = transformed; features with False must pass
            through bit-identical. Defaults to ``transform.mask`` if it has one.
        inputs: ``(batch, D)`` inputs to use instead of standard normal draws
            (for layers with a restricted domain).
        context: ``(batch, context_features)``, drawn if not given.
        dtype: the dtype of the check.
        atol: tolerance on the inverse, log-det and cancellation errors.
        randomize: std of the noise added to the copy's parameters; ``None`` keeps them.
        seed: seed for the random inputs and parameters.

    Returns:
        A :class:`ConformanceReport` with the worst errors seen.

    Raises:
        AssertionError: naming the property that does not hold.

    Example:
        >>> import torch
        >>> from flowjoint import AffineCoupling
        >>> report = check_transform(AffineCoupling(torch.tensor([True, False])), features=2)
        >>> report.logabsdet_error < 1e-10
        True
    """
    check_positive_int(features, "features")
    check_positive_int(batch_size, "batch_size")
    layer = copy.deepcopy(transform).to(dtype)
    if randomize is not None:
        randomize_parameters(layer, randomize, seed)
    generator = torch.Generator().manual_seed(seed)

    def draw(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype)

    x = inputs.to(dtype) if inputs is not None else draw(batch_size, features)
    batch_size = x.shape[0]
    c = None
    if context_features:
        c = context.to(dtype) if context is not None else draw(batch_size, context_features)
    if mask is None:
        mask = getattr(layer, "mask", None)

    # Data-dependent initialisation (ActNorm, BatchNorm statistics) on a batch of at
    # least 8 rows, so that a check with batch_size 1 still has batch statistics.
    warm_x, warm_c = x, c
    if inputs is None and batch_size < 8:
        warm_x = draw(8, features)
        warm_c = draw(8, context_features) if context_features else None
    layer.train()
    with torch.no_grad():
        layer(warm_x, context=warm_c)
    layer.eval()

    # Shapes, dtype and device.
    y, logabsdet = layer(x, context=c)
    assert y.shape == x.shape, f"outputs have shape {tuple(y.shape)}, expected {tuple(x.shape)}"
    assert logabsdet.shape == (batch_size,), (
        f"logabsdet has shape {tuple(logabsdet.shape)}, expected ({batch_size},)"
    )
    assert y.dtype == dtype and logabsdet.dtype == dtype, (
        f"dtype not kept: outputs {y.dtype}, logabsdet {logabsdet.dtype}, inputs {dtype}"
    )

    # Inverse both ways, log-dets cancel.
    x_back, logabsdet_inv = layer.inverse(y, context=c)
    y_other = draw(batch_size, features)
    x_other, logabsdet_other_inv = layer.inverse(y_other, context=c)
    y_back, logabsdet_other = layer(x_other, context=c)
    inverse_error = max(_max_abs(x_back, x), _max_abs(y_back, y_other))
    assert inverse_error <= atol, f"inverse is not the inverse: error {inverse_error:.3g}"
    cancel_error = max(
        _max_abs(logabsdet, -logabsdet_inv), _max_abs(logabsdet_other, -logabsdet_other_inv)
    )
    assert cancel_error <= atol, (
        f"forward and inverse logabsdet do not cancel: error {cancel_error:.3g}"
    )

    # Log-det against the dense Jacobian, both directions.
    logabsdet_error = check_logabsdet(layer, x, c, inverse=True)
    assert logabsdet_error <= atol, (
        f"logabsdet differs from slogdet of the dense Jacobian by {logabsdet_error:.3g}"
    )

    # Untouched features are bit-identical.
    if mask is not None:
        kept = ~mask.to(x.device)
        assert torch.equal(y[:, kept], x[:, kept]), "forward changed features with mask False"
        assert torch.equal(x_other[:, kept], y_other[:, kept]), (
            "inverse changed features with mask False"
        )

    # Gradients reach every parameter, through each direction.
    parameters = [(n, p) for n, p in layer.named_parameters() if p.requires_grad]
    directions = (("forward", layer, x), ("inverse", layer.inverse, y_other))
    for direction, fn, point in directions if parameters else ():
        layer.zero_grad(set_to_none=True)
        out, lad = fn(point, context=c)
        (out.square().sum() + lad.sum()).backward()
        for name, p in parameters:
            assert p.grad is not None and bool(p.grad.abs().sum() > 0), (
                f"no gradient reaches parameter {name!r} through {direction}"
            )
            assert bool(torch.isfinite(p.grad).all()), f"non-finite gradient for {name!r}"
    layer.zero_grad(set_to_none=True)

    # state_dict round trip into a perturbed copy.
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    clone = copy.deepcopy(layer)
    randomize_parameters(clone, 1.0, seed + 1)
    clone.load_state_dict(torch.load(buffer, weights_only=True))
    clone.eval()
    with torch.no_grad():
        y_clone, logabsdet_clone = clone(x, context=c)
        y_again, logabsdet_again = layer(x, context=c)
    assert torch.equal(y_clone, y_again) and torch.equal(logabsdet_clone, logabsdet_again), (
        "state_dict round trip changed the outputs"
    )
    return ConformanceReport(inverse_error, logabsdet_error, cancel_error, len(parameters))
