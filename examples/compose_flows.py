"""Compose flowjoint and nflows layers in user code and fit the result to a 2-D toy.

flowjoint's transforms follow nflows' contract (``forward(inputs, context) ->
(outputs, logabsdet)``, data -> noise), so layers from both libraries stack in one
:class:`flowjoint.Compose` and train with :func:`flowjoint.train.fit`.

Run: ``python examples/compose_flows.py [--dataset moons] [--quick]``.
"""

from __future__ import annotations

import argparse

import torch
from nflows.transforms import MaskedAffineAutoregressiveTransform

from flowjoint import ActNorm, AffineCoupling, Compose, Flow, ReversePermutation, StandardNormal
from flowjoint.toys import TOY_DATASETS, toy_data
from flowjoint.train import evaluate, fit


def build(features: int = 2, num_blocks: int = 4, hidden_features: int = 64) -> Flow:
    """``num_blocks`` x [ActNorm, flowjoint AffineCoupling, nflows MAF layer, reverse]."""
    layers = []
    mask = torch.arange(features) % 2 == 1  # True = transformed
    for _ in range(num_blocks):
        layers += [
            ActNorm(features),
            AffineCoupling(mask, hidden_features=hidden_features),
            MaskedAffineAutoregressiveTransform(features, hidden_features=hidden_features),
            ReversePermutation(features),
        ]
    return Flow(Compose(layers), StandardNormal(features))


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="moons", choices=TOY_DATASETS)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="a few seconds, for tests")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    torch.manual_seed(0)
    sizes = (2000, 500, 2000) if args.quick else (20000, 5000, 20000)
    data = toy_data(args.dataset, *sizes)
    flow = build(hidden_features=16 if args.quick else 64)
    fit(
        flow,
        data.train,
        data.val,
        epochs=2 if args.quick else args.epochs,
        batch_size=256,
        lr=2e-3,
        schedule="onecycle",
        progress=not args.quick,
    )
    nll = -evaluate(flow.log_prob, data.test).mean().item()
    print(f"{args.dataset}: test NLL {nll:.3f} nats (true entropy {data.entropy:.3f})")
    return {"test_nll": nll, "entropy": data.entropy}


if __name__ == "__main__":
    main()
