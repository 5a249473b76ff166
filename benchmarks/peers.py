"""flowjoint against nflows, zuko, normflows and hand-written PyTorch on Real NVP.

Two kinds of configuration, each the same model in every library (parameter counts
are printed and must agree):

* vectors (``peers_vector.py``): 8 affine couplings on alternating halves, MLP
  conditioners ``d/2 -> H -> H -> 2 * d/2``, a standard normal base;
* images (``peers_images.py``): Real NVP's multi-scale flow on 1x28x28, two scales
  of checkerboard and channel couplings with residual conv conditioners.

``raw`` is a hand-written PyTorch version doing exactly flowjoint's maths (the soft
clamp ``log_scale = 3 tanh(raw / 3)``, computed as ``6 (sigmoid(2 raw / 3) - 1/2)``
as flowjoint does), so the flowjoint/raw ratio measures library machinery alone. The
peers keep their own map from the conditioner's output to the scale. ``flowjoint
bound=None`` is the same flowjoint model without the soft clamp (``exp(raw)``): its
distance from ``flowjoint`` is what the default clamp costs.

Measured: a training step (``log_prob``, mean, backward, Adam step), ``log_prob``
under ``no_grad`` and sampling under ``no_grad``; flowjoint also under
``torch.compile(fullgraph=True)``. A float64 check first confirms that every
library's ``log_prob`` equals the change of variables with a dense Jacobian, and
that flowjoint and raw compute the same function with the same weights.

Run ``python benchmarks/peers.py`` (about 10 minutes) or ``--quick``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common_models import (  # noqa: E402
    Model,
    copy_weights,
    dense_log_prob,
    num_parameters,
    randomize,
)
from peers_images import ImageConfig  # noqa: E402
from peers_vector import NUM_LAYERS, Config, RawRealNVP  # noqa: E402, F401

LIBRARIES = ("flowjoint", "nflows", "zuko", "normflows")
UNCLAMPED = "flowjoint bound=None"
COMPILED = "flowjoint compiled"

FULL_CONFIGS = (
    Config(2, 4096, 64),
    Config(64, 512, 256),
    Config(784, 128, 512),
    ImageConfig((1, 28, 28), 64, 32, 1),
)
TINY_CONFIGS = (Config(4, 64, 8), ImageConfig((1, 8, 8), 4, 4, 1))


def build(cfg: Config | ImageConfig, name: str) -> Model:
    """``name``: a library, ``raw``, ``raw (A/A)`` or ``flowjoint bound=None``."""
    builders = cfg.builders()
    if name == UNCLAMPED:
        return builders["flowjoint"](cfg, bound=None)
    if name.startswith("raw"):
        return builders["raw"](cfg)
    return builders[name](cfg)


# ---------------------------------------------------------------------------
# Correctness, float64.
# ---------------------------------------------------------------------------


def check_correctness(
    cfg: Config | ImageConfig, libraries: list[str], log: Callable[[str], None]
) -> None:
    """Each library's log_prob against the dense change of variables; flowjoint == raw."""
    torch.manual_seed(0)
    small, x = cfg.check_inputs()
    names = [n for n in libraries if n in cfg.libraries]
    if "flowjoint" in names:
        names.append(UNCLAMPED)
    for name in [*names, "raw"]:
        model = build(small, name)
        randomize(model.module, seed=1)
        model.module.double()
        with torch.no_grad():
            got = model.log_prob(x)
        want = dense_log_prob(model.to_noise, x)
        err = (got - want).abs().max().item()
        if not err < 1e-8 * max(1.0, want.abs().max().item()):
            raise AssertionError(f"{name} {small.label}: log_prob off the dense Jacobian by {err}")
        log(f"  {name:<21} log_prob == dense change of variables (max error {err:.1e})")
    if "flowjoint" not in names:
        return
    # Same weights in flowjoint and raw (at the timed size): the same function.
    x = cfg.data(torch.float64, batch=2)
    for bound in (3.0, None):
        fj = cfg.builders()["flowjoint"](cfg, bound=bound)
        raw = cfg.builders()["raw"](cfg, bound=bound)
        randomize(raw.module, seed=2)
        copy_weights(raw.module, fj.module)
        fj.module.double()
        raw.module.double()
        with torch.no_grad():
            want = raw.log_prob(x)
            err = (fj.log_prob(x) - want).abs().max().item()
        if not err < 1e-10 * max(1.0, want.abs().max().item()):
            raise AssertionError(f"flowjoint and raw disagree on {cfg.label} by {err}")
        log(f"  flowjoint == raw, log_scale_bound={bound} (max difference {err:.1e})")


# ---------------------------------------------------------------------------
# Timing.
# ---------------------------------------------------------------------------


def make_ops(model: Model, x: Tensor, lr: float = 1e-4) -> dict[str, Callable[[], object]]:
    opt = torch.optim.Adam(model.module.parameters(), lr=lr)
    log_prob, sample, n = model.log_prob, model.sample, x.shape[0]

    def train() -> None:
        opt.zero_grad(set_to_none=True)
        loss = -log_prob(x).mean()
        loss.backward()
        opt.step()

    def log_prob_no_grad() -> Tensor:
        with torch.no_grad():
            return log_prob(x)

    def sample_no_grad() -> Tensor:
        with torch.no_grad():
            return sample(n)

    return {"train step": train, "log_prob": log_prob_no_grad, "sample": sample_no_grad}


def compiled_flowjoint(cfg: Config | ImageConfig) -> Model:
    """flowjoint's model with log_prob and sample under torch.compile(fullgraph=True).

    Sampling is compiled with inductor's ``fallback_random`` option: inductor's own
    CPU generator of normal variates is ~18x slower than ATen's (4.2 ms against
    0.23 ms for 128 x 784 on the benchmark machine), which would otherwise dominate.
    """
    model = build(cfg, "flowjoint")
    flow = model.module
    lp = torch.compile(flow.log_prob, fullgraph=True)
    sm = torch.compile(flow.sample, fullgraph=True, options={"fallback_random": True})
    return Model(flow, lp, sm, model.to_noise)


OPERATIONS = ("train step", "log_prob", "sample")


def candidates(cfg: Config | ImageConfig, args: argparse.Namespace) -> dict[str, Model]:
    libraries = [lib for lib in cfg.libraries if lib in args.libraries]
    names = ["raw", *libraries]
    if "flowjoint" in libraries:
        names.insert(2, UNCLAMPED)
    models = {name: build(cfg, name) for name in [*names, "raw (A/A)"]}
    if args.compile and "flowjoint" in libraries:
        models[COMPILED] = compiled_flowjoint(cfg)
    return models


def time_config(cfg: Config | ImageConfig, args: argparse.Namespace, log) -> dict:
    """Every operation of every candidate on ``cfg``: ratios, times, loads."""
    torch.manual_seed(0)
    x = cfg.data()
    models = candidates(cfg, args)
    counts = {}
    for name, model in models.items():
        randomize(model.module, seed=1)
        counts[name] = num_parameters(model.module)
    log("parameters: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    if len(set(counts.values())) != 1:
        raise AssertionError(f"parameter counts differ: {counts}")
    ops = {name: make_ops(model, x) for name, model in models.items()}
    if COMPILED in models:
        start = time.perf_counter()
        for op in OPERATIONS:
            for _ in range(2):
                ops[COMPILED][op]()
        log(f"torch.compile warm-up (3 graphs): {time.perf_counter() - start:.1f}s")
    report: dict = {"parameters": counts["raw"], "ops": {}, "clamp cost": {}, "loads": []}
    for op in OPERATIONS:
        comparison = common.compare_with_args({n: ops[n][op] for n in models}, args, log)
        report["loads"] += comparison.loads
        report["reruns"] = report.get("reruns", 0) + comparison.reruns
        report["flagged"] = report.get("flagged", 0) + comparison.flagged
        log(common.comparison_table(comparison, op, "library"))
        report["ops"][op] = {
            name: {"ms": res.median_time * 1e3, "ratio": res.median_ratio}
            for name, res in comparison.results.items()
        }
        if UNCLAMPED in models:
            cost = common.paired_ratio(comparison, "flowjoint", UNCLAMPED)
            report["clamp cost"][op] = cost
            log(f"default soft clamp: flowjoint / {UNCLAMPED} = {cost:.3f} (median per round)")
    return report


def header(args: argparse.Namespace, log) -> None:
    log(f"# flowjoint vs peers: Real NVP (vectors: {NUM_LAYERS} affine couplings; images: "
        "multi-scale), float32")  # fmt: skip
    log(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}, python {platform.python_version()}"
    )
    log(
        f"rounds {args.rounds}, ~{args.target_seconds}s per block, {args.clock} clock, "
        f"rounds re-run above {args.max_load:.0%} load from other processes"
    )


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    log = print
    configs = [c for c in (TINY_CONFIGS if args.tiny else FULL_CONFIGS) if c.label in args.only]
    header(args, log)
    if not args.skip_check:
        log("\n## float64 correctness")
        for cfg in configs:
            log(f"{cfg.label}")
            check_correctness(cfg, list(args.libraries), log)
    report: dict = {"configs": {}}
    start = time.perf_counter()
    for cfg in configs:
        log(f"\n## {cfg.label}")
        report["configs"][cfg.label] = time_config(cfg, args, log)
    loads = [x for c in report["configs"].values() for x in c.pop("loads")]
    reruns = sum(c.pop("reruns", 0) for c in report["configs"].values())
    flagged = sum(c.pop("flagged", 0) for c in report["configs"].values())
    report["load"] = {
        "median": statistics.median(loads),
        "max": max(loads),
        "reruns": reruns,
        "flagged": flagged,
        "seconds": time.perf_counter() - start,
    }
    log(
        f"\nother processes' load over kept rounds: median {report['load']['median']:.0%}, "
        f"max {report['load']['max']:.0%}; {reruns} rounds re-run, {flagged} kept above the "
        f"limit; timing took {report['load']['seconds']:.0f} s"
    )
    if report["load"]["median"] > args.max_load:
        log(
            "warning: other processes kept the machine busy; wall-clock figures with more "
            "than one thread are unreliable then (try --clock cpu --threads 1)"
        )
    log("\n## ratio to raw (median of per-round ratios)")
    log(summary_table(report))
    return report


def summary_table(report: dict) -> str:
    names: list[str] = []
    for cfg_report in report["configs"].values():
        for results in cfg_report["ops"].values():
            names += [n for n in results if n != "raw" and n not in names]
    rows = []
    for cfg_label, cfg_report in report["configs"].items():
        for op, results in cfg_report["ops"].items():
            cells = [f"{results[n]['ratio']:.3f}" if n in results else "-" for n in names]
            cost = cfg_report["clamp cost"].get(op)
            rows.append([cfg_label, op, *cells, "-" if cost is None else f"{cost:.3f}"])
    return common.format_table(rows, ["config", "operation", *names, "clamp cost"])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick", action="store_true", help="5 rounds, short blocks, no compile (a few min)"
    )
    p.add_argument("--tiny", action="store_true", help="tiny models, seconds; for the test suite")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--target-seconds", type=float, default=0.1, help="length of one timed block")
    p.add_argument("--max-load", type=float, default=0.15, help="re-run rounds above this load")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--clock",
        choices=sorted(common.CLOCKS),
        default="wall",
        help="wall-clock time (default) or this process's CPU time (loaded machine)",
    )
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--skip-check", action="store_true", help="skip the float64 correctness check")
    p.add_argument(
        "--no-wait",
        dest="wait_quiet",
        action="store_false",
        help="do not wait for a quiet machine before each operation",
    )
    p.add_argument("--libraries", nargs="+", default=list(LIBRARIES), choices=LIBRARIES)
    p.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="LABEL",
        help="run only the configurations with these labels (e.g. 'D=2 B=4096 H=64')",
    )
    args = p.parse_args(argv)
    configs = TINY_CONFIGS if args.tiny else FULL_CONFIGS
    if args.only is None:
        args.only = [c.label for c in configs]
    unknown = set(args.only) - {c.label for c in configs}
    if unknown:
        labels = [c.label for c in configs]
        p.error(f"unknown configuration(s) {sorted(unknown)}; choose from {labels}")
    if args.quick or args.tiny:
        args.rounds = min(args.rounds, 5 if args.quick else 3)
        args.target_seconds = min(args.target_seconds, 0.03 if args.quick else 0.005)
        args.compile = False
    return args


def main(argv: list[str] | None = None) -> dict:
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
