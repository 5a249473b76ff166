"""Conditioner networks: an MLP for vectors, a residual conv net and a conv encoder/decoder
for images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowjoint.checks import check_event_shape, check_positive_int

__all__ = [
    "MLP",
    "ConvDecoder",
    "ConvEncoder",
    "LogVarianceEncoder",
    "ResidualConvNet",
    "default_decoder_net",
    "default_encoder_net",
]


def _zero_last(layer: nn.Module) -> None:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)


class MLP(nn.Sequential):
    """Multi-layer perceptron ``in -> hidden -> ... -> hidden -> out`` with ReLU.

    Args:
        in_features: input width.
        out_features: output width.
        hidden_features: width of every hidden layer, or a sequence giving the width
            of each hidden layer in order (e.g. ``(512, 256)``; its length is then
            the number of hidden layers and ``num_hidden_layers`` is not used).
        num_hidden_layers: number of hidden layers (>= 0; 0 is a single linear map)
            when ``hidden_features`` is an int.
        activation: the non-linearity class, instantiated between layers.
        zero_init: set the last layer's weight and bias to zero, so that a flow
            layer conditioned by this net starts as the identity map.

    Example:
        >>> import torch
        >>> MLP(3, 4, hidden_features=8)(torch.randn(2, 3)).shape
        torch.Size([2, 4])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_features: int | Sequence[int] = 64,
        num_hidden_layers: int = 2,
        activation: type[nn.Module] = nn.ReLU,
        zero_init: bool = False,
    ) -> None:
        if isinstance(hidden_features, Sequence):
            hidden = [int(h) for h in hidden_features]
        else:
            if num_hidden_layers < 0:
                raise ValueError(f"num_hidden_layers must be >= 0, got {num_hidden_layers}")
            hidden = [hidden_features] * num_hidden_layers
        if any(h < 1 for h in hidden):
            raise ValueError(f"hidden_features must be >= 1, got {hidden_features}")
        widths = [in_features] + hidden + [out_features]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(widths) - 2:
                layers.append(activation())
        super().__init__(*layers)
        if zero_init:
            _zero_last(self[-1])

    def forward(self, inputs: Tensor) -> Tensor:
        return super().forward(inputs)


class _ResidualBlock(nn.Module):
    """``x + conv(act(conv(act(x))))``, 3x3 convolutions that keep the spatial size."""

    def __init__(self, channels: int, activation: type[nn.Module]) -> None:
        super().__init__()
        self.body = nn.Sequential(
            activation(),
            nn.Conv2d(channels, channels, 3, padding=1),
            activation(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, inputs: Tensor) -> Tensor:
        return inputs + self.body(inputs)


class ResidualConvNet(nn.Module):
    """Residual conv net ``(batch, in_channels, H, W) -> (batch, out_channels, H, W)``.

    A 3x3 convolution to ``hidden_channels``, ``num_blocks`` residual blocks (two 3x3
    convolutions each), then the activation and a 3x3 convolution to
    ``out_channels``; every convolution keeps the spatial size, so any ``H`` and ``W``
    work. Real NVP's coupling conditioner (Dinh et al., 2017, with the residual
    blocks of He et al., 2016).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        hidden_channels: channels of the hidden layers.
        num_blocks: residual blocks (>= 0).
        activation: the non-linearity class.
        zero_init: start the last convolution at zero, so that a flow layer
            conditioned by this net starts as the identity.

    Example:
        >>> import torch
        >>> ResidualConvNet(2, 4, hidden_channels=8)(torch.randn(3, 2, 7, 7)).shape
        torch.Size([3, 4, 7, 7])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int = 64,
        num_blocks: int = 2,
        activation: type[nn.Module] = nn.ReLU,
        zero_init: bool = True,
    ) -> None:
        super().__init__()
        check_positive_int(in_channels, "in_channels")
        check_positive_int(out_channels, "out_channels")
        check_positive_int(hidden_channels, "hidden_channels")
        check_positive_int(num_blocks, "num_blocks", minimum=0)
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden_channels, 3, padding=1),
            *(_ResidualBlock(hidden_channels, activation) for _ in range(num_blocks)),
            activation(),
            nn.Conv2d(hidden_channels, out_channels, 3, padding=1),
        )
        if zero_init:
            _zero_last(self.net[-1])

    def forward(self, inputs: Tensor) -> Tensor:
        return self.net(inputs)


def _halved(size: int, times: int) -> list[int]:
    """Spatial sizes after each stride-2 convolution (padding 1): ``ceil(size / 2)``."""
    sizes = [size]
    for _ in range(times):
        sizes.append(math.ceil(sizes[-1] / 2))
    return sizes


class ConvEncoder(nn.Module):
    """Image ``(batch, C, H, W)`` to a vector ``(batch, out_features)``.

    ``num_downsamples`` stride-2 3x3 convolutions (any ``H``, ``W``: each halves,
    rounding up), doubling the channels from ``hidden_channels``, then a linear map of
    the flattened features through one hidden layer of ``hidden_features``.

    Args:
        image_shape: ``(C, H, W)``.
        out_features: output width (``2d`` for an encoder's ``mu`` and log-scale).
        hidden_channels: channels after the first convolution.
        num_downsamples: stride-2 convolutions (>= 1).
        hidden_features: width of the hidden linear layer.
        zero_init: start the last linear layer at zero.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        out_features: int,
        hidden_channels: int = 32,
        num_downsamples: int = 2,
        hidden_features: int = 256,
        zero_init: bool = False,
    ) -> None:
        super().__init__()
        channels, height, width = check_event_shape(image_shape, "image_shape")
        check_positive_int(num_downsamples, "num_downsamples")
        layers: list[nn.Module] = []
        c_in = channels
        for i in range(num_downsamples):
            c_out = hidden_channels * 2**i
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.ReLU()]
            c_in = c_out
        h, w = _halved(height, num_downsamples)[-1], _halved(width, num_downsamples)[-1]
        self.convs = nn.Sequential(*layers)
        self.head = MLP(c_in * h * w, out_features, hidden_features, 1, zero_init=zero_init)

    def forward(self, inputs: Tensor) -> Tensor:
        return self.head(self.convs(inputs).flatten(1))  # (batch, out_features)


class ConvDecoder(nn.Module):
    """Vector ``(batch, in_features)`` to an image ``(batch, out_channels, H, W)``.

    The mirror of [`ConvEncoder`][flowjoint.ConvEncoder]: a hidden linear layer, a linear map to the
    smallest feature map, then per level a bilinear upsampling to the encoder's
    size at that level and a 3x3 convolution, halving the channels; the last
    convolution gives ``out_channels`` (e.g. ``C`` Bernoulli logits or ``2C`` for a
    Gaussian's mean and log-scale, kinds in blocks).

    Args:
        in_features: input width ``d``.
        image_shape: ``(C, H, W)`` of the image the decoder describes.
        out_channels: output channels.
        hidden_channels: as for the encoder (channels at full resolution).
        num_downsamples: as for the encoder.
        hidden_features: as for the encoder.
        zero_init: start the last convolution at zero.
    """

    def __init__(
        self,
        in_features: int,
        image_shape: Sequence[int],
        out_channels: int,
        hidden_channels: int = 32,
        num_downsamples: int = 2,
        hidden_features: int = 256,
        zero_init: bool = False,
    ) -> None:
        super().__init__()
        _, height, width = check_event_shape(image_shape, "image_shape")
        check_positive_int(num_downsamples, "num_downsamples")
        self.heights = _halved(height, num_downsamples)[::-1]  # smallest first
        self.widths = _halved(width, num_downsamples)[::-1]
        self.top_channels = hidden_channels * 2 ** (num_downsamples - 1)
        top = self.top_channels * self.heights[0] * self.widths[0]
        self.head = nn.Sequential(MLP(in_features, top, hidden_features, 1), nn.ReLU())
        convs = []
        c_in = self.top_channels
        for i in range(num_downsamples):
            last = i == num_downsamples - 1
            c_out = out_channels if last else c_in // 2
            convs.append(nn.Conv2d(c_in, c_out, 3, padding=1))
            c_in = c_out
        self.convs = nn.ModuleList(convs)
        if zero_init:
            _zero_last(self.convs[-1])

    def forward(self, inputs: Tensor) -> Tensor:
        h = self.head(inputs).view(-1, self.top_channels, self.heights[0], self.widths[0])
        for i, conv in enumerate(self.convs):
            size = (self.heights[i + 1], self.widths[i + 1])
            h = F.interpolate(h, size=size, mode="bilinear", align_corners=False)
            h = conv(h)
            if i < len(self.convs) - 1:
                h = F.relu(h)
        return h  # (batch, out_channels, H, W)


class LogVarianceEncoder(nn.Module):
    """An encoder predicting ``(mu, log sigma^2)``, presented as ``(mu, log sigma)``.

    ``net`` maps ``(batch, *data_shape)`` to ``(batch, 2d)``; the second half is read
    as a log-variance and halved, ``log sigma = log sigma^2 / 2``, the usual VAE
    parametrization (Kingma & Welling, 2013). Beyond the factor, it sets how fast
    Adam moves ``log sigma``: half as fast as a head predicting ``log sigma`` directly
    (see docs/results.md for the measured difference).

    Args:
        net: the encoder network.
        latent_features: ``d``.
    """

    def __init__(self, net: nn.Module, latent_features: int) -> None:
        super().__init__()
        self.net = net
        factor = torch.cat([torch.ones(latent_features), torch.full((latent_features,), 0.5)])
        self.register_buffer("factor", factor, persistent=False)  # (2d,)

    def forward(self, inputs: Tensor) -> Tensor:
        """``(batch, *data_shape)`` -> ``(batch, 2d)``: ``mu``, then ``log sigma``."""
        return self.net(inputs) * self.factor


def default_encoder_net(
    data_shape: tuple[int, ...],
    latent_features: int,
    hidden_features: int | Sequence[int],
    num_hidden_layers: int,
) -> nn.Module:
    """The default encoder ``(batch, *data_shape) -> (batch, 2d)``: an MLP on vectors,
    a [`ConvEncoder`][flowjoint.ConvEncoder] on images, predicting a log-variance."""
    d = latent_features
    if len(data_shape) == 1:
        net: nn.Module = MLP(data_shape[0], 2 * d, hidden_features, num_hidden_layers)
    elif len(data_shape) == 3:
        width = hidden_features if isinstance(hidden_features, int) else hidden_features[0]
        net = ConvEncoder(data_shape, 2 * d, hidden_features=width)
    else:
        raise ValueError(f"data_shape must be (D,) or (C, H, W), got {data_shape}")
    return LogVarianceEncoder(net, d)


def default_decoder_net(
    data_shape: tuple[int, ...],
    latent_features: int,
    params_per_entry: int,
    hidden_features: int | Sequence[int],
    num_hidden_layers: int,
) -> nn.Module:
    """The default decoder ``(batch, d) -> (batch, params * C, *rest)``, mirroring the encoder."""
    if len(data_shape) == 1:
        widths = (
            list(reversed(hidden_features))
            if isinstance(hidden_features, Sequence)
            else hidden_features
        )
        return MLP(latent_features, params_per_entry * data_shape[0], widths, num_hidden_layers)
    if len(data_shape) == 3:
        width = hidden_features if isinstance(hidden_features, int) else hidden_features[0]
        return ConvDecoder(
            latent_features, data_shape, params_per_entry * data_shape[0], hidden_features=width
        )
    raise ValueError(f"data_shape must be (D,) or (C, H, W), got {data_shape}")
