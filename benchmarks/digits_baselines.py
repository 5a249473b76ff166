"""Classical baselines on digits with the comparison's protocol, in bits per dimension.

Data: ``flowjoint.data.load_digits()`` (split seed 0, 1000 / 297 / 500); continuous
models are fitted to ``y = (x + u) / 17`` of the training set and scored on the test
set dequantized with 5 independent draws; a density of ``y`` on ``[0, 1]^64`` is
converted to a density of ``x + u`` on ``[0, 17)^64`` (``+ 64 ln 17`` nats) before
bits/dim. The categorical model's piecewise-constant density is ``P(x)`` itself.

* full-covariance Gaussian (maximum likelihood);
* Gaussian mixture, 5 full-covariance components (scikit-learn, ``random_state=0``);
* independent per-pixel categorical over the 17 levels, add-``a`` smoothing.

Run: ``python benchmarks/digits_baselines.py``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.mixture import GaussianMixture

from flowjoint.data import dequantize, load_digits
from flowjoint.units import nats_to_bits_per_dim, nll_to_level_scale


def main() -> dict[str, float]:
    data = load_digits()
    levels, dims = data.levels, data.features
    g = torch.Generator().manual_seed(0)
    train_y = (dequantize(data.train.double(), levels, g) / levels).numpy()
    test_draws = [(dequantize(data.test.double(), levels, g) / levels).numpy() for _ in range(5)]

    def report(name: str, log_p_unit: callable) -> float:
        nll = np.mean([-log_p_unit(y).mean() for y in test_draws])
        bits = nats_to_bits_per_dim(nll_to_level_scale(nll, dims, levels), dims)
        print(f"{name:36s} {bits:.3f} bits/dim")
        return bits

    results = {}
    mean = train_y.mean(0)
    cov = np.cov(train_y, rowvar=False, bias=True)
    sign, logdet = np.linalg.slogdet(cov)
    inv = np.linalg.inv(cov)

    def gaussian(y: np.ndarray) -> np.ndarray:
        diff = y - mean
        return -0.5 * (
            np.einsum("ni,ij,nj->n", diff, inv, diff) + logdet + dims * math.log(2 * math.pi)
        )

    results["gaussian"] = report("full-covariance Gaussian", gaussian)
    gmm = GaussianMixture(5, covariance_type="full", random_state=0).fit(train_y)
    results["gmm5"] = report("GMM, 5 full-covariance components", gmm.score_samples)
    counts = np.stack(
        [np.bincount(col.astype(int), minlength=levels) for col in data.train.numpy().T]
    )
    for a in (1.0, 0.5, 0.1):
        log_prob = np.log((counts + a) / (counts + a).sum(1, keepdims=True))  # (64, 17)
        test = data.test.numpy().astype(int)
        nll = -log_prob[np.arange(dims), test].sum(1).mean()
        bits = nats_to_bits_per_dim(nll, dims)
        print(f"{'per-pixel categorical, add-' + str(a):36s} {bits:.3f} bits/dim")
        results[f"categorical_add{a}"] = bits
    return results


if __name__ == "__main__":
    main()
