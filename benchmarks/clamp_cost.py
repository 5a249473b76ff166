"""What the default soft clamp costs, timed call by call.

flowjoint's Real NVP of the peers benchmark (``peers.py``: vectors and images) with its
default soft clamp of the log-scale (``log_scale_bound=3``) against the same layers
with ``log_scale_bound=None`` (``exp(raw)``, unbounded), the same weights. In
``peers.py`` the clamp cost is a median of per-round ratios of 0.1 s blocks, and a slow
phase of the shared machine that hits one block and not the other moves it by several
per cent. Here the candidates alternate one call at a time in a shuffled order, so each
ratio compares calls made within milliseconds of each other:

* **clamp cost**: the median over call groups of default / ``bound=None``, with a
  bootstrap 95 % interval of that median;
* **A/A**: a second instance of the default model against the first, timed the same
  way, with its interval: its distance from 1.00 is what two instances of one model
  differ by (memory placement), which the clamp cost's interval does not include.

Before each operation every model gets the same weights again (a training step moves
them). The targets are 1.05 for a training step and 1.08 for ``log_prob`` and
sampling; a cell "meets" its target when its interval's upper end does.
Run ``python benchmarks/clamp_cost.py`` (about 4 minutes) or ``--seconds 2``.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common_models import num_parameters, randomize  # noqa: E402
from peers import FULL_CONFIGS, OPERATIONS, TINY_CONFIGS, UNCLAMPED, build, make_ops  # noqa: E402

TARGETS = {"train step": 1.05, "log_prob": 1.08, "sample": 1.08}
CANDIDATES = ("default", "default (A/A)", UNCLAMPED)


def timed_groups(
    calls: dict[str, Callable[[], object]], seconds: float, min_groups: int
) -> dict[str, list[float]]:
    """Call every candidate once per group, in an order shuffled from group to group (so
    that each is preceded by each other as often, whose data the caches then hold), for
    ``seconds`` and at least ``min_groups`` groups; the times of each, group by group."""
    names = list(calls)
    rng = random.Random(0)
    for call in calls.values():  # warm-up
        call()
        call()
    times: dict[str, list[float]] = {name: [] for name in names}
    clock = time.perf_counter
    start = clock()
    group = 0
    while group < min_groups or clock() - start < seconds:
        rng.shuffle(names)
        for name in names:
            begin = clock()
            calls[name]()
            times[name].append(clock() - begin)
        group += 1
    return times


def median_interval(ratios: list[float], draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """A bootstrap 95 % interval of the median of ``ratios``."""
    rng = random.Random(seed)
    medians = sorted(
        statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(draws)
    )
    return medians[int(0.025 * draws)], medians[int(0.975 * draws) - 1]


def measure_config(cfg, args: argparse.Namespace, log) -> dict:
    """Clamp cost and A/A of every operation on ``cfg``."""
    torch.manual_seed(0)
    x = cfg.data()
    models = {name: build(cfg, "flowjoint") for name in CANDIDATES[:2]}
    models[UNCLAMPED] = build(cfg, UNCLAMPED)
    for model in models.values():
        randomize(model.module, seed=1)
    counts = {num_parameters(m.module) for m in models.values()}
    if len(counts) != 1:
        raise AssertionError(f"parameter counts differ: {counts}")
    report = {}
    for op in OPERATIONS:
        for model in models.values():  # the same weights for every operation (training moves them)
            randomize(model.module, seed=1)
        calls = {name: make_ops(model, x)[op] for name, model in models.items()}
        before = common.read_cpu_ticks()
        times = timed_groups(calls, args.seconds, args.min_groups)
        load = common.other_load(before, common.read_cpu_ticks())
        cost = [a / b for a, b in zip(times["default"], times[UNCLAMPED])]
        control = [a / b for a, b in zip(times["default (A/A)"], times["default"])]
        report[op] = {
            "clamp cost": statistics.median(cost),
            "interval": median_interval(cost),
            "A/A": statistics.median(control),
            "A/A interval": median_interval(control),
            "groups": len(cost),
            "ms": statistics.median(times["default"]) * 1e3,
            "load": load,
            "target": TARGETS[op],
        }
        r = report[op]
        log(
            f"{cfg.label:18s} {op:10s} clamp cost {r['clamp cost']:.3f} "
            f"(95% {r['interval'][0]:.3f}-{r['interval'][1]:.3f}), A/A {r['A/A']:.3f} "
            f"(95% {r['A/A interval'][0]:.3f}-{r['A/A interval'][1]:.3f}), {r['groups']} groups, "
            f"{r['ms']:.1f} ms per call, others' load {load:.0%}, target {TARGETS[op]}"
        )
    return report


def summary_table(report: dict) -> str:
    """One row per cell; "met" when the interval's upper end is at most the target."""
    rows = [
        (
            label,
            op,
            f"{r['clamp cost']:.3f}",
            f"{r['interval'][0]:.3f}-{r['interval'][1]:.3f}",
            f"{r['A/A']:.3f}",
            f"{r['A/A interval'][0]:.3f}-{r['A/A interval'][1]:.3f}",
            f"{r['target']:.2f}",
            "yes" if r["interval"][1] <= r["target"] else "no",
        )
        for label, ops in report["configs"].items()
        for op, r in ops.items()
    ]
    header = (
        "config", "operation", "clamp cost", "95% interval", "A/A", "A/A 95%", "target", "met"
    )  # fmt: skip
    return common.format_table(rows, header)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--seconds", type=float, default=20.0, help="timing per configuration and operation"
    )
    p.add_argument("--min-groups", type=int, default=30, help="at least this many call groups")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tiny", action="store_true", help="tiny models, seconds; for the test suite")
    p.add_argument("--only", nargs="+", default=None, metavar="LABEL", help="configuration labels")
    args = p.parse_args(argv)
    configs = TINY_CONFIGS if args.tiny else FULL_CONFIGS
    labels = [c.label for c in configs]
    args.only = labels if args.only is None else args.only
    unknown = sorted(set(args.only) - set(labels))
    if unknown:
        p.error(f"unknown configuration(s) {unknown}; choose from {labels}")
    if not 0 <= args.seconds < float("inf"):
        p.error(f"--seconds must be finite and >= 0, got {args.seconds}")
    if args.min_groups < 1 or args.threads < 1:
        p.error(f"--min-groups and --threads must be >= 1, got {args.min_groups}, {args.threads}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    log = print
    log("# flowjoint: what the default soft clamp costs (default / log_scale_bound=None)")
    log(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}, python {platform.python_version()}; "
        f"{args.seconds:g} s per configuration and operation, calls alternated one by one"
    )
    configs = [c for c in (TINY_CONFIGS if args.tiny else FULL_CONFIGS) if c.label in args.only]
    start = time.perf_counter()
    report = {"configs": {cfg.label: measure_config(cfg, args, log) for cfg in configs}}
    report["seconds"] = time.perf_counter() - start
    log(f"\n## clamp cost (median of per-group ratios), timing took {report['seconds']:.0f} s")
    log(summary_table(report))
    return report


if __name__ == "__main__":
    main()
