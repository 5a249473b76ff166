"""Glow's invertible 1x1 convolution, LU-parametrised: a learned linear mix of channels."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from flowjoint.checks import check_inputs, check_positive_int
from flowjoint.permutations import _check_permutation
from flowjoint.transforms import Transform

__all__ = ["InvertibleConv1x1"]


def _random_rotation(channels: int, seed: int) -> Tensor:
    """An orthogonal ``(C, C)`` matrix drawn from ``seed`` (QR of a Gaussian matrix)."""
    generator = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(channels, channels, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    return q * r.diagonal().sign()  # unique Q: positive diagonal of R


class InvertibleConv1x1(Transform):
    """Invertible 1x1 convolution ``y = W x`` at every pixel, with ``W = P L (U + diag(s))``.

    Forward (data -> noise) on ``(batch, C, *rest)`` (images ``(batch, C, H, W)``;
    vectors ``(batch, C)``, where it is an LU-parametrised linear layer)::

        s = sign * exp(log_abs_diagonal)              # nonzero by construction
        W = P @ L @ (U + diag(s))                     # L unit lower, U strictly upper
        y[:, :, p] = W @ x[:, :, p]                   # every position p
        logabsdet = prod(rest) * sum(log_abs_diagonal)

    ``P`` (a permutation) and ``sign`` are fixed buffers; ``L``'s strictly lower entries,
    ``U``'s strictly upper entries and ``log_abs_diagonal`` are the parameters. The
    log-determinant is exact and costs ``O(C)``; ``W`` and its inverse (two
    triangular solves) are rebuilt from the parameters at every call, so nothing goes
    stale after an optimizer step or ``load_state_dict``. The layer starts as a random
    rotation drawn from ``seed`` (Glow's initialisation): log-det 0, channels mixed.

    A loaded ``state_dict`` brings its own ``P`` and ``sign`` (layers built with
    other seeds compute identically after loading); a loaded ``permutation`` that is
    not a permutation of ``0 .. C-1`` is refused with ``ValueError``.

    Args:
        channels: ``C`` (>= 2; on one channel a 1x1 convolution is a scale, see
            [`ActNorm`][flowjoint.ActNorm]).
        seed: seed of the initial rotation.

    References:
        Glow: Generative Flow with Invertible 1x1 Convolutions. Kingma, Dhariwal,
        2018. arXiv:1807.03039 (Section 3.2).

    Example:
        >>> import torch
        >>> layer = InvertibleConv1x1(4)
        >>> x = torch.randn(2, 4, 3, 3)
        >>> y, logabsdet = layer(x)
        >>> bool(torch.allclose(layer.inverse(y)[0], x, atol=1e-5)), logabsdet.shape
        (True, torch.Size([2]))
    """

    def __init__(self, channels: int, seed: int = 0) -> None:
        super().__init__()
        self.channels = check_positive_int(channels, "channels", minimum=2)
        check_positive_int(seed, "seed", minimum=0)
        permutation_matrix, lower, upper = torch.linalg.lu(_random_rotation(channels, seed))
        diagonal = upper.diagonal()
        rows, cols = torch.tril_indices(channels, channels, -1)  # (2, C(C-1)/2)
        # W = P @ M means W[i] = M[permutation[i]].
        self.register_buffer("permutation", permutation_matrix.argmax(1))
        dtype = torch.get_default_dtype()
        self.register_buffer("sign", diagonal.sign().to(dtype))
        self.register_buffer("_rows", rows, persistent=False)
        self.register_buffer("_cols", cols, persistent=False)
        self.lower = nn.Parameter(lower[rows, cols].to(dtype))
        self.upper = nn.Parameter(upper[cols, rows].to(dtype))
        self.log_abs_diagonal = nn.Parameter(diagonal.abs().log().to(dtype))
        self.register_load_state_dict_pre_hook(self._check_loaded)

    def extra_repr(self) -> str:
        return f"channels={self.channels}"

    def _check_loaded(
        self, module: nn.Module, state_dict: dict, prefix: str, *args: object
    ) -> None:
        permutation = state_dict.get(prefix + "permutation")
        if permutation is not None:
            _check_permutation(permutation, f"the loaded {prefix}permutation")
        sign = state_dict.get(prefix + "sign")
        if sign is not None and not bool((sign.abs() == 1).all()):
            raise ValueError(
                f"the loaded {prefix}sign must hold only -1 and 1, got {sign.tolist()}"
            )

    def _factors(self) -> tuple[Tensor, Tensor]:
        """``L`` (unit lower) and ``U + diag(s)`` (upper), each ``(C, C)``."""
        c = self.channels
        eye = torch.eye(c, dtype=self.lower.dtype, device=self.lower.device)
        lower = eye.index_put((self._rows, self._cols), self.lower)
        diagonal = self.sign * self.log_abs_diagonal.exp()  # (C,)
        upper = torch.diag(diagonal).index_put((self._cols, self._rows), self.upper)
        return lower, upper

    def weight(self) -> Tensor:
        """``W = P L (U + diag(s))``, ``(C, C)``."""
        lower, upper = self._factors()
        return (lower @ upper)[self.permutation]

    def inverse_weight(self) -> Tensor:
        """``W^-1 = (U + diag(s))^-1 L^-1 P^T``, ``(C, C)``, by two triangular solves."""
        lower, upper = self._factors()
        eye = torch.eye(self.channels, dtype=lower.dtype, device=lower.device)
        lower_inv = torch.linalg.solve_triangular(lower, eye, upper=False, unitriangular=True)
        lu_inv = torch.linalg.solve_triangular(upper, lower_inv, upper=True)
        return lu_inv[:, self.permutation]  # (M P^T)[:, j] = M[:, permutation[j]]

    def _check(self, inputs: Tensor) -> None:
        check_inputs(inputs, None, channels=self.channels)

    def _mix(self, matrix: Tensor, inputs: Tensor, sign: float) -> tuple[Tensor, Tensor]:
        outputs = torch.einsum("ij,bj...->bi...", matrix, inputs)  # (batch, C, *rest)
        positions = math.prod(inputs.shape[2:])  # 1 for vectors
        logabsdet = sign * positions * self.log_abs_diagonal.sum()
        return outputs, logabsdet.expand(inputs.shape[0])

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(batch, C, *rest)`` -> the same shape; logabsdet ``(batch,)``."""
        self._check(inputs)
        return self._mix(self.weight(), inputs, 1.0)

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x = W^-1 y`` at every position; logabsdet ``(batch,)`` of the inverse."""
        self._check(inputs)
        return self._mix(self.inverse_weight(), inputs, -1.0)
