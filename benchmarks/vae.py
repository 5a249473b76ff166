"""JointVAE (the VAE as a flow on (x, eps)) against a hand-written VAE of the same shape.

Both are 784-512-256-32 Bernoulli VAEs (encoder 784-512-256-64, decoder
32-256-512-784, ReLU) with the same soft bound on ``log sigma`` (``b tanh(raw / b)``
with ``b`` = JointVAE's default, computed as ``2b (sigmoid(2 raw / b) - 1/2)`` as
flowjoint does) and the same one-sample ELBO; a check first confirms that with the
same weights and the same noise they give the same ELBO and the same IWAE bound.
Timed, batch 128, float32, interleaved rounds (see ``common.py``):

* a training step (``elbo``, mean, backward, Adam step) and the ELBO under
  ``no_grad``; ``JointVAE(validate=False)`` separates the cost of the default check
  that the data are binary, and ``JointVAE compiled`` is ``torch.compile(elbo,
  fullgraph=True)`` against the eager hand-written VAE;
* ``iwae(x, 1000)`` on 64 images under ``no_grad``, against a hand-written IWAE that
  encodes each ``x`` once and draws ``K`` noises, in chunks of the same number of rows
  (4096, ``Flow.iwae``'s default).

``--iwae-memory`` instead measures, each in a fresh process, the peak resident
memory and the time of ``JointVAE.iwae(x, 5000)`` and of the hand-written IWAE on
the 500 MNIST-5k test images (binarised at 0.5), and of the discrete-data bound
``iwae(x, 100)`` of the MNIST-5k multi-scale Real NVP (uniform dequantization) on
the same images as pixel levels.

Run ``python benchmarks/vae.py`` (25 rounds, about 2 minutes) or ``--quick``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common_models import clamp, copy_weights  # noqa: E402

import flowjoint  # noqa: E402
from flowjoint.augmented import LOG_SCALE_BOUND  # noqa: E402

IWAE_CHUNK_ROWS = 4096


def mlp(widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RawVAE(nn.Module):
    """A Bernoulli VAE written directly: encoder, reparametrization, decoder, ELBO, IWAE."""

    def __init__(self, data: int, latent: int, hidden: tuple[int, ...], bound: float) -> None:
        super().__init__()
        self.encoder = mlp([data, *hidden, 2 * latent])
        self.decoder = mlp([latent, *hidden[::-1], data])
        self.bound = bound

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, log_var = self.encoder(x).chunk(2, dim=1)
        return mu, clamp(0.5 * log_var, self.bound)  # log sigma, as JointVAE's default

    def elbo(self, x: Tensor) -> Tensor:
        mu, log_sigma = self.posterior(x)
        eps = torch.randn_like(mu)
        z = torch.addcmul(mu, log_sigma.exp(), eps)
        log_lik = -F.binary_cross_entropy_with_logits(self.decoder(z), x, reduction="none").sum(1)
        # log p(z) - log q(z|x); the log(2 pi) terms cancel.
        log_ratio = 0.5 * (eps.square().sum(1) - z.square().sum(1)) + log_sigma.sum(1)
        return log_lik + log_ratio

    def iwae(self, x: Tensor, num_samples: int, chunk_rows: int = IWAE_CHUNK_ROWS) -> Tensor:
        """Encode once; draw ``K`` noises per x in chunks of ``chunk_rows`` rows."""
        batch = x.shape[0]
        mu, log_sigma = self.posterior(x)  # (batch, d)
        sigma, log_det = log_sigma.exp().unsqueeze(1), log_sigma.sum(1, keepdim=True)
        per_chunk = max(1, chunk_rows // batch)
        total = x.new_full((batch,), -math.inf)
        for start in range(0, num_samples, per_chunk):
            k = min(per_chunk, num_samples - start)
            eps = torch.randn(batch, k, mu.shape[1], dtype=x.dtype)
            z = torch.addcmul(mu.unsqueeze(1), sigma, eps)  # (batch, k, d)
            logits = self.decoder(z.view(batch * k, -1)).view(batch, k, -1)
            log_lik = (logits * x.unsqueeze(1) - F.softplus(logits)).sum(2)  # (batch, k)
            log_w = log_lik + 0.5 * (eps.square().sum(2) - z.square().sum(2)) + log_det
            total = torch.logaddexp(total, log_w.logsumexp(1))
        return total - math.log(num_samples)


def build(name: str, args: argparse.Namespace) -> nn.Module:
    hidden = tuple(args.hidden)
    if name.startswith("raw"):
        return RawVAE(args.data, args.latent, hidden, LOG_SCALE_BOUND)
    return flowjoint.JointVAE(
        args.data, args.latent, hidden_features=hidden, validate="validate=False" not in name
    )


def check_same_bounds(args: argparse.Namespace, log) -> None:
    """Same weights and noise: JointVAE's elbo and iwae == the hand-written ones (float64)."""
    raw = build("raw", args).double()
    vae = build("JointVAE", args).double()
    copy_weights(raw, vae)
    x = torch.bernoulli(torch.full((4, args.data), 0.5, dtype=torch.float64))
    for what, fn_raw, fn_vae in (
        ("elbo", raw.elbo, vae.elbo),
        ("iwae K=7", lambda x: raw.iwae(x, 7), lambda x: vae.iwae(x, 7)),
    ):
        torch.manual_seed(1)
        want = fn_raw(x)
        torch.manual_seed(1)
        got = fn_vae(x)
        err = (got - want).abs().max().item()
        if not err < 1e-8:
            raise AssertionError(f"JointVAE and the raw VAE disagree on {what} by {err}")
        log(f"JointVAE {what} == hand-written, same weights and noise (max diff {err:.1e})")


def make_ops(model: nn.Module, x: Tensor, elbo=None) -> dict:
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    elbo = model.elbo if elbo is None else elbo

    def train() -> None:
        opt.zero_grad(set_to_none=True)
        loss = -elbo(x).mean()
        loss.backward()
        opt.step()

    def elbo_no_grad() -> Tensor:
        with torch.no_grad():
            return elbo(x)

    return {"train step": train, "elbo (no_grad)": elbo_no_grad}


def time_elbo(args: argparse.Namespace, log) -> dict:
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((args.batch, args.data), 0.5))
    names = ["raw", "JointVAE", "JointVAE validate=False", "raw (A/A)"]
    models = {name: build(name, args) for name in names}
    for name in names[1:]:
        copy_weights(models["raw"], models[name])
    counts = {n: sum(p.numel() for p in m.parameters()) for n, m in models.items()}
    log("parameters: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    ops = {n: make_ops(m, x) for n, m in models.items()}
    if args.compile:
        vae = build("JointVAE", args)
        copy_weights(models["raw"], vae)
        ops["JointVAE compiled"] = make_ops(vae, x, torch.compile(vae.elbo, fullgraph=True))
        start = time.perf_counter()
        for op in ops["JointVAE compiled"].values():
            op(), op()
        log(f"torch.compile warm-up: {time.perf_counter() - start:.1f}s")
    report: dict = {"loads": []}
    for op in ("train step", "elbo (no_grad)"):
        comparison = common.compare_with_args({n: ops[n][op] for n in ops}, args, log)
        report["loads"] += comparison.loads
        log(common.comparison_table(comparison, op, "model"))
        report[op] = {n: r.median_ratio for n, r in comparison.results.items()}
        report[op + " ms"] = {n: r.median_time * 1e3 for n, r in comparison.results.items()}
    return report


def time_iwae(args: argparse.Namespace, log) -> dict:
    """``iwae(x, K)`` of JointVAE against the hand-written IWAE (same weights, no_grad)."""
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((args.iwae_batch, args.data), 0.5))
    models = {n: build(n, args) for n in ("raw", "JointVAE", "raw (A/A)")}
    for name in ("JointVAE", "raw (A/A)"):
        copy_weights(models["raw"], models[name])
    k = args.iwae_k

    def op(model: nn.Module):
        def call() -> Tensor:
            with torch.no_grad():
                return model.iwae(x, k)

        return call

    comparison = common.compare_with_args({n: op(m) for n, m in models.items()}, args, log)
    label = f"iwae K={k}, {args.iwae_batch} images (no_grad)"
    log(common.comparison_table(comparison, label, "model"))
    return {
        label: {n: r.median_ratio for n, r in comparison.results.items()},
        label + " ms": {n: r.median_time * 1e3 for n, r in comparison.results.items()},
        "loads": comparison.loads,
    }


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    log = print
    log(
        f"# JointVAE vs a hand-written VAE: {args.data}-{'-'.join(map(str, args.hidden))}-"
        f"{args.latent}, Bernoulli, batch {args.batch}, float32"
    )
    log(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock; "
        f"rounds {args.rounds}, re-run above {args.max_load:.0%} load from other processes"
    )
    check_same_bounds(args, log)
    report = time_elbo(args, log)
    iwae = time_iwae(args, log)
    loads = report.pop("loads") + iwae.pop("loads")
    report.update(iwae)
    report["load"] = {"median": statistics.median(loads), "max": max(loads)}
    log(
        f"\nother processes' load over kept rounds: median {report['load']['median']:.0%}, "
        f"max {report['load']['max']:.0%}"
    )
    return report


# ---------------------------------------------------------------------------
# Memory of the importance-weighted bounds, one fresh process per measurement.
# ---------------------------------------------------------------------------


def _status_mib(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process, MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    """Start the peak-RSS counter (VmHWM) afresh from the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def measure_memory(what: str, args: argparse.Namespace) -> dict:
    """Peak RSS and time of one bound on the MNIST-5k test images (this process)."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from flowjoint.data import load_mnist5k

    levels = load_mnist5k(validation_size=0).test[: args.memory_images]  # (n, 784)
    if what in ("vae", "raw"):
        x = (levels / 255.0 > 0.5).float()
        k, chunk = args.iwae_samples, IWAE_CHUNK_ROWS
        if what == "vae":
            model = flowjoint.JointVAE(784, 32)
        else:
            model = RawVAE(784, 32, (512, 256), LOG_SCALE_BOUND)

        def bound() -> Tensor:
            return model.iwae(x, k) if what == "raw" else model.iwae(x, k, chunk_size=chunk)

    else:  # the discrete-data bound of the MNIST-5k multi-scale Real NVP
        x = levels.float().view(-1, 1, 28, 28)
        model = mnist5k_msrealnvp()
        k, chunk = args.image_iwae_samples, args.image_chunk_size

        def bound() -> Tensor:  # chunk images at a time, as flowjoint compare does
            return torch.cat([model.iwae(part, k, chunk_size=chunk) for part in x.split(chunk)])

    model.eval()
    _reset_peak()
    before = _status_mib("VmRSS")
    start = time.perf_counter()
    with torch.no_grad():
        values = bound()
    seconds = time.perf_counter() - start
    peak = _status_mib("VmHWM")
    if not bool(torch.isfinite(values).all()):
        raise AssertionError(f"{what}: the bound is not finite")
    return {
        "what": what,
        "K": k,
        "images": x.shape[0],
        "chunk": chunk,
        "before MiB": before,
        "peak MiB": peak,
        "extra MiB": peak - before,
        "seconds": seconds,
        "mean bound": values.mean().item(),
    }


def mnist5k_msrealnvp() -> nn.Module:
    """The multi-scale Real NVP that ``flowjoint compare`` trains on MNIST-5k (untrained:
    time and memory do not depend on the weights)."""
    from flowjoint.compare.config import default_config
    from flowjoint.compare.models import DataSpec, build_model

    data = DataSpec(784, image_shape=(1, 28, 28), levels=256)
    return build_model("msrealnvp", data, default_config("mnist5k", "msrealnvp"))


def iwae_memory(args: argparse.Namespace) -> list[dict]:
    """Each measurement in a fresh process, so that its peak RSS is its own."""
    results = []
    for what in args.memory_models:
        command = [sys.executable, __file__, "--memory-one", what, *memory_options(args)]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        result = json.loads(out.strip().splitlines()[-1])
        results.append(result)
        print(
            f"{what}: iwae K={result['K']} on {result['images']} images (chunks of "
            f"{result['chunk']}): peak RSS {result['peak MiB']:.0f} MiB, "
            f"{result['extra MiB']:.0f} MiB above the {result['before MiB']:.0f} MiB before "
            f"the call, {result['seconds']:.1f} s, mean bound {result['mean bound']:.2f} nats"
        )
    return results


def memory_options(args: argparse.Namespace) -> list[str]:
    return [
        f"--threads={args.threads}",
        f"--iwae-samples={args.iwae_samples}",
        f"--image-iwae-samples={args.image_iwae_samples}",
        f"--image-chunk-size={args.image_chunk_size}",
        f"--memory-images={args.memory_images}",
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="5 rounds, short blocks, no compile")
    p.add_argument("--tiny", action="store_true", help="a tiny VAE, seconds; for the test suite")
    p.add_argument("--rounds", type=int, default=25)
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
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument(
        "--iwae-memory",
        action="store_true",
        help="measure peak memory and time of the IWAE bounds on MNIST-5k instead",
    )
    p.add_argument(
        "--memory-models",
        nargs="+",
        choices=("vae", "raw", "image"),
        default=["vae", "raw", "image"],
        help="which bounds --iwae-memory measures",
    )
    p.add_argument("--memory-one", choices=("vae", "raw", "image"), help=argparse.SUPPRESS)
    p.add_argument("--memory-images", type=int, default=500)
    p.add_argument("--iwae-samples", type=int, default=5000)
    p.add_argument("--image-iwae-samples", type=int, default=100)
    p.add_argument("--image-chunk-size", type=int, default=256)
    args = p.parse_args(argv)
    args.data, args.latent, args.hidden, args.batch = 784, 32, [512, 256], 128
    args.iwae_batch, args.iwae_k = 64, 1000
    if args.quick or args.tiny:
        args.rounds = min(args.rounds, 5 if args.quick else 3)
        args.target_seconds = min(args.target_seconds, 0.03 if args.quick else 0.005)
        args.compile = False
    if args.tiny:
        args.data, args.latent, args.hidden, args.batch = 12, 3, [16, 8], 16
        args.iwae_batch, args.iwae_k = 4, 10
    return args


def main(argv: list[str] | None = None) -> dict | list[dict]:
    args = parse_args(argv)
    if args.memory_one:
        result = measure_memory(args.memory_one, args)
        print(json.dumps(result))
        return result
    if args.iwae_memory:
        return iwae_memory(args)
    return run(args)


if __name__ == "__main__":
    main()
