"""The vector configuration of ``peers.py``: one Real NVP on ``(batch, D)`` in every library.

8 affine couplings on alternating halves (the first coupling transforms the second
half given the first, the next the first half given the second, ...), each
conditioned by an MLP ``d/2 -> H -> H -> 2 * d/2`` with ReLU, on a standard normal
base. Each library keeps its own map from the conditioner's output to the scale
(flowjoint and raw: ``log_scale = b tanh(raw / b)`` with ``b = 3``, computed as
``2b (sigmoid(2 raw / b) - 1/2)``; nflows: ``scale = sigmoid(raw + 2) + 1e-3``;
zuko: a soft bound at slope 1e-3; normflows: ``exp``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from common_models import LOG_2PI, Model, clamp
from torch import Tensor, nn

import flowjoint

NUM_LAYERS = 8
LIBRARIES = ("flowjoint", "nflows", "zuko", "normflows")


@dataclass(frozen=True)
class Config:
    """A vector Real NVP: ``features`` D, ``batch`` rows, MLP width ``hidden``."""

    features: int
    batch: int
    hidden: int
    libraries: tuple[str, ...] = LIBRARIES

    @property
    def label(self) -> str:
        return f"D={self.features} B={self.batch} H={self.hidden}"

    def data(self, dtype: torch.dtype = torch.float32, batch: int | None = None) -> Tensor:
        return torch.randn(batch or self.batch, self.features, dtype=dtype)

    def builders(self) -> dict:
        return BUILDERS

    def check_inputs(self) -> tuple[Config, Tensor]:
        """The configuration and the float64 points of the dense-Jacobian check."""
        return self, self.data(torch.float64, batch=2)


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

    def __init__(self, features: int, hidden: int, bound: float | None = 3.0) -> None:
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
            log_scale = clamp(raw, self.bound)
            if i % 2 == 0:
                b = torch.addcmul(shift, b, log_scale.exp())
            else:
                a = torch.addcmul(shift, a, log_scale.exp())
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
            log_scale = clamp(raw, self.bound)
            if i % 2 == 0:
                b = (b - shift) * torch.exp(-log_scale)
            else:
                a = (a - shift) * torch.exp(-log_scale)
        return torch.cat([a, b], dim=1)


# ---------------------------------------------------------------------------
# The same model in each library.
# ---------------------------------------------------------------------------


def build_raw(cfg: Config, bound: float | None = 3.0) -> Model:
    m = RawRealNVP(cfg.features, cfg.hidden, bound)
    return Model(m, m.log_prob, m.sample, lambda x: m.to_noise(x)[0])


def build_flowjoint(cfg: Config, bound: float | None = 3.0) -> Model:
    flow = flowjoint.realnvp(
        cfg.features,
        num_layers=NUM_LAYERS,
        hidden_features=cfg.hidden,
        num_hidden_layers=2,
        log_scale_bound=bound,
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


BUILDERS = {
    "flowjoint": build_flowjoint,
    "nflows": build_nflows,
    "zuko": build_zuko,
    "normflows": build_normflows,
    "raw": build_raw,
}
