"""Training any flowjoint model: maximise ``model.elbo(x)``, the one objective of every stack.

For a bijective stack ``elbo`` is the exact ``log_prob``; for a stack with stochastic
layers (a VAE's augmentation, dequantization) it is the one-sample bound. :func:`fit`
runs Adam with an optional learning-rate schedule and gradient clipping, validates
every epoch (with the same random draws each epoch, so validation losses compare
across epochs), keeps the best-on-validation weights, stops early, reports
progress, stops with a clear error on a non-finite loss (leaving the last good
checkpoint in place) and resumes exactly from a checkpoint
(:mod:`flowjoint.checkpoints`: atomic writes, SHA-256 verified, ``weights_only``).

Distributed data parallel: if ``torch.distributed`` is initialised when :func:`fit` is
called, the objective is wrapped in ``DistributedDataParallel``; every rank draws the
same global batch (same seed) and keeps its slice ``batch[rank::world_size]``, so the
averaged gradient equals the single-process one; only rank 0 writes checkpoints and
reports progress.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from flowjoint.checkpoints import load_checkpoint, save_checkpoint
from flowjoint.fitting import FitOptions, FitResult, TrainingDiverged, as_data, evaluate
from flowjoint.flows import Flow
from flowjoint.progress import Progress

__all__ = [
    "FitOptions",
    "FitResult",
    "Objective",
    "TrainingDiverged",
    "as_data",
    "evaluate",
    "fit",
]


class Objective(nn.Module):
    """``model.elbo(x)`` as a module, the entry point ``DistributedDataParallel`` needs.

    The same objective for every :class:`~flowjoint.Flow`: the exact log-density of a
    bijective stack, the one-sample bound of a stochastic one; ``(batch,)``, to maximise.
    """

    def __init__(self, model: Flow) -> None:
        super().__init__()
        if not isinstance(model, Flow):
            raise TypeError(
                f"model must be a flowjoint Flow (a stack on a base density), got "
                f"{type(model).__name__}"
            )
        self.model = model

    def forward(self, inputs: Tensor) -> Tensor:
        return self.model.elbo(inputs)


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _make_scheduler(
    options: FitOptions, optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    schedule = options.schedule
    if schedule is None:
        return None
    if callable(schedule):
        return schedule(optimizer, total_steps)
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=options.lr, total_steps=total_steps, pct_start=0.1
    )


class _Run:
    """The state of one :func:`fit` call: model, optimizer, generator, result, checkpoints."""

    def __init__(
        self, model: Flow, train: Tensor, options: FitOptions, checkpoint_dir: Path | None
    ) -> None:
        self.model, self.train, self.options = model, train, options
        self.rank, self.world = _distributed()
        parameter = next(model.parameters(), None)
        self.device = parameter.device if parameter is not None else train.device
        self.dtype = parameter.dtype if parameter is not None else train.dtype
        self.objective: nn.Module = Objective(model)
        self.plain_objective = self.objective
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.objective = DistributedDataParallel(self.plain_objective)
        self.steps_per_epoch = math.ceil(train.shape[0] / options.batch_size)
        self.optimizer = torch.optim.Adam(
            model.parameters(), lr=options.lr, weight_decay=options.weight_decay
        )
        self.scheduler = _make_scheduler(
            options, self.optimizer, options.epochs * self.steps_per_epoch
        )
        self.generator = torch.Generator().manual_seed(options.seed)
        self.result = FitResult(checkpoint_dir=checkpoint_dir)
        self.best_state: dict[str, Tensor] | None = None
        self.start_epoch = 0

    @property
    def last_path(self) -> Path | None:
        directory = self.result.checkpoint_dir
        return directory / "last.pt" if directory is not None else None

    def snapshot(self) -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def state(self, epoch: int) -> dict:
        return {
            "kind": "last",
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "torch_rng": torch.get_rng_state(),
            "generator": self.generator.get_state(),
            "epoch": epoch,
            "history": self.result.history,
            "best_epoch": self.result.best_epoch,
            "best_val_loss": self.result.best_val_loss,
            "best_model": self.best_state,
        }

    def resume(self, path: str | os.PathLike) -> None:
        state = load_checkpoint(path)
        if "optimizer" not in state:
            raise ValueError(
                f"{str(path)!r} holds model weights only (a best.pt), not a training state: "
                "resume from last.pt in the same folder, or load the weights with "
                "model.load_state_dict(load_checkpoint(path)['model'])"
            )
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError) as error:
            raise ValueError(
                f"checkpoint {str(path)!r} does not fit this model: {error}"
            ) from error
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        self.generator.set_state(state["generator"])
        self.start_epoch = int(state["epoch"])
        self.result.history = [dict(row) for row in state["history"]]
        self.result.best_epoch = int(state["best_epoch"])
        self.result.best_val_loss = float(state["best_val_loss"])
        self.best_state = state.get("best_model")

    def diverged(self, what: str, epoch: int) -> TrainingDiverged:
        last = self.last_path
        where = (
            f"the last good checkpoint is {str(last)!r}"
            if last is not None and last.exists()
            else "no checkpoint was written (set checkpoint_dir)"
        )
        return TrainingDiverged(f"non-finite {what} at epoch {epoch}; {where}")

    def train_epoch(self, epoch: int) -> float:
        """One pass over the shuffled training data; the mean loss (nats per example)."""
        options = self.options
        self.model.train()
        order = torch.randperm(self.train.shape[0], generator=self.generator)
        total, count = 0.0, 0
        for step in range(self.steps_per_epoch):
            index = order[step * options.batch_size : (step + 1) * options.batch_size]
            batch = self.train[index].to(self.device, self.dtype)  # the global batch
            local = batch[self.rank :: self.world]  # this rank's slice
            loss = -self.objective(local).mean()
            if not torch.isfinite(loss):
                raise self.diverged(f"training loss {loss.item()} (step {step + 1})", epoch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if options.clip_grad_norm is not None:
                params = self.model.parameters()
                norm = torch.nn.utils.clip_grad_norm_(params, options.clip_grad_norm)
                if not torch.isfinite(norm):
                    raise self.diverged(f"gradient norm (step {step + 1})", epoch)
            self.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
            total += loss.item() * local.shape[0]
            count += local.shape[0]
        return total / max(count, 1)

    def validate(self, val: Tensor | None, epoch: int) -> float:
        """Mean negative objective on ``val`` with the same random draws every epoch."""
        if val is None:
            return math.nan
        self.model.eval()
        devices = [val.device] if val.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.options.seed + 1)
            values = evaluate(self.plain_objective, val, self.options.eval_batch_size)
        loss = -values.mean().item()
        if not math.isfinite(loss):
            raise self.diverged("validation loss", epoch)
        return loss


def _check_inputs(model: object, train: object, val: object) -> tuple[Tensor, Tensor | None]:
    if not isinstance(model, Flow):
        raise TypeError(
            f"model must be a flowjoint Flow (a stack on a base density), got "
            f"{type(model).__name__}"
        )
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


def fit(
    model: Flow,
    train: Tensor | np.ndarray,
    val: Tensor | np.ndarray | None = None,
    options: FitOptions | None = None,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    restore_best: bool = True,
    progress: bool = True,
    description: str = "fit",
    callback: Callable[[dict[str, float]], bool | None] | None = None,
    **overrides: object,
) -> FitResult:
    """Maximise ``model.elbo(x)`` on ``train`` with Adam.

    Each step minimises ``-mean(model.elbo(x_batch))``: the exact log-density of a
    bijective stack, the one-sample bound of one with stochastic layers (a
    dequantization layer dequantizes every batch afresh). Bits per dimension are
    ``val_loss / (D ln 2)`` with ``D`` the entries of one example, meaningful when
    the model's density is on the data's original scale (its preprocessing is part
    of the stack).

    Args:
        model: any flowjoint :class:`~flowjoint.Flow` (``JointVAE`` and
            ``AugmentedFlow`` included).
        train: ``(n, *event)`` training data, a tensor or a numpy array (integer
            arrays become float32).
        val: ``(m, *event)`` validation data, or None (no early stopping, best = last).
        options: a :class:`FitOptions`; its fields may also be given as keywords
            (``epochs=20``), which override it.
        checkpoint_dir: if set, ``last.pt`` (everything needed to resume) is written
            after every epoch and ``best.pt`` (weights) at every new best.
        resume: a ``last.pt`` to continue from; the continued run's losses equal those
            of an uninterrupted run.
        restore_best: load the best-on-validation weights into ``model`` at the end.
        progress: report progress on rank 0: a tqdm bar on a terminal, one line per
            epoch on stderr otherwise.
        description: the label of the progress report.
        callback: called with each epoch's history row; returning True stops training.

    Returns:
        A :class:`FitResult`.

    Raises:
        TrainingDiverged: the loss or a gradient became NaN/inf; ``last.pt`` still
            holds the last good epoch.

    Example:
        >>> from flowjoint import realnvp
        >>> result = fit(realnvp(2, num_layers=2), torch.randn(64, 2), torch.randn(32, 2),
        ...              epochs=2, batch_size=32, progress=False)
        >>> len(result.history)
        2
    """
    unknown = set(overrides) - {f.name for f in fields(FitOptions)}
    if unknown:
        raise TypeError(f"fit got unknown options {sorted(unknown)}")
    options = replace(options or FitOptions(), **overrides)
    train, val = _check_inputs(model, train, val)
    directory = Path(checkpoint_dir) if checkpoint_dir is not None else None
    run = _Run(model, train, options, directory)
    if resume is not None:
        run.resume(resume)
    else:
        torch.manual_seed(options.seed)
    val = val.to(run.device, run.dtype) if val is not None else None
    dims = math.prod(train.shape[1:])
    report = Progress(options.epochs, run.start_epoch, description, progress and run.rank == 0)
    try:
        for epoch in range(run.start_epoch + 1, options.epochs + 1):
            if _epoch(run, val, epoch, dims, report, callback):
                break
    finally:
        report.close()
    if restore_best and run.best_state is not None:
        model.load_state_dict(run.best_state)
    model.eval()
    return run.result


def _epoch(
    run: _Run,
    val: Tensor | None,
    epoch: int,
    dims: int,
    report: Progress,
    callback: Callable[[dict[str, float]], bool | None] | None,
) -> bool:
    """Train, validate, record, checkpoint and report one epoch; True to stop."""
    started = time.perf_counter()
    train_loss = run.train_epoch(epoch)
    val_loss = run.validate(val, epoch)
    row = {
        "epoch": float(epoch),
        "train_loss": train_loss,
        "val_loss": val_loss,
        "val_bits_per_dim": val_loss / (dims * math.log(2.0)),
        "lr": run.optimizer.param_groups[0]["lr"],
        "seconds": time.perf_counter() - started,
    }
    result = run.result
    result.history.append(row)
    improved = val is None or val_loss < result.best_val_loss
    if improved:
        result.best_epoch = epoch
        result.best_val_loss = val_loss if val is not None else train_loss
        run.best_state = run.snapshot()
    directory = result.checkpoint_dir
    if directory is not None and run.rank == 0:
        if improved:
            best = {"kind": "best", "model": run.best_state, "epoch": epoch}
            save_checkpoint(best, directory / "best.pt")
        save_checkpoint(run.state(epoch), directory / "last.pt")
    report.epoch(row, val is not None)
    if callback is not None and callback(row):
        result.stop_reason = "callback"
        return True
    patience = run.options.patience
    if patience is not None and epoch - result.best_epoch >= patience:
        result.stop_reason = "early_stopping"
        return True
    return False
