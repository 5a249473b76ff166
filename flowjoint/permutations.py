"""Feature permutations: volume preserving, logabsdet 0."""

from __future__ import annotations

import torch
from torch import Tensor

from flowjoint.transforms import Transform, check_inputs, check_positive_int

__all__ = ["Permutation", "RandomPermutation", "ReversePermutation"]


class Permutation(Transform):
    """Reorder features: ``outputs[:, i] = inputs[:, permutation[i]]``; logabsdet 0.

    Args:
        permutation: long tensor ``(features,)`` holding each index once.

    Example:
        >>> import torch
        >>> p = Permutation(torch.tensor([2, 0, 1]))
        >>> p(torch.tensor([[10.0, 11.0, 12.0]]))[0]
        tensor([[12., 10., 11.]])
    """

    def __init__(self, permutation: Tensor) -> None:
        super().__init__()
        if not isinstance(permutation, Tensor) or permutation.dtype != torch.long:
            raise TypeError(f"permutation must be a torch.long tensor, got {permutation!r}")
        if permutation.dim() != 1 or permutation.numel() == 0:
            raise ValueError(
                f"permutation must be 1-D and non-empty, got shape {tuple(permutation.shape)}"
            )
        n = permutation.numel()
        if not torch.equal(permutation.sort().values, torch.arange(n)):
            raise ValueError(
                f"permutation must hold each of 0..{n - 1} once, got {permutation.tolist()}"
            )
        self.features = n
        self.register_buffer("permutation", permutation.clone())
        self.register_buffer("_inverse", permutation.argsort(), persistent=False)

    def extra_repr(self) -> str:
        return f"features={self.features}"

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_inputs(inputs, self.features)
        return inputs.index_select(1, self.permutation), inputs.new_zeros(inputs.shape[0])

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_inputs(inputs, self.features)
        return inputs.index_select(1, self._inverse), inputs.new_zeros(inputs.shape[0])


class ReversePermutation(Transform):
    """Reverse the order of the features; logabsdet 0.

    Example:
        >>> import torch
        >>> ReversePermutation(3)(torch.tensor([[1.0, 2.0, 3.0]]))[0]
        tensor([[3., 2., 1.]])
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.features = check_positive_int(features, "features")

    def extra_repr(self) -> str:
        return f"features={self.features}"

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_inputs(inputs, self.features)
        return inputs.flip(1), inputs.new_zeros(inputs.shape[0])

    inverse = forward


class RandomPermutation(Permutation):
    """A fixed permutation drawn at construction from ``seed`` (stored in the state_dict).

    Args:
        features: number of features.
        seed: seed of the draw, so that two runs build the same flow.
    """

    def __init__(self, features: int, seed: int = 0) -> None:
        check_positive_int(features, "features")
        generator = torch.Generator().manual_seed(seed)
        super().__init__(torch.randperm(features, generator=generator))
