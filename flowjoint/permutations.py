"""Permutations of features (vectors) or channels (images): volume preserving, logabsdet 0.

The constructors take nflows' arguments (``Permutation(permutation, dim=1)``,
``RandomPermutation(features, dim=1)``, ``ReversePermutation(features, dim=1)``);
``RandomPermutation`` adds a ``seed``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flowjoint.checks import check_inputs, check_positive_int
from flowjoint.transforms import SavedSettings, Transform

__all__ = ["Permutation", "RandomPermutation", "ReversePermutation"]


def _check_dim(dim: object) -> int:
    check_positive_int(dim, "dim")
    return dim


def _check_permutation(permutation: object, name: str = "permutation") -> Tensor:
    if not isinstance(permutation, Tensor) or permutation.dtype != torch.long:
        raise TypeError(f"{name} must be a torch.long tensor, got {permutation!r}")
    if permutation.dim() != 1 or permutation.numel() == 0:
        raise ValueError(f"{name} must be 1-D and non-empty, got shape {tuple(permutation.shape)}")
    n = permutation.numel()
    if not torch.equal(permutation.sort().values.cpu(), torch.arange(n, device="cpu")):
        raise ValueError(f"{name} must hold each of 0..{n - 1} once, got {permutation.tolist()}")
    return permutation


class Permutation(SavedSettings, Transform):
    """Reorder along ``dim``: ``outputs[:, i] = inputs[:, permutation[i]]``; logabsdet 0.

    The inverse index is derived from ``permutation`` and rebuilt when a
    ``state_dict`` is loaded; loading a tensor that is not a permutation of the same
    length raises ``ValueError``.

    Args:
        permutation: long tensor ``(n,)`` holding each index once.
        dim: the permuted dimension (1: the features of a vector, the channels of an
            image).

    Example:
        >>> import torch
        >>> p = Permutation(torch.tensor([2, 0, 1]))
        >>> p(torch.tensor([[10.0, 11.0, 12.0]]))[0]
        tensor([[12., 10., 11.]])
    """

    def __init__(self, permutation: Tensor, dim: int = 1) -> None:
        super().__init__()
        permutation = _check_permutation(permutation)
        self.dim = _check_dim(dim)
        self.features = permutation.numel()
        self.register_buffer("permutation", permutation.clone())
        self.register_buffer("_inverse", permutation.argsort(), persistent=False)
        self.register_load_state_dict_pre_hook(self._load_permutation)

    def _load_permutation(
        self, module: nn.Module, state_dict: dict, prefix: str, *args: object
    ) -> None:
        incoming = state_dict.get(prefix + "permutation")
        if incoming is None:
            return
        _check_permutation(incoming, f"the loaded {prefix}permutation")
        if incoming.numel() != self.features:
            raise ValueError(
                f"cannot load {prefix}permutation of {incoming.numel()} entries into a "
                f"Permutation of {self.features}"
            )
        self._inverse = incoming.argsort().to(self.permutation.device)

    def extra_repr(self) -> str:
        return f"features={self.features}, dim={self.dim}"

    def settings(self) -> dict[str, object]:
        return {"features": self.features, "dim": self.dim}

    def _check(self, inputs: Tensor) -> None:
        check_inputs(inputs)
        if inputs.dim() <= self.dim or inputs.shape[self.dim] != self.features:
            raise ValueError(
                f"inputs must have {self.features} entries along dimension {self.dim}, "
                f"got shape {tuple(inputs.shape)}"
            )

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(inputs)
        outputs = inputs.index_select(self.dim, self.permutation)
        return outputs, inputs.new_zeros(inputs.shape[0])

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(inputs)
        outputs = inputs.index_select(self.dim, self._inverse)
        return outputs, inputs.new_zeros(inputs.shape[0])


class ReversePermutation(SavedSettings, Transform):
    """Reverse the order along ``dim`` (features, or channels of an image); logabsdet 0.

    Example:
        >>> import torch
        >>> ReversePermutation(3)(torch.tensor([[1.0, 2.0, 3.0]]))[0]
        tensor([[3., 2., 1.]])
    """

    def __init__(self, features: int, dim: int = 1) -> None:
        super().__init__()
        self.features = check_positive_int(features, "features")
        self.dim = _check_dim(dim)

    def extra_repr(self) -> str:
        return f"features={self.features}, dim={self.dim}"

    def settings(self) -> dict[str, object]:
        return {"features": self.features, "dim": self.dim}

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_inputs(inputs)
        if inputs.dim() <= self.dim or inputs.shape[self.dim] != self.features:
            raise ValueError(
                f"inputs must have {self.features} entries along dimension {self.dim}, "
                f"got shape {tuple(inputs.shape)}"
            )
        return inputs.flip(self.dim), inputs.new_zeros(inputs.shape[0])

    inverse = forward


class RandomPermutation(Permutation):
    """A fixed permutation drawn at construction from ``seed`` (stored in the state_dict).

    Args:
        features: number of permuted entries.
        dim: the permuted dimension.
        seed: seed of the draw, so that two runs build the same flow.
    """

    def __init__(self, features: int, dim: int = 1, *, seed: int = 0) -> None:
        check_positive_int(features, "features")
        generator = torch.Generator().manual_seed(seed)
        super().__init__(torch.randperm(features, generator=generator, device="cpu"), dim)
