"""Argument checks shared by every public entry point.

Each check raises ``TypeError`` or ``ValueError`` naming the argument and the value
it got, and returns the (possibly normalised) value so that constructors read
``self.features = check_positive_int(features, "features")``. None of them reads
tensor values (no device synchronisation), except where the name says so
(`check_finite_values`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "check_context",
    "check_event_shape",
    "check_finite_values",
    "check_inputs",
    "check_log_scale_bound",
    "check_number",
    "check_positive_int",
    "event_size",
    "is_functorch_wrapped",
    "sum_event",
]


def check_positive_int(value: object, name: str, minimum: int = 1) -> int:
    """Return ``value`` if it is an int >= ``minimum``, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_number(
    value: object,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return ``value`` as a float if it is a finite real number in the given range.

    ``low``/``high`` bound the range, closed unless ``low_open``/``high_open``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value}")
    return value


def check_log_scale_bound(value: object, name: str = "log_scale_bound") -> float | None:
    """A soft bound on a log-scale: ``None`` (unbounded) or a number in ``[1e-6, 80]``.

    80 is the largest bound whose ``exp(±bound)`` is finite and non-zero in float32
    (``exp(88.7)`` overflows): a larger bound is no bound at all in that dtype. Below
    1e-6 a layer scales by less than one float32 ulp from 1, and the clamp's
    ``2 / bound`` overflows float32 near 1e-39: use an additive coupling instead.
    """
    if value is None:
        return None
    return check_number(value, name, low=1e-6, high=80.0)


def check_event_shape(shape: object, name: str) -> tuple[int, ...]:
    """An int ``n`` (the vector shape ``(n,)``) or a non-empty sequence of positive ints."""
    if isinstance(shape, int) and not isinstance(shape, bool):
        return (check_positive_int(shape, name),)
    if isinstance(shape, (Sequence, torch.Size)) and not isinstance(shape, str) and len(shape):
        for size in shape:
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise ValueError(f"{name} must hold positive ints, got {tuple(shape)!r}")
        return tuple(int(s) for s in shape)
    raise TypeError(f"{name} must be a positive int or a sequence of them, got {shape!r}")


def check_inputs(
    inputs: object,
    event_shape: tuple[int, ...] | int | None = None,
    name: str = "inputs",
    *,
    channels: int | None = None,
) -> Tensor:
    """Raise unless ``inputs`` is a floating ``(batch, *event_shape)`` tensor.

    Args:
        inputs: the value to check.
        event_shape: the required shape after the batch dimension; ``None`` accepts any
            shape with at least one event dimension, an int ``n`` means ``(n,)``.
        name: the argument's name, for the message.
        channels: if set, the required size of dimension 1 (features of a vector,
            channels of an image), any further dimensions being free.
    """
    if not isinstance(inputs, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(inputs).__name__}")
    if not inputs.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {inputs.dtype}")
    if inputs.dim() < 2:
        raise ValueError(
            f"{name} must have shape (batch, *event_shape) with at least one event "
            f"dimension, got shape {tuple(inputs.shape)}"
        )
    if isinstance(event_shape, int):
        event_shape = (event_shape,)
    if event_shape is not None and inputs.shape[1:] != tuple(event_shape):
        expected = ", ".join(str(s) for s in event_shape)
        raise ValueError(f"{name} must have shape (batch, {expected}), got {tuple(inputs.shape)}")
    if channels is not None and inputs.shape[1] != channels:
        kind = "features" if inputs.dim() == 2 else "channels"
        raise ValueError(
            f"{name} must have {channels} {kind} (dimension 1), got shape {tuple(inputs.shape)}"
        )
    return inputs


def check_context(
    context: object,
    batch_size: int,
    context_features: int,
    name: str = "context",
) -> Tensor | None:
    """Raise unless ``context`` fits a layer with ``context_features``.

    A layer without context (``context_features == 0``) accepts ``None`` and ignores a
    given context, so that unconditional layers compose with conditional ones. A
    context is ``(batch, context_features, *rest)``, ``batch`` the inputs' batch size.
    """
    if context_features == 0:
        return None
    if context is None:
        raise ValueError(
            f"{name} is required: this layer is conditioned on {context_features} "
            f"context features, got context=None"
        )
    check_inputs(context, None, name, channels=context_features)
    if context.shape[0] != batch_size:
        raise ValueError(
            f"{name} must have the batch size of the inputs ({batch_size}), "
            f"got shape {tuple(context.shape)}"
        )
    return context


def check_finite_values(value: Tensor | None, name: str) -> None:
    """Raise ``ValueError`` naming the rows of ``value`` that hold NaN or inf (reads values)."""
    if value is None or value.numel() == 0:
        return
    bad = ~torch.isfinite(value).flatten(1).all(1)  # (batch,)
    if bool(bad.any()):
        rows = bad.nonzero().squeeze(-1)[:10].tolist()
        raise ValueError(f"{name} must be finite, got NaN or inf in rows {rows}")


def event_size(shape: Sequence[int]) -> int:
    """Number of scalars in one event of ``shape``."""
    return math.prod(shape)


def sum_event(values: Tensor) -> Tensor:
    """Sum ``(batch, *event)`` over the event dimensions: ``(batch,)``."""
    if values.dim() == 2:
        return values.sum(1)
    return values.flatten(1).sum(1)


def is_functorch_wrapped(tensor: Tensor) -> bool:
    """True for a tensor that torch.func (vmap, grad, jacrev) wraps: its value cannot
    steer Python, and writing another wrapped tensor into it in place may fail."""
    if torch.compiler.is_compiling():  # traced graphs hold no functorch wrappers
        return False
    check = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    return bool(check(tensor)) if check is not None else False


def first_floating(module: nn.Module, kind: str, seen: set[int] | None = None) -> Tensor | None:
    """The first floating tensor of ``module.<kind>`` (``_parameters`` or ``_buffers``)
    in ``module.parameters()`` order, depth first, each module once; a walk of the
    module dicts, about a tenth of the cost of the ``parameters()`` generator, which
    every call pays."""
    seen = set() if seen is None else seen
    seen.add(id(module))
    for tensor in getattr(module, kind).values():
        if tensor is not None and tensor.is_floating_point():
            return tensor
    for child in module._modules.values():
        if child is not None and id(child) not in seen:
            found = first_floating(child, kind, seen)
            if found is not None:
                return found
    return None
