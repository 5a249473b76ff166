"""Coupling layers: NICE's additive and Real NVP's affine coupling.

A coupling layer splits its inputs by a bool ``mask`` (**True marks a transformed
feature**, False a feature passed through unchanged), applies the conditional
element-wise map :class:`~flowjoint.transforms.ConditionalAffine` to the
transformed part with the unchanged part (and any external context) as its
context, and merges::

    y_A = x_A                                   # mask False: kept
    y_B = shift(x_A, c) + scale(x_A, c) * x_B   # mask True: transformed
    logabsdet = sum(log scale(x_A, c))

The Jacobian is triangular once features are ordered kept-then-transformed.
The VAE's reparametrization ``(x, eps) -> (x, mu(x) + sigma(x) * eps)`` is the
same layer with ``x_A = x`` and ``x_B = eps``.

References:
    NICE: Non-linear Independent Components Estimation. Dinh, Krueger, Bengio, 2014.
    arXiv:1410.8516.

    Density estimation using Real NVP. Dinh, Sohl-Dickstein, Bengio, 2016.
    arXiv:1605.08803.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from flowjoint.transforms import BlockTransform, ConditionalAffine, check_context, check_inputs

__all__ = ["AdditiveCoupling", "AffineCoupling", "Coupling", "check_mask"]


def check_mask(mask: object) -> Tensor:
    """Return ``mask`` if it is a valid coupling mask, else raise naming it."""
    if not isinstance(mask, Tensor):
        raise TypeError(
            f"mask must be a bool torch.Tensor (True = transformed), got {type(mask).__name__}"
        )
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must have dtype torch.bool (True = transformed), got {mask.dtype}")
    if mask.dim() != 1:
        raise ValueError(f"mask must be 1-D (features,), got shape {tuple(mask.shape)}")
    if bool(mask.all()):
        raise ValueError(
            f"mask must keep at least one feature (a False entry), got all True: {mask.tolist()}"
        )
    if not bool(mask.any()):
        raise ValueError(
            f"mask must transform at least one feature (a True entry), got all False: "
            f"{mask.tolist()}"
        )
    return mask


class Coupling(BlockTransform):
    """Split by ``mask``, apply a :class:`ConditionalAffine` to one part, merge.

    Masks that split into two contiguous blocks (``[F..F T..T]`` or ``[T..T F..F]``)
    use views and one concatenation, and a :class:`~flowjoint.Compose` of such layers
    sharing the split point concatenates only once (see
    :class:`~flowjoint.transforms.BlockTransform`); other masks gather with
    precomputed indices.

    Args:
        mask: bool tensor ``(features,)``; True marks a transformed feature.
        hidden_features: width of the default conditioner MLP.
        num_hidden_layers: depth of the default conditioner MLP.
        context_features: width of an external context appended to the kept part.
        net: optional conditioner mapping ``(batch, n_kept + context_features)`` to
            ``(batch, n_transformed)`` (additive) or ``(batch, 2 * n_transformed)``
            (affine: the shift, then the unconstrained log-scale).
        additive: scale fixed at 1 (NICE).
        **kwargs: passed on to :class:`ConditionalAffine` (``log_scale_bound``,
            ``zero_init``).
    """

    def __init__(
        self,
        mask: Tensor,
        hidden_features: int = 64,
        num_hidden_layers: int = 2,
        context_features: int = 0,
        net: nn.Module | None = None,
        *,
        additive: bool,
        **kwargs: object,
    ) -> None:
        super().__init__()
        mask = check_mask(mask).detach().clone()
        if isinstance(context_features, bool) or not isinstance(context_features, int):
            raise TypeError(f"context_features must be an int, got {context_features!r}")
        if context_features < 0:
            raise ValueError(f"context_features must be >= 0, got {context_features}")
        self.features = mask.numel()
        self.context_features = context_features
        self.register_buffer("mask", mask)
        kept = (~mask).nonzero().squeeze(-1)  # (n_kept,)
        transformed = mask.nonzero().squeeze(-1)  # (n_transformed,)
        self.num_kept, self.num_transformed = kept.numel(), transformed.numel()
        # Contiguous blocks are split with views; anything else gathers.
        if bool((~mask[: self.num_kept]).all()):
            self._layout = "kept_first"
            self.block_split = self.num_kept
        elif bool(mask[: self.num_transformed].all()):
            self._layout = "transformed_first"
            self.block_split = self.num_transformed
        else:
            self._layout = "gather"
            self.block_split = None
        # Compose may bypass forward/inverse only if a subclass has not redefined them.
        cls = type(self)
        self._fusable = (
            self.block_split is not None
            and cls.forward is Coupling.forward
            and cls.inverse is Coupling.inverse
        )
        self.register_buffer("_kept", kept, persistent=False)
        self.register_buffer("_transformed", transformed, persistent=False)
        # merge(cat([kept, transformed])) puts every feature back in its place.
        self.register_buffer("_unsort", torch.cat([kept, transformed]).argsort(), persistent=False)
        self.elementwise = ConditionalAffine(
            self.num_transformed,
            self.num_kept + context_features,
            hidden_features=hidden_features,
            num_hidden_layers=num_hidden_layers,
            net=net,
            additive=additive,
            **kwargs,
        )

    def extra_repr(self) -> str:
        return f"features={self.features}, context_features={self.context_features}"

    def split(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        """``(batch, features)`` -> kept ``(batch, n_kept)``, transformed ``(batch, n_tr)``."""
        if self._layout == "kept_first":
            kept, transformed = inputs.split([self.num_kept, self.num_transformed], dim=1)
        elif self._layout == "transformed_first":
            transformed, kept = inputs.split([self.num_transformed, self.num_kept], dim=1)
        else:
            kept = inputs.index_select(1, self._kept)  # (batch, n_kept)
            transformed = inputs.index_select(1, self._transformed)  # (batch, n_tr)
        return kept, transformed

    def merge(self, kept: Tensor, transformed: Tensor) -> Tensor:
        """Inverse of :meth:`split`: ``(batch, n_kept), (batch, n_tr)`` -> ``(batch, features)``."""
        if self._layout == "kept_first":
            return torch.cat([kept, transformed], dim=1)
        if self._layout == "transformed_first":
            return torch.cat([transformed, kept], dim=1)
        return torch.cat([kept, transformed], dim=1).index_select(1, self._unsort)

    def _condition(self, kept: Tensor, context: Tensor | None) -> Tensor:
        if self.context_features == 0:
            return kept
        return torch.cat([kept, context], dim=1)  # (batch, n_kept + n_ctx)

    def _check(self, inputs: Tensor, context: Tensor | None) -> None:
        check_inputs(inputs, self.features)
        check_context(context, inputs.shape[0], self.context_features)

    def can_fuse(self) -> bool:
        """Contiguous blocks, forward/inverse not overridden, no forward hooks."""
        return self._fusable and not (self._forward_hooks or self._forward_pre_hooks)

    def forward_blocks(
        self, first: Tensor, second: Tensor, context: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`forward` on ``cat([first, second], 1)`` split at ``block_split``.

        Returns the two output blocks and logabsdet ``(batch,)``; only ``context`` is
        checked (the caller splits a checked tensor).
        """
        return self._map_blocks(self.elementwise.map, first, second, context)

    def inverse_blocks(
        self, first: Tensor, second: Tensor, context: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`inverse` on ``cat([first, second], 1)`` split at ``block_split``."""
        return self._map_blocks(self.elementwise.map_inverse, first, second, context)

    def _map_blocks(
        self, fn: Callable, first: Tensor, second: Tensor, context: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        check_context(context, first.shape[0], self.context_features)
        if self._layout == "kept_first":
            second, logabsdet = fn(second, self._condition(first, context))
        else:
            first, logabsdet = fn(first, self._condition(second, context))
        return first, second, logabsdet

    def _map(self, fn: Callable, inputs: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        self._check(inputs, context)
        kept, transformed = self.split(inputs)
        transformed, logabsdet = fn(transformed, self._condition(kept, context))
        return self.merge(kept, transformed), logabsdet

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(batch, features)`` -> outputs ``(batch, features)``, logabsdet ``(batch,)``."""
        return self._map(self.elementwise.map, inputs, context)

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Inverse map; logabsdet ``(batch,)`` of the inverse (the negative of forward's)."""
        return self._map(self.elementwise.map_inverse, inputs, context)


class AdditiveCoupling(Coupling):
    """NICE's additive coupling: ``y_B = x_B + shift(x_A, c)``, logabsdet 0.

    ``mask`` True marks a transformed feature (``B``); False ones (``A``) pass through.
    See :class:`Coupling` for the arguments.

    Example:
        >>> import torch
        >>> layer = AdditiveCoupling(torch.tensor([False, False, True, True]))
        >>> y, logabsdet = layer(torch.randn(8, 4))
        >>> logabsdet.abs().max().item()
        0.0
    """

    def __init__(
        self,
        mask: Tensor,
        hidden_features: int = 64,
        num_hidden_layers: int = 2,
        context_features: int = 0,
        net: nn.Module | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(
            mask,
            hidden_features,
            num_hidden_layers,
            context_features,
            net,
            additive=True,
            **kwargs,
        )


class AffineCoupling(Coupling):
    """Real NVP's affine coupling: ``y_B = x_B * exp(s(x_A, c)) + t(x_A, c)``.

    ``logabsdet = sum(s)``, with ``s = soft_clamp(raw, log_scale_bound)``: by default
    one layer may scale by up to ``exp(±3)``. ``mask`` True marks a transformed
    feature. See :class:`Coupling` for the arguments.

    Example:
        >>> import torch
        >>> layer = AffineCoupling(torch.tensor([True, False, True]), context_features=2)
        >>> y, logabsdet = layer(torch.randn(8, 3), context=torch.randn(8, 2))
        >>> y.shape, logabsdet.shape
        (torch.Size([8, 3]), torch.Size([8]))
    """

    def __init__(
        self,
        mask: Tensor,
        hidden_features: int = 64,
        num_hidden_layers: int = 2,
        context_features: int = 0,
        net: nn.Module | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(
            mask,
            hidden_features,
            num_hidden_layers,
            context_features,
            net,
            additive=False,
            **kwargs,
        )
