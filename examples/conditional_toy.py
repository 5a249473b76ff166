"""A conditional Real NVP on a 2-D toy, conditioned on a class label.

The eight-Gaussians toy with its component index as the label: ``p(x | label)`` is a
single Gaussian, and a flow with the one-hot label as context learns all eight at
once. Sampling with a given context draws from one component.

Run: ``python examples/conditional_toy.py [--quick] [--out conditional.png]``.
"""

from __future__ import annotations

import argparse
import math

import torch

from flowjoint import realnvp


def labelled_eight_gaussians(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points ``(n, 2)`` and one-hot labels ``(n, 8)`` (the same law as ``make_toy``)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 8, (n,), generator=g)
    angle = torch.tensor(
        [
            0,
            math.pi,
            math.pi / 2,
            -math.pi / 2,
            math.pi / 4,
            -math.pi / 4,
            3 * math.pi / 4,
            -3 * math.pi / 4,
        ]
    )[labels]
    centers = 4.0 * torch.stack([angle.cos(), angle.sin()], 1)
    x = (centers + 0.5 * torch.randn(n, 2, generator=g)) / 1.414
    return x, torch.nn.functional.one_hot(labels, 8).float()


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds, for tests")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--out", default=None, help="PNG of samples per label")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    torch.manual_seed(0)
    flow = realnvp(
        2,
        num_layers=4,
        hidden_features=32 if args.quick else 64,
        context_features=8,
        mask_pattern="checkerboard",
    )
    optimizer = torch.optim.Adam(flow.parameters(), lr=2e-3)
    steps = 20 if args.quick else args.steps
    for step in range(steps):
        x, label = labelled_eight_gaussians(256, seed=step)
        loss = -flow.log_prob(x, context=label).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    x, label = labelled_eight_gaussians(4000, seed=10**6)
    with torch.no_grad():
        nll = -flow.log_prob(x, context=label).mean().item()
    # each component is N(c, (0.5 / 1.414)^2 I): its entropy is the best achievable
    sigma = 0.5 / 1.414
    entropy = 1 + math.log(2 * math.pi * sigma**2)
    print(f"conditional test NLL {nll:.3f} nats (true conditional entropy {entropy:.3f})")
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        with torch.no_grad():
            samples = flow.sample(300, context=torch.eye(8))  # (8, 300, 2)
        fig, ax = plt.subplots(figsize=(4, 4))
        for k in range(8):
            ax.scatter(*samples[k].T.numpy(), s=2, label=str(k))
        ax.set_aspect("equal")
        fig.savefig(args.out, dpi=120)
    return {"test_nll": nll, "entropy": entropy}


if __name__ == "__main__":
    main()
