"""One rank of the two-process training runs in tests/test_distributed.py.

Launched by ``torchrun --standalone --nproc_per_node 2 tests/distributed_worker.py OUT
MODEL [MODEL ...]``: initialises a gloo process group from torchrun's environment,
trains each model with :func:`flowjoint.train.fit` (which wraps it in
DistributedDataParallel and gives each rank its slice of every global batch), and saves
this rank's history and final weights to ``OUT/{model}_rank{rank}.pt``.
:func:`train` is also called by the test in a single process, so both runs are the
same code.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

import flowjoint as fj
from flowjoint.train import fit

FEATURES = 8
OPTIONS = dict(epochs=3, batch_size=32, lr=3e-3, seed=0, levels=17, progress=False)


def data() -> tuple[torch.Tensor, torch.Tensor]:
    """Integer levels 0..16 (train 128 rows, validation 32), the same on every rank."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(160, 1, generator=generator) * 12
    x = (x + torch.rand(160, FEATURES, generator=generator) * 4).floor().clamp(0, 16)
    return x[:128], x[128:]


def build(model: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if model == "realnvp":
        return fj.realnvp(FEATURES, num_layers=4, hidden_features=16)
    if model == "nice":  # ends with an ActNorm: data-dependent initialisation
        return fj.nice(FEATURES, num_layers=4, hidden_features=16)
    if model == "vae":  # draws its noise eps on every rank
        return fj.JointVAE(FEATURES, 2, hidden_features=16)
    raise ValueError(f"model must be 'realnvp', 'nice' or 'vae', got {model!r}")


def train(model_name: str) -> tuple[torch.nn.Module, list[dict[str, float]]]:
    """Fit ``model_name`` on :func:`data` (dequantized, 3 epochs of 4 global batches)."""
    model = build(model_name)
    train_data, val_data = data()
    options = dict(OPTIONS)
    if model_name == "vae":  # Bernoulli likelihood: binary pixels, no dequantization
        train_data, val_data = (train_data > 8).float(), (val_data > 8).float()
        options.pop("levels")
    result = fit(model, train_data, val_data, **options)
    return model, result.history


def main() -> None:
    out, models = Path(sys.argv[1]), sys.argv[2:]
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo")
    try:
        rank = torch.distributed.get_rank()
        world_size = torch.distributed.get_world_size()
        for name in models:
            model, history = train(name)
            state = {"state": model.state_dict(), "history": history, "world_size": world_size}
            torch.save(state, out / f"{name}_rank{rank}.pt")
        torch.distributed.barrier()  # no rank tears gloo down while another still talks
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: gloo's threads have been seen to abort there
    # ("terminate called without an active exception") after all work was done.
    os._exit(0)
