"""The image configuration of ``peers.py``: Real NVP's multi-scale flow on ``(batch, C, H, W)``.

Two scales, as in Real NVP (Dinh et al., 2017, section 3.6)::

    scale 1:  3 checkerboard couplings (parities 0, 1, 0) on (C, H, W)
              squeeze                  -> (4C, H/2, W/2)
              3 channel couplings      (second half, first half, second half)
              factor out 2C channels   -> (2C, H/2, W/2) continue
    scale 2:  4 checkerboard couplings (parities 0, 1, 0, 1)

on a standard normal base, without ActNorm or 1x1 convolutions. Every conditioner
is the same residual conv net (a 3x3 convolution to ``hidden`` channels, residual
blocks of two 3x3 convolutions, ReLU, a 3x3 convolution to the parameters); a
checkerboard coupling's net sees the image with its transformed entries zeroed
(``C -> 2C`` channels), a channel coupling's the kept half (``2C -> 4C``).

What each library can express:

* **flowjoint**: `multiscale_realnvp(..., dequantization="none", alpha=None,
  actnorm=False)` without its ``Scale`` layer: the bare ``Multiscale`` on
  ``StandardNormal(C*H*W)``.
* **raw**: hand-written, the same maths as flowjoint (masks as float tensors,
  ``log_scale = clamp(raw) * mask``, halves carried as two tensors after the squeeze).
* **nflows**: its couplings split dimension 1 only, so a checkerboard coupling is an
  ``AffineCouplingTransform`` on the flattened image whose conditioner writes the
  kept entries into a zero image, runs the conv net and reads the parameters at the
  transformed entries: the same function and parameters as Real NVP's masked
  coupling. ``MultiscaleCompositeTransform`` factors out the *first* half of the
  channels, so nflows' channel couplings run the mirrored parities (first half,
  second, first) and keep the second half: the same structure, with the roles of
  the two halves of the squeezed channels swapped. Scale: ``sigmoid(raw + 2) + 1e-3``.
* **normflows**: ``AffineCouplingBlock`` with ``split_mode="checkerboard"`` /
  ``"channel"`` (and ``_inv``), ``Squeeze``, ``Merge`` and ``MultiscaleFlow`` with
  ``DiagGaussian(trainable=False)`` bases. Its checkerboard split gathers each colour
  into a half-width image ``(C, H, W/2)`` and the conditioner convolves that (not the
  masked full image), and the colours alternate across channels too; same
  parameter count, a different function. Scale: ``exp``, shift and scale
  interleaved in the conditioner's output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from common_models import LOG_2PI, Model, clamp
from torch import Tensor, nn

import flowjoint

NUM_SCALES = 2
BLOCKS_PER_SCALE = 3
LIBRARIES = ("flowjoint", "nflows", "normflows")


@dataclass(frozen=True)
class ImageConfig:
    """The multi-scale flow on ``shape`` images, ``batch`` rows, ``hidden``-channel nets."""

    shape: tuple[int, int, int]
    batch: int
    hidden: int
    res_blocks: int
    check_shape: tuple[int, int, int] = (1, 8, 8)
    libraries: tuple[str, ...] = LIBRARIES

    @property
    def label(self) -> str:
        c, h, w = self.shape
        return f"{c}x{h}x{w} B={self.batch} H={self.hidden}"

    @property
    def features(self) -> int:
        return math.prod(self.shape)

    def data(self, dtype: torch.dtype = torch.float32, batch: int | None = None) -> Tensor:
        return torch.rand(batch or self.batch, *self.shape, dtype=dtype)

    def builders(self) -> dict:
        return BUILDERS

    def check_inputs(self) -> tuple[ImageConfig, Tensor]:
        """A small image of the same architecture for the dense-Jacobian check."""
        small = ImageConfig(self.check_shape, 2, 4, self.res_blocks)
        return small, small.data(torch.float64)


def _squeezed(shape: tuple[int, int, int]) -> tuple[int, int, int]:
    c, h, w = shape
    return 4 * c, h // 2, w // 2


# ---------------------------------------------------------------------------
# The conditioner, written out (flowjoint.nets.ResidualConvNet's layers).
# ---------------------------------------------------------------------------


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, inputs: Tensor) -> Tensor:
        return inputs + self.body(inputs)


class ConvNet(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, hidden: int, blocks: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1),
            *(ResidualBlock(hidden) for _ in range(blocks)),
            nn.ReLU(),
            nn.Conv2d(hidden, out_channels, 3, padding=1),
        )

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        return self.net(inputs)


# ---------------------------------------------------------------------------
# The reference: hand-written, no library machinery.
# ---------------------------------------------------------------------------


def squeeze(x: Tensor) -> Tensor:
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, 4 * c, h // 2, w // 2)


def unsqueeze(x: Tensor) -> Tensor:
    b, c, h, w = x.shape
    x = x.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, c // 4, 2 * h, 2 * w)


class RawScale(nn.Module):
    """One scale: checkerboard couplings, then (but at the last scale) squeeze and
    channel couplings on two halves, the second of which is factored out."""

    def __init__(self, shape, num_boards: int, num_channel: int, cfg: ImageConfig) -> None:
        super().__init__()
        c, h, w = shape
        self.shape = shape
        self.boards = nn.ModuleList(
            ConvNet(c, 2 * c, cfg.hidden, cfg.res_blocks) for _ in range(num_boards)
        )
        half = 2 * c
        self.channels = nn.ModuleList(
            ConvNet(half, 2 * half, cfg.hidden, cfg.res_blocks) for _ in range(num_channel)
        )
        parity = (torch.arange(h).unsqueeze(1) + torch.arange(w).unsqueeze(0)) % 2  # (H, W)
        masks = torch.stack([parity == 0, parity == 1]).unsqueeze(1).expand(2, c, h, w)
        self.register_buffer("transformed", masks.float().unsqueeze(1))  # (2, 1, C, H, W)
        self.register_buffer("kept", 1.0 - masks.float().unsqueeze(1))


class RawMultiscale(nn.Module):
    def __init__(self, cfg: ImageConfig, bound: float | None = 3.0) -> None:
        super().__init__()
        self.bound = bound
        self.features = cfg.features
        self.scales = nn.ModuleList()
        shape = cfg.shape
        self.sizes, self.factored = [], []
        for k in range(NUM_SCALES):
            last = k == NUM_SCALES - 1
            boards = BLOCKS_PER_SCALE + 1 if last else BLOCKS_PER_SCALE
            self.scales.append(RawScale(shape, boards, 0 if last else BLOCKS_PER_SCALE, cfg))
            if not last:
                c, h, w = _squeezed(shape)
                shape = (c // 2, h, w)
            self.factored.append(shape)
            self.sizes.append(math.prod(shape))

    def _board(self, scale: RawScale, i: int, x: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        t, keep = scale.transformed[i % 2], scale.kept[i % 2]
        shift, raw = scale.boards[i](x * keep).chunk(2, dim=1)
        log_scale = clamp(raw, self.bound) * t
        if inverse:
            return (x - shift * t) * torch.exp(-log_scale), log_scale
        return torch.addcmul(shift * t, x, log_scale.exp()), log_scale

    def _channel(self, scale: RawScale, i: int, a: Tensor, b: Tensor, inverse: bool):
        shift, raw = scale.channels[i](a if i % 2 == 0 else b).chunk(2, dim=1)
        log_scale = clamp(raw, self.bound)
        target = b if i % 2 == 0 else a
        if inverse:
            target = (target - shift) * torch.exp(-log_scale)
        else:
            target = torch.addcmul(shift, target, log_scale.exp())
        return (a, target) if i % 2 == 0 else (target, b), log_scale

    def parts_to_noise(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """The flattened factored parts (first scale's first) and the summed log-det."""
        parts, logabsdet, hidden = [], 0.0, x
        for scale in self.scales:
            for i in range(len(scale.boards)):
                hidden, log_scale = self._board(scale, i, hidden, inverse=False)
                logabsdet = logabsdet + log_scale.flatten(1).sum(1)
            if len(scale.channels):
                a, b = squeeze(hidden).chunk(2, dim=1)
                for i in range(len(scale.channels)):
                    (a, b), log_scale = self._channel(scale, i, a, b, inverse=False)
                    logabsdet = logabsdet + log_scale.flatten(1).sum(1)
                parts.append(b.flatten(1))
                hidden = a
        parts.append(hidden.flatten(1))
        return parts, logabsdet

    def to_noise(self, x: Tensor) -> Tensor:
        return torch.cat(self.parts_to_noise(x)[0], dim=1)

    def log_prob(self, x: Tensor) -> Tensor:
        parts, logabsdet = self.parts_to_noise(x)
        sq = sum(p.square().sum(1) for p in parts)
        return logabsdet - 0.5 * sq - 0.5 * self.features * LOG_2PI

    def sample(self, num_samples: int) -> Tensor:
        w = self.scales[0].boards[0].net[0].weight
        z = torch.randn(num_samples, self.features, dtype=w.dtype, device=w.device)
        parts = z.split(self.sizes, dim=1)
        hidden = parts[-1].reshape(num_samples, *self.factored[-1])
        for k in reversed(range(NUM_SCALES)):
            scale = self.scales[k]
            if len(scale.channels):
                a, b = hidden, parts[k].reshape(num_samples, *self.factored[k])
                for i in reversed(range(len(scale.channels))):
                    (a, b), _ = self._channel(scale, i, a, b, inverse=True)
                hidden = unsqueeze(torch.cat([a, b], dim=1))
            for i in reversed(range(len(scale.boards))):
                hidden, _ = self._board(scale, i, hidden, inverse=True)
        return hidden


def build_raw(cfg: ImageConfig, bound: float | None = 3.0) -> Model:
    m = RawMultiscale(cfg, bound)
    return Model(m, m.log_prob, m.sample, m.to_noise)


# ---------------------------------------------------------------------------
# The libraries.
# ---------------------------------------------------------------------------


def build_flowjoint(cfg: ImageConfig, bound: float | None = 3.0) -> Model:
    built = flowjoint.multiscale_realnvp(
        cfg.shape,
        num_scales=NUM_SCALES,
        blocks_per_scale=BLOCKS_PER_SCALE,
        hidden_channels=cfg.hidden,
        num_residual_blocks=cfg.res_blocks,
        dequantization="none",
        alpha=None,
        actnorm=False,
        log_scale_bound=bound,
    )
    # The stack is [Scale(1/levels), Multiscale]: keep the bare multi-scale flow.
    flow = flowjoint.Flow(built.transform[-1], built.base)
    return Model(flow, flow.log_prob, flow.sample, lambda x: flow.transform(x)[0])


class BoardNet(nn.Module):
    """nflows' conditioner of a checkerboard coupling on the flattened image."""

    def __init__(self, net: nn.Module, mask: Tensor) -> None:
        super().__init__()
        self.net, self.shape, self.size = net, tuple(mask.shape), mask.numel()
        flat = mask.flatten()
        self.register_buffer("kept_index", (~flat).nonzero().squeeze(1))
        self.register_buffer("transformed_index", flat.nonzero().squeeze(1))

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        batch = inputs.shape[0]
        image = inputs.new_zeros(batch, self.size).index_copy_(1, self.kept_index, inputs)
        params = self.net(image.view(batch, *self.shape))  # (batch, 2C, H, W)
        params = params.reshape(batch, 2, self.size).index_select(2, self.transformed_index)
        return params.reshape(batch, -1)  # every shift, then every raw scale


def build_nflows(cfg: ImageConfig) -> Model:
    from nflows.distributions import StandardNormal
    from nflows.flows import Flow
    from nflows.transforms import (
        AffineCouplingTransform,
        CompositeTransform,
        MultiscaleCompositeTransform,
        Transform,
    )
    from nflows.transforms.reshape import SqueezeTransform

    class Reshape(Transform):  # nflows 0.14 has no reshape transform
        def __init__(self, inputs_shape, outputs_shape) -> None:
            super().__init__()
            self.inputs_shape, self.outputs_shape = tuple(inputs_shape), tuple(outputs_shape)

        def forward(self, inputs, context=None):
            batch = inputs.shape[0]
            return inputs.reshape(batch, *self.outputs_shape), inputs.new_zeros(batch)

        def inverse(self, inputs, context=None):
            batch = inputs.shape[0]
            return inputs.reshape(batch, *self.inputs_shape), inputs.new_zeros(batch)

    multiscale = MultiscaleCompositeTransform(NUM_SCALES, split_dim=1)
    shape = cfg.shape
    for k in range(NUM_SCALES):
        last = k == NUM_SCALES - 1
        c = shape[0]
        layers = [Reshape(shape, (math.prod(shape),))]
        for i in range(BLOCKS_PER_SCALE + 1 if last else BLOCKS_PER_SCALE):
            mask = flowjoint.checkerboard_mask(shape, parity=i % 2)
            net = BoardNet(ConvNet(c, 2 * c, cfg.hidden, cfg.res_blocks), mask)
            layers.append(AffineCouplingTransform(mask.flatten().int(), lambda i_, o_, n=net: n))
        if last:
            multiscale.add_transform(CompositeTransform(layers), (math.prod(shape),))
            break
        layers += [Reshape((math.prod(shape),), shape), SqueezeTransform()]
        shape = _squeezed(shape)
        for i in range(BLOCKS_PER_SCALE):
            # Mirrored parities: nflows factors out the first half and keeps the second.
            mask = flowjoint.channel_mask(shape[0], parity=1 - i % 2)
            layers.append(
                AffineCouplingTransform(
                    mask.int(), lambda i_, o_: ConvNet(i_, o_, cfg.hidden, cfg.res_blocks)
                )
            )
        shape = tuple(multiscale.add_transform(CompositeTransform(layers), shape))
    flow = Flow(multiscale, StandardNormal([cfg.features]))
    return Model(flow, flow.log_prob, flow.sample, lambda x: flow._transform(x)[0])


def build_normflows(cfg: ImageConfig) -> Model:
    import normflows as nf

    levels, bases = [], []
    shape = cfg.shape
    for k in range(NUM_SCALES):
        last = k == NUM_SCALES - 1
        c = shape[0]
        steps = []  # data -> noise order; normflows applies them through .inverse
        for i in range(BLOCKS_PER_SCALE + 1 if last else BLOCKS_PER_SCALE):
            mode = "checkerboard" if i % 2 == 0 else "checkerboard_inv"
            net = ConvNet(c, 2 * c, cfg.hidden, cfg.res_blocks)
            steps.append(nf.flows.AffineCouplingBlock(net, split_mode=mode))
        if not last:
            steps.append(nf.flows.Squeeze())
            shape = _squeezed(shape)
            for i in range(BLOCKS_PER_SCALE):
                mode = "channel" if i % 2 == 0 else "channel_inv"
                net = ConvNet(shape[0] // 2, shape[0], cfg.hidden, cfg.res_blocks)
                steps.append(nf.flows.AffineCouplingBlock(net, split_mode=mode))
            shape = (shape[0] // 2, *shape[1:])
        levels.append(steps[::-1])  # normflows' layers map noise -> data
        bases.append(nf.distributions.DiagGaussian(shape, trainable=False))
    # normflows' level 0 is the deepest; merge i - 1 joins level i's factored part.
    merges = [nf.flows.Merge() for _ in range(NUM_SCALES - 1)]
    flow = nf.MultiscaleFlow(bases[::-1], levels[::-1], merges, class_cond=False)

    def to_noise(x: Tensor) -> Tensor:
        parts, _ = flow.inverse_and_log_det(x)
        return torch.cat([p.flatten(1) for p in parts], dim=1)

    return Model(flow, lambda x: flow.log_prob(x, None), lambda n: flow.sample(n)[0], to_noise)


BUILDERS = {
    "flowjoint": build_flowjoint,
    "nflows": build_nflows,
    "normflows": build_normflows,
    "raw": build_raw,
}
