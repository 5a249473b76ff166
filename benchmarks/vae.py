"""JointVAE (the VAE as a flow on (x, eps)) against a hand-written VAE of the same shape.

Both are 784-512-256-32 Bernoulli VAEs (encoder 784-512-256-64, decoder
32-256-512-784, ReLU) with the same soft bound on ``log sigma``
(``b tanh(raw / b)``, ``b`` = JointVAE's default) and the same one-sample ELBO;
a check first confirms that with the same weights and the same noise they give
the same ELBO. Timed: a training step (``elbo``, mean, backward, Adam step) and
the ELBO under ``no_grad``, batch 128, float32, 2 threads, interleaved rounds
(see ``common.py``). ``JointVAE(validate=False)`` separates the cost of the
default check that the data are binary.

``--iwae-memory`` instead measures the peak resident memory of
``iwae(x, 5000)`` on the 500 MNIST-5k test images (binarised at 0.5).

Run ``python benchmarks/vae.py`` (about 2 minutes) or ``--quick``.
"""

from __future__ import annotations

import argparse
import math
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import flowjoint  # noqa: E402
from flowjoint.augmented import LOG_SCALE_BOUND  # noqa: E402


def mlp(widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RawVAE(nn.Module):
    """A Bernoulli VAE written directly: encoder, reparametrization, decoder, ELBO."""

    def __init__(self, data: int, latent: int, hidden: tuple[int, ...], bound: float) -> None:
        super().__init__()
        self.encoder = mlp([data, *hidden, 2 * latent])
        self.decoder = mlp([latent, *hidden[::-1], data])
        self.bound = bound

    def elbo(self, x: Tensor) -> Tensor:
        mu, log_var = self.encoder(x).chunk(2, dim=1)
        log_sigma = self.bound * torch.tanh(0.5 * log_var / self.bound)  # as JointVAE's default
        eps = torch.randn_like(mu)
        z = mu + torch.exp(log_sigma) * eps
        log_lik = -F.binary_cross_entropy_with_logits(self.decoder(z), x, reduction="none").sum(1)
        # log p(z) - log q(z|x); the log(2 pi) terms cancel.
        log_ratio = 0.5 * (eps.square().sum(1) - z.square().sum(1)) + log_sigma.sum(1)
        return log_lik + log_ratio


def build(name: str, args: argparse.Namespace) -> nn.Module:
    hidden = tuple(args.hidden)
    if name.startswith("raw"):
        return RawVAE(args.data, args.latent, hidden, LOG_SCALE_BOUND)
    return flowjoint.JointVAE(
        args.data, args.latent, hidden_features=hidden, validate="validate=False" not in name
    )


def copy_weights(src: nn.Module, dst: nn.Module) -> None:
    """Copy Linear weights in module order (encoder, then decoder, in both models)."""
    a = [m for m in src.modules() if isinstance(m, nn.Linear)]
    b = [m for m in dst.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for s, d in zip(a, b, strict=True):
            d.weight.copy_(s.weight)
            d.bias.copy_(s.bias)


def check_same_elbo(args: argparse.Namespace, log) -> None:
    """Same weights and noise: JointVAE.elbo == the hand-written ELBO (float64)."""
    raw = build("raw", args).double()
    vae = build("JointVAE", args).double()
    copy_weights(raw, vae)
    x = torch.bernoulli(torch.full((4, args.data), 0.5, dtype=torch.float64))
    torch.manual_seed(1)
    want = raw.elbo(x)
    torch.manual_seed(1)
    got = vae.elbo(x)
    err = (got - want).abs().max().item()
    if not err < 1e-8:
        raise AssertionError(f"JointVAE and the raw VAE disagree by {err}")
    log(f"JointVAE.elbo == hand-written ELBO with the same weights and noise (max diff {err:.1e})")


def make_ops(model: nn.Module, x: Tensor) -> dict:
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def train() -> None:
        opt.zero_grad(set_to_none=True)
        loss = -model.elbo(x).mean()
        loss.backward()
        opt.step()

    def elbo_no_grad() -> Tensor:
        with torch.no_grad():
            return model.elbo(x)

    return {"train step": train, "elbo (no_grad)": elbo_no_grad}


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    log = print
    log(
        f"# JointVAE vs a hand-written VAE: {args.data}-{'-'.join(map(str, args.hidden))}-"
        f"{args.latent}, Bernoulli, batch {args.batch}, float32"
    )
    log(f"torch {torch.__version__}, {torch.get_num_threads()} threads; rounds {args.rounds}")
    check_same_elbo(args, log)
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((args.batch, args.data), 0.5))
    names = ["raw", "JointVAE", "JointVAE validate=False", "raw (A/A)"]
    models = {}
    for name in names:
        models[name] = build(name, args)
    for name in names[1:]:
        copy_weights(models["raw"], models[name])
    counts = {n: sum(p.numel() for p in m.parameters()) for n, m in models.items()}
    log("parameters: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    ops = {n: make_ops(m, x) for n, m in models.items()}
    report: dict = {}
    loads: list[float] = []
    for op in ("train step", "elbo (no_grad)"):
        comparison = common.compare_with_args({n: ops[n][op] for n in names}, args, log)
        loads += comparison.loads
        log(common.comparison_table(comparison, op, "model"))
        report[op] = {n: r.median_ratio for n, r in comparison.results.items()}
    report["load"] = {"median": statistics.median(loads), "max": max(loads)}
    return report


def iwae_memory(args: argparse.Namespace) -> None:
    """Peak resident memory of iwae(x, K) on the MNIST-5k test images."""
    torch.set_num_threads(args.threads)
    from flowjoint.data import load_mnist5k

    x = (load_mnist5k(validation_size=0).test / 255.0 > 0.5).float()  # (500, 784)
    vae = flowjoint.JointVAE(784, 32)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    with torch.no_grad():
        bound = vae.iwae(x, args.iwae_samples)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"iwae K={args.iwae_samples} on {x.shape[0]} images: peak RSS {peak:.0f} MiB "
        f"(before the call {before:.0f} MiB), {seconds:.0f} s, mean bound {bound.mean():.1f} nats"
    )
    if not math.isfinite(bound.mean().item()):
        raise AssertionError("iwae returned a non-finite bound")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="5 rounds, short blocks")
    p.add_argument("--tiny", action="store_true", help="a tiny VAE, seconds; for the test suite")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--target-seconds", type=float, default=0.15)
    p.add_argument("--max-load", type=float, default=0.15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--clock",
        choices=sorted(common.CLOCKS),
        default="wall",
        help="wall-clock time (default) or this process's CPU time (loaded machine)",
    )
    p.add_argument("--no-wait", dest="wait_quiet", action="store_false")
    p.add_argument(
        "--iwae-memory",
        action="store_true",
        help="measure peak memory of iwae(x, 5000) on 500 MNIST-5k images instead",
    )
    p.add_argument("--iwae-samples", type=int, default=5000)
    args = p.parse_args(argv)
    args.data, args.latent, args.hidden, args.batch = 784, 32, [512, 256], 128
    if args.quick or args.tiny:
        args.rounds = min(args.rounds, 5 if args.quick else 3)
        args.target_seconds = min(args.target_seconds, 0.03 if args.quick else 0.005)
    if args.tiny:
        args.data, args.latent, args.hidden, args.batch = 12, 3, [16, 8], 16
    return args


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.iwae_memory:
        iwae_memory(args)
        return None
    return run(args)


if __name__ == "__main__":
    main()
