"""One rank of the two-process training runs in tests/test_distributed.py.

Launched by ``torchrun --standalone --nproc_per_node 2 tests/distributed_worker.py OUT
MODEL [MODEL ...]``: initialises a gloo process group from torchrun's environment,
trains each model with :func:`flowjoint.train.fit` (which wraps it in
DistributedDataParallel and gives each rank its slice of every global batch), and saves
this rank's history, final weights and any ``TrainingDiverged`` message to
``OUT/{model}_rank{rank}.pt``. :func:`train` is also called by the test in a single
process, so both runs are the same code.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import torch
from torch import nn

import flowjoint as fj
from flowjoint.data import dequantize
from flowjoint.train import TrainingDiverged, fit

FEATURES = 8
# 125 rows in batches of 25: each global batch splits 13 / 12 between the two ranks,
# so the exact match below depends on weighting each rank's loss by its rows.
OPTIONS = dict(epochs=3, batch_size=25, lr=3e-3, seed=0, progress=False)
MODELS = ("realnvp", "nice", "vae", "batchnorm", "nan", "callback")


def data() -> tuple[torch.Tensor, torch.Tensor]:
    """Levels 0..16 dequantized once (train 125 rows, validation 32), the same on every rank."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(157, 1, generator=generator) * 12
    x = (x + torch.rand(157, FEATURES, generator=generator) * 4).floor().clamp(0, 16)
    x = dequantize(x, 17, generator)
    return x[:125], x[125:]


class NaNOnLargeRows(fj.Transform):
    """A shift; rows holding a value above ``threshold`` become NaN (on one rank only)."""

    def __init__(self, features: int, threshold: float) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(features))
        self.threshold = threshold

    def forward(self, inputs: torch.Tensor, context: torch.Tensor | None = None) -> tuple:
        bad = (inputs > self.threshold).any(1, keepdim=True)  # (batch, 1)
        outputs = torch.where(bad, math.nan, inputs + self.shift)
        return outputs, inputs.new_zeros(inputs.shape[0])

    def inverse(self, inputs: torch.Tensor, context: torch.Tensor | None = None) -> tuple:
        return inputs - self.shift, inputs.new_zeros(inputs.shape[0])


def build(model: str) -> fj.Flow:
    torch.manual_seed(0)
    # scale to [0, 1) and logit: the objective is deterministic given the batch
    pre = fj.pixel_preprocessing(17, alpha=0.05, dequantization="none")
    if model in ("realnvp", "callback"):
        return fj.realnvp(FEATURES, num_layers=4, hidden_features=16, preprocessing=pre)
    if model == "nice":  # ends with an ActNorm: data-dependent initialisation
        return fj.nice(FEATURES, num_layers=4, hidden_features=16, preprocessing=pre)
    if model == "vae":  # draws its noise eps on every rank
        return fj.JointVAE(FEATURES, 2, hidden_features=16)
    mask = torch.arange(FEATURES) < FEATURES // 2
    if model == "batchnorm":  # running statistics of each rank's slice
        layers = [
            *pre,
            fj.AffineCoupling(mask, 16),
            fj.BatchNorm(FEATURES),
            fj.AffineCoupling(~mask, 16),
        ]
        return fj.Flow(fj.Compose(layers), fj.StandardNormal(FEATURES))
    if model == "nan":
        layers = [NaNOnLargeRows(FEATURES, 50.0), fj.AffineCoupling(mask, 16)]
        return fj.Flow(fj.Compose(layers), fj.StandardNormal(FEATURES))
    raise ValueError(f"model must be one of {MODELS}, got {model!r}")


def train(model_name: str) -> tuple[fj.Flow, list[dict[str, float]], str | None]:
    """Fit ``model_name`` on :func:`data`: 3 epochs of 5 global batches."""
    model = build(model_name)
    train_data, val_data = data()
    options = dict(OPTIONS)
    if model_name == "vae":  # Bernoulli likelihood: binary pixels
        train_data, val_data = (train_data > 8).float(), (val_data > 8).float()
    if model_name == "nan":  # one row makes the loss NaN on the rank that gets it
        train_data = train_data.clone()
        train_data[7] = 100.0
    if model_name == "callback":  # only rank 0 asks to stop after epoch 1
        options["callback"] = lambda row: torch.distributed.get_rank() == 0
    try:
        result = fit(model, train_data, val_data, **options)
    except TrainingDiverged as error:
        return model, [], str(error)
    return model, result.history, None


def main() -> None:
    out, models = Path(sys.argv[1]), sys.argv[2:]
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo")
    try:
        rank = torch.distributed.get_rank()
        world_size = torch.distributed.get_world_size()
        for name in models:
            model, history, error = train(name)
            state = {
                "state": model.state_dict(),
                "history": history,
                "error": error,
                "world_size": world_size,
            }
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
