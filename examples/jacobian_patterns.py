"""The one triangular pattern: Jacobians of a NICE layer, a Real NVP layer and the VAE.

A NICE coupling, a Real NVP coupling and the VAE's reparametrization
``(x, eps) -> (x, mu(x) + sigma(x) * eps)`` all have a block lower-triangular
Jacobian once features are ordered kept-then-transformed. This draws the three
sparsity patterns side by side and checks each log-det against ``slogdet``.

Run: ``python examples/jacobian_patterns.py [--out runs/jacobian_patterns.png]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from flowjoint import (
    AdditiveCoupling,
    AffineCoupling,
    AugmentedState,
    JointVAE,
    check_logabsdet,
    jacobian,
    plot_jacobian_patterns,
)
from flowjoint.testing import randomize_parameters


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/jacobian_patterns.png")
    parser.add_argument("--features", type=int, default=12, help="D (data features)")
    parser.add_argument("--latent", type=int, default=4, help="d (VAE latent features)")
    parser.add_argument("--quick", action="store_true", help="accepted for symmetry; fast")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    D, d = args.features, args.latent
    checkerboard = torch.arange(D) % 2 == 1
    halves = torch.arange(D) >= D // 2
    vae = JointVAE(D, d, hidden_features=16, likelihood="gaussian")
    # (x, eps): x kept, eps transformed; the flattened order is x, then eps
    vae_mask = torch.cat([torch.zeros(D, dtype=torch.bool), torch.ones(d, dtype=torch.bool)])
    layers = {
        "NICE coupling": (AdditiveCoupling(checkerboard, hidden_features=16), checkerboard),
        "Real NVP coupling": (AffineCoupling(halves, hidden_features=16), halves),
        "VAE encoder (x, eps) -> (x, z)": (vae.encoder_coupling, vae_mask),
    }
    jacobians, masks, errors = {}, {}, {}
    for title, (layer, mask) in layers.items():
        layer = randomize_parameters(layer.double())
        x = torch.randn(3, D, dtype=torch.float64)
        inputs = x if mask is not vae_mask else AugmentedState(x, torch.randn(3, d).double())
        jacobians[title] = jacobian(layer, inputs)
        masks[title] = mask
        errors[title] = check_logabsdet(layer, inputs)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    plot_jacobian_patterns(jacobians, masks, path=args.out)
    for title, error in errors.items():
        print(f"{title}: log-det vs slogdet error {error}")
    print(f"wrote {args.out}")
    return errors


if __name__ == "__main__":
    main()
