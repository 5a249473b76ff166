"""What training takes and gives: options, the result, the data it accepts, evaluation."""

from __future__ import annotations

import math
import numbers
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from flowjoint.checks import check_finite_values, check_number, check_positive_int
from flowjoint.flows import Flow

__all__ = [
    "FitOptions",
    "FitResult",
    "SCHEDULES",
    "TrainingDiverged",
    "as_data",
    "check_batches",
    "check_fit_arguments",
    "checkpoint_folder",
    "epoch_seed",
    "evaluate",
    "make_scheduler",
    "merge_options",
    "split_batches",
]

SCHEDULES = ("cosine", "onecycle")


class TrainingDiverged(FloatingPointError):
    """Raised when the loss, a gradient or a weight becomes NaN or infinite."""


def _plain_number(value: object) -> object:
    """A numpy integer or float as the Python number it holds (other values unchanged)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    return float(value) if not isinstance(value, (int, float)) else value


@dataclass(frozen=True)
class FitOptions:
    """Options of `fit`, checked when built (numpy numbers are accepted).

    Attributes:
        epochs: total number of epochs (a resumed run continues up to this number).
        batch_size: the largest global batch (split across ranks under DDP). Each epoch
            is ``ceil(n / batch_size)`` batches whose sizes differ by at most one, so no
            batch is a leftover of a few rows (a one-row batch has no batch statistics).
        lr: Adam's learning rate (the peak for ``"onecycle"``), finite and > 0.
        weight_decay: Adam's L2 penalty, finite and >= 0.
        schedule: None (constant), ``"cosine"`` (to 0 over all steps), ``"onecycle"``
            (warm-up over 10% then cosine), or ``callable(optimizer, total_steps)``
            returning a scheduler, stepped once per batch.
        clip_grad_norm: clip the global gradient norm to this (finite, > 0), or None
            (no clipping).
        patience: stop after this many epochs without a new best validation loss.
        seed: an int >= 0. Epoch ``e`` seeds the model's random draws
            (``torch.manual_seed``) and the shuffling with `epoch_seed`
            ``(seed, e)``; the validation draws use ``epoch_seed(seed, 0)``.
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
        for name in (
            "epochs",
            "batch_size",
            "lr",
            "weight_decay",
            "clip_grad_norm",
            "patience",
            "seed",
            "eval_batch_size",
        ):
            object.__setattr__(self, name, _plain_number(getattr(self, name)))
        check_positive_int(self.epochs, "epochs")
        check_positive_int(self.batch_size, "batch_size")
        check_positive_int(self.eval_batch_size, "eval_batch_size")
        check_number(self.lr, "lr", low=0.0, low_open=True)
        check_number(self.weight_decay, "weight_decay", low=0.0)
        if self.clip_grad_norm is not None:
            check_number(self.clip_grad_norm, "clip_grad_norm", low=0.0, low_open=True)
        if self.patience is not None:
            check_positive_int(self.patience, "patience")
        check_positive_int(self.seed, "seed", minimum=0)
        if not (self.schedule is None or callable(self.schedule) or self.schedule in SCHEDULES):
            raise ValueError(
                f"schedule must be None, a callable or one of {SCHEDULES}, got {self.schedule!r}"
            )

    def resume_key(self) -> dict[str, object]:
        """The options a resumed run must share with the checkpointed one (plain values).

        Everything that changes the sequence of batches, steps or draws; ``epochs``
        only with a schedule (which spans all epochs); not ``patience``.
        """
        schedule = self.schedule
        if callable(schedule):
            schedule = f"callable {getattr(schedule, '__qualname__', type(schedule).__name__)}"
        key: dict[str, object] = {
            "batch_size": self.batch_size,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "schedule": schedule,
            "clip_grad_norm": self.clip_grad_norm,
            "seed": self.seed,
            "eval_batch_size": self.eval_batch_size,
        }
        if schedule is not None:
            key["epochs"] = self.epochs
        return key


@dataclass
class FitResult:
    """What `fit` did.

    Attributes:
        history: one dict per epoch: ``epoch``, ``train_loss`` (mean negative objective
            over the epoch, nats per example), ``val_loss`` (nats per example, ``nan``
            without validation data), ``val_bits_per_dim``, ``lr``, ``seconds``.
        best_epoch: epoch (1-based) of the lowest validation loss (the last epoch
            without validation data).
        best_val_loss: that loss (nats per example; the training loss without
            validation data).
        stop_reason: ``"completed"``, ``"early_stopping"`` or ``"callback"``.
        checkpoint_dir: where ``last.pt`` and ``best.pt`` were written, if anywhere.
    """

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = math.inf
    stop_reason: str = "completed"
    checkpoint_dir: Path | None = None


def as_data(name: str, data: object, allow_empty: bool = False) -> Tensor:
    """A finite floating ``(n, *event)`` tensor from a tensor or numpy array.

    Integer and bool data become float32 (exact for pixel levels); floating data keep
    their dtype (``fit`` converts each batch to the model's dtype). Complex or object
    data, NaN and inf are refused with an error naming ``name``.
    """
    if isinstance(data, np.ndarray):
        if data.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold real numbers, got a numpy array of {data.dtype}")
        if not data.flags.writeable:  # torch.from_numpy warns on a read-only array
            data = data.copy()
        data = torch.from_numpy(np.ascontiguousarray(data))
    if not isinstance(data, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor or a numpy array, got {type(data).__name__}"
        )
    if data.is_complex():
        raise TypeError(f"{name} must hold real numbers, got dtype {data.dtype}")
    data = data.detach()
    if not data.is_floating_point():
        data = data.to(torch.float32)
    if data.dim() < 2:
        raise ValueError(f"{name} must have shape (n, *event), got shape {tuple(data.shape)}")
    if data.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name} must hold at least one example, got shape {tuple(data.shape)}")
    check_finite_values(data, name)
    return data


def epoch_seed(seed: int, epoch: int) -> int:
    """The 64-bit seed of epoch ``epoch`` of a run seeded ``seed`` (``epoch=0``: validation).

    Mixed by ``numpy.random.SeedSequence``, so nearby ``(seed, epoch)`` pairs give
    unrelated streams, and nothing but the pair decides an epoch's draws.
    """
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0])


def split_batches(order: Tensor, batch_size: int) -> tuple[Tensor, ...]:
    """``order`` ``(n,)`` in ``ceil(n / batch_size)`` parts whose sizes differ by at most one.

    Each part holds at most ``batch_size`` and at least ``n // ceil(n / batch_size)``
    indices (at least ``batch_size // 2`` when ``n >= batch_size``): no trailing batch of
    one row, which would break batch statistics and weigh one example like a batch.
    """
    return order.tensor_split(math.ceil(order.shape[0] / batch_size))


def make_scheduler(
    options: FitOptions, optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The scheduler of ``options.schedule`` over ``total_steps`` batches (None: constant)."""
    schedule = options.schedule
    if schedule is None:
        return None
    if callable(schedule):
        scheduler = schedule(optimizer, total_steps)
        if not (hasattr(scheduler, "step") and hasattr(scheduler, "state_dict")):
            raise TypeError(
                f"schedule(optimizer, total_steps) must return a learning-rate scheduler, "
                f"got {type(scheduler).__name__}"
            )
        return scheduler
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    # Warm-up over 10% of the steps, and at least 2 of them: torch's OneCycleLR divides
    # by zero when pct_start * total_steps is exactly 1 (10 steps at 10%).
    warm_up = min(0.5, max(0.1, 2.0 / total_steps)) if total_steps > 4 else 0.3
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=options.lr, total_steps=total_steps, pct_start=warm_up
    )


def check_fit_arguments(
    model: object, train: object, val: object, callback: object
) -> tuple[Tensor, Tensor | None]:
    """Check what `fit` was given; the training and validation data as tensors."""
    if not isinstance(model, Flow):
        raise TypeError(
            f"model must be a flowjoint Flow (a stack on a base density), got "
            f"{type(model).__name__}"
        )
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("model has no trainable parameters (nothing for fit to train)")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None, got {type(callback).__name__}")
    train = as_data("train", train)
    if val is not None:
        val = as_data("val", val, allow_empty=True)
        if val.shape[1:] != train.shape[1:]:
            raise ValueError(
                f"val must have the event shape of train {tuple(train.shape[1:])}, got "
                f"{tuple(val.shape[1:])}"
            )
        if val.shape[0] == 0:
            val = None
    return train, val


def merge_options(options: object, overrides: dict[str, object]) -> FitOptions:
    """``options`` (default `FitOptions`) with ``fit``'s keyword overrides."""
    if options is not None and not isinstance(options, FitOptions):
        raise TypeError(f"options must be a FitOptions or None, got {type(options).__name__}")
    unknown = set(overrides) - {f.name for f in fields(FitOptions)}
    if unknown:
        raise TypeError(f"fit got unknown options {sorted(unknown)}")
    return replace(options or FitOptions(), **overrides)


def checkpoint_folder(checkpoint_dir: object, rank: int) -> Path | None:
    """The checkpoint folder, created and checked writable on rank 0 before any training."""
    if checkpoint_dir is None:
        return None
    if not isinstance(checkpoint_dir, (str, os.PathLike)):
        raise TypeError(f"checkpoint_dir must be a path, got {type(checkpoint_dir).__name__}")
    directory = Path(checkpoint_dir)
    if rank == 0:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=directory).close()
        except OSError as error:
            raise ValueError(
                f"checkpoint_dir {str(directory)!r} is not a writable folder: {error}"
            ) from error
    return directory


def check_batches(train: Tensor, options: FitOptions, world: int) -> None:
    """Refuse a split in which some rank would get an empty slice of a global batch."""
    smallest = train.shape[0] // math.ceil(train.shape[0] / options.batch_size)
    if smallest < world:
        raise ValueError(
            f"every global batch must hold at least one row per rank ({world} ranks), but "
            f"{train.shape[0]} examples in batches of at most {options.batch_size} give "
            f"batches of {smallest}: use a larger batch_size or more data"
        )


@torch.no_grad()
def evaluate(fn: Callable[[Tensor], Tensor], inputs: Tensor, batch_size: int = 1000) -> Tensor:
    """``fn`` (per-example, ``(batch,)``) over ``inputs`` ``(n, *event)`` in batches; ``(n,)``."""
    check_positive_int(batch_size, "batch_size")
    if inputs.shape[0] == 0:
        return inputs.new_zeros(0)
    return torch.cat([fn(chunk) for chunk in inputs.split(batch_size)])
