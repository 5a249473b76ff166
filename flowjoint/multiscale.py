"""Real NVP's multi-scale architecture: factor half of the channels out after each scale.

[`Multiscale`][flowjoint.Multiscale] holds one transform per scale. After every scale but the last,
the second half of the channels goes to the outputs and the first half continues to
the next scale, so deeper scales work on fewer, coarser variables; every factored
part is flattened and concatenated, so the base stays a flat ``StandardNormal(C*H*W)``
(as nflows' ``MultiscaleCompositeTransform`` does).
[`multiscale_realnvp`][flowjoint.multiscale_realnvp] builds the Real NVP image model on
top of it.

References:
    Density estimation using Real NVP. Dinh, Sohl-Dickstein, Bengio, 2016.
    arXiv:1605.08803 (Section 3.6).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from flowjoint.checks import (
    check_event_shape,
    check_inputs,
)
from flowjoint.transforms import SavedSettings, Transform, check_transform_list, is_stochastic

__all__ = ["Multiscale"]


@torch.no_grad()
def _output_shape(transform: Transform, shape: tuple[int, ...], index: int) -> tuple[int, ...]:
    """The event shape ``transform`` outputs for inputs of event shape ``shape``.

    One call on a zero image in eval mode (nothing is initialised from it), the
    modules' training flags restored afterwards.
    """
    tensors = [t for t in (*transform.parameters(), *transform.buffers()) if t.is_floating_point()]
    like = tensors[0] if tensors else torch.zeros(())
    modes = [(module, module.training) for module in transform.modules()]
    transform.eval()
    try:
        outputs, _ = transform(like.new_zeros(1, *shape))
    except (ValueError, TypeError, RuntimeError) as error:
        raise ValueError(
            f"scales[{index}] cannot take inputs of event shape {shape}: {error}"
        ) from error
    finally:
        for module, training in modes:
            module.training = training
    if not isinstance(outputs, Tensor):
        raise TypeError(f"scales[{index}] must output a tensor, got {type(outputs).__name__}")
    return tuple(outputs.shape[1:])


def _batch_logabsdet(total: Tensor | float, inputs: Tensor) -> Tensor:
    """The summed log-dets as ``(batch,)``, also when the scales returned numbers."""
    batch = inputs.shape[0]
    if isinstance(total, Tensor) and total.shape == (batch,):
        return total
    return inputs.new_zeros(batch) + total


class Multiscale(SavedSettings, Transform):
    """One transform per scale; after each scale but the last, half of the channels leave.

    Forward (data -> noise) for scales ``f_1 .. f_n`` on inputs ``x`` of event shape
    ``(C, H, W)``::

        h_0 = x
        h_k, z_k = split(f_k(h_{k-1}))     # k < n; z_k = the last C_k // 2 channels
        z_n = f_n(h_{n-1})
        outputs = cat([z_1.flatten(1), ..., z_n.flatten(1)], 1)   # (batch, C*H*W)
        logabsdet = sum_k logabsdet_k

    So the output vector holds the part factored out at the first scale first (each
    part flattened in C-order), and the last scale's output last. A scale may change
    the shape of what it sees (a [`Squeeze`][flowjoint.Squeeze]), but must keep the
    number of entries; ``f_k`` for ``k < n`` must output at least two channels. The
    inverse splits the vector into the same parts and runs the scales' inverses in
    reverse order, concatenating each factored part back along the channels.

    The event shape each scale outputs is found at construction by one call of it
    on a zero image, in eval mode (so nothing, such as an ActNorm, is initialised
    from it), and checked at every call. The scales must be bijections: stochastic
    layers go before the ``Multiscale`` in a [`Compose`][flowjoint.Compose].

    Args:
        scales: the transforms, first scale first (e.g. a ``Compose`` of couplings,
            a ``Squeeze`` and more couplings).
        shape: the event shape ``(C, H, W)`` of the inputs.

    Attributes:
        output_shapes: the event shape each scale outputs, ``(C_k, H_k, W_k)``.
        factored_shapes: the shapes of the parts of the output vector, in order:
            each scale's factored half ``(C_k // 2, H_k, W_k)``, then the last
            scale's output.

    Example:
        >>> import torch
        >>> from flowjoint import Compose, Squeeze, AffineCoupling, checkerboard_mask
        >>> scales = [Squeeze(), AffineCoupling(checkerboard_mask((2, 2, 2)), 8)]
        >>> layer = Multiscale(scales, shape=(1, 4, 4))
        >>> z, logabsdet = layer(torch.randn(3, 1, 4, 4))
        >>> z.shape, layer.factored_shapes
        (torch.Size([3, 16]), [(2, 2, 2), (2, 2, 2)])
    """

    def __init__(self, scales: Iterable[Transform], shape: Sequence[int]) -> None:
        super().__init__()
        scales = check_transform_list(scales, "scales")
        for i, scale in enumerate(scales):
            if is_stochastic(scale):
                raise ValueError(
                    f"scales[{i}] holds a stochastic layer; put stochastic layers before the "
                    "Multiscale in a Compose (its scales must be bijections)"
                )
        self.shape = check_event_shape(shape, "shape")
        if len(self.shape) < 2:
            raise ValueError(f"shape must be an image shape such as (C, H, W), got {self.shape}")
        self.features = math.prod(self.shape)
        self.scales = nn.ModuleList(scales)
        self.output_shapes: list[tuple[int, ...]] = []
        self.factored_shapes: list[tuple[int, ...]] = []
        current = self.shape
        for i, scale in enumerate(scales):
            out = _output_shape(scale, current, i)
            if math.prod(out) != math.prod(current):
                raise ValueError(
                    f"scales[{i}] maps event shape {current} to {out}: a bijection must keep "
                    "the number of entries"
                )
            self.output_shapes.append(out)
            if i == len(scales) - 1:
                self.factored_shapes.append(out)
                break
            if out[0] < 2:
                raise ValueError(
                    f"scales[{i}] outputs event shape {out}: at least 2 channels are needed "
                    "to factor half of them out"
                )
            kept = out[0] - out[0] // 2
            self.factored_shapes.append((out[0] // 2, *out[1:]))
            current = (kept, *out[1:])
        self._sizes = [math.prod(s) for s in self.factored_shapes]

    def extra_repr(self) -> str:
        return f"shape={self.shape}, factored_shapes={self.factored_shapes}"

    def settings(self) -> dict[str, object]:
        return {"shape": list(self.shape), "scales": len(self.scales)}

    def __len__(self) -> int:
        return len(self.scales)

    def __getitem__(self, index: int) -> Transform:
        return self.scales[index]

    def _run_scale(
        self, index: int, inputs: Tensor, context: Tensor | None, inverse: bool
    ) -> tuple[Tensor, Tensor]:
        scale = self.scales[index]
        outputs, logabsdet = (scale.inverse if inverse else scale)(inputs, context=context)
        if not inverse and tuple(outputs.shape[1:]) != self.output_shapes[index]:
            raise ValueError(
                f"scales[{index}] output event shape {tuple(outputs.shape[1:])}, but "
                f"{self.output_shapes[index]} at construction"
            )
        return outputs, logabsdet

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(batch, C, H, W)`` -> ``(batch, C*H*W)``; logabsdet ``(batch,)``."""
        check_inputs(inputs, self.shape)
        parts: list[Tensor] = []
        total: Tensor | None = None
        hidden = inputs
        last = len(self.scales) - 1
        for i in range(len(self.scales)):
            hidden, logabsdet = self._run_scale(i, hidden, context, inverse=False)
            total = logabsdet if total is None else total + logabsdet
            if i < last:
                factored = self.factored_shapes[i][0]
                hidden, out = hidden.split([hidden.shape[1] - factored, factored], dim=1)
                parts.append(out.flatten(1))  # (batch, C_i // 2 * H_i * W_i)
            else:
                parts.append(hidden.flatten(1))
        return torch.cat(parts, dim=1), _batch_logabsdet(total, inputs)  # (batch, C*H*W)

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(batch, C*H*W)`` -> ``(batch, C, H, W)``; logabsdet ``(batch,)`` of the inverse."""
        check_inputs(inputs, self.features)
        batch = inputs.shape[0]
        parts = inputs.split(self._sizes, dim=1)
        total: Tensor | None = None
        hidden = parts[-1].reshape(batch, *self.factored_shapes[-1])
        for i in reversed(range(len(self.scales))):
            if i < len(self.scales) - 1:
                out = parts[i].reshape(batch, *self.factored_shapes[i])
                hidden = torch.cat([hidden, out], dim=1)  # (batch, C_i, H_i, W_i)
            hidden, logabsdet = self._run_scale(i, hidden, context, inverse=True)
            total = logabsdet if total is None else total + logabsdet
        return hidden, _batch_logabsdet(total, inputs)
