"""Training any flowjoint model by maximum likelihood (or its lower bound).

:func:`fit` maximises a per-example objective: ``model.elbo(x)`` if the model has an
``elbo`` (the VAE and the augmented flow), else ``model.log_prob(x)`` (a flow). It
runs Adam with an optional learning-rate schedule and gradient clipping, validates
every epoch, keeps the best-on-validation weights, stops early, shows a tqdm bar,
stops with a clear error on a non-finite loss (leaving the last good checkpoint in
place) and resumes exactly from a checkpoint.

Checkpoints are written atomically (a temporary file in the same folder, then
``os.replace``) and read with ``torch.load(..., weights_only=True)``: no pickled code.

Distributed data parallel: if ``torch.distributed`` is initialised when :func:`fit` is
called, the objective is wrapped in ``DistributedDataParallel``; every rank draws the
same global batch (same seed) and keeps its slice ``batch[rank::world_size]``, so the
averaged gradient equals the single-process one; only rank 0 writes checkpoints and
shows progress.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from flowjoint.data import dequantize
from flowjoint.transforms import check_positive_int

__all__ = [
    "FitResult",
    "Objective",
    "TrainingDiverged",
    "evaluate",
    "fit",
    "load_checkpoint",
    "save_checkpoint",
]

SCHEDULES = ("cosine", "onecycle")


class TrainingDiverged(FloatingPointError):
    """Raised when the loss or a gradient becomes NaN or infinite."""


class Objective(nn.Module):
    """The per-example training objective of ``model``, to maximise; ``(batch,)``.

    ``model.elbo(x)`` if the model has one, else ``model.log_prob(x)``. Wrapping it in a
    module makes ``forward`` the one entry point, which is what
    ``DistributedDataParallel`` needs to synchronise gradients.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.uses_bound = hasattr(model, "elbo")
        if not self.uses_bound and not hasattr(model, "log_prob"):
            raise TypeError(
                f"model must have an elbo(x) or a log_prob(x) method, got {type(model).__name__}"
            )

    def forward(self, inputs: Tensor) -> Tensor:
        if self.uses_bound:
            return self.model.elbo(inputs)
        return self.model.log_prob(inputs)


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


# ---------------------------------------------------------------------------
# Checkpoints.
# ---------------------------------------------------------------------------


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, then rename.

    A crash while writing leaves any previous file at ``path`` intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint with ``torch.load(..., weights_only=True)`` onto the CPU.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is truncated, corrupt or holds more than tensors and
            plain containers; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {str(path)!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a damaged file
        raise ValueError(
            f"cannot read checkpoint {str(path)!r} (truncated or corrupt?): "
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        ) from error
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{str(path)!r} is not a flowjoint checkpoint (no 'model' entry)")
    return state


# ---------------------------------------------------------------------------
# Evaluation.
# ---------------------------------------------------------------------------


@torch.no_grad()
def evaluate(fn: Callable[[Tensor], Tensor], inputs: Tensor, batch_size: int = 1000) -> Tensor:
    """``fn`` (per-example, ``(batch,)``) over ``inputs`` ``(n, D)`` in batches; ``(n,)``."""
    check_positive_int(batch_size, "batch_size")
    if inputs.shape[0] == 0:
        return inputs.new_zeros(0)
    return torch.cat([fn(chunk) for chunk in inputs.split(batch_size)])


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _make_scheduler(
    schedule: str | Callable | None, optimizer: torch.optim.Optimizer, lr: float, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    if schedule is None:
        return None
    if callable(schedule):
        return schedule(optimizer, total_steps)
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=lr, total_steps=total_steps, pct_start=0.1
        )
    raise ValueError(f"schedule must be None, a callable or one of {SCHEDULES}, got {schedule!r}")


def _check_data(name: str, data: object, allow_empty: bool = False) -> Tensor:
    if not isinstance(data, Tensor) or not data.is_floating_point() or data.dim() != 2:
        raise TypeError(f"{name} must be a floating (n, features) torch.Tensor, got {data!r:.80}")
    if data.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name} must hold at least one example, got shape {tuple(data.shape)}")
    return data


def fit(
    model: nn.Module,
    train: Tensor,
    val: Tensor | None = None,
    *,
    epochs: int = 100,
    batch_size: int = 100,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    schedule: str | Callable | None = None,
    clip_grad_norm: float | None = 100.0,
    patience: int | None = None,
    levels: int | None = None,
    seed: int = 0,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    restore_best: bool = True,
    progress: bool = True,
    description: str = "fit",
    callback: Callable[[dict[str, float]], bool | None] | None = None,
    eval_batch_size: int = 1000,
) -> FitResult:
    """Maximise the model's per-example objective on ``train`` with Adam.

    Each step minimises ``-mean(objective(x_batch))`` where the objective is
    ``model.elbo`` if present, else ``model.log_prob``. With ``levels`` set, every
    training batch is dequantized afresh (``x + u``, :func:`flowjoint.data.dequantize`)
    and the validation set once, with a fixed noise draw, so validation losses are
    comparable across epochs. Bits per dimension are ``val_loss / (D ln 2)``, meaningful
    when the model's density is on the data's original scale (see
    :class:`flowjoint.preprocess.Preprocessed`).

    Args:
        model: any flowjoint model (``Flow``, ``Preprocessed``, the VAE...).
        train: ``(n, D)`` training data (raw levels if ``levels`` is set).
        val: ``(m, D)`` validation data, or None (no early stopping, best = last).
        epochs: total number of epochs (a resumed run continues up to this number).
        batch_size: global batch size (split across ranks under DDP).
        lr: Adam's learning rate (the peak for ``"onecycle"``).
        weight_decay: Adam's L2 penalty.
        schedule: None (constant), ``"cosine"`` (to 0 over all steps), ``"onecycle"``
            (warm-up over 10% then cosine), or ``callable(optimizer, total_steps)``
            returning a scheduler, stepped once per batch.
        clip_grad_norm: clip the global gradient norm to this (None: no clipping).
        patience: stop after this many epochs without a new best validation loss.
        levels: dequantize with ``U[0, 1)`` noise (data of ``levels`` integer levels).
        seed: seeds the model's random draws (``torch.manual_seed``) and the shuffling
            and dequantization generator.
        checkpoint_dir: if set, ``last.pt`` (everything needed to resume) is written
            after every epoch and ``best.pt`` (weights) at every new best.
        resume: a ``last.pt`` to continue from; the continued run's losses equal those
            of an uninterrupted run.
        restore_best: load the best-on-validation weights into ``model`` at the end.
        progress: show a tqdm bar (rank 0 only).
        description: the bar's label.
        callback: called with each epoch's history row; returning True stops training.
        eval_batch_size: batch size of validation passes.

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
    from tqdm.auto import tqdm

    train = _check_data("train", train)
    if val is not None:
        val = _check_data("val", val, allow_empty=True)
        if val.shape[1] != train.shape[1]:
            raise ValueError(f"val must have {train.shape[1]} features, got {val.shape[1]}")
        if val.shape[0] == 0:
            val = None
    check_positive_int(epochs, "epochs")
    check_positive_int(batch_size, "batch_size")
    if patience is not None:
        check_positive_int(patience, "patience")
    if levels is not None:
        check_positive_int(levels, "levels", minimum=2)
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if clip_grad_norm is not None and not clip_grad_norm > 0:
        raise ValueError(f"clip_grad_norm must be positive or None, got {clip_grad_norm}")

    rank, world = _distributed()
    is_main = rank == 0
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else train.device
    dtype = parameter.dtype if parameter is not None else train.dtype
    plain_objective = Objective(model)
    objective: nn.Module = plain_objective
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        objective = DistributedDataParallel(plain_objective)

    steps_per_epoch = math.ceil(train.shape[0] / batch_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = _make_scheduler(schedule, optimizer, lr, epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    dims = train.shape[1]

    val_x = None
    if val is not None:
        val_x = val.to(device, dtype)
        if levels is not None:
            val_x = dequantize(val_x, levels, torch.Generator(device).manual_seed(seed + 1))

    result = FitResult()
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    result.checkpoint_dir = checkpoint_dir
    best_state = None
    start_epoch = 0
    if resume is not None:
        state = load_checkpoint(resume)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        generator.set_state(state["generator"])
        start_epoch = int(state["epoch"])
        result.history = [dict(row) for row in state["history"]]
        result.best_epoch = int(state["best_epoch"])
        result.best_val_loss = float(state["best_val_loss"])
        best_state = state.get("best_model")
    else:
        torch.manual_seed(seed)

    def snapshot() -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    def checkpoint_state(epoch: int) -> dict:
        return {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "torch_rng": torch.get_rng_state(),
            "generator": generator.get_state(),
            "epoch": epoch,
            "history": result.history,
            "best_epoch": result.best_epoch,
            "best_val_loss": result.best_val_loss,
            "best_model": best_state,
        }

    bar = tqdm(
        total=epochs,
        initial=start_epoch,
        desc=description,
        disable=not (progress and is_main),
        leave=False,
        dynamic_ncols=True,
    )
    last_good = checkpoint_dir / "last.pt" if checkpoint_dir is not None else None
    try:
        for epoch in range(start_epoch, epochs):
            started = time.perf_counter()
            model.train()
            order = torch.randperm(train.shape[0], generator=generator)
            total, count = 0.0, 0
            for step in range(steps_per_epoch):
                index = order[step * batch_size : (step + 1) * batch_size]
                batch = train[index].to(device, dtype)  # (batch, D), the global batch
                if levels is not None:
                    noise = torch.rand(batch.shape, generator=generator, dtype=dtype)
                    batch = batch + noise.to(device)
                local = batch[rank::world]  # this rank's slice of the global batch
                loss = -objective(local).mean()
                if not torch.isfinite(loss):
                    raise TrainingDiverged(
                        f"non-finite training loss {loss.item()} at epoch {epoch + 1}, "
                        f"step {step + 1}; "
                        + (
                            f"the last good checkpoint is {str(last_good)!r}"
                            if last_good is not None and last_good.exists()
                            else "no checkpoint was written (set checkpoint_dir)"
                        )
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if clip_grad_norm is not None:
                    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
                    if not torch.isfinite(norm):
                        raise TrainingDiverged(
                            f"non-finite gradient norm at epoch {epoch + 1}, step {step + 1}"
                        )
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                total += loss.item() * local.shape[0]
                count += local.shape[0]
            train_loss = total / count
            val_loss = math.nan
            if val_x is not None:
                model.eval()
                # every rank evaluates the whole (small) validation set, unwrapped
                val_loss = -evaluate(plain_objective, val_x, eval_batch_size).mean().item()
                if not math.isfinite(val_loss):
                    raise TrainingDiverged(
                        f"non-finite validation loss at epoch {epoch + 1}; "
                        f"the last good checkpoint is {str(last_good)!r}"
                    )
            row = {
                "epoch": float(epoch + 1),
                "train_loss": train_loss,
                "val_loss": val_loss,
                "val_bits_per_dim": val_loss / (dims * math.log(2.0)),
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": time.perf_counter() - started,
            }
            result.history.append(row)
            improved = val_x is None or val_loss < result.best_val_loss
            if improved:
                result.best_epoch = epoch + 1
                result.best_val_loss = val_loss if val_x is not None else train_loss
                best_state = snapshot()
            if checkpoint_dir is not None and is_main:
                if improved:
                    save_checkpoint(
                        {"model": best_state, "epoch": epoch + 1}, checkpoint_dir / "best.pt"
                    )
                save_checkpoint(checkpoint_state(epoch + 1), checkpoint_dir / "last.pt")
            bar.update(1)
            bar.set_postfix(
                loss=f"{train_loss:.2f}",
                val_bpd=f"{row['val_bits_per_dim']:.3f}" if val_x is not None else "-",
            )
            if callback is not None and callback(row):
                result.stop_reason = "callback"
                break
            if patience is not None and epoch + 1 - result.best_epoch >= patience:
                result.stop_reason = "early_stopping"
                break
    finally:
        bar.close()
    if restore_best and best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return result
