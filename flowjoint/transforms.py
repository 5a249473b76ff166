"""Transforms: the one log-det contract every flowjoint likelihood goes through.

A transform ``f`` maps data towards noise (the *normalizing* direction) and returns
the log absolute Jacobian determinant of that map, one value per batch item::

    outputs, logabsdet = f(inputs, context)            # outputs = f(inputs)
    log p_in(inputs) = log p_out(outputs) + logabsdet  # change of variables
    inputs_, logabsdet_inv = f.inverse(outputs, context)
    logabsdet_inv == -logabsdet                        # at the matching point

``inputs`` and ``outputs`` are ``(batch, features)``, ``context`` is
``(batch, context_features)`` or ``None`` and ``logabsdet`` is ``(batch,)``, with
the dtype and device of ``inputs``. Every transform here is an
:class:`nflows.transforms.Transform`, so flowjoint and nflows layers compose in
either order.

The building block shared by coupling layers and the VAE's reparametrization is
the conditional element-wise affine map :class:`ConditionalAffine`,
``y = shift(c) + scale(c) * x``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from nflows.transforms import Transform
from torch import Tensor, nn

from flowjoint.nets import MLP

__all__ = [
    "Transform",
    "BlockTransform",
    "Compose",
    "ConditionalAffine",
    "soft_clamp",
    "check_inputs",
    "check_context",
]


# ---------------------------------------------------------------------------
# Argument checks shared by every public entry point.
# ---------------------------------------------------------------------------


def check_inputs(inputs: object, features: int | None, name: str = "inputs") -> None:
    """Raise a clear error unless ``inputs`` is a floating ``(batch, features)`` tensor."""
    if not isinstance(inputs, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(inputs).__name__}")
    if not inputs.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {inputs.dtype}")
    if inputs.dim() != 2:
        raise ValueError(
            f"{name} must have shape (batch, features), got shape {tuple(inputs.shape)}"
        )
    if features is not None and inputs.shape[1] != features:
        raise ValueError(f"{name} must have {features} features, got shape {tuple(inputs.shape)}")


def check_context(
    context: object, batch_size: int, context_features: int, name: str = "context"
) -> None:
    """Raise a clear error unless ``context`` fits a layer with ``context_features``.

    A layer without context (``context_features == 0``) accepts ``None`` and
    ignores a given context, so that unconditional layers compose with
    conditional ones.
    """
    if context_features == 0:
        return
    if context is None:
        raise ValueError(
            f"{name} is required: this layer is conditioned on {context_features} "
            f"context features, got context=None"
        )
    check_inputs(context, context_features, name)
    if context.shape[0] != batch_size:
        raise ValueError(
            f"{name} must have the batch size of the inputs ({batch_size}), "
            f"got shape {tuple(context.shape)}"
        )


def check_positive_int(value: object, name: str, minimum: int = 1) -> int:
    """Return ``value`` if it is an int >= ``minimum``, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


# ---------------------------------------------------------------------------
# The conditional element-wise affine map.
# ---------------------------------------------------------------------------


def soft_clamp(raw: Tensor, bound: float | None) -> Tensor:
    """Map an unconstrained log-scale to ``(-bound, bound)``: ``bound * tanh(raw / bound)``.

    Near zero it is the identity (slope 1), so learning is unaffected for moderate
    scales; far from zero it saturates, so one layer can never scale by more than
    ``exp(bound)`` or less than ``exp(-bound)``. ``bound=None`` leaves ``raw`` as is.
    """
    if bound is None:
        return raw
    return torch.tanh(raw / bound) * bound


class ConditionalAffine(Transform):
    """Conditional element-wise affine map, the Gaussian reparametrization.

    Forward (data -> noise) and its log-det::

        shift, log_scale = net(c)                     # log_scale = soft_clamp(raw)
        y = shift + exp(log_scale) * x
        logabsdet = sum(log_scale)

    With ``x = eps`` and ``c = x_data`` this is the VAE's ``z = mu(x) + sigma(x) * eps``.
    With ``additive=True`` the scale is fixed at 1 (NICE): ``y = shift + x``, log-det 0.

    Args:
        features: number of transformed features ``n``.
        context_features: number of conditioning features (>= 1).
        hidden_features: width of the default MLP conditioner.
        num_hidden_layers: depth of the default MLP conditioner.
        net: optional module replacing the MLP, mapping ``(batch, context_features)``
            to ``(batch, n)`` if additive, else ``(batch, 2n)`` (the shift, then the
            unconstrained log-scale, in that order).
        additive: fix the scale at 1 (NICE's additive coupling).
        log_scale_bound: the soft bound of :func:`soft_clamp` on the log-scale. The
            default 3 lets one layer scale by ``exp(±3)`` (between 0.05 and 20) while
            keeping a badly initialised or diverging conditioner from producing
            ``inf``; ``None`` means unbounded, ``scale = exp(raw)``.
        zero_init: start the default MLP's last layer at zero, so a fresh layer is
            the identity (``shift = 0``, ``scale = 1``).

    Example:
        >>> import torch
        >>> layer = ConditionalAffine(3, context_features=2)
        >>> eps, x = torch.randn(5, 3), torch.randn(5, 2)
        >>> z, logabsdet = layer(eps, context=x)
        >>> z.shape, logabsdet.shape
        (torch.Size([5, 3]), torch.Size([5]))
    """

    def __init__(
        self,
        features: int,
        context_features: int,
        hidden_features: int = 64,
        num_hidden_layers: int = 2,
        net: nn.Module | None = None,
        *,
        additive: bool = False,
        log_scale_bound: float | None = 3.0,
        zero_init: bool = True,
    ) -> None:
        super().__init__()
        self.features = check_positive_int(features, "features")
        self.context_features = check_positive_int(context_features, "context_features")
        if log_scale_bound is not None and not log_scale_bound > 0:
            raise ValueError(f"log_scale_bound must be positive or None, got {log_scale_bound}")
        self.additive = bool(additive)
        self.log_scale_bound = log_scale_bound
        out = features if additive else 2 * features
        if net is None:
            net = MLP(
                context_features,
                out,
                hidden_features=hidden_features,
                num_hidden_layers=num_hidden_layers,
                zero_init=zero_init,
            )
        elif not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        self.net = net
        self._out_features = out

    def extra_repr(self) -> str:
        return (
            f"features={self.features}, context_features={self.context_features}, "
            f"additive={self.additive}, log_scale_bound={self.log_scale_bound}"
        )

    def shift_and_log_scale(self, context: Tensor) -> tuple[Tensor, Tensor | None]:
        """Conditioner output: ``shift`` ``(batch, n)`` and ``log_scale`` ``(batch, n)``.

        ``log_scale`` is ``None`` for the additive map.
        """
        params = self.net(context)
        if params.shape[-1] != self._out_features or params.shape[0] != context.shape[0]:
            raise ValueError(
                f"net must map (batch, {self.context_features}) to "
                f"(batch, {self._out_features}), got output shape {tuple(params.shape)}"
            )
        if self.additive:
            return params, None
        shift, raw = params.chunk(2, dim=-1)  # (batch, n), (batch, n)
        return shift, soft_clamp(raw, self.log_scale_bound)

    # The maps without argument checks, for callers that checked already (couplings).
    # Not named `apply`, which nn.Module uses for recursive initialisation.
    def map(self, inputs: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale = self.shift_and_log_scale(context)
        if log_scale is None:
            return inputs + shift, inputs.new_zeros(inputs.shape[0])
        return torch.addcmul(shift, inputs, log_scale.exp()), log_scale.sum(-1)

    def map_inverse(self, inputs: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale = self.shift_and_log_scale(context)
        if log_scale is None:
            return inputs - shift, inputs.new_zeros(inputs.shape[0])
        return (inputs - shift) * torch.exp(-log_scale), -log_scale.sum(-1)

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Map ``inputs`` ``(batch, n)`` given ``context`` ``(batch, context_features)``."""
        check_inputs(inputs, self.features)
        check_context(context, inputs.shape[0], self.context_features)
        return self.map(inputs, context)

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Inverse map ``x = (y - shift) / scale``; log-det ``-sum(log_scale)``."""
        check_inputs(inputs, self.features)
        check_context(context, inputs.shape[0], self.context_features)
        return self.map_inverse(inputs, context)


# ---------------------------------------------------------------------------
# Composition.
# ---------------------------------------------------------------------------


class BlockTransform(Transform):
    """A transform that can also act on its inputs split into two contiguous blocks.

    ``forward_blocks(first, second, context)`` returns ``(first, second, logabsdet)``
    and equals ``forward`` on ``cat([first, second], 1)`` split at
    :attr:`block_split` (likewise ``inverse_blocks``). :class:`Compose` runs a chain
    of consecutive block transforms with the same ``(features, block_split)`` on the
    two blocks, splitting once and concatenating once instead of at every layer.

    Attributes:
        block_split: width of the first block, or ``None`` when the layer does not
            act on two contiguous blocks (it is then always called whole).
    """

    block_split: int | None = None
    features: int

    def can_fuse(self) -> bool:
        """Whether :class:`Compose` may call the block methods instead of ``forward``."""
        return False

    def forward_blocks(
        self, first: Tensor, second: Tensor, context: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def inverse_blocks(
        self, first: Tensor, second: Tensor, context: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        raise NotImplementedError


def _global_module_hooks() -> bool:
    """True if any global ``nn.Module`` forward hook is registered."""
    module = torch.nn.modules.module
    return bool(
        getattr(module, "_global_forward_hooks", None)
        or getattr(module, "_global_forward_pre_hooks", None)
    )


class Compose(Transform):
    """Transforms applied in list order; the inverse runs in reverse order.

    ``f = f_n o ... o f_1`` and ``logabsdet = sum_i logabsdet_i``, summed out of place.
    The same ``context`` is passed to every layer. Consecutive coupling layers that
    split their features into the same two contiguous blocks (the ``"halves"``
    masks of :func:`~flowjoint.realnvp`) pass the two blocks from one layer to the
    next and are concatenated once, at the end of the chain (see
    :class:`BlockTransform`); the result is the same as calling each layer in turn.

    Args:
        transforms: the layers, flowjoint or nflows transforms.

    Example:
        >>> import torch
        >>> from flowjoint import AffineCoupling, ReversePermutation
        >>> mask = torch.tensor([False, True])
        >>> f = Compose([AffineCoupling(mask), ReversePermutation(2), AffineCoupling(mask)])
        >>> y, logabsdet = f(torch.randn(4, 2))
        >>> logabsdet.shape
        torch.Size([4])
    """

    def __init__(self, transforms: Iterable[Transform]) -> None:
        super().__init__()
        transforms = list(transforms)
        if not transforms:
            raise ValueError("transforms must hold at least one transform, got an empty list")
        for i, t in enumerate(transforms):
            if not isinstance(t, Transform):
                raise TypeError(
                    f"transforms[{i}] must be an nflows/flowjoint Transform, got {type(t).__name__}"
                )
        self.transforms = nn.ModuleList(transforms)

    def __len__(self) -> int:
        return len(self.transforms)

    def __getitem__(self, index: int) -> Transform:
        return self.transforms[index]

    def _cascade(
        self, inputs: Tensor, context: Tensor | None, inverse: bool
    ) -> tuple[Tensor, Tensor]:
        layers = list(self.transforms)
        if inverse:
            layers.reverse()
        fuse = not _global_module_hooks()
        total: Tensor | None = None
        outputs = inputs
        # While a chain of block transforms runs, the features live in two blocks.
        key: tuple[int, int] | None = None
        first = second = inputs
        for layer in layers:
            if fuse and isinstance(layer, BlockTransform) and layer.can_fuse():
                layer_key = (layer.features, layer.block_split)
                if layer_key != key:
                    if key is not None:
                        outputs = torch.cat([first, second], dim=1)  # (batch, features)
                    check_inputs(outputs, layer.features)
                    first, second = outputs.split(
                        [layer.block_split, layer.features - layer.block_split], dim=1
                    )
                    key = layer_key
                method = layer.inverse_blocks if inverse else layer.forward_blocks
                first, second, logabsdet = method(first, second, context)
            else:
                if key is not None:
                    outputs = torch.cat([first, second], dim=1)  # (batch, features)
                    key = None
                if inverse:
                    outputs, logabsdet = layer.inverse(outputs, context)
                else:
                    outputs, logabsdet = layer(outputs, context)
            total = logabsdet if total is None else total + logabsdet
        if key is not None:
            outputs = torch.cat([first, second], dim=1)  # (batch, features)
        if not (isinstance(total, Tensor) and total.shape == (inputs.shape[0],)):
            # A layer returned a Python number or a broadcastable scalar.
            total = inputs.new_zeros(inputs.shape[0]) + total
        return outputs, total

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._cascade(inputs, context, inverse=False)

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._cascade(inputs, context, inverse=True)
