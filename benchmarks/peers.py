"""flowjoint against nflows, zuko, normflows and hand-written PyTorch on one Real NVP.

Every library builds the same model: 8 affine couplings on alternating halves
(the first coupling transforms the second half given the first, the next the
first half given the second, ...), each conditioned by an MLP
``d/2 -> H -> H -> 2 * d/2`` with ReLU, on a standard normal base. Parameter
counts are printed and must agree. Each library keeps its own map from the
conditioner's output to the scale (flowjoint and raw: ``log_scale =
3 tanh(raw / 3)``; nflows: ``scale = sigmoid(raw + 2) + 1e-3``; zuko: a soft bound
at slope 1e-3; normflows: ``exp``), so raw does exactly flowjoint's maths and the
flowjoint/raw ratio measures library machinery alone.

Measured: a training step (``log_prob``, mean, backward, Adam step), ``log_prob``
under ``no_grad`` and sampling under ``no_grad``; flowjoint also under
``torch.compile(fullgraph=True)``. A float64 check first confirms that every
library's ``log_prob`` equals the change of variables with a dense Jacobian.

Run ``python benchmarks/peers.py`` (about 6 minutes) or ``--quick`` (under a minute).
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import flowjoint  # noqa: E402

LOG_2PI = math.log(2 * math.pi)
NUM_LAYERS = 8
LIBRARIES = ("flowjoint", "nflows", "zuko", "normflows")


@dataclass(frozen=True)
class Config:
    features: int
    batch: int
    hidden: int

    @property
    def label(self) -> str:
        return f"D={self.features} B={self.batch} H={self.hidden}"


FULL_CONFIGS = (Config(2, 4096, 64), Config(64, 512, 256), Config(784, 128, 512))
TINY_CONFIGS = (Config(4, 64, 8),)


def halves(features: int) -> list[Tensor]:
    """flowjoint's alternating halves masks (True = transformed), shared by all builders."""
    return flowjoint.alternating_masks(features, NUM_LAYERS, "halves")


def mlp(in_features: int, hidden: int, out_features: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_features, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, out_features),
    )


# ---------------------------------------------------------------------------
# The reference: hand-written Real NVP, no library machinery.
# ---------------------------------------------------------------------------


class RawRealNVP(nn.Module):
    """Two halves carried as separate tensors; log-det a sum of log-scales."""

    def __init__(self, features: int, hidden: int, bound: float = 3.0) -> None:
        super().__init__()
        self.features = features
        self.h = features // 2
        self.bound = bound
        rest = features - self.h
        # Layer 2k transforms the second half (rest features) given the first (h);
        # layer 2k+1 the first half given the second.
        self.nets = nn.ModuleList(
            mlp(self.h, hidden, 2 * rest) if i % 2 == 0 else mlp(rest, hidden, 2 * self.h)
            for i in range(NUM_LAYERS)
        )

    def halves_to_noise(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The two output halves, never concatenated, and the summed log-det."""
        a, b = x[:, : self.h], x[:, self.h :]
        logabsdet = None
        for i, net in enumerate(self.nets):
            shift, raw = net(a if i % 2 == 0 else b).chunk(2, dim=1)
            log_scale = self.bound * torch.tanh(raw / self.bound)
            if i % 2 == 0:
                b = b * torch.exp(log_scale) + shift
            else:
                a = a * torch.exp(log_scale) + shift
            ld = log_scale.sum(1)
            logabsdet = ld if logabsdet is None else logabsdet + ld
        return a, b, logabsdet

    def to_noise(self, x: Tensor) -> tuple[Tensor, Tensor]:
        a, b, logabsdet = self.halves_to_noise(x)
        return torch.cat([a, b], dim=1), logabsdet

    def log_prob(self, x: Tensor) -> Tensor:
        a, b, logabsdet = self.halves_to_noise(x)
        sq = a.square().sum(1) + b.square().sum(1)
        return logabsdet - 0.5 * sq - 0.5 * self.features * LOG_2PI

    def sample(self, num_samples: int) -> Tensor:
        w = self.nets[0][0].weight
        z = torch.randn(num_samples, self.features, dtype=w.dtype, device=w.device)
        a, b = z[:, : self.h], z[:, self.h :]
        for i in reversed(range(NUM_LAYERS)):
            shift, raw = self.nets[i](a if i % 2 == 0 else b).chunk(2, dim=1)
            log_scale = self.bound * torch.tanh(raw / self.bound)
            if i % 2 == 0:
                b = (b - shift) * torch.exp(-log_scale)
            else:
                a = (a - shift) * torch.exp(-log_scale)
        return torch.cat([a, b], dim=1)


# ---------------------------------------------------------------------------
# The same model in each library. Each returns (module, log_prob, sample, to_noise).
# ---------------------------------------------------------------------------


@dataclass
class Model:
    module: nn.Module
    log_prob: Callable[[Tensor], Tensor]
    sample: Callable[[int], Tensor]
    to_noise: Callable[[Tensor], Tensor]  # data -> noise, for the Jacobian check


def build_raw(cfg: Config) -> Model:
    m = RawRealNVP(cfg.features, cfg.hidden)
    return Model(m, m.log_prob, m.sample, lambda x: m.to_noise(x)[0])


def build_flowjoint(cfg: Config) -> Model:
    flow = flowjoint.realnvp(
        cfg.features, num_layers=NUM_LAYERS, hidden_features=cfg.hidden, num_hidden_layers=2
    )
    return Model(flow, flow.log_prob, flow.sample, lambda x: flow.transform(x)[0])


class _ContextMLP(nn.Sequential):
    """nflows calls its conditioner as ``net(inputs, context)``."""

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        return super().forward(inputs)


def build_nflows(cfg: Config) -> Model:
    from nflows.distributions import StandardNormal
    from nflows.flows import Flow
    from nflows.transforms import AffineCouplingTransform, CompositeTransform

    def net(n_in: int, n_out: int) -> nn.Module:
        return _ContextMLP(*mlp(n_in, cfg.hidden, n_out))

    layers = [AffineCouplingTransform(mask.int(), net) for mask in halves(cfg.features)]
    flow = Flow(CompositeTransform(layers), StandardNormal([cfg.features]))
    return Model(flow, flow.log_prob, flow.sample, lambda x: flow._transform(x)[0])


def build_zuko(cfg: Config) -> Model:
    import zuko
    from zuko.flows.coupling import GeneralCouplingTransform

    # zuko's mask marks the *constant* part (True = kept): the complement of ours.
    layers = [
        GeneralCouplingTransform(cfg.features, mask=~mask, hidden_features=(cfg.hidden, cfg.hidden))
        for mask in halves(cfg.features)
    ]
    base = zuko.lazy.UnconditionalDistribution(
        zuko.distributions.DiagNormal,
        torch.zeros(cfg.features),
        torch.ones(cfg.features),
        buffer=True,
    )
    flow = zuko.lazy.Flow(layers, base)
    return Model(
        flow,
        lambda x: flow().log_prob(x),
        lambda n: flow().sample((n,)),
        lambda x: flow().transform(x),
    )


def build_normflows(cfg: Config) -> Model:
    import normflows as nf

    # normflows' layers map noise -> data and log_prob runs them in reverse, so
    # the data -> noise order of the other builders is the reversed list.
    # split_mode "channel" conditions on the first half, "channel_inv" on the second.
    blocks = []
    h = cfg.features // 2
    rest = cfg.features - h
    for i in range(NUM_LAYERS):
        if i % 2 == 0:
            blocks.append(
                nf.flows.AffineCouplingBlock(mlp(h, cfg.hidden, 2 * rest), split_mode="channel")
            )
        else:
            blocks.append(
                nf.flows.AffineCouplingBlock(mlp(rest, cfg.hidden, 2 * h), split_mode="channel_inv")
            )
    flow = nf.NormalizingFlow(
        nf.distributions.DiagGaussian(cfg.features, trainable=False), blocks[::-1]
    )

    def to_noise(x: Tensor) -> Tensor:
        for layer in reversed(flow.flows):
            x, _ = layer.inverse(x)
        return x

    return Model(flow, flow.log_prob, lambda n: flow.sample(n)[0], to_noise)


BUILDERS: dict[str, Callable[[Config], Model]] = {
    "flowjoint": build_flowjoint,
    "nflows": build_nflows,
    "zuko": build_zuko,
    "normflows": build_normflows,
    "raw": build_raw,
}


def randomize(module: nn.Module, seed: int) -> None:
    """The same weight distribution for every library (no layer starts as the identity)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.Linear):
                std = 0.5 / math.sqrt(layer.in_features)
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * std)
                layer.bias.copy_(torch.randn(layer.bias.shape, generator=gen) * 0.05)


def num_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------
# Correctness, float64.
# ---------------------------------------------------------------------------


def dense_log_prob(to_noise: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """log N(f(x); 0, I) + log|det df/dx|, one dense Jacobian per point (torch.func)."""
    out = []
    for point in x:

        def f(v: Tensor) -> Tensor:
            return to_noise(v.unsqueeze(0)).squeeze(0)

        try:
            jac = torch.func.jacrev(f)(point)
        except RuntimeError:  # in-place writes that vmap cannot batch (zuko's merge)
            jac = torch.autograd.functional.jacobian(f, point)
        z = f(point)
        base = -0.5 * z.square().sum() - 0.5 * z.numel() * LOG_2PI
        out.append(base + torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


def check_correctness(cfg: Config, libraries: list[str], log: Callable[[str], None]) -> None:
    """Each library's log_prob against the dense change of variables; flowjoint == raw."""
    torch.manual_seed(0)
    x = torch.randn(2, cfg.features, dtype=torch.float64)
    models = {}
    for name in libraries + ["raw"]:
        model = BUILDERS[name](cfg)
        randomize(model.module, seed=1)
        model.module.double()
        models[name] = model
        with torch.no_grad():
            got = model.log_prob(x)
        want = dense_log_prob(model.to_noise, x)
        err = (got - want).abs().max().item()
        if not err < 1e-8 * max(1.0, want.abs().max().item()):
            raise AssertionError(f"{name} {cfg.label}: log_prob off the dense Jacobian by {err}")
        log(f"  {name:<10} log_prob == dense change of variables (max error {err:.1e})")
    if "flowjoint" in models:
        # Same weights in flowjoint and raw: the two compute the same function.
        fj, raw = models["flowjoint"].module, models["raw"].module
        fj_linear = [m for m in fj.modules() if isinstance(m, nn.Linear)]
        raw_linear = [m for m in raw.modules() if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for a, b in zip(fj_linear, raw_linear, strict=True):
                a.weight.copy_(b.weight)
                a.bias.copy_(b.bias)
            err = (models["flowjoint"].log_prob(x) - raw.log_prob(x)).abs().max().item()
        if not err < 1e-10:
            raise AssertionError(f"flowjoint and raw disagree on {cfg.label} by {err}")
        log(f"  flowjoint == raw with the same weights (max difference {err:.1e})")


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


def compiled_flowjoint(cfg: Config) -> Model:
    """flowjoint's Real NVP with log_prob and sample under torch.compile(fullgraph=True).

    Sampling is compiled with inductor's ``fallback_random`` option: inductor's own
    CPU generator of normal variates is ~18x slower than ATen's (4.2 ms against
    0.23 ms for 128 x 784 on the benchmark machine), which would otherwise dominate.
    """
    model = build_flowjoint(cfg)
    flow = model.module
    lp = torch.compile(flow.log_prob, fullgraph=True)
    sm = torch.compile(flow.sample, fullgraph=True, options={"fallback_random": True})
    return Model(flow, lp, sm, model.to_noise)


OPERATIONS = ("train step", "log_prob", "sample")


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    log = print
    configs = TINY_CONFIGS if args.tiny else FULL_CONFIGS
    libraries = [lib for lib in LIBRARIES if lib in args.libraries]
    log(f"# flowjoint vs peers: Real NVP, {NUM_LAYERS} affine couplings, float32")
    log(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}, python {platform.python_version()}"
    )
    log(
        f"rounds {args.rounds}, ~{args.target_seconds}s per block, {args.clock} clock, "
        f"rounds re-run above {args.max_load:.0%} load from other processes"
    )
    if not args.skip_check:
        log("\n## float64 correctness")
        for cfg in configs:
            log(f"{cfg.label}")
            check_correctness(cfg, libraries, log)

    report: dict = {"configs": {}}
    all_loads: list[float] = []
    reruns = flagged = 0
    for cfg in configs:
        log(f"\n## {cfg.label}")
        torch.manual_seed(0)
        x = torch.randn(cfg.batch, cfg.features)
        models: dict[str, Model] = {}
        for name in ["raw", *libraries, "raw (A/A)"]:
            models[name] = BUILDERS["raw" if name == "raw (A/A)" else name](cfg)
        if args.compile and "flowjoint" in libraries:
            models["flowjoint compiled"] = compiled_flowjoint(cfg)
        counts = {}
        for name, model in models.items():
            randomize(model.module, seed=1)
            counts[name] = num_parameters(model.module)
        log("parameters: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
        if len(set(counts.values())) != 1:
            raise AssertionError(f"parameter counts differ: {counts}")
        ops = {name: make_ops(model, x) for name, model in models.items()}
        if "flowjoint compiled" in models:
            start = time.perf_counter()
            for op in OPERATIONS:
                for _ in range(2):
                    ops["flowjoint compiled"][op]()
            log(f"torch.compile warm-up (3 graphs): {time.perf_counter() - start:.1f}s")
        report["configs"][cfg.label] = {"parameters": counts["raw"], "ops": {}}
        for op in OPERATIONS:
            comparison = common.compare_with_args(
                {name: ops[name][op] for name in models}, args, log
            )
            all_loads += comparison.loads
            reruns += comparison.reruns
            flagged += comparison.flagged
            log(common.comparison_table(comparison, op, "library"))
            report["configs"][cfg.label]["ops"][op] = {
                name: {"ms": res.median_time * 1e3, "ratio": res.median_ratio}
                for name, res in comparison.results.items()
            }
    report["load"] = {
        "median": statistics.median(all_loads),
        "max": max(all_loads),
        "reruns": reruns,
        "flagged": flagged,
    }
    log(
        f"\nother processes' load over kept rounds: median {report['load']['median']:.0%}, "
        f"max {report['load']['max']:.0%}; {reruns} rounds re-run, {flagged} kept above the limit"
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
    rows = []
    names: list[str] = []
    for cfg_label, cfg_report in report["configs"].items():
        for op, results in cfg_report["ops"].items():
            if not names:
                names = [n for n in results if n != "raw"]
            rows.append([cfg_label, op, *(f"{results[n]['ratio']:.3f}" for n in names)])
    return common.format_table(rows, ["config", "operation", *names])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick", action="store_true", help="5 rounds, short blocks, no compile (< 1 min)"
    )
    p.add_argument(
        "--tiny", action="store_true", help="one tiny model, seconds; for the test suite"
    )
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
    args = p.parse_args(argv)
    if args.quick or args.tiny:
        args.rounds = min(args.rounds, 5 if args.quick else 3)
        args.target_seconds = min(args.target_seconds, 0.03 if args.quick else 0.005)
        args.compile = False
    return args


def main(argv: list[str] | None = None) -> dict:
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
