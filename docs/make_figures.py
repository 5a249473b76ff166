"""Generate the figures of the documentation with the library's own tools.

Run from the repository root (needs matplotlib, ``pip install ".[plot]"``)::

    python docs/make_figures.py

It writes ``docs/figures/jacobian_patterns.png``: the Jacobian sparsity pattern of a
NICE coupling, a Real NVP coupling and the VAE's reparametrization
``(x, eps) -> (x, z)``, each drawn by :func:`flowjoint.plot_jacobian_patterns`
from a dense Jacobian computed by :func:`flowjoint.jacobian`.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import torch  # noqa: E402

import flowjoint as fj  # noqa: E402
from flowjoint.testing import randomize_parameters  # noqa: E402

FIGURES = Path(__file__).resolve().parent / "figures"


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    features = 8  # NICE and Real NVP layers on R^8
    data_features, latent_features = 6, 3  # the VAE: x in R^6, eps and z in R^3

    # A checkerboard mask (True = transformed) so that the reordering shows.
    checker = torch.arange(features) % 2 == 1
    nice_layer = randomize_parameters(fj.AdditiveCoupling(checker, hidden_features=16), seed=1)
    realnvp_layer = randomize_parameters(fj.AffineCoupling(checker, hidden_features=16), seed=2)
    # The reparametrization: an affine coupling on (x, eps) that keeps x and maps
    # eps to z = mu(x) + sigma(x) * eps (the data -> noise direction is eps -> z).
    vae_mask = torch.tensor([False] * data_features + [True] * latent_features)
    encoder = randomize_parameters(fj.AffineCoupling(vae_mask, hidden_features=16), seed=3)

    x = torch.randn(16, features, dtype=torch.float64)
    xe = torch.randn(16, data_features + latent_features, dtype=torch.float64)
    jacobians = {
        "NICE (additive coupling)": fj.jacobian(nice_layer.double(), x),
        "Real NVP (affine coupling)": fj.jacobian(realnvp_layer.double(), x),
        "VAE: (x, eps) -> (x, z)": fj.jacobian(encoder.double(), xe),
    }
    masks = dict(zip(jacobians, (checker, checker, vae_mask)))
    for title, jac in jacobians.items():
        structure = fj.block_structure(jac, masks[title])
        print(f"{title}: triangular={structure.triangular}, zero blocks={structure.zero_blocks}")
    FIGURES.mkdir(exist_ok=True)
    path = FIGURES / "jacobian_patterns.png"
    fj.plot_jacobian_patterns(jacobians, masks, path=str(path))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
