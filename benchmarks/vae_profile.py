"""Where JointVAE's time goes against the hand-written VAE of ``vae.py``: an operator profile.

One thread, ``torch.profiler`` around 20 calls of the training step and of the ELBO
under ``no_grad`` (batch 128), and one ``iwae(x, 1000)`` on 64 images: self CPU time
per call, ATen operations per call and the costliest operators. CPU time, so it is
not a wall-clock ratio (``vae.py`` measures those); it shows how much work each side
does. Run ``python benchmarks/vae_profile.py`` (about 30 seconds).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vae  # noqa: E402


def report(title: str, events, calls: int) -> None:
    total = sum(e.self_cpu_time_total for e in events) / calls / 1000
    ops = sum(e.count for e in events if e.key.startswith("aten::")) / calls
    print(f"== {title}: self CPU {total:.3f} ms per call, {ops:.0f} ATen operations per call")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:8]:
        per_call = e.self_cpu_time_total / calls / 1000
        print(f"   {e.key:32s} {e.count / calls:7.1f} calls {per_call:8.3f} ms")


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    args = vae.parse_args([])
    raw, joint = vae.build("raw", args), vae.build("JointVAE", args)
    vae.copy_weights(raw, joint)
    x = torch.bernoulli(torch.full((args.batch, args.data), 0.5))
    for name, model in (("raw", raw), ("JointVAE", joint)):
        ops = vae.make_ops(model, x)
        for mode in ("train step", "elbo (no_grad)"):
            for _ in range(5):
                ops[mode]()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(20):
                    ops[mode]()
            report(f"{name} {mode}", prof.key_averages(), 20)
    images = x[:64]
    for name, model in (("raw", raw), ("JointVAE", joint)):
        with torch.no_grad():
            model.iwae(images, 1000)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                model.iwae(images, 1000)
        report(f"{name} iwae K=1000, 64 images", prof.key_averages(), 1)


if __name__ == "__main__":
    main()
