"""What training takes and gives: options, the result, the data it accepts, evaluation."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from flowjoint.checks import check_number, check_positive_int

__all__ = ["FitOptions", "FitResult", "SCHEDULES", "TrainingDiverged", "as_data", "evaluate"]

SCHEDULES = ("cosine", "onecycle")


class TrainingDiverged(FloatingPointError):
    """Raised when the loss or a gradient becomes NaN or infinite."""


@dataclass(frozen=True)
class FitOptions:
    """Options of :func:`fit`, checked when built.

    Attributes:
        epochs: total number of epochs (a resumed run continues up to this number).
        batch_size: global batch size (split across ranks under DDP).
        lr: Adam's learning rate (the peak for ``"onecycle"``).
        weight_decay: Adam's L2 penalty.
        schedule: None (constant), ``"cosine"`` (to 0 over all steps), ``"onecycle"``
            (warm-up over 10% then cosine), or ``callable(optimizer, total_steps)``
            returning a scheduler, stepped once per batch.
        clip_grad_norm: clip the global gradient norm to this (None: no clipping).
        patience: stop after this many epochs without a new best validation loss.
        seed: seeds the model's random draws (``torch.manual_seed``), the shuffling,
            and the validation draws.
        eval_batch_size: batch size of validation passes.
    """

    epochs: int = 100
    batch_size: int = 100
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str | Callable | None = None
    clip_grad_norm: float | None = 100.0
    patience: int | None = None
    seed: int = 0
    eval_batch_size: int = 1000

    def __post_init__(self) -> None:
        check_positive_int(self.epochs, "epochs")
        check_positive_int(self.batch_size, "batch_size")
        check_positive_int(self.eval_batch_size, "eval_batch_size")
        check_number(self.lr, "lr", low=0.0, low_open=True)
        check_number(self.weight_decay, "weight_decay", low=0.0)
        if self.clip_grad_norm is not None:
            check_number(self.clip_grad_norm, "clip_grad_norm", low=0.0, low_open=True)
        if self.patience is not None:
            check_positive_int(self.patience, "patience")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"seed must be an int, got {self.seed!r}")
        if not (self.schedule is None or callable(self.schedule) or self.schedule in SCHEDULES):
            raise ValueError(
                f"schedule must be None, a callable or one of {SCHEDULES}, got {self.schedule!r}"
            )


@dataclass
class FitResult:
    """What :func:`fit` did.

    Attributes:
        history: one dict per epoch: ``epoch``, ``train_loss`` (mean negative objective
            over the epoch, nats per example), ``val_loss`` (nats per example, ``nan``
            without validation data), ``val_bits_per_dim``, ``lr``, ``seconds``.
        best_epoch: epoch (1-based) of the lowest validation loss (the last epoch
            without validation data).
        best_val_loss: that loss (nats per example).
        stop_reason: ``"completed"``, ``"early_stopping"`` or ``"callback"``.
        checkpoint_dir: where ``last.pt`` and ``best.pt`` were written, if anywhere.
    """

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = math.inf
    stop_reason: str = "completed"
    checkpoint_dir: Path | None = None


def as_data(name: str, data: object, allow_empty: bool = False) -> Tensor:
    """A floating ``(n, *event)`` tensor from a tensor or numpy array (integers -> float32)."""
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(np.ascontiguousarray(data))
    if not isinstance(data, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor or a numpy array, got {type(data).__name__}"
        )
    if not data.is_floating_point():
        data = data.to(torch.float32)
    if data.dim() < 2:
        raise ValueError(f"{name} must have shape (n, *event), got shape {tuple(data.shape)}")
    if data.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name} must hold at least one example, got shape {tuple(data.shape)}")
    return data


@torch.no_grad()
def evaluate(fn: Callable[[Tensor], Tensor], inputs: Tensor, batch_size: int = 1000) -> Tensor:
    """``fn`` (per-example, ``(batch,)``) over ``inputs`` ``(n, *event)`` in batches; ``(n,)``."""
    check_positive_int(batch_size, "batch_size")
    if inputs.shape[0] == 0:
        return inputs.new_zeros(0)
    return torch.cat([fn(chunk) for chunk in inputs.split(batch_size)])
