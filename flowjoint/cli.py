"""The ``flowjoint`` command line (also ``python -m flowjoint``).

Commands::

    flowjoint compare [options]     train density models on one data set; one table

Bare ``flowjoint`` prints the commands (this list, with the options) on standard
output and exits with status 0; ``flowjoint --version`` prints the version. Every
error is one line on standard error starting ``flowjoint: error:``; the exit status
is 2 for bad options, 1 for a bad data file or output folder or a failed run, and
130 for an interrupted one.

Until a command runs, only the standard library and
`config` are imported (no torch), so ``--help`` answers at
once.

Example::

    flowjoint compare --out runs/digits                  # digits, its five default models
    flowjoint compare --quick                            # end to end, writes runs/quick/digits
    flowjoint compare --dataset moons.npy --models realnvp vae
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["build_parser", "main"]

_EPILOG = """\
exit status: 0 done; 1 bad data, output folder or failed run; 2 bad options;
130 interrupted (run the same command again to resume).
"""

_COMPARE_EPILOG = """\
examples:
  flowjoint compare --out runs/digits           digits, the five default models (minutes)
  flowjoint compare --quick                     end to end in under a minute; runs/quick/digits
  flowjoint compare --dataset mnist5k --models realnvp vae
  flowjoint compare --dataset points.npy --models realnvp vae
  flowjoint compare --dataset images.npz --levels 256

The output folder gets results.json and results.md (the table) and samples.png,
curves.png and jacobians.png, rewritten as each model finishes, and each model's
checkpoints under models/. Run the same command again after an interruption: the
finished models are skipped and an interrupted one resumes from its last epoch.
"""


def _number(kind: type, accept: Callable[[float], bool], expected: str) -> Callable[[str], float]:
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


_positive_int = _number(int, lambda v: v >= 1, "a positive integer")
_positive_float = _number(float, lambda v: 0 < v < math.inf, "a positive finite number")
_seed = _number(int, lambda v: 0 <= v < 2**63, "an integer from 0 to 2**63 - 1")
_threads = _number(
    int,
    lambda v: 1 <= v <= (os.cpu_count() or 1),
    f"an integer from 1 to this machine's CPU count ({os.cpu_count() or 1})",
)
_levels = _number(int, lambda v: v >= 2, "an integer >= 2")
_alpha = _number(float, lambda v: 0 <= v < 0.5, "a number in [0, 0.5)")
_open_fraction = _number(float, lambda v: 0 < v < 1, "a number in (0, 1)")
_fraction = _number(float, lambda v: 0 <= v < 1, "a number in [0, 1)")


class _Parser(argparse.ArgumentParser):
    """argparse with one error prefix, ``flowjoint: error:``, one line, exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"flowjoint: error: {message}\n")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows an option's default unless it has none (None, or an off switch)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or default is None
            or default is False
            or default == argparse.SUPPRESS
        ):
            return text
        if isinstance(default, list):
            return f"{text} (default: {' '.join(map(str, default))})"
        return f"{text} (default: %(default)s)"


def _add_data_options(p: argparse.ArgumentParser, datasets: Sequence[str]) -> None:
    data = p.add_argument_group("data")
    data.add_argument(
        "--dataset",
        default="digits",
        metavar="NAME|FILE",
        help=f"one of {', '.join(datasets)}; or a .npy, .csv or .npz file of shape "
        "(n, features), or images (n, H, W) or (n, C, H, W) in .npy/.npz",
    )
    data.add_argument(
        "--levels",
        type=_levels,
        metavar="N",
        help="a file of integer pixel data: its number of levels (values 0 .. levels-1; "
        "models dequantize them, scores in bits/dim). Without it a file is continuous data",
    )
    data.add_argument(
        "--val-fraction",
        type=_fraction,
        default=0.1,
        metavar="F",
        help="a file: share of the rows for validation",
    )
    data.add_argument(
        "--test-fraction",
        type=_open_fraction,
        default=0.2,
        metavar="F",
        help="a file: share of the rows for the test set",
    )
    data.add_argument(
        "--split-seed", type=_seed, default=0, metavar="N", help="a file: seed of the random split"
    )


def _add_budget_options(p: argparse.ArgumentParser) -> None:
    budget = p.add_argument_group(
        "budget", "override every model's tuned setting (see flowjoint.compare.config)"
    )
    budget.add_argument("--epochs", type=_positive_int, metavar="N", help="training epochs")
    budget.add_argument("--batch-size", type=_positive_int, metavar="N", help="examples per step")
    budget.add_argument("--lr", type=_positive_float, help="Adam's (peak) learning rate")
    budget.add_argument(
        "--patience", type=_positive_int, metavar="N", help="early-stopping patience (epochs)"
    )
    budget.add_argument(
        "--num-layers", type=_positive_int, metavar="N", help="couplings, or coupling pairs"
    )
    budget.add_argument(
        "--hidden-features", type=_positive_int, metavar="N", help="width of the hidden layers"
    )
    budget.add_argument(
        "--latent-features",
        type=_positive_int,
        metavar="N",
        help="d, the dimension of eps (VAE, augmented flow)",
    )
    budget.add_argument("--alpha", type=_alpha, help="logit squeeze of pixel data")
    budget.add_argument(
        "--dequantization",
        choices=("uniform", "variational"),
        help="the first layer of a model of pixel data",
    )
    scoring = p.add_argument_group("evaluation", "how the test set is scored")
    scoring.add_argument(
        "--draws",
        type=_positive_int,
        metavar="R",
        help="dequantization draws of the test set (5; quick 2)",
    )
    scoring.add_argument(
        "--iwae-samples",
        type=_positive_int,
        nargs="+",
        metavar="K",
        help="K of the IWAE rows on x + u (digits 1 10 100 1000)",
    )
    scoring.add_argument(
        "--discrete-samples",
        type=_positive_int,
        metavar="K",
        help="K of the bound on the discrete data (digits 1000, MNIST 100)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``flowjoint`` (imports no torch)."""
    from flowjoint import __version__
    from flowjoint.compare.config import DATASETS, DEFAULT_MODELS, MODELS

    parser = _Parser(
        prog="flowjoint",
        description="Normalizing flows where the VAE is a flow.",
        epilog=_EPILOG,
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"flowjoint {__version__}")
    commands = parser.add_subparsers(
        dest="command", title="commands", metavar="COMMAND", parser_class=_Parser
    )
    p = commands.add_parser(
        "compare",
        help="train density models on one data set and write one table (nats, bits/dim)",
        description="Train each model, score it on the test set in nats per example and\n"
        "bits per dimension of the same density, and write the table and pictures\n"
        "to --out as each model finishes.",
        epilog=_COMPARE_EPILOG,
        formatter_class=_Formatter,
    )
    _add_data_options(p, DATASETS)
    run = p.add_argument_group("run")
    defaults = "; ".join(f"{group}: {' '.join(names)}" for group, names in DEFAULT_MODELS.items())
    run.add_argument(
        "--models",
        nargs="+",
        default=None,
        metavar="MODEL",
        help=f"models in table order, space- or comma-separated: {', '.join(MODELS)} "
        f"(default per data set: {defaults})",
    )
    run.add_argument(
        "--out",
        metavar="DIR",
        help="output folder (default: runs/<dataset>, or runs/quick/<dataset> with --quick)",
    )
    run.add_argument(
        "--seed", type=_seed, default=0, metavar="N", help="seed of the models, training, noise"
    )
    run.add_argument(
        "--quick", action="store_true", help="tiny models, few epochs: an end-to-end check"
    )
    run.add_argument(
        "--threads", type=_threads, default=2, metavar="N", help="CPU threads for torch"
    )
    run.add_argument(
        "--no-progress",
        action="store_true",
        help="no per-epoch progress (one line per model phase remains)",
    )
    _add_budget_options(p)
    p.set_defaults(handler=_compare)
    return parser


def _models(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str] | None:
    from flowjoint.compare.config import MODELS

    if args.models is None:
        return None  # the data set's default models
    models = [m.strip() for item in args.models for m in item.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad or not models:
        parser.error(
            f"argument --models: invalid choice: {', '.join(map(repr, bad)) or '(none)'} "
            f"(choose from {', '.join(MODELS)})"
        )
    if len(set(models)) != len(models):
        parser.error(f"argument --models: a model is named twice: {' '.join(models)}")
    return models


def _check_dataset(args: argparse.Namespace, parser: argparse.ArgumentParser) -> bool:
    """Whether ``--dataset`` is a file; errors for an unknown name or misplaced options."""
    from flowjoint.arrays import SUFFIXES
    from flowjoint.compare.config import DATASETS

    is_file = Path(args.dataset).suffix.lower() in SUFFIXES
    if not is_file and args.dataset not in DATASETS:
        parser.error(
            f"argument --dataset: {args.dataset!r} is neither a data set ({', '.join(DATASETS)}) "
            f"nor a {', '.join(SUFFIXES)} file"
        )
    if not is_file:
        for option, value, default in (
            ("--levels", args.levels, None),
            ("--val-fraction", args.val_fraction, 0.1),
            ("--test-fraction", args.test_fraction, 0.2),
            ("--split-seed", args.split_seed, 0),
        ):
            if value != default:
                parser.error(
                    f"argument {option}: applies to a data file; {args.dataset} has its own "
                    "levels and fixed splits"
                )
    if args.val_fraction + args.test_fraction >= 1:
        parser.error(
            f"argument --test-fraction: --val-fraction + --test-fraction must be below 1 to "
            f"leave training data, got {args.val_fraction} + {args.test_fraction}"
        )
    return is_file


_BUDGET = (
    "epochs",
    "batch_size",
    "lr",
    "patience",
    "num_layers",
    "hidden_features",
    "latent_features",
    "alpha",
    "dequantization",
)


def _compare(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    models = _models(args, parser)
    is_file = _check_dataset(args, parser)
    from flowjoint.compare.run import default_out

    out = Path(args.out) if args.out is not None else default_out(args.dataset, args.quick)
    if out.exists() and not out.is_dir():
        parser.error(f"argument --out: {str(out)!r} exists and is not a folder")
    overrides = {k: getattr(args, k) for k in _BUDGET if getattr(args, k) is not None}
    evaluation = {
        key: value
        for key, value in (
            ("num_draws", args.draws),
            ("iwae_samples", tuple(args.iwae_samples or ()) or None),
            ("discrete_samples", args.discrete_samples),
        )
        if value is not None
    }
    import torch

    from flowjoint.compare.datasets import SplitOptions
    from flowjoint.compare.run import compare
    from flowjoint.fitting import TrainingDiverged

    torch.set_num_threads(args.threads)
    split = None
    if is_file:
        split = SplitOptions(args.levels, args.val_fraction, args.test_fraction, args.split_seed)
    try:
        result = compare(
            args.dataset,
            models,
            out=out,
            seed=args.seed,
            quick=args.quick,
            overrides=overrides,
            evaluation=evaluation,
            split=split,
            progress=not args.no_progress,
        )
    except (ValueError, OSError, TrainingDiverged) as error:
        message = " ".join(str(error).split())
        print(f"flowjoint: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"flowjoint: interrupted; finished models are in {out / 'results.md'}; run the "
            "same command again to resume",
            file=sys.stderr,
        )
        return 130
    print(result.report, end="")
    print(
        f"wrote {out / 'results.md'}, results.json and pictures ({result.seconds:.0f} s)",
        file=sys.stderr,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flowjoint`` console script; returns the exit status."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    if args.command is None:  # options without a command, e.g. ``flowjoint --seed``
        parser.error("a command is required (flowjoint compare); see flowjoint --help")
    return args.handler(args, parser)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
