"""Coupling layers: NICE's additive, Real NVP's affine and the spline coupling.

A coupling layer splits its inputs by a bool ``mask`` (**True marks a transformed
entry**, False an entry passed through unchanged), applies a conditional
element-wise map ([`ConditionalElementwise`][flowjoint.ConditionalElementwise]) to the
transformed part with the unchanged part (and any external context) as its
context, and merges::

    y_A = x_A                                   # mask False: kept
    y_B = h(x_B; net(x_A, c))                   # mask True: transformed
    logabsdet = sum log |h'(x_B; net(x_A, c))|

The Jacobian is triangular once entries are ordered kept-then-transformed. The
VAE's reparametrization ``(x, eps) -> (x, mu(x) + sigma(x) * eps)`` is the same layer
with ``x_A = x`` and ``x_B = eps``.

Two kinds of mask:

* a 1-D mask ``(n,)`` splits dimension 1: the features of a vector ``(batch, n)``,
  or the channels of an image ``(batch, n, H, W)``. The conditioner maps the kept
  part ``(batch, n_kept [+ context_features], *rest)`` to
  ``(batch, num_params * n_transformed, *rest)``.
* a mask of the full event shape, e.g. a checkerboard ``(C, H, W)``: the
  conditioner maps the input with its transformed entries zeroed,
  ``(batch, C [+ context_features], H, W)``, to ``(batch, num_params * C, H, W)``,
  used where the mask is True (Real NVP's ``b * x``).

References:
    NICE: Non-linear Independent Components Estimation. Dinh, Krueger, Bengio, 2014.
    arXiv:1410.8516.

    Density estimation using Real NVP. Dinh, Sohl-Dickstein, Bengio, 2016.
    arXiv:1605.08803.

    Neural Spline Flows. Durkan, Bekasov, Murray, Papamakarios, 2019.
    arXiv:1906.04032.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flowjoint.checks import check_context, check_inputs, check_positive_int, sum_event
from flowjoint.elementwise import AdditiveMap, AffineMap, ConditionalElementwise, ElementwiseMap
from flowjoint.masks import check_mask
from flowjoint.nets import ResidualConvNet
from flowjoint.splines import SplineMap
from flowjoint.transforms import BlockTransform

__all__ = ["AdditiveCoupling", "AffineCoupling", "Coupling", "SplineCoupling"]


class Coupling(BlockTransform):
    """Split by ``mask``, apply a conditional element-wise map to one part, merge.

    1-D masks that split dimension 1 into two contiguous blocks (``[F..F T..T]`` or
    ``[T..T F..F]``) use views and one concatenation, and a [`Compose`][flowjoint.Compose]
    of such layers sharing the split point concatenates only once (see
    `BlockTransform`); other 1-D masks gather with
    index tensors derived from the mask. Every derived tensor is rebuilt when a
    ``state_dict`` with another mask is loaded, so the loaded layer computes with
    the loaded mask.

    Args:
        mask: bool tensor, True marks a transformed entry: ``(n,)`` to split
            dimension 1, or the event shape (e.g. a checkerboard ``(C, H, W)``).
        hidden_features: width of the default conditioner (MLP units for a 1-D mask
            on vectors, conv channels for an event-shaped mask).
        num_hidden_layers: depth of the default MLP, or residual blocks of the
            default conv net.
        context_features: size of dimension 1 of an external context, concatenated
            to the conditioner's input along dimension 1.
        net: optional conditioner (see the module docstring for its shapes).
        elementwise: the element-wise map ([`AffineMap`][flowjoint.AffineMap],
            ``AdditiveMap``, ``SplineMap`` or your own).
        zero_init: start the default conditioner's last layer at zero, so that a
            fresh layer is the identity.
    """

    def __init__(
        self,
        mask: Tensor,
        hidden_features: int = 64,
        num_hidden_layers: int = 2,
        context_features: int = 0,
        net: nn.Module | None = None,
        *,
        elementwise: ElementwiseMap,
        zero_init: bool = True,
    ) -> None:
        super().__init__()
        mask = check_mask(mask).detach().clone()
        check_positive_int(context_features, "context_features", minimum=0)
        self.context_features = context_features
        self.register_buffer("mask", mask)
        self.register_buffer("_kept", torch.zeros(0, dtype=torch.long), persistent=False)
        self.register_buffer("_transformed", torch.zeros(0, dtype=torch.long), persistent=False)
        self.register_buffer("_unsort", torch.zeros(0, dtype=torch.long), persistent=False)
        self._configure(mask)
        if mask.dim() == 1:
            n_out, n_in = self.num_transformed, self.num_kept + context_features
        else:
            n_out, n_in = mask.shape[0], mask.shape[0] + context_features
        if net is None and mask.dim() not in (1, 3):
            raise ValueError(
                f"net is required for a mask of shape {tuple(mask.shape)}: the default "
                "conditioners are an MLP for a 1-D mask and a conv net for a (C, H, W) mask"
            )
        # The default MLP acts on vectors; on images a 1-D (channel) mask needs a conv net.
        self._vector_net = net is None and mask.dim() == 1
        if net is None and mask.dim() == 3:
            net = ResidualConvNet(
                n_in,
                elementwise.num_params * n_out,
                hidden_channels=hidden_features,
                num_blocks=num_hidden_layers,
                zero_init=zero_init,
            )
        shape = n_out if mask.dim() == 1 else tuple(mask.shape)
        self.elementwise = ConditionalElementwise(
            elementwise, shape, n_in, net, hidden_features, num_hidden_layers, zero_init
        )
        self.register_load_state_dict_pre_hook(self._load_mask)
        # Compose may bypass forward/inverse only if a subclass has not redefined them.
        cls = type(self)
        self._overridden = (
            cls.forward is not Coupling.forward or cls.inverse is not Coupling.inverse
        )

    def _configure(self, mask: Tensor) -> None:
        """Set everything derived from ``mask``: layout, sizes, index tensors."""
        self.features = mask.shape[0]
        self.event_shape = tuple(mask.shape) if mask.dim() > 1 else None
        device = self.mask.device
        if mask.dim() > 1:
            self._layout, self.block_split = "masked", None
            self.num_transformed = int(mask.sum())
            self.num_kept = mask.numel() - self.num_transformed
            return
        kept = (~mask).nonzero().squeeze(-1)  # (n_kept,)
        transformed = mask.nonzero().squeeze(-1)  # (n_transformed,)
        self.num_kept, self.num_transformed = kept.numel(), transformed.numel()
        if bool((~mask[: self.num_kept]).all()):
            self._layout, self.block_split = "kept_first", self.num_kept
        elif bool(mask[: self.num_transformed].all()):
            self._layout, self.block_split = "transformed_first", self.num_transformed
        else:
            self._layout, self.block_split = "gather", None
        self._kept = kept.to(device)
        self._transformed = transformed.to(device)
        # merge(cat([kept, transformed])) puts every entry back in its place.
        self._unsort = torch.cat([kept, transformed]).argsort().to(device)

    def _load_mask(self, module: nn.Module, state_dict: dict, prefix: str, *args: object) -> None:
        incoming = state_dict.get(prefix + "mask")
        if incoming is None or torch.equal(incoming.to(self.mask.device), self.mask):
            return
        check_mask(incoming, f"the loaded {prefix}mask")
        same_counts = (
            incoming.shape == self.mask.shape and int(incoming.sum()) == self.num_transformed
        )
        if not same_counts:
            raise ValueError(
                f"cannot load {prefix}mask of shape {tuple(incoming.shape)} with "
                f"{int(incoming.sum())} transformed entries into a coupling whose mask has "
                f"shape {tuple(self.mask.shape)} and {self.num_transformed}"
            )
        self._configure(incoming.to(self.mask.device))

    def extra_repr(self) -> str:
        return (
            f"mask_shape={tuple(self.mask.shape)}, transformed={self.num_transformed}, "
            f"context_features={self.context_features}"
        )

    # -- splitting ------------------------------------------------------------------

    def split(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        """``(batch, n, *rest)`` -> kept ``(batch, n_kept, *rest)``, transformed part."""
        if self._layout == "kept_first":
            kept, transformed = inputs.split([self.num_kept, self.num_transformed], dim=1)
        elif self._layout == "transformed_first":
            transformed, kept = inputs.split([self.num_transformed, self.num_kept], dim=1)
        else:
            kept = inputs.index_select(1, self._kept)  # (batch, n_kept, *rest)
            transformed = inputs.index_select(1, self._transformed)  # (batch, n_tr, *rest)
        return kept, transformed

    def merge(self, kept: Tensor, transformed: Tensor) -> Tensor:
        """Inverse of `split`."""
        if self._layout == "kept_first":
            return torch.cat([kept, transformed], dim=1)
        if self._layout == "transformed_first":
            return torch.cat([transformed, kept], dim=1)
        return torch.cat([kept, transformed], dim=1).index_select(1, self._unsort)

    def _condition(self, kept: Tensor, context: Tensor | None) -> Tensor:
        if self.context_features == 0:
            return kept
        return torch.cat([kept, context], dim=1)  # (batch, n_kept + n_ctx, *rest)

    def _check(self, inputs: Tensor, context: Tensor | None) -> None:
        if self.event_shape is not None:
            check_inputs(inputs, self.event_shape)
        else:
            check_inputs(inputs, None, channels=self.features)
            self._check_net_fits(inputs)
        check_context(context, inputs.shape[0], self.context_features)

    def _check_net_fits(self, inputs: Tensor) -> None:
        if self._vector_net and inputs.dim() > 2:
            raise ValueError(
                f"inputs of shape {tuple(inputs.shape)} are not vectors, but this coupling's "
                "conditioner is the default MLP: pass a conv net (e.g. "
                "flowjoint.nets.ResidualConvNet) as net for a channel mask on images"
            )

    # -- the map ----------------------------------------------------------------------

    def can_fuse(self) -> bool:
        """Contiguous blocks and forward/inverse not overridden."""
        return self.block_split is not None and not self._overridden

    def forward_blocks(
        self, first: Tensor, second: Tensor, context: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """`forward` on ``cat([first, second], 1)`` split at ``block_split``.

        Returns the two output blocks and logabsdet ``(batch,)``; only ``context`` is
        checked (the caller splits a checked tensor).
        """
        return self._map_blocks(first, second, context, inverse=False)

    def inverse_blocks(
        self, first: Tensor, second: Tensor, context: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """`inverse` on ``cat([first, second], 1)`` split at ``block_split``."""
        return self._map_blocks(first, second, context, inverse=True)

    def _map_blocks(
        self, first: Tensor, second: Tensor, context: Tensor | None, inverse: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        check_context(context, first.shape[0], self.context_features)
        self._check_net_fits(first)
        run = self.elementwise.map
        if self._layout == "kept_first":
            second, logabsdet = run(second, self._condition(first, context), inverse)
        else:
            first, logabsdet = run(first, self._condition(second, context), inverse)
        return first, second, logabsdet

    def _map_masked(
        self, inputs: Tensor, context: Tensor | None, inverse: bool
    ) -> tuple[Tensor, Tensor]:
        kept = inputs.masked_fill(self.mask, 0.0)  # (batch, C, H, W), transformed zeroed
        params = self.elementwise.params(self._condition(kept, context), inputs.shape[2:])
        outputs, logabsdet = self.elementwise.function_call(inverse)(inputs, params)
        outputs = torch.where(self.mask, outputs, inputs)
        if logabsdet is None:
            return outputs, inputs.new_zeros(inputs.shape[0])
        return outputs, sum_event(torch.where(self.mask, logabsdet, 0.0))  # kept entries: 0

    def _map(self, inputs: Tensor, context: Tensor | None, inverse: bool) -> tuple[Tensor, Tensor]:
        self._check(inputs, context)
        if self._layout == "masked":
            return self._map_masked(inputs, context, inverse)
        kept, transformed = self.split(inputs)
        transformed, logabsdet = self.elementwise.map(
            transformed, self._condition(kept, context), inverse
        )
        return self.merge(kept, transformed), logabsdet

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(batch, *event)`` -> outputs of the same shape, logabsdet ``(batch,)``."""
        return self._map(inputs, context, inverse=False)

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Inverse map; logabsdet ``(batch,)`` of the inverse (the negative of forward's)."""
        return self._map(inputs, context, inverse=True)


class AdditiveCoupling(Coupling):
    """NICE's additive coupling: ``y_B = x_B + shift(x_A, c)``, logabsdet 0.

    ``mask`` True marks a transformed entry (``B``); False ones (``A``) pass through.
    See [`Coupling`][flowjoint.Coupling] for the arguments.

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
        *,
        zero_init: bool = True,
    ) -> None:
        super().__init__(
            mask,
            hidden_features,
            num_hidden_layers,
            context_features,
            net,
            elementwise=AdditiveMap(),
            zero_init=zero_init,
        )


class AffineCoupling(Coupling):
    """Real NVP's affine coupling: ``y_B = x_B * exp(s(x_A, c)) + t(x_A, c)``.

    ``logabsdet = sum(s)``, with ``s = soft_clamp(raw, log_scale_bound)``: by default
    one layer may scale by up to ``exp(±3)``; ``None`` is unbounded. ``mask`` True
    marks a transformed entry. See [`Coupling`][flowjoint.Coupling] for the other arguments.

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
        *,
        log_scale_bound: float | None = 3.0,
        zero_init: bool = True,
    ) -> None:
        super().__init__(
            mask,
            hidden_features,
            num_hidden_layers,
            context_features,
            net,
            elementwise=AffineMap(log_scale_bound),
            zero_init=zero_init,
        )


class SplineCoupling(Coupling):
    """Rational-quadratic spline coupling: ``y_B = spline(x_B; theta(x_A, c))``.

    Monotonic splines with ``num_bins`` bins on ``[-tail_bound, tail_bound]`` and the
    identity outside ([`SplineMap`][flowjoint.SplineMap]); the conditioner
    gives ``3 * num_bins - 1`` parameters per transformed entry. More flexible than
    the affine map for multi-modal conditionals (thin rings, sharp edges).
    See [`Coupling`][flowjoint.Coupling] for the other arguments.

    Example:
        >>> import torch
        >>> layer = SplineCoupling(torch.tensor([False, True]), num_bins=4)
        >>> layer(torch.randn(8, 2))[0].shape
        torch.Size([8, 2])
    """

    def __init__(
        self,
        mask: Tensor,
        hidden_features: int = 64,
        num_hidden_layers: int = 2,
        context_features: int = 0,
        net: nn.Module | None = None,
        *,
        num_bins: int = 8,
        tail_bound: float = 3.0,
        zero_init: bool = True,
    ) -> None:
        super().__init__(
            mask,
            hidden_features,
            num_hidden_layers,
            context_features,
            net,
            elementwise=SplineMap(num_bins, tail_bound),
            zero_init=zero_init,
        )
