"""Conditioner networks."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["MLP"]


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
            nn.init.zeros_(self[-1].weight)
            nn.init.zeros_(self[-1].bias)

    def forward(self, inputs: Tensor) -> Tensor:
        return super().forward(inputs)
