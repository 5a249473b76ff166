"""The ``flowjoint`` command line: ``flowjoint compare`` (also ``python -m flowjoint``).

Example::

    flowjoint compare --out runs/digits                  # digits, all four models
    flowjoint compare --dataset moons --models realnvp --out runs/moons
    flowjoint compare --quick --out /tmp/check           # end to end in seconds
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["main", "build_parser"]


def _argument(kind: type, accept: Callable[[float], bool], expected: str) -> Callable[[str], float]:
    """An argparse ``type`` parsing ``kind`` and refusing values ``accept`` rejects."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value

    return parse


_positive_int = _argument(int, lambda v: v >= 1, "a positive integer")
_positive_float = _argument(float, lambda v: v > 0, "a positive number")
_alpha = _argument(float, lambda v: 0 <= v < 0.5, "a number in [0, 0.5)")


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``flowjoint``."""
    from flowjoint.compare import DATASETS, MODELS

    parser = _Parser(prog="flowjoint", description="Normalizing flows where the VAE is a flow.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = commands.add_parser(
        "compare",
        help="train NICE, Real NVP, a VAE and an augmented flow on one data set; one table",
        description=(
            "Train each model, evaluate it on the test set in nats per example and bits "
            "per dimension of the same density, and write results.json, results.md and "
            "PNG plots to --out."
        ),
    )
    p.add_argument("--dataset", default="digits", choices=DATASETS, help="default: digits")
    p.add_argument(
        "--models",
        nargs="+",
        default=list(MODELS),
        help=f"subset of {' '.join(MODELS)}, space- or comma-separated (default: all)",
    )
    p.add_argument("--out", default="runs/compare", help="output folder (default: runs/compare)")
    p.add_argument("--seed", type=int, default=0, help="seed of everything (default: 0)")
    p.add_argument("--quick", action="store_true", help="tiny budgets: an end-to-end check")
    budget = p.add_argument_group("budget (override every model's tuned default)")
    budget.add_argument("--epochs", type=_positive_int)
    budget.add_argument("--batch-size", type=_positive_int)
    budget.add_argument("--lr", type=_positive_float)
    budget.add_argument("--patience", type=_positive_int, help="early-stopping patience")
    budget.add_argument("--num-layers", type=_positive_int)
    budget.add_argument("--hidden-features", type=_positive_int)
    budget.add_argument("--latent-features", type=_positive_int)
    budget.add_argument("--alpha", type=_alpha, help="logit squeeze of pixel data")
    budget.add_argument(
        "--draws", type=_positive_int, help="dequantization draws of the test set (default 5)"
    )
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=2,
        help="CPU threads for torch (default 2; 1 is faster on a busy machine)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flowjoint`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from flowjoint.compare import MODELS, compare

    models = [m.strip() for item in args.models for m in item.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad or not models:
        parser.error(
            f"argument --models: invalid model {', '.join(map(repr, bad)) or '(none)'}; "
            f"choose from {', '.join(MODELS)}"
        )
    if len(set(models)) != len(models):
        parser.error(f"argument --models: a model is named twice: {args.models}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        parser.error(f"argument --out: {str(out)!r} exists and is not a directory")
    overrides = {
        key: getattr(args, key)
        for key in (
            "epochs",
            "batch_size",
            "lr",
            "patience",
            "num_layers",
            "hidden_features",
            "latent_features",
            "alpha",
        )
        if getattr(args, key) is not None
    }
    import torch

    torch.set_num_threads(args.threads)
    try:
        result = compare(
            args.dataset,
            models,
            out=out,
            seed=args.seed,
            quick=args.quick,
            overrides=overrides,
            num_draws=args.draws,
            progress=not args.no_progress,
        )
    except (ValueError, FileNotFoundError, OSError) as error:
        print(f"flowjoint: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("flowjoint: interrupted", file=sys.stderr)
        return 130
    print(f"wrote {out / 'results.json'}, results.md and plots ({result.seconds:.0f} s)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
