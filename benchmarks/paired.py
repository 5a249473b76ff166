"""flowjoint's Real NVP against one other candidate, timed call by call.

The Real NVP of the peers benchmark (``peers.py``: vectors and images): flowjoint's
default model against ``--against`` (by default the same layers with
``log_scale_bound=None``, ``exp(raw)`` unbounded and the same weights: what the default
soft clamp costs; or a peer library, or ``raw``). In ``peers.py`` a ratio is a median of
per-round ratios of 0.1 s blocks, and a slow phase of the shared machine that hits one
block and not the other moves it by several per cent. Here the candidates alternate
one call at a time in a shuffled order, so each ratio compares calls made within
milliseconds of each other:

* **ratio**: the median over call groups of flowjoint / the other, with a bootstrap
  95 % interval of that median;
* **A/A**: a second instance of flowjoint's model against the first, timed the same
  way, with its interval: its distance from 1.00 is what two instances of one model
  differ by (memory placement), which the ratio's interval does not include.

Before each operation every model gets its weights again (``randomize``, the same
distribution in every library; a training step moves them). Against
``log_scale_bound=None`` the targets are 1.05 for a training step and 1.08 for
``log_prob`` and sampling, "met" when the interval's upper end is inside; against a
peer, flowjoint is "ahead" when the interval's upper end is below 1.
Run ``python benchmarks/paired.py`` (about 4 minutes), ``--against normflows``, or
``--seconds 2`` for a quick look.
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
from peers import (  # noqa: E402
    FULL_CONFIGS,
    LIBRARIES,
    OPERATIONS,
    TINY_CONFIGS,
    UNCLAMPED,
    build,
    make_ops,
)

TARGETS = {"train step": 1.05, "log_prob": 1.08, "sample": 1.08}  # against UNCLAMPED
OTHERS = (UNCLAMPED, "raw", *(lib for lib in LIBRARIES if lib != "flowjoint"))


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
    """The ratio to ``args.against`` and the A/A of every operation on ``cfg``."""
    torch.manual_seed(0)
    x = cfg.data()
    other = args.against
    models = {"flowjoint": build(cfg, "flowjoint"), "flowjoint (A/A)": build(cfg, "flowjoint")}
    models[other] = build(cfg, other)
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
        ratio = [a / b for a, b in zip(times["flowjoint"], times[other])]
        control = [a / b for a, b in zip(times["flowjoint (A/A)"], times["flowjoint"])]
        report[op] = {
            "ratio": statistics.median(ratio),
            "interval": median_interval(ratio),
            "A/A": statistics.median(control),
            "A/A interval": median_interval(control),
            "groups": len(ratio),
            "ms": statistics.median(times["flowjoint"]) * 1e3,
            "load": load,
            "target": TARGETS[op] if other == UNCLAMPED else 1.0,
        }
        r = report[op]
        log(
            f"{cfg.label:18s} {op:10s} flowjoint / {other} {r['ratio']:.3f} "
            f"(95% {r['interval'][0]:.3f}-{r['interval'][1]:.3f}), A/A {r['A/A']:.3f} "
            f"(95% {r['A/A interval'][0]:.3f}-{r['A/A interval'][1]:.3f}), {r['groups']} groups, "
            f"{r['ms']:.1f} ms per call, others' load {load:.0%}"
        )
    return report


def summary_table(report: dict, against: str) -> str:
    """One row per cell. Against ``bound=None``: "met" when the interval's upper end is at
    most the target; against another: "ahead" when it is below 1."""
    verdict = "met" if against == UNCLAMPED else "flowjoint ahead"
    rows = [
        (
            label,
            op,
            f"{r['ratio']:.3f}",
            f"{r['interval'][0]:.3f}-{r['interval'][1]:.3f}",
            f"{r['A/A']:.3f}",
            f"{r['A/A interval'][0]:.3f}-{r['A/A interval'][1]:.3f}",
            f"{r['target']:.2f}",
            "yes" if r["interval"][1] <= r["target"] and (
                against == UNCLAMPED or r["interval"][1] < 1.0) else "no",
        )
        for label, ops in report["configs"].items()
        for op, r in ops.items()
    ]  # fmt: skip
    header = ("config", "operation", "ratio", "95% interval", "A/A", "A/A 95%", "target", verdict)
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
    p.add_argument(
        "--against", default=UNCLAMPED, choices=OTHERS, help=f"the other candidate ({UNCLAMPED!r})"
    )
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
    log(f"# flowjoint's default Real NVP / {args.against}, call by call")
    log(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}, python {platform.python_version()}; "
        f"{args.seconds:g} s per configuration and operation, calls alternated one by one"
    )
    configs = [c for c in (TINY_CONFIGS if args.tiny else FULL_CONFIGS) if c.label in args.only]
    if args.against in LIBRARIES:
        configs = [c for c in configs if args.against in c.libraries]  # zuko: no images
    start = time.perf_counter()
    report = {"configs": {cfg.label: measure_config(cfg, args, log) for cfg in configs}}
    report["seconds"] = time.perf_counter() - start
    log(f"\n## flowjoint / {args.against} (median of per-group ratios), {report['seconds']:.0f} s")
    log(summary_table(report, args.against))
    return report


if __name__ == "__main__":
    main()
