"""Monte Carlo check of the true-density entropies of flowjoint's 2-D toys.

For each toy, draw points with :func:`flowjoint.data.make_toy` and average
``-log p(x)`` under the exact density of the generator, written here independently:

* moons: a uniform angle on each half circle, Gaussian noise: quadrature over the angle;
* 8gaussians: the Gaussian mixture, exactly;
* checkerboard: uniform on 8 squares of side 2: ``log 32``;
* rings: a uniform angle on each circle: the angular integral in closed form,
  ``N(rho; r, s^2)``-like Rice density via the Bessel function ``I0``;
* 2spirals: ``t = 3 pi sqrt(U)``, a uniform box and Gaussian noise per coordinate:
  the box-Gaussian convolution is a difference of normal CDFs; quadrature over ``t``.

Run: ``python benchmarks/toy_entropies.py [num_points]``; prints the estimate, its
standard error and the reference figure from :data:`flowjoint.data.TOY_ENTROPIES`.
"""

from __future__ import annotations

import math
import sys

import numpy as np
from scipy.special import i0e, logsumexp, ndtr

from flowjoint.toys import TOY_ENTROPIES, make_toy


def _log_gauss_mixture_on_curve(x, centers, sigma, log_weights):
    # log sum_j w_j N(x; c_j, sigma^2 I) for x (n, 2), centers (m, 2), in chunks
    out = np.empty(len(x))
    for start in range(0, len(x), 500):
        chunk = x[start : start + 500]
        sq = ((chunk[:, None, :] - centers[None]) ** 2).sum(-1)  # (chunk, m)
        log_n = -sq / (2 * sigma**2) - math.log(2 * math.pi * sigma**2)
        out[start : start + 500] = logsumexp(log_n + log_weights[None], axis=1)
    return out


def log_p_moons(x, m=4000):
    t = (np.arange(m) + 0.5) / m * math.pi
    upper = np.stack([np.cos(t), np.sin(t)], 1)
    lower = np.stack([1 - np.cos(t), 0.5 - np.sin(t)], 1)
    centers = np.concatenate([upper, lower]) * 2 + np.array([-1.0, -0.2])
    return _log_gauss_mixture_on_curve(x, centers, 0.2, np.full(2 * m, -math.log(2 * m)))


def log_p_8gaussians(x):
    s = 1 / math.sqrt(2)
    c = 4 * np.array([(1, 0), (-1, 0), (0, 1), (0, -1), (s, s), (s, -s), (-s, s), (-s, -s)])
    return _log_gauss_mixture_on_curve(x, c / 1.414, 0.5 / 1.414, np.full(8, -math.log(8)))


def log_p_rings(x, sigma=0.08):
    rho = np.linalg.norm(x, axis=1)[:, None]  # (n, 1)
    radii = 3.0 * np.arange(1, 5)[None] / 4  # (1, 4)
    # (1 / 2 pi) int N(x; r(cos a, sin a), s^2 I) da
    #   = exp(-(rho^2 + r^2) / 2 s^2) I0(rho r / s^2) / (2 pi s^2)
    z = rho * radii / sigma**2
    log_ring = (
        -((rho - radii) ** 2) / (2 * sigma**2) + np.log(i0e(z)) - math.log(2 * math.pi * sigma**2)
    )
    return logsumexp(log_ring, axis=1) - math.log(4)


def log_p_2spirals(x, m=6000, sigma=0.1):
    t_max = 540 * 2 * math.pi / 360
    t = (np.arange(m) + 0.5) / m * t_max
    log_w = np.log(2 * t / t_max**2 * (t_max / m))  # density of t = t_max sqrt(U), times dt
    width = 0.5 / 3
    out = np.empty(len(x))
    for start in range(0, len(x), 200):
        chunk = x[start : start + 200]
        terms = []
        for sign in (1.0, -1.0):
            lows = np.stack([-np.cos(t) * t, np.sin(t) * t], 1) / 3  # box corners (m, 2)
            if sign < 0:
                lows = -lows - width
            log_dens = 0.0
            for k in range(2):
                a = (chunk[:, k, None] - lows[None, :, k]) / sigma  # (chunk, m)
                b = a - width / sigma
                diff = np.clip(ndtr(a) - ndtr(b), 1e-300, None)
                log_dens = log_dens + np.log(diff) - math.log(width)
            terms.append(log_dens + log_w[None] + math.log(0.5))
        out[start : start + 200] = logsumexp(np.concatenate(terms, 1), axis=1)
    return out


LOG_DENSITY = {
    "moons": log_p_moons,
    "8gaussians": log_p_8gaussians,
    "checkerboard": lambda x: np.full(len(x), -math.log(32.0)),
    "rings": log_p_rings,
    "2spirals": log_p_2spirals,
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    n = int(argv[0]) if argv else 20000
    print(f"{'toy':14s} {'MC entropy':>11s} {'s.e.':>7s} {'reference':>9s}")
    for name, log_p in LOG_DENSITY.items():
        x = make_toy(name, n, seed=123).double().numpy()
        nll = -log_p(x)
        print(
            f"{name:14s} {nll.mean():11.4f} {nll.std() / math.sqrt(n):7.4f} "
            f"{TOY_ENTROPIES[name]:9.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
