"""Generate the figures of the documentation with the library's own tools.

Run from the repository root (needs matplotlib, ``pip install ".[plot]"``)::

    python docs/make_figures.py

It writes

* ``docs/figures/jacobian_patterns.png``: the Jacobian sparsity pattern of a NICE
  coupling, a Real NVP coupling and the VAE's reparametrization ``(x, eps) -> (x, z)``,
  each drawn by ``flowjoint.plot_jacobian_patterns`` from a dense Jacobian computed
  by ``flowjoint.jacobian``;
* ``docs/figures/stacks.png``: a VAE, a dequantized flow and an augmented flow as
  stacks of layers, each box labelled with its contribution to the one sum, read
  from the models the library builds (``JointVAE``, ``realnvp`` with
  ``pixel_preprocessing``, ``AugmentedFlow``).
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
    jacobian_figure()
    stacks_figure()


def jacobian_figure() -> None:
    features = 8  # NICE and Real NVP layers on R^8
    data_features, latent_features = 6, 3  # the VAE: x in R^6, eps and z in R^3
    # A checkerboard mask (True = transformed) so that the reordering shows.
    checker = torch.arange(features) % 2 == 1
    nice_layer = randomize_parameters(fj.AdditiveCoupling(checker, hidden_features=16), seed=1)
    realnvp_layer = randomize_parameters(fj.AffineCoupling(checker, hidden_features=16), seed=2)
    # The reparametrization: the VAE's encoder coupling on the state (x, eps), which keeps
    # x and maps eps to z = mu(x) + sigma(x) * eps (the data -> noise direction).
    vae = fj.JointVAE(data_features, latent_features, hidden_features=16).double()
    encoder = randomize_parameters(vae.encoder_coupling, seed=3)
    vae_mask = torch.tensor([False] * data_features + [True] * latent_features)

    x = torch.randn(16, features, dtype=torch.float64)
    state = fj.AugmentedState(
        torch.randn(16, data_features, dtype=torch.float64),
        torch.randn(16, latent_features, dtype=torch.float64),
    )
    jacobians = {
        "NICE (additive coupling)": fj.jacobian(nice_layer.double(), x),
        "Real NVP (affine coupling)": fj.jacobian(realnvp_layer.double(), x),
        "VAE: (x, eps) -> (x, z)": fj.jacobian(encoder, state),
    }
    masks = dict(zip(jacobians, (checker, checker, vae_mask)))
    for title, jac in jacobians.items():
        structure = fj.block_structure(jac, masks[title])
        print(f"{title}: triangular={structure.triangular}, zero blocks={structure.zero_blocks}")
    FIGURES.mkdir(exist_ok=True)
    path = FIGURES / "jacobian_patterns.png"
    fj.plot_jacobian_patterns(jacobians, masks, path=str(path))
    print(f"wrote {path}")


# What each kind of layer adds to the sum log_weight = sum of contributions + log p_base.
CONTRIBUTIONS = {
    "Augment": "-log N(eps)",
    "EncoderCoupling": "sum log sigma(x)",
    "DecoderCoupling": "-sum log s(z)",
    "UniformDequantization": "0",
    "VariationalDequantization": "-log q(u|x)",
    "Scale": "D log(1/levels)",
    "Logit": "log-det",
    "AffineCoupling": "sum log scale",
    "ActNorm": "log-det",
}


BASES = {
    "JointBase": "log p(z) + log p(x|z)",
    "JointNormal": "log N(u) + log N(z)",
    "StandardNormal": "log N(z)",
}


def _layer_names(flow: fj.Flow) -> list[str]:
    return [type(layer).__name__ for layer in flow.transform]


def stacks_figure() -> None:
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    models = {
        "VAE: JointVAE(64, 8)": fj.JointVAE(64, 8, 32),
        "dequantized flow: realnvp(64, preprocessing=...)": fj.realnvp(
            64, 4, 32, preprocessing=fj.pixel_preprocessing(17, 0.01)
        ),
        "augmented flow: AugmentedFlow(64, 8, num_steps=2)": fj.AugmentedFlow(64, 8, 2, 32),
    }
    fig, axes = plt.subplots(len(models), 1, figsize=(12, 2.3 * len(models)))
    for ax, (title, model) in zip(axes, models.items()):
        names = _layer_names(model) + [type(model.base).__name__]
        for i, name in enumerate(names):
            is_base = i == len(names) - 1
            stochastic = name in ("Augment", "UniformDequantization", "VariationalDequantization")
            color = "#d9d9d9" if is_base else ("#f4b183" if stochastic else "#9dc3e6")
            ax.add_patch(
                FancyBboxPatch(
                    (i * 1.3, 0), 1.1, 0.8, boxstyle="round,pad=0.02", fc=color, ec="black"
                )
            )
            shown = name.replace("Dequantization", "\nDequantization")
            ax.text(i * 1.3 + 0.55, 0.55, shown, ha="center", va="center", fontsize=7)
            label = BASES.get(name, "log p_base") if is_base else CONTRIBUTIONS.get(name, "log-det")
            ax.text(i * 1.3 + 0.55, 0.2, label, ha="center", va="center", fontsize=7)
            if i:
                ax.annotate(
                    "", (i * 1.3, 0.4), (i * 1.3 - 0.2, 0.4), arrowprops={"arrowstyle": "->"}
                )
        ax.set_xlim(-0.2, 11.5)
        ax.set_ylim(-0.1, 1.1)
        ax.set_title(title, loc="left", fontsize=9)
        ax.axis("off")
    fig.text(
        0.01,
        0.01,
        "data -> noise, left to right. Orange: stochastic layer (draws; adds its contribution "
        "log p(in|out) - log q(out|in)); blue: bijection (adds its log-det); grey: base density.",
        fontsize=8,
    )
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    path = FIGURES / "stacks.png"
    fig.savefig(path, dpi=130)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
