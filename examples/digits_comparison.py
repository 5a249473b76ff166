"""NICE, Real NVP, a VAE and an augmented flow on scikit-learn's 8x8 digits, one table.

The same as ``flowjoint compare --out runs/digits``: every model is trained on the
dequantized digits (split seed 0: 1000 / 297 / 500) and evaluated as a density of
``x + u`` on ``[0, 17)^64``, in nats per image and bits per dimension.

Run: ``python examples/digits_comparison.py [--quick] [--out runs/digits]``.
"""

from __future__ import annotations

import argparse

import torch

from flowjoint.compare import MODELS, compare


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny budgets, for tests")
    parser.add_argument("--out", default="runs/digits")
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    result = compare(
        "digits", args.models.split(","), out=args.out, quick=args.quick, progress=not args.quick
    )
    return result.rows


if __name__ == "__main__":
    main()
