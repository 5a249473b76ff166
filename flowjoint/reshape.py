"""Reshaping layers for images: volume preserving, logabsdet 0, exact inverses.

[`Squeeze`][flowjoint.Squeeze] trades space for channels, ``(C, H, W) -> (4C, H/2, W/2)``, so that
channel-wise couplings can mix neighbouring pixels (Real NVP's squeezing operation).
"""

from __future__ import annotations

from torch import Tensor

from flowjoint.checks import check_inputs, check_positive_int
from flowjoint.transforms import SavedSettings, Transform

__all__ = ["Squeeze"]


class Squeeze(SavedSettings, Transform):
    """Fold each ``f x f`` block of pixels into channels: ``(C, H, W) -> (f²C, H/f, W/f)``.

    Forward (data -> noise), with ``f = factor`` and ``0 <= i, j < f`` the position of a
    pixel inside its block::

        outputs[b, c * f² + i * f + j, h, w] = inputs[b, c, f * h + i, f * w + j]
        logabsdet = 0

    so the ``f²`` channels that come from input channel ``c`` are consecutive, ordered by
    row then column inside the block (nflows' ``SqueezeTransform`` order). For ``f = 2``
    the outputs of channel ``c`` are its top-left, top-right, bottom-left and
    bottom-right pixels. The map is a permutation of the entries: the inverse is exact
    (bit for bit).

    Args:
        factor: the block size ``f`` (>= 2); ``H`` and ``W`` must be multiples of it.

    References:
        Density estimation using Real NVP. Dinh, Sohl-Dickstein, Bengio, 2016.
        arXiv:1605.08803 (Section 3.6).

    Example:
        >>> import torch
        >>> y, logabsdet = Squeeze()(torch.arange(16.0).view(1, 1, 4, 4))
        >>> y.shape, y[0, :, 0, 0].tolist(), logabsdet.tolist()
        (torch.Size([1, 4, 2, 2]), [0.0, 1.0, 4.0, 5.0], [0.0])
    """

    def __init__(self, factor: int = 2) -> None:
        super().__init__()
        self.factor = check_positive_int(factor, "factor", minimum=2)

    def extra_repr(self) -> str:
        return f"factor={self.factor}"

    def settings(self) -> dict[str, object]:
        return {"factor": self.factor}

    def output_shape(self, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """The event shape of the outputs for inputs of event shape ``(C, H, W)``.

        Raises:
            ValueError: ``H`` or ``W`` is not a multiple of ``factor``.
        """
        channels, height, width = shape
        f = self.factor
        if height % f or width % f:
            raise ValueError(
                f"Squeeze(factor={f}) needs a height and width that are multiples of {f}, "
                f"got an image of shape (C, H, W) = {tuple(shape)}"
            )
        return channels * f * f, height // f, width // f

    def _check(self, inputs: Tensor) -> None:
        check_inputs(inputs)
        if inputs.dim() != 4:
            raise ValueError(
                f"inputs must be images (batch, C, H, W), got shape {tuple(inputs.shape)}"
            )

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(batch, C, H, W)`` -> ``(batch, f²C, H/f, W/f)``; logabsdet zeros ``(batch,)``."""
        self._check(inputs)
        batch, channels, height, width = inputs.shape
        f = self.factor
        out_c, out_h, out_w = self.output_shape((channels, height, width))
        blocks = inputs.reshape(batch, channels, out_h, f, out_w, f)  # (b, C, H/f, i, W/f, j)
        outputs = blocks.permute(0, 1, 3, 5, 2, 4)  # (b, C, i, j, H/f, W/f)
        return outputs.reshape(batch, out_c, out_h, out_w), inputs.new_zeros(batch)

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(batch, f²C, H, W)`` -> ``(batch, C, fH, fW)``; logabsdet zeros ``(batch,)``."""
        self._check(inputs)
        batch, channels, height, width = inputs.shape
        f = self.factor
        if channels % (f * f):
            raise ValueError(
                f"the inverse of Squeeze(factor={f}) needs a channel count that is a "
                f"multiple of {f * f}, got inputs of shape {tuple(inputs.shape)}"
            )
        blocks = inputs.reshape(batch, channels // (f * f), f, f, height, width)  # (b,C,i,j,H,W)
        outputs = blocks.permute(0, 1, 4, 2, 5, 3)  # (b, C, H, i, W, j)
        outputs = outputs.reshape(batch, channels // (f * f), height * f, width * f)
        return outputs, inputs.new_zeros(batch)
