"""The one triangular pattern: Jacobians of a NICE layer, a Real NVP layer and the VAE.

A NICE coupling, a Real NVP coupling and the VAE's reparametrization
``(x, eps) -> (x, mu(x) + sigma(x) * eps)`` all have a block lower-triangular
Jacobian once features are ordered kept-then-transformed. This draws the three
sparsity patterns side by side and checks each log-det against ``slogdet``.

Run: ``python examples/jacobian_patterns.py [--out jacobian_patterns.png]``.
"""

from __future__ import annotations

import argparse

import torch

from flowjoint import (
    AdditiveCoupling,
    AffineCoupling,
    check_logabsdet,
    jacobian,
    plot_jacobian_patterns,
)
from flowjoint.testing import randomize_parameters


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="jacobian_patterns.png")
    parser.add_argument("--features", type=int, default=12, help="D (data features)")
    parser.add_argument("--latent", type=int, default=4, help="d (VAE latent features)")
    parser.add_argument("--quick", action="store_true", help="accepted for symmetry; fast")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    D, d = args.features, args.latent
    checkerboard = torch.arange(D) % 2 == 1
    halves = torch.arange(D) >= D // 2
    from flowjoint.vae import JointVAE

    vae = JointVAE(D, d, hidden_features=16, likelihood="gaussian")
    layers = {
        "NICE coupling": (AdditiveCoupling(checkerboard, hidden_features=16), D),
        "Real NVP coupling": (AffineCoupling(halves, hidden_features=16), D),
        "VAE encoder (x, eps) -> (x, z)": (vae.encoder_coupling, D + d),
    }
    jacobians, masks, errors = {}, {}, {}
    for title, (layer, width) in layers.items():
        layer = randomize_parameters(layer.double())
        inputs = torch.randn(3, width, dtype=torch.float64)
        jacobians[title] = jacobian(layer, inputs)
        masks[title] = layer.mask
        errors[title] = check_logabsdet(layer, inputs)
    plot_jacobian_patterns(jacobians, masks, path=args.out)
    for title, error in errors.items():
        print(f"{title}: log-det vs slogdet error {error}")
    print(f"wrote {args.out}")
    return errors


if __name__ == "__main__":
    main()
