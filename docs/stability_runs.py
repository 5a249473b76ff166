"""Train the default Real NVP, NICE and JointVAE for many steps and check every loss is finite.

The result of ``python docs/stability_runs.py --steps 10000`` is recorded in
``docs/robustness.md``; ``tests/test_robustness.py`` runs the same code for fewer
steps (marked slow). Each run uses the library's default builder and optimiser
settings a user would start from, and the one objective of every model,
``model.elbo(x)``:

* Real NVP: ``realnvp(D, preprocessing=pixel_preprocessing(levels, alpha=0.05))`` on
  the raw pixel levels: the stack dequantizes every batch afresh (uniform
  dequantization), scales to ``[0, 1)`` and takes the logit, all counted;
* NICE: ``nice(D, preprocessing=...)``, the same preprocessing;
* JointVAE: ``JointVAE(D, d)`` with its default Bernoulli likelihood on dynamically
  binarised pixels (``d = 8`` on digits, ``d = 32`` on MNIST-5k).

Adam at learning rate 1e-3, batch 100, no gradient clipping (so that a blow-up is
seen, not hidden). Every step's loss is checked; at the end every parameter is
checked and the test-set loss is reported (nats per image; for the flows also bits
per dimension of the dequantized data).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

import flowjoint as fj
from flowjoint.data import load_digits, load_mnist5k

MODELS = ("realnvp", "nice", "vae")
DATASETS = ("digits", "mnist5k")
LATENT = {"digits": 8, "mnist5k": 32}
ALPHA = 0.05  # the logit squeeze of the recorded runs


def build(model: str, dataset: str, features: int, levels: int) -> fj.Flow:
    preprocessing = fj.pixel_preprocessing(levels, alpha=ALPHA)
    if model == "realnvp":
        return fj.realnvp(features, preprocessing=preprocessing)
    if model == "nice":
        return fj.nice(features, preprocessing=preprocessing)
    if model == "vae":
        return fj.JointVAE(features, LATENT[dataset])
    raise ValueError(f"model must be one of {MODELS}, got {model!r}")


def run(model: str, dataset: str, steps: int, batch_size: int = 100, seed: int = 0) -> dict:
    """Train for ``steps`` Adam steps; returns a summary (raises on a non-finite loss).

    ``seed`` seeds the model's initialisation and its random draws
    (``torch.manual_seed``) and the shuffling and binarisation (a generator).
    """
    torch.manual_seed(seed)
    data = load_digits() if dataset == "digits" else load_mnist5k()
    levels, features = data.levels, data.features
    net = build(model, dataset, features, levels)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)

    def objective(batch: torch.Tensor, train: bool) -> torch.Tensor:
        if model == "vae":  # dynamic binarisation of intensities in [0, 1]
            probs = batch / (levels - 1)
            batch = torch.bernoulli(probs, generator=generator if train else None)
        return net.elbo(batch)  # flows: the stack dequantizes the levels

    started = time.perf_counter()
    losses = []
    step = 0
    while step < steps:
        order = torch.randperm(data.train.shape[0], generator=generator)
        for index in order.split(batch_size):
            if step == steps:
                break
            net.train()
            loss = -objective(data.train[index], train=True).mean()
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"{model} on {dataset}: non-finite loss {loss.item()} at step {step + 1}"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
    seconds = time.perf_counter() - started
    bad = [n for n, p in net.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise FloatingPointError(f"{model} on {dataset}: non-finite parameters {bad}")
    net.eval()
    with torch.no_grad():
        test_loss = (
            -torch.cat([objective(chunk, train=False) for chunk in data.test.split(500)])
            .mean()
            .item()
        )
    if not math.isfinite(test_loss):
        raise FloatingPointError(f"{model} on {dataset}: non-finite test loss {test_loss}")
    return {
        "model": model,
        "dataset": dataset,
        "steps": steps,
        "non_finite_losses": 0,
        "first_loss": losses[0],
        "final_train_loss_mean_last_100": sum(losses[-100:]) / len(losses[-100:]),
        "max_train_loss_after_100": max(losses[100:], default=math.nan),
        "test_loss_nats": test_loss,
        "test_bits_per_dim": test_loss / (features * math.log(2)) if model != "vae" else None,
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="write the summaries as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    for dataset in args.datasets:
        for model in args.models:
            summary = run(model, dataset, args.steps)
            print(json.dumps(summary), flush=True)
            results.append(summary)
    if args.out:
        with open(args.out, "w") as file:
            json.dump(results, file, indent=2)


if __name__ == "__main__":
    main()
