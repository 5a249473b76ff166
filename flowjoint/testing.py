"""A conformance harness any user can run on their own layer.

``check_transform(layer, features)`` checks, in float64 on a copy of the layer with
randomised parameters (so no layer is trivially the identity). For a bijection:

* the inverse both ways: ``f^-1(f(x)) = x`` and ``f(f^-1(y)) = y``;
* ``logabsdet`` against ``slogdet`` of the dense Jacobian over the flattened event,
  forward and inverse;
* forward and inverse log-dets cancel at matching points;
* shapes: outputs of the input's shape, logabsdet ``(batch,)``, dtype kept;
* entries left unchanged by a coupling (``mask`` False) are bit-identical.

For a stochastic layer ([`StochasticTransform`][flowjoint.StochasticTransform]):

* ``num_samples`` draws per row: outputs and contribution have ``batch * K`` rows;
* the contribution equals an independent density the caller supplies
  (``reference_log_weight``), at every draw;
* the generative direction (``inverse``) recovers the input from every draw.

For both: gradients reach every parameter; a ``state_dict`` round trip through
``torch.save``/``torch.load(weights_only=True)`` reproduces the outputs exactly, also
into a layer built with *other* constructor arguments (``reload_into``), which must
then compute exactly like the saved one or refuse the state with an error.

Errors are compared relative to the magnitude of what is compared:
``|a - b| <= tolerance * max(1, |b|)``, so a log-det of 500 nats is held to the
same number of significant digits as one of 0.5.

It raises ``AssertionError`` naming the failed property, so it drops into pytest.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from flowjoint.checks import check_event_shape, check_positive_int
from flowjoint.jacobians import _flat, _unflat, jacobian
from flowjoint.stochastic import AugmentedState, repeat_rows
from flowjoint.transforms import Transform, is_stochastic

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
    """Worst relative errors seen by `check_transform`.

    ``inverse_error`` is the round trip's; ``logabsdet_error`` the log-det's against
    the dense Jacobian (bijections) or the contribution's against the reference
    (stochastic layers); ``cancel_error`` the forward/inverse log-det cancellation
    (0 for stochastic layers).
    """

    inverse_error: float
    logabsdet_error: float
    cancel_error: float
    num_parameters_checked: int


def _relative(a: Tensor | AugmentedState, b: Tensor | AugmentedState) -> float:
    a = _flat(a) if isinstance(a, AugmentedState) else a
    b = _flat(b) if isinstance(b, AugmentedState) else b
    if a.numel() == 0:
        return 0.0
    return ((a - b).abs() / b.abs().clamp_min(1.0)).max().item()


def _rows(state: Tensor | AugmentedState) -> int:
    return state.latent.shape[0] if isinstance(state, AugmentedState) else state.shape[0]


def _to(state: Tensor | AugmentedState, dtype: torch.dtype) -> Tensor | AugmentedState:
    if isinstance(state, AugmentedState):
        return AugmentedState(state.data.to(dtype), state.latent.to(dtype))
    return state.to(dtype)


def _logdet_error(logabsdet: Tensor, jac: Tensor) -> float:
    sign, reference = torch.linalg.slogdet(jac.detach())
    if bool((sign == 0).any()):
        return float("inf")
    return _relative(logabsdet.detach(), reference)


def _check_bijection(
    layer: Transform, x: Tensor | AugmentedState, c: Tensor | None, draw: Callable, tol: float
) -> tuple[float, float, float, Tensor | AugmentedState]:
    """Shapes, inverse both ways, cancellation, dense Jacobian; returns errors and a point."""
    y, logabsdet = layer(x, context=c)
    batch = _rows(x)
    assert _flat(y).shape == _flat(x).shape, (
        f"outputs have {tuple(_flat(y).shape)} entries, expected {tuple(_flat(x).shape)}"
    )
    assert logabsdet.shape == (batch,), (
        f"logabsdet has shape {tuple(logabsdet.shape)}, expected ({batch},)"
    )
    x_back, logabsdet_inv = layer.inverse(y, context=c)
    y_other = _unflat(draw(*_flat(y).shape), y)
    x_other, logabsdet_other_inv = layer.inverse(y_other, context=c)
    y_back, logabsdet_other = layer(x_other, context=c)
    inverse_error = max(_relative(x_back, x), _relative(y_back, y_other))
    assert inverse_error <= tol, f"inverse is not the inverse: relative error {inverse_error:.3g}"
    cancel_error = max(
        _relative(logabsdet, -logabsdet_inv), _relative(logabsdet_other, -logabsdet_other_inv)
    )
    assert cancel_error <= tol, (
        f"forward and inverse logabsdet do not cancel: relative error {cancel_error:.3g}"
    )
    logdet_error = max(
        _logdet_error(logabsdet, jacobian(layer, x, c)),
        _logdet_error(logabsdet_inv, jacobian(layer, y, c, inverse=True)),
    )
    assert logdet_error <= tol, (
        f"logabsdet differs from slogdet of the dense Jacobian by {logdet_error:.3g} (relative)"
    )
    return inverse_error, logdet_error, cancel_error, y_other


def _check_stochastic(
    layer: Transform,
    x: Tensor,
    c: Tensor | None,
    reference: Callable | None,
    tol: float,
    num_samples: int,
) -> tuple[float, float]:
    """Draw shapes, contribution against ``reference``, generative direction."""
    if reference is None:
        raise TypeError(
            "reference_log_weight is required for a stochastic layer: a function "
            "(inputs, outputs, context) -> log p(inputs | outputs) - log q(outputs | inputs), "
            "written independently of the layer"
        )
    outputs, log_weight = layer(x, context=c, num_samples=num_samples)
    rows = x.shape[0] * num_samples
    assert _rows(outputs) == rows and log_weight.shape == (rows,), (
        f"with num_samples={num_samples} expected {rows} output rows and a ({rows},) "
        f"contribution, got {_rows(outputs)} rows and {tuple(log_weight.shape)}"
    )
    repeated = x.repeat_interleave(num_samples, dim=0)
    c_repeated = None if c is None else c.repeat_interleave(num_samples, dim=0)
    expected = reference(repeated, outputs, c_repeated)
    error = _relative(log_weight, expected)
    assert error <= tol, f"contribution differs from the reference density by {error:.3g}"
    recovered, _ = layer.inverse(outputs, context=c)
    # Augment keeps x once for its K draws; its inverse returns it once.
    recovered = repeat_rows(recovered, rows)
    inverse_error = _relative(_flat(recovered), _flat(repeated))
    assert inverse_error <= tol, (
        f"the generative direction does not recover the input: relative error {inverse_error:.3g}"
    )
    return inverse_error, error


def _check_gradients(layer: Transform, x: object, c: Tensor | None, y_other: object) -> int:
    parameters = [(n, p) for n, p in layer.named_parameters() if p.requires_grad]
    directions = [("forward", layer, x)]
    if y_other is not None:
        directions.append(("inverse", layer.inverse, y_other))
    for direction, fn, point in directions if parameters else ():
        layer.zero_grad(set_to_none=True)
        out, lad = fn(point, context=c)
        (_flat(out).square().sum() + lad.sum()).backward()
        for name, p in parameters:
            assert p.grad is not None and bool(p.grad.abs().sum() > 0), (
                f"no gradient reaches parameter {name!r} through {direction}"
            )
            assert bool(torch.isfinite(p.grad).all()), f"non-finite gradient for {name!r}"
    layer.zero_grad(set_to_none=True)
    return len(parameters)


def _identical(a: Tensor, b: Tensor) -> bool:
    """Bit-equal, NaN where the other is NaN (a stochastic layer's inverse log-det)."""
    return a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())


def _outputs(layer: Transform, x: object, c: Tensor | None, seed: int) -> list[Tensor]:
    """Forward outputs and log-det at ``x``, and the inverse of those outputs (seeded)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        y, logabsdet = layer(x, context=c)
        x_back, logabsdet_back = layer.inverse(y, context=c)
    return [_flat(y), logabsdet, _flat(x_back), logabsdet_back]


def _check_state_dict(
    layer: Transform,
    x: object,
    c: Tensor | None,
    reload_into: Transform | None,
    dtype: torch.dtype,
    seed: int,
) -> None:
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    expected = _outputs(layer, x, c, seed)
    targets = [("a perturbed copy", randomize_parameters(copy.deepcopy(layer), 1.0, seed + 1))]
    if reload_into is not None:
        targets.append(("the layer built with other arguments", copy.deepcopy(reload_into)))
    for name, target in targets:
        target = target.to(dtype)
        buffer.seek(0)
        state = torch.load(buffer, weights_only=True)
        try:
            target.load_state_dict(state)
        except (ValueError, RuntimeError) as error:
            assert name != "a perturbed copy", f"loading into {name} failed: {error}"
            assert str(error), "loading into another configuration refused without a message"
            continue
        target.eval()
        got = _outputs(target, x, c, seed)
        same = all(_identical(a, b) for a, b in zip(got, expected, strict=True))
        assert same, f"state_dict loaded into {name} computes differently from the saved layer"


def check_transform(
    transform: Transform,
    features: int | Sequence[int] | None = None,
    context_features: int = 0,
    batch_size: int = 5,
    *,
    mask: Tensor | None = None,
    inputs: Tensor | AugmentedState | None = None,
    context: Tensor | None = None,
    dtype: torch.dtype = torch.float64,
    tolerance: float = 1e-10,
    randomize: float | None = 0.3,
    seed: int = 0,
    reload_into: Transform | None = None,
    reference_log_weight: Callable[[Tensor, object, Tensor | None], Tensor] | None = None,
    num_samples: int = 3,
) -> ConformanceReport:
    """Run every conformance check on a float64 copy of ``transform``.

    The copy is put through one forward call in training mode (so ``ActNorm`` and
    ``BatchNorm`` initialise their statistics), then checked in eval mode.

    Args:
        transform: the layer under test; it is not modified.
        features: its event shape (an int ``D`` or e.g. ``(C, H, W)``); not needed
            with ``inputs``.
        context_features: width of its context (0 for none).
        batch_size: rows of the random inputs.
        mask: True = transformed; entries with False must pass through bit-identical.
            Defaults to ``transform.mask`` if it has one.
        inputs: inputs to use instead of standard normal draws (a layer with a
            restricted domain, an [`AugmentedState`][flowjoint.AugmentedState]).
        context: ``(batch, context_features)``, drawn if not given.
        dtype: the dtype of the check.
        tolerance: on every relative error (see the module docstring); ``inf`` only
            reports the errors.
        randomize: std of the noise added to the copy's parameters; ``None`` keeps them.
        seed: seed for the random inputs, parameters and draws.
        reload_into: a layer of the same kind built with other constructor arguments
            (another seed, another mask); the saved state is loaded into it.
        reference_log_weight: for a stochastic layer, ``(inputs, outputs, context) ->
            (rows,)``, its contribution computed independently (inputs repeated for
            the draws).
        num_samples: draws per row for a stochastic layer.

    Returns:
        A `ConformanceReport` with the worst errors seen.

    Raises:
        AssertionError: naming the property that does not hold.

    Example:
        >>> import torch
        >>> from flowjoint import AffineCoupling
        >>> report = check_transform(AffineCoupling(torch.tensor([True, False])), features=2)
        >>> report.logabsdet_error < 1e-10
        True
    """
    check_positive_int(batch_size, "batch_size")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0:
        raise ValueError(f"tolerance must be a number >= 0 (inf: report only), got {tolerance!r}")
    if features is None and inputs is None:
        raise ValueError("features is required without inputs")
    layer = copy.deepcopy(transform).to(dtype)
    if randomize is not None:
        randomize_parameters(layer, randomize, seed)
    generator = torch.Generator().manual_seed(seed)

    def draw(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype)

    if inputs is not None:
        x = _to(inputs, dtype)
    else:
        x = draw(batch_size, *check_event_shape(features, "features"))
    batch_size = _rows(x)
    c = None
    if context_features:
        c = context.to(dtype) if context is not None else draw(batch_size, context_features)
    if mask is None:
        mask = getattr(layer, "mask", None)

    _warm_up(layer, x, c, context_features, draw, inputs is None)
    torch.manual_seed(seed)
    if is_stochastic(layer):
        inverse_error, logdet_error = _check_stochastic(
            layer, x, c, reference_log_weight, tolerance, num_samples
        )
        cancel_error, y_other = 0.0, None
    else:
        inverse_error, logdet_error, cancel_error, y_other = _check_bijection(
            layer, x, c, draw, tolerance
        )
        if mask is not None:
            _check_kept(layer, x, c, y_other, mask)
    num_parameters = _check_gradients(layer, x, c, y_other)
    _check_state_dict(layer, x, c, reload_into, dtype, seed)
    return ConformanceReport(inverse_error, logdet_error, cancel_error, num_parameters)


def _warm_up(
    layer: Transform,
    x: object,
    c: Tensor | None,
    context_features: int,
    draw: Callable,
    drawn: bool,
) -> None:
    """Data-dependent initialisation (ActNorm, BatchNorm) on at least 8 rows, then eval."""
    warm_x, warm_c = x, c
    if drawn and _rows(x) < 8:
        warm_x = draw(8, *x.shape[1:])
        warm_c = draw(8, context_features) if context_features else None
    layer.train()
    with torch.no_grad():
        layer(warm_x, context=warm_c)
    layer.eval()


def _check_kept(
    layer: Transform, x: Tensor, c: Tensor | None, y_other: Tensor, mask: Tensor
) -> None:
    y, _ = layer(x, context=c)
    x_other, _ = layer.inverse(y_other, context=c)
    kept = ~mask.to(x.device)
    assert torch.equal(y[:, kept], x[:, kept]), "forward changed entries with mask False"
    assert torch.equal(x_other[:, kept], y_other[:, kept]), (
        "inverse changed entries with mask False"
    )
