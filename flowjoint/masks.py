"""Coupling masks: True marks a transformed entry, False an entry passed through.

A 1-D mask ``(n,)`` splits dimension 1 (the features of a vector, the channels of an
image); a mask of the event shape, such as a checkerboard ``(C, H, W)``, selects
entries of the whole event.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from flowjoint.checks import check_event_shape, check_positive_int

__all__ = ["alternating_masks", "channel_mask", "check_mask", "checkerboard_mask"]


def check_mask(mask: object, name: str = "mask") -> Tensor:
    """Return ``mask`` if it is a valid coupling mask, else raise naming it."""
    if not isinstance(mask, Tensor):
        raise TypeError(
            f"{name} must be a bool torch.Tensor (True = transformed), got {type(mask).__name__}"
        )
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must have dtype torch.bool (True = transformed), got {mask.dtype}")
    if mask.dim() == 0:
        raise ValueError(f"{name} must have at least one dimension, got a scalar")
    if bool(mask.all()):
        raise ValueError(
            f"{name} must keep at least one entry (a False), got all True, shape "
            f"{tuple(mask.shape)}"
        )
    if not bool(mask.any()):
        raise ValueError(
            f"{name} must transform at least one entry (a True), got all False, shape "
            f"{tuple(mask.shape)}"
        )
    return mask


def _check_parity(parity: object) -> None:
    if isinstance(parity, bool) or parity not in (0, 1):
        raise ValueError(f"parity must be 0 or 1, got {parity!r}")


def checkerboard_mask(shape: Sequence[int], parity: int = 0) -> Tensor:
    """A ``(C, H, W)`` checkerboard: True where ``(h + w) % 2 == parity`` (every channel)."""
    shape = check_event_shape(shape, "shape")
    if len(shape) != 3:
        raise ValueError(f"shape must be (C, H, W), got {shape}")
    _check_parity(parity)
    channels, height, width = shape
    h = torch.arange(height, device="cpu").unsqueeze(1)
    w = torch.arange(width, device="cpu").unsqueeze(0)
    board = (h + w) % 2 == parity  # (H, W)
    return board.expand(channels, height, width).clone()


def channel_mask(channels: int, parity: int = 0) -> Tensor:
    """A ``(C,)`` channel split: the second half transformed (``parity=0``) or the first."""
    check_positive_int(channels, "channels", minimum=2)
    _check_parity(parity)
    second = torch.arange(channels, device="cpu") >= channels // 2
    return second if parity == 0 else ~second


def alternating_masks(
    features: int, num_layers: int, pattern: Literal["halves", "checkerboard"] = "halves"
) -> list[Tensor]:
    """Coupling masks (True = transformed) that alternate between complementary sets.

    ``"halves"``: the second half is transformed, then the first (two contiguous
    blocks, which coupling layers split with views). ``"checkerboard"``: odd
    features, then even ones.
    """
    check_positive_int(features, "features", minimum=2)
    check_positive_int(num_layers, "num_layers")
    index = torch.arange(features, device="cpu")
    if pattern == "halves":
        first = index >= features // 2
    elif pattern == "checkerboard":
        first = index % 2 == 1
    else:
        raise ValueError(f"pattern must be 'halves' or 'checkerboard', got {pattern!r}")
    return [first if i % 2 == 0 else ~first for i in range(num_layers)]
