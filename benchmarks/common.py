"""Shared timing harness for the benchmarks: interleaved rounds, load control, ratios.

Every round times each candidate once, in a rotated order, as ``reps`` back-to-back
calls (the mean per call is the round's figure). Reported are the median over
rounds of each candidate's time and the median over rounds of its per-round ratio
to the reference (``raw``): a ratio taken inside one round compares runs made
seconds apart, so slow drifts in the machine's speed cancel. A second instance of
the reference (``raw (A/A)``) is timed like any other candidate; its ratio shows
how far from 1.00 noise alone moves a figure.

The machine is shared, so each round reads ``/proc/stat`` (all CPU time) and
``/proc/self/stat`` (this process's CPU time) before and after. The busy time of
other processes, as a fraction of the machine's capacity over the round, is the
round's *load*; a round whose load exceeds ``max_load`` is discarded and re-run
(at most ``max_retries`` times in a row, after which it is kept and flagged).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def read_cpu_ticks() -> tuple[int, int, int]:
    """(busy ticks of the whole machine, total ticks of the whole machine, own ticks)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice
    idle = values[3] + values[4]
    total = sum(values[:8])  # guest time is already counted in user/nice
    with open("/proc/self/stat") as f:
        own_fields = f.read().rsplit(")", 1)[1].split()
    own = int(own_fields[11]) + int(own_fields[12])  # utime + stime
    return total - idle, total, own


def other_load(before: tuple[int, int, int], after: tuple[int, int, int]) -> float:
    """Fraction of the machine's CPU capacity used by other processes in between."""
    busy = after[0] - before[0]
    total = after[1] - before[1]
    own = after[2] - before[2]
    if total <= 0:
        return 0.0
    return max(0.0, (busy - own) / total)


def machine_load() -> float:
    """Fraction of the machine used by other processes over the last half second."""
    before = read_cpu_ticks()
    time.sleep(0.5)
    return other_load(before, read_cpu_ticks())


def wait_for_quiet(max_load: float, timeout: float, log: Callable[[str], None] = print) -> float:
    """Wait (up to ``timeout`` seconds) until the others' load is below ``max_load``."""
    start = time.monotonic()
    load = machine_load()
    while load > max_load and time.monotonic() - start < timeout:
        log(f"  waiting: other processes use {load:.0%} of the CPU")
        time.sleep(2.0)
        load = machine_load()
    return load


CLOCKS: dict[str, Callable[[], float]] = {
    # Wall-clock time, what a user waits for: the reported figure.
    "wall": time.perf_counter,
    # CPU time of this process (all threads): insensitive to being descheduled, so
    # usable on a loaded machine, but it counts a waiting thread's spinning.
    "cpu": time.process_time,
}


def time_block(fn: Callable[[], object], reps: int, clock: Callable[[], float]) -> float:
    """Mean seconds per call of ``reps`` back-to-back calls."""
    start = clock()
    for _ in range(reps):
        fn()
    return (clock() - start) / reps


def calibrate(fn: Callable[[], object], target: float, warmup: int = 3) -> int:
    """Run ``fn`` ``warmup`` times, then return a repetition count lasting ~``target`` s."""
    for _ in range(warmup):
        fn()
    once = time_block(fn, 2, time.perf_counter)
    return max(1, round(target / max(once, 1e-7)))


@dataclass
class Result:
    """Timings of one candidate: per-round seconds and per-round ratios to the reference."""

    name: str
    times: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)

    @property
    def median_time(self) -> float:
        return statistics.median(self.times)

    @property
    def median_ratio(self) -> float:
        return statistics.median(self.ratios)

    def ratio_spread(self) -> tuple[float, float]:
        """Inter-quartile range of the per-round ratios."""
        if len(self.ratios) < 4:
            return min(self.ratios), max(self.ratios)
        q = statistics.quantiles(self.ratios, n=4)
        return q[0], q[2]


@dataclass
class Comparison:
    """Outcome of :func:`compare`: results by name, the rounds' loads, re-runs."""

    results: dict[str, Result]
    loads: list[float]
    reruns: int
    flagged: int


def compare(
    candidates: dict[str, Callable[[], object]],
    reference: str,
    rounds: int,
    target_seconds: float,
    max_load: float = 0.15,
    max_retries: int = 3,
    clock: str = "wall",
) -> Comparison:
    """Time ``candidates`` interleaved over ``rounds`` rounds against ``reference``.

    Args:
        candidates: name -> zero-argument callable doing one operation.
        reference: the name whose per-round time divides every other's.
        rounds: number of kept rounds.
        target_seconds: about how long one candidate's block lasts in a round.
        max_load: re-run a round if other processes used more than this fraction of
            the machine's CPU capacity during it.
        max_retries: consecutive re-runs of one round before it is kept anyway.
        clock: ``"wall"`` (the default) or ``"cpu"`` (see :data:`CLOCKS`).
    """
    names = list(candidates)
    if reference not in candidates:
        raise ValueError(f"reference {reference!r} is not among the candidates {names}")
    timer = CLOCKS[clock]
    reps = calibrate(candidates[reference], target_seconds)
    for name in names:
        calibrate(candidates[name], 0.0)  # warm every candidate up
    results = {name: Result(name) for name in names}
    loads: list[float] = []
    reruns = flagged = 0
    r = 0
    retries = 0
    while r < rounds:
        shift = r % len(names)
        order = names[shift:] + names[:shift]
        before = read_cpu_ticks()
        times = {name: time_block(candidates[name], reps, timer) for name in order}
        load = other_load(before, read_cpu_ticks())
        if load > max_load and retries < max_retries:
            retries += 1
            reruns += 1
            continue
        if load > max_load:
            flagged += 1
        retries = 0
        loads.append(load)
        for name in names:
            results[name].times.append(times[name])
            results[name].ratios.append(times[name] / times[reference])
        r += 1
    return Comparison(results, loads, reruns, flagged)


def paired_ratio(comparison: Comparison, name: str, reference: str) -> float:
    """Median over rounds of ``name``'s time over ``reference``'s in the same round."""
    a, b = comparison.results[name].times, comparison.results[reference].times
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def format_table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    """A Markdown table."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def comparison_table(comparison: Comparison, op: str, label: str) -> str:
    """The header line (operation and machine load) and the Markdown table of ratios."""
    rows = []
    for name, res in comparison.results.items():
        lo, hi = res.ratio_spread()
        rows.append(
            [name, f"{res.median_time * 1e3:.3f}", f"{res.median_ratio:.3f}", f"{lo:.2f}-{hi:.2f}"]
        )
    header = (
        f"\n{op} (load median {statistics.median(comparison.loads):.0%}, "
        f"max {max(comparison.loads):.0%}, re-run rounds {comparison.reruns})"
    )
    table = format_table(rows, [label, "median ms", "ratio to raw", "ratio IQR"])
    return f"{header}\n{table}"


def compare_with_args(
    candidates: dict[str, Callable[[], object]], args: object, log: Callable[[str], None]
) -> Comparison:
    """:func:`compare` against ``"raw"`` with a script's command-line settings
    (``rounds``, ``target_seconds``, ``max_load``, ``clock``), first waiting for a quiet
    machine if ``args.wait_quiet``."""
    if args.wait_quiet:
        wait_for_quiet(args.max_load, timeout=60.0, log=log)
    return compare(
        candidates,
        reference="raw",
        rounds=args.rounds,
        target_seconds=args.target_seconds,
        max_load=args.max_load,
        clock=args.clock,
    )
