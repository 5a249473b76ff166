"""Transforms: the one contract every flowjoint likelihood goes through.

A transform ``f`` maps data towards noise (the *normalizing* direction) and returns
the log absolute Jacobian determinant of that map, one value per batch item::

    outputs, logabsdet = f(inputs, context)            # outputs = f(inputs)
    log p_in(inputs) = log p_out(outputs) + logabsdet  # change of variables
    inputs_, logabsdet_inv = f.inverse(outputs, context)
    logabsdet_inv == -logabsdet                        # at the matching point

``inputs`` and ``outputs`` are ``(batch, *event_shape)`` (vectors ``(batch, D)``,
images ``(batch, C, H, W)``), ``context`` is ``(batch, context_features)`` or
``None`` and ``logabsdet`` is ``(batch,)``, with the dtype and device of ``inputs``.
Every transform here is an `nflows.transforms.Transform`, so flowjoint and
nflows layers compose in either order.

A **stochastic** layer ([`StochasticTransform`][flowjoint.StochasticTransform]; SurVAE
Flows' view) draws its output in the data -> noise direction,
``outputs ~ q(outputs | inputs)``, and returns in place of the log-det its one-sample
likelihood contribution::

    outputs, log_weight = f(inputs, context, num_samples=K)  # K draws per input row
    log_weight = log p(inputs | outputs) - log q(outputs | inputs)

so that along a stack ``sum log_weight + log p_base(noise)`` is a one-sample lower
bound on ``log p(inputs)`` (exact when every layer is a bijection, whose
contribution is its log-det). With ``num_samples=K`` the outputs hold ``K``
consecutive rows per input row. Its inverse is the generative direction (drop the
augmented noise, floor a dequantized value); no density is defined there, so the
second value it returns is NaN.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import torch
from nflows.transforms import Transform
from torch import Tensor, nn

from flowjoint.checks import check_inputs, check_positive_int

__all__ = [
    "BlockTransform",
    "Compose",
    "SavedSettings",
    "StochasticTransform",
    "Transform",
    "has_hooks",
    "is_stochastic",
    "repeat_rows",
    "stochastic_layers",
]


#: The state_dict key (after a layer's prefix) of its saved settings.
SETTINGS_KEY = "saved_settings"


class SavedSettings:
    """A layer whose computation depends on settings that are not tensors.

    ``settings()`` returns them (numbers, strings, lists). They travel in the
    ``state_dict`` as a tensor under the key ``<prefix>saved_settings`` (the settings as
    UTF-8 JSON, ``uint8``), so every entry of a state stays a tensor; loading a state
    saved with other settings raises ``ValueError`` naming them, instead of computing
    with this layer's settings on the other layer's weights. A state without the key
    (saved before layers recorded their settings) loads as before. As with torch's own
    errors during loading, the layers visited before the refused one have already
    copied their tensors: build the model with the saved settings and load again.
    """

    def settings(self) -> dict[str, object]:
        raise NotImplementedError

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)  # type: ignore[misc]
        text = json.dumps(self.settings(), sort_keys=True).encode()
        destination[prefix + SETTINGS_KEY] = torch.tensor(list(text), dtype=torch.uint8)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object) -> None:
        key = prefix + SETTINGS_KEY
        saved = state_dict.pop(key, None)
        try:
            if saved is not None:
                self._check_settings(saved)
            super()._load_from_state_dict(state_dict, prefix, *args)  # type: ignore[misc]
        finally:
            if saved is not None:
                state_dict[key] = saved

    def _check_settings(self, saved: object) -> None:
        current = json.loads(json.dumps(self.settings(), sort_keys=True))
        try:
            stored = json.loads(bytes(saved.tolist()).decode())  # type: ignore[union-attr]
        except (AttributeError, TypeError, ValueError, UnicodeDecodeError):
            stored = None
        if not isinstance(stored, dict):
            raise ValueError(
                f"cannot load a {type(self).__name__}: its saved settings are unreadable "
                f"({type(saved).__name__}); save the state again with this version"
            )
        if stored != current:
            differ = sorted(
                k for k in set(current) | set(stored) if stored.get(k) != current.get(k)
            )
            raise ValueError(
                f"cannot load a {type(self).__name__} saved with "
                f"{ {k: stored.get(k) for k in differ} } into one with "
                f"{ {k: current.get(k) for k in differ} }: build the layer with the saved settings"
            )


class StochasticTransform(Transform):
    """A layer that draws its output in the data -> noise direction.

    Subclasses implement ``forward(inputs, context=None, num_samples=1)`` returning
    ``(outputs, log_weight)`` with ``num_samples`` consecutive output rows per input
    row and ``log_weight = log p(inputs | outputs) - log q(outputs | inputs)``
    ``(batch * num_samples,)``, and ``inverse(inputs, context=None)`` returning the
    generative direction's outputs and a NaN ``(batch,)`` (no density there).
    """

    stochastic = True

    def forward(
        self, inputs: Tensor, context: Tensor | None = None, num_samples: int = 1
    ) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


def is_stochastic(transform: nn.Module) -> bool:
    """Whether ``transform`` (or a layer of a [`Compose`][flowjoint.Compose]) draws forward."""
    if isinstance(transform, StochasticTransform):
        return True
    return isinstance(transform, Compose) and transform.stochastic


def stochastic_layers(transform: nn.Module, prefix: str = "transform") -> list[str]:
    """Names (``transform[0]``, ...) of the stochastic layers in ``transform``."""
    if isinstance(transform, StochasticTransform):
        return [f"{prefix} ({type(transform).__name__})"]
    if isinstance(transform, Compose):
        names: list[str] = []
        for i, layer in enumerate(transform):
            names += stochastic_layers(layer, f"{prefix}[{i}]")
        return names
    return []


_MODULE = torch.nn.modules.module
_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
)
_GLOBAL_HOOK_DICTS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)


def has_hooks(module: nn.Module) -> bool:
    """True if ``module`` or every module (globally) has a forward or backward hook."""
    return any_hooks((module,))


def any_hooks(modules: Iterable[nn.Module]) -> bool:
    """True if one of ``modules``, or every module (globally), has a forward or backward
    hook; one look at the global hooks for all of them."""
    if any(getattr(_MODULE, name, None) for name in _GLOBAL_HOOK_DICTS):
        return True
    for module in modules:
        for name in _HOOK_DICTS:
            if getattr(module, name, None):
                return True
    return False


class BlockTransform(Transform):
    """A transform that can also act on its inputs split into two contiguous blocks.

    ``forward_blocks(first, second, context)`` returns ``(first, second, logabsdet)``
    and equals ``forward`` on ``cat([first, second], 1)`` split at
    `block_split` along dimension 1 (likewise ``inverse_blocks``).
    [`Compose`][flowjoint.Compose] runs a chain of consecutive block transforms with the same
    ``(features, block_split)`` on the two blocks, splitting once and concatenating
    once instead of at every layer.

    Attributes:
        features: size of dimension 1 of the inputs.
        block_split: width of the first block, or ``None`` when the layer does not
            act on two contiguous blocks (it is then always called whole).
    """

    block_split: int | None = None
    features: int

    def can_fuse(self) -> bool:
        """Whether [`Compose`][flowjoint.Compose] may call the block methods, not ``forward``."""
        return False

    def forward_blocks(
        self, first: Tensor, second: Tensor, context: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def inverse_blocks(
        self, first: Tensor, second: Tensor, context: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        raise NotImplementedError


def _rows(state: object) -> int:
    """Batch size of a layer's outputs: a tensor's, or the last part of a tuple state's."""
    if isinstance(state, Tensor):
        return state.shape[0]
    return state[-1].shape[0]


def repeat_rows(value: Tensor | None, rows: int) -> Tensor | None:
    """``value`` ``(n, ...)`` with each row repeated ``rows // n`` times, consecutively.

    After a stochastic layer drew ``K`` outputs per row, row ``i`` of what came before
    it (a context, a log-det) belongs to output rows ``i K .. i K + K - 1``. ``None``
    and tensors that already have ``rows`` rows are returned as they are.
    """
    if value is None or value.shape[0] == rows or value.shape[0] == 0:
        return value
    return value.repeat_interleave(rows // value.shape[0], dim=0)


def spreads_over(part_rows: int, rows: int) -> bool:
    """Whether `repeat_rows` can spread ``part_rows`` rows over ``rows``: equal, or a
    non-zero divisor (one row for each of several draws)."""
    return part_rows == rows or (part_rows > 0 and rows % part_rows == 0)


def check_transform_list(transforms: Iterable[Transform], name: str) -> list[Transform]:
    """``transforms`` as a non-empty list of nflows/flowjoint transforms, else raise."""
    transforms = list(transforms)
    if not transforms:
        raise ValueError(f"{name} must hold at least one transform, got an empty list")
    for i, t in enumerate(transforms):
        if not isinstance(t, Transform):
            raise TypeError(
                f"{name}[{i}] must be an nflows/flowjoint Transform, got {type(t).__name__}"
            )
    return transforms


class Compose(Transform):
    """Transforms applied in list order; the inverse runs in reverse order.

    ``f = f_n o ... o f_1`` and ``logabsdet = sum_i logabsdet_i``, summed out of place.
    The same ``context`` is passed to every layer. A stochastic layer's contribution
    is summed like a log-det; when it draws ``num_samples`` rows per input, the sum
    so far and the context are repeated for its draws, and the layers after it see
    ``batch * num_samples`` rows.

    Consecutive coupling layers that split their features into the same two
    contiguous blocks (the ``"halves"`` masks of [`realnvp`][flowjoint.realnvp]) pass the
    two blocks from one layer to the next and are concatenated once, at the end of
    the chain (see `BlockTransform`); the result, the gradients and the hooks
    are the same as calling each layer in turn (a layer with a hook is called whole).

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
        self.transforms = nn.ModuleList(check_transform_list(transforms, "transforms"))

    @property
    def stochastic(self) -> bool:
        """Whether any layer draws in its forward (a stochastic layer)."""
        return any(is_stochastic(t) for t in self.transforms)

    def __len__(self) -> int:
        return len(self.transforms)

    def __getitem__(self, index: int | slice) -> Transform:
        if isinstance(index, slice):
            return Compose(list(self.transforms)[index])
        return self.transforms[index]

    def __iter__(self):  # noqa: ANN204
        return iter(self.transforms)

    def _cascade(
        self, inputs: Tensor, context: Tensor | None, inverse: bool, num_samples: int
    ) -> tuple[Tensor, Tensor]:
        layers = list(self.transforms)
        if inverse:
            layers.reverse()
        total: Tensor | None = None
        outputs = inputs
        # While a chain of block transforms runs, the features live in two blocks.
        key: tuple[int, int] | None = None
        first = second = inputs
        for layer in layers:
            if isinstance(layer, BlockTransform) and layer.can_fuse() and not has_hooks(layer):
                layer_key = (layer.features, layer.block_split)
                if layer_key != key:
                    if key is not None:
                        outputs = torch.cat([first, second], dim=1)  # (batch, features, ...)
                    check_inputs(outputs, None, channels=layer.features)
                    first, second = outputs.split(
                        [layer.block_split, layer.features - layer.block_split], dim=1
                    )
                    key = layer_key
                method = layer.inverse_blocks if inverse else layer.forward_blocks
                first, second, logabsdet = method(first, second, context)
            else:
                if key is not None:
                    outputs = torch.cat([first, second], dim=1)  # (batch, features, ...)
                    key = None
                if inverse:
                    outputs, logabsdet = layer.inverse(outputs, context)
                elif is_stochastic(layer):
                    outputs, logabsdet = layer(outputs, context, num_samples=num_samples)
                    num_samples = 1  # the layers after it see one row per draw
                    context = repeat_rows(context, logabsdet.shape[0])
                    total = repeat_rows(total, logabsdet.shape[0])
                else:
                    outputs, logabsdet = layer(outputs, context)
            total = logabsdet if total is None else total + logabsdet
        if key is not None:
            outputs = torch.cat([first, second], dim=1)  # (batch, features, ...)
        rows = _rows(outputs)
        if not (isinstance(total, Tensor) and total.shape == (rows,)):
            # A layer returned a Python number or a broadcastable scalar.
            reference = outputs if isinstance(outputs, Tensor) else outputs[-1]
            total = reference.new_zeros(rows) + total
        return outputs, total

    def forward(
        self, inputs: Tensor, context: Tensor | None = None, num_samples: int = 1
    ) -> tuple[Tensor, Tensor]:
        """Run the layers in order; ``num_samples`` draws per row at the first stochastic one."""
        if num_samples != 1:
            check_positive_int(num_samples, "num_samples")
            if not self.stochastic:
                raise ValueError(
                    f"num_samples={num_samples} needs a stochastic layer to draw from; "
                    "every layer of this Compose is a bijection"
                )
        return self._cascade(inputs, context, inverse=False, num_samples=num_samples)

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Run the layers' inverses in reverse order."""
        return self._cascade(inputs, context, inverse=True, num_samples=1)
