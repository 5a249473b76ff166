"""Training any flowjoint model: maximise ``model.elbo(x)``, the one objective of every stack.

For a bijective stack ``elbo`` is the exact ``log_prob``; with stochastic layers (a
VAE's augmentation, dequantization) it is the one-sample bound. `fit` runs Adam
(schedule, clipping), validates with the same random draws every epoch, keeps the
best weights, stops early, refuses non-finite values (the last good checkpoint stays)
and resumes exactly (`checkpoints`).

Distributed data parallel: under an initialised ``torch.distributed`` process group
the objective is wrapped in ``DistributedDataParallel``; every rank draws the same
global batch and keeps ``batch[rank::world_size]``, its summed loss scaled by
``world_size / rows`` so that DDP's average of the gradients is the gradient of the
global batch's mean loss however the rows split. The ranks agree on every decision
(non-finite values, best epoch, early stopping, a callback's stop), buffers are
synchronised from rank 0 after each epoch, and only rank 0 writes and reports.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from flowjoint.checkpoints import (
    check_resumable,
    fingerprint,
    load_checkpoint,
    save_checkpoint,
)
from flowjoint.fitting import (
    FitOptions,
    FitResult,
    TrainingDiverged,
    as_data,
    check_batches,
    check_fit_arguments,
    checkpoint_folder,
    epoch_seed,
    evaluate,
    make_scheduler,
    merge_options,
    split_batches,
)
from flowjoint.flows import Flow
from flowjoint.progress import Progress
from flowjoint.ranks import Ranks

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

    The same objective for every [`Flow`][flowjoint.Flow]: the exact log-density of a
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


class _Run:
    """The state of one `fit` call: model, optimizer, schedule, result, checkpoints."""

    def __init__(
        self,
        model: Flow,
        data: tuple[Tensor, Tensor | None],
        options: FitOptions,
        checkpoint_dir: Path | None,
        with_fingerprint: bool,
    ) -> None:
        self.model, (self.train, self.val), self.options = model, data, options
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.ranks = Ranks(self.device)
        if self.val is not None:
            self.val = self.val.to(self.device, self.dtype)
        self.objective: nn.Module = Objective(model)
        self.plain_objective = self.objective
        if self.ranks.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.objective = DistributedDataParallel(self.plain_objective)
        self.optimizer = torch.optim.Adam(
            model.parameters(), lr=options.lr, weight_decay=options.weight_decay
        )
        steps = len(split_batches(torch.arange(self.train.shape[0]), options.batch_size))
        self.scheduler = make_scheduler(options, self.optimizer, options.epochs * steps)
        self.result = FitResult(checkpoint_dir=checkpoint_dir)
        self.best_state: dict[str, Tensor] | None = None
        self.start_epoch = 0
        key = options.resume_key()
        self.fingerprint = fingerprint(model, key, *data) if with_fingerprint else {}

    def snapshot(self) -> dict[str, Tensor]:
        # Tensors are copied; other entries (a module's extra state) are deep-copied.
        return {
            k: v.detach().clone() if isinstance(v, Tensor) else copy.deepcopy(v)
            for k, v in self.model.state_dict().items()
        }

    def state(self, epoch: int) -> dict:
        """Everything `resume` needs to continue exactly after ``epoch``."""
        return {
            "kind": "last",
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "epoch": epoch,
            "history": self.result.history,
            "best_epoch": self.result.best_epoch,
            "best_val_loss": self.result.best_val_loss,
            "best_model": self.best_state,
            "fingerprint": self.fingerprint,
            "stop_reason": self.result.stop_reason,
        }

    def resume(self, path: str | os.PathLike) -> None:
        state = load_checkpoint(path)
        check_resumable(state, path, self.fingerprint)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None:
                self.scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError, TypeError) as error:
            raise ValueError(
                f"checkpoint {str(path)!r} does not fit this model: {error}"
            ) from error
        self.start_epoch = int(state["epoch"])
        self.result.history = [dict(row) for row in state["history"]]
        self.result.best_epoch = int(state["best_epoch"])
        self.result.best_val_loss = float(state["best_val_loss"])
        self.best_state = state["best_model"]
        if state.get("stop_reason") == "early_stopping":
            # The run had ended: resuming it trains no further.
            self.result.stop_reason = "early_stopping"
            self.start_epoch = self.options.epochs

    def diverged(self, what: str, epoch: int) -> TrainingDiverged:
        directory = self.result.checkpoint_dir
        last = directory / "last.pt" if directory is not None else None
        where = (
            f"the last good checkpoint is {str(last)!r}"
            if last is not None and last.exists()
            else "no checkpoint was written (set checkpoint_dir)"
        )
        return TrainingDiverged(f"non-finite {what} at epoch {epoch}; {where}")

    def train_epoch(self, epoch: int) -> float:
        """One pass over the shuffled training data; the mean loss (nats per example).

        The epoch's draws (shuffling, and the model's: dequantization, ``eps``) are
        seeded by ``(seed, epoch)`` alone, so a resumed run draws what the uninterrupted
        one did, whatever the device or the number of ranks.
        """
        self.model.train()
        seed = epoch_seed(self.options.seed, epoch)
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(self.train.shape[0], generator=generator)
        total = 0.0
        for step, index in enumerate(split_batches(order, self.options.batch_size), 1):
            batch = self.train[index].to(self.device, self.dtype)  # the global batch
            total += self.train_step(batch, step, epoch)
        self.ranks.sync_buffers(self.model)
        return total / self.train.shape[0]

    def train_step(self, batch: Tensor, step: int, epoch: int) -> float:
        """One Adam step on the global ``batch``; the summed loss over its rows."""
        local = batch[self.ranks.rank :: self.ranks.world]  # this rank's slice
        loss_sum = -self.objective(local).sum()
        total = self.ranks.sum(loss_sum)  # the same on every rank: all stop together
        if not math.isfinite(total):
            raise self.diverged(f"training loss {total / batch.shape[0]} (step {step})", epoch)
        self.optimizer.zero_grad(set_to_none=True)
        (loss_sum * (self.ranks.world / batch.shape[0])).backward()
        if self.options.clip_grad_norm is not None:
            params = self.model.parameters()
            norm = torch.nn.utils.clip_grad_norm_(params, self.options.clip_grad_norm)
            if not torch.isfinite(norm):  # gradients are all-reduced: the same on all ranks
                raise self.diverged(f"gradient norm (step {step})", epoch)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return total

    def check_weights(self, epoch: int) -> None:
        """Raise before anything is saved if a weight or buffer is NaN or infinite.

        Without clipping, an infinite gradient in an epoch's last step would otherwise
        reach ``last.pt`` with a finite epoch loss.
        """
        state = {
            k: v
            for k, v in self.model.state_dict().items()
            if isinstance(v, Tensor) and v.is_floating_point()
        }
        finite = torch.stack([torch.isfinite(v).all() for v in state.values()]).all()
        if self.ranks.any(not bool(finite)):
            bad = [k for k, v in state.items() if not bool(torch.isfinite(v).all())]
            raise self.diverged(f"weights {bad[:3] or '(on another rank)'}", epoch)

    def validate(self, epoch: int) -> float:
        """Mean negative objective on the validation data with the same draws every epoch."""
        if self.val is None:
            return math.nan
        self.model.eval()
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(epoch_seed(self.options.seed, 0))
            values = evaluate(self.plain_objective, self.val, self.options.eval_batch_size)
        # The mean over ranks (of equal values): one number, one decision on every rank.
        loss = self.ranks.sum(-values.double().mean()) / self.ranks.world
        if not math.isfinite(loss):
            raise self.diverged("validation loss", epoch)
        return loss

    def save(self, epoch: int, improved: bool) -> None:
        directory = self.result.checkpoint_dir
        if directory is None or self.ranks.rank != 0:
            return
        if improved:
            best = {"kind": "best", "model": self.best_state, "epoch": epoch}
            save_checkpoint(best, directory / "best.pt")
        save_checkpoint(self.state(epoch), directory / "last.pt")

    def says_stop(self, callback: Callable | None, row: dict[str, float]) -> bool:
        """The callback's verdict, the same on every rank (also when it raises on one)."""
        if callback is None:
            return False
        error, stop = None, False
        try:
            stop = bool(callback(dict(row)))
        except Exception as exception:
            error = exception
        if self.ranks.any(error is not None):
            raise error or RuntimeError("the callback of fit raised on another rank")
        return self.ranks.any(stop)


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
    ``val_loss / (D ln 2)``, ``D`` the entries of one example.

    Args:
        model: any flowjoint [`Flow`][flowjoint.Flow] with trainable parameters; each
            batch is converted to the dtype and device of its first parameter.
        train: ``(n, *event)`` data, a tensor or a numpy array (integer and bool
            arrays become float32); NaN or inf is refused.
        val: ``(m, *event)`` validation data, or None or empty (no validation: no
            early stopping, best = last).
        options: a `FitOptions`; its fields may also be given as keywords
            (``epochs=20``), which override it.
        checkpoint_dir: if set (created and checked writable before training),
            ``last.pt`` (all that resuming needs) is written after every epoch and
            ``best.pt`` (weights) at every new best.
        resume: a ``last.pt`` to continue from. Losses and weights then equal those
            of an uninterrupted run; a checkpoint of another model, data or options
            (except ``patience``, and ``epochs`` without a schedule) is refused with
            a ``ValueError`` naming what differs. Writes only with ``checkpoint_dir``.
        restore_best: load the best-on-validation weights into ``model`` at the end.
        progress: report on rank 0: a tqdm bar on a terminal, else a line per epoch.
        description: the label of the progress report.
        callback: called with a copy of each epoch's history row after ``last.pt``
            is written; returning True stops training; an exception propagates.

    Returns:
        A `FitResult`; ``model`` is left in eval mode.

    Raises:
        TrainingDiverged: the loss, the gradient norm or a weight became NaN/inf.
            ``last.pt`` holds the last good epoch (after any exception or
            ``KeyboardInterrupt`` too: writes are atomic).
        ValueError: a bad argument, or a ``resume`` file that is damaged, a
            ``best.pt``, or of another model, data or options.

    Example:
        >>> from flowjoint import realnvp
        >>> result = fit(realnvp(2, num_layers=2), torch.randn(64, 2), torch.randn(32, 2),
        ...              epochs=2, batch_size=32, progress=False)
        >>> len(result.history)
        2
    """
    options = merge_options(options, overrides)
    data = check_fit_arguments(model, train, val, callback)
    run = _Run(model, data, options, None, checkpoint_dir is not None or resume is not None)
    check_batches(run.train, options, run.ranks.world)
    run.result.checkpoint_dir = checkpoint_folder(checkpoint_dir, run.ranks.rank)
    if resume is not None:
        run.resume(resume)
    enabled = bool(progress) and run.ranks.rank == 0
    report = Progress(options.epochs, run.start_epoch, description, enabled)
    try:
        for epoch in range(run.start_epoch + 1, options.epochs + 1):
            if _epoch(run, epoch, report, callback):
                break
    finally:
        report.close()
    if restore_best and run.best_state is not None:
        model.load_state_dict(run.best_state)
    model.eval()
    return run.result


def _epoch(
    run: _Run,
    epoch: int,
    report: Progress,
    callback: Callable[[dict[str, float]], bool | None] | None,
) -> bool:
    """Train, check, validate, record, checkpoint and report one epoch; True to stop."""
    started = time.perf_counter()
    train_loss = run.train_epoch(epoch)
    run.check_weights(epoch)
    val_loss = run.validate(epoch)
    dims = math.prod(run.train.shape[1:])
    row = {
        "epoch": float(epoch),
        "train_loss": train_loss,
        "val_loss": val_loss,
        "val_bits_per_dim": val_loss / (dims * math.log(2.0)),
        "lr": run.optimizer.param_groups[0]["lr"],
        "seconds": time.perf_counter() - started,
    }
    result, has_val = run.result, run.val is not None
    result.history.append(row)
    improved = not has_val or val_loss < result.best_val_loss
    if improved:
        result.best_epoch = epoch
        result.best_val_loss = val_loss if has_val else train_loss
        run.best_state = run.snapshot()
    patience = run.options.patience
    if patience is not None and epoch - result.best_epoch >= patience:
        result.stop_reason = "early_stopping"  # saved with the state: a resume ends here
    run.save(epoch, improved)
    report.epoch(row, has_val)
    if result.stop_reason == "early_stopping":
        return True
    if run.says_stop(callback, row):
        result.stop_reason = "callback"
        return True
    return False
