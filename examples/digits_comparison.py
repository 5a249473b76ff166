"""NICE, Real NVP, a VAE and an augmented flow on scikit-learn's 8x8 digits, one table.

The same as ``flowjoint compare --out runs/digits``: every model is a stack that
starts with uniform dequantization, scaling and a logit, trained on its ELBO
(the exact log-likelihood for the flows); the table gives the density of ``x + u``
on ``[0, 17)^64`` at fixed dequantization draws and the bound on the discrete
digits, in nats per image and bits per dimension (split seed 0: 1000 / 297 / 500).

Run: ``python examples/digits_comparison.py [--quick] [--out DIR]``; the default
folder is ``runs/digits``, or ``runs/quick/digits`` with ``--quick``.
"""

from __future__ import annotations

import argparse

import torch

from flowjoint.compare import MODELS, compare, default_out


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models, 2 epochs: a check")
    parser.add_argument(
        "--out", default=None, help="default: runs/digits (quick: runs/quick/digits)"
    )
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    out = args.out if args.out is not None else default_out("digits", args.quick)
    result = compare("digits", args.models.split(","), out=out, quick=args.quick)
    print(result.report)
    return result.rows


if __name__ == "__main__":
    main()
