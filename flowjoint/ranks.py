"""The few collectives `fit` needs under ``torch.distributed`` (and their one-process forms)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["Ranks"]


class Ranks:
    """This process's rank, the world size, and the few collectives ``fit`` needs."""

    def __init__(self, device: torch.device) -> None:
        distributed = torch.distributed
        on = distributed.is_available() and distributed.is_initialized()
        self.rank, self.world = (
            (distributed.get_rank(), distributed.get_world_size()) if on else (0, 1)
        )
        self.device = device  # NCCL reduces tensors on the model's device

    def sum(self, value: Tensor) -> float:
        """The sum of a scalar over ranks (a float, the same on every rank)."""
        if self.world > 1:
            value = value.detach().to(self.device, torch.float64).clone()
            torch.distributed.all_reduce(value)
        return value.item()

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is True on any."""
        return self.sum(torch.tensor(float(flag))) > 0 if self.world > 1 else flag

    def sync_buffers(self, module: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm's running statistics) on every rank."""
        for buffer in module.buffers() if self.world > 1 else ():
            torch.distributed.broadcast(buffer, src=0)
