"""Element-wise maps and the conditional element-wise map, the seed's building block.

An element-wise map ``y = h(x; theta)`` acts on every scalar of ``x`` with its own
parameters ``theta``, so its Jacobian is diagonal. A conditioner network computes
``theta`` from a context ``c``; the result,
[`ConditionalElementwise`][flowjoint.ConditionalElementwise], is the building block
shared by coupling layers (``c`` = the kept part), the VAE's reparametrization
(``c = x``, the map acts on ``eps``) and variational dequantization::

    theta = net(c)                      # (batch, num_params * n, *rest)
    y = h(x; theta)                     # element-wise
    logabsdet = sum log |h'(x; theta)|  # (batch,)

Parameter layout: a conditioner's output stacks the parameter kinds in blocks along
dimension 1: for the affine map ``(batch, 2n, *rest)`` is every shift, then every
unconstrained log-scale; for images ``(batch, 2C, H, W)`` is the shift channels,
then the log-scale channels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from flowjoint.checks import (
    check_event_shape,
    check_inputs,
    check_log_scale_bound,
    check_positive_int,
    sum_event,
)
from flowjoint.clamp import _signed_soft_clamp, _soft_clamp
from flowjoint.nets import MLP
from flowjoint.transforms import (
    SavedSettings,
    Transform,
    has_hooks,
    repeat_rows,
    spreads_over,
)

__all__ = [
    "AdditiveMap",
    "AffineMap",
    "ConditionalAffine",
    "ConditionalElementwise",
    "ElementwiseMap",
]


class ElementwiseMap(nn.Module):
    """An invertible element-wise map ``y = h(x; theta)`` with ``num_params`` parameters.

    ``forward(inputs, params)`` returns the outputs and the element-wise
    ``log |dh/dx|`` (the shape of ``inputs``), or ``None`` where it is zero
    everywhere; ``inverse`` returns ``log |dh^-1/dy|`` at the matching point.
    ``params`` is ``(batch, num_params * n, *rest)`` for inputs ``(batch, n, *rest)``,
    the kinds stacked in blocks along dimension 1.
    """

    num_params: int

    def forward(self, inputs: Tensor, params: Tensor) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def inverse(self, inputs: Tensor, params: Tensor) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError


class AffineMap(SavedSettings, ElementwiseMap):
    """``y = shift + exp(log_scale) * x``, ``log_scale = soft_clamp(raw, log_scale_bound)``.

    Args:
        log_scale_bound: soft bound on the log-scale ([`soft_clamp`][flowjoint.soft_clamp]).
            The default 3 lets one layer scale by ``exp(±3)`` (between 0.05 and 20) while keeping a
            badly initialised or diverging conditioner from producing ``inf``; ``None``
            means unbounded (``scale = exp(raw)``). At most 80, beyond which ``exp``
            overflows in float32.
    """

    num_params = 2

    def __init__(self, log_scale_bound: float | None = 3.0) -> None:
        super().__init__()
        self.log_scale_bound = check_log_scale_bound(log_scale_bound)

    def extra_repr(self) -> str:
        return f"log_scale_bound={self.log_scale_bound}"

    def settings(self) -> dict[str, object]:
        return {"log_scale_bound": self.log_scale_bound}

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls._own_log_scale = cls.shift_and_log_scale is AffineMap.shift_and_log_scale

    _own_log_scale = True  # shift_and_log_scale is this class's: inverse may fold the sign

    def shift_and_log_scale(self, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, raw = params.chunk(2, dim=1)  # (batch, n, *rest) each
        return shift, _soft_clamp(raw, self.log_scale_bound)

    def forward(self, inputs: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale = self.shift_and_log_scale(params)
        return torch.addcmul(shift, inputs, log_scale.exp()), log_scale

    def inverse(self, inputs: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, neg = self._shift_and_negated_log_scale(params)
        return (inputs - shift) * neg.exp(), neg

    def _shift_and_negated_log_scale(self, params: Tensor) -> tuple[Tensor, Tensor]:
        """``shift, -log_scale``; with this class's clamp, the negation is folded into it
        (one kernel fewer, the same number as negating the forward's log-scale)."""
        if not type(self)._own_log_scale or "shift_and_log_scale" in self.__dict__:
            # another log-scale (a subclass's, or set on this instance): negate a copy
            shift, log_scale = self.shift_and_log_scale(params)
            return shift, log_scale.neg()
        shift, raw = params.chunk(2, dim=1)  # (batch, n, *rest) each
        if self.log_scale_bound is None:
            return shift, raw.neg()
        return shift, _signed_soft_clamp(raw, self.log_scale_bound, -1.0)


class AdditiveMap(ElementwiseMap):
    """``y = x + shift``: NICE's volume-preserving map (log-det zero)."""

    num_params = 1

    def forward(self, inputs: Tensor, params: Tensor) -> tuple[Tensor, None]:
        return inputs + params, None

    def inverse(self, inputs: Tensor, params: Tensor) -> tuple[Tensor, None]:
        return inputs - params, None


class ConditionalElementwise(Transform):
    """Element-wise map whose parameters a network computes from a context.

    Forward (data -> noise) and its log-det::

        theta = net(c)
        y = h(x; theta)
        logabsdet = sum log |h'(x; theta)|

    A context row may condition several consecutive input rows (``K`` draws of the
    same example): the network then runs once per context row.

    Args:
        elementwise: the map ``h`` ([`AffineMap`][flowjoint.AffineMap],
            [`AdditiveMap`][flowjoint.AdditiveMap], [`SplineMap`][flowjoint.SplineMap] or
            your own [`ElementwiseMap`][flowjoint.ElementwiseMap]).
        features: the event shape of ``x``: an int ``n`` for vectors ``(batch, n)``, or
            a shape such as ``(C, H, W)``.
        context_features: size of dimension 1 of the context (>= 1).
        net: module mapping the context ``(batch, context_features, *rest)`` to
            ``(batch, num_params * n, *rest)``; required unless both are vectors, where
            the default is an MLP.
        hidden_features: the default MLP's width.
        num_hidden_layers: the default MLP's depth.
        zero_init: start the default MLP's last layer at zero (for the affine,
            additive and spline maps, a fresh layer is then the identity).
    """

    def __init__(
        self,
        elementwise: ElementwiseMap,
        features: int | Sequence[int],
        context_features: int,
        net: nn.Module | None = None,
        hidden_features: int | Sequence[int] = 64,
        num_hidden_layers: int = 2,
        zero_init: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(elementwise, ElementwiseMap):
            raise TypeError(f"elementwise must be an ElementwiseMap, got {elementwise!r}")
        self.event_shape = check_event_shape(features, "features")
        self.features = self.event_shape[0]
        self.context_features = check_positive_int(context_features, "context_features")
        self.function = elementwise
        self._param_channels = elementwise.num_params * self.features
        if net is None:
            if len(self.event_shape) != 1:
                raise ValueError(
                    f"net is required for features of shape {self.event_shape} (the default "
                    f"conditioner is an MLP on vectors)"
                )
            net = MLP(
                context_features,
                self._param_channels,
                hidden_features=hidden_features,
                num_hidden_layers=num_hidden_layers,
                zero_init=zero_init,
            )
        elif not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        self.net = net

    def extra_repr(self) -> str:
        return f"features={self.event_shape}, context_features={self.context_features}"

    def params(self, context: Tensor, rest: tuple[int, ...] | None = None) -> Tensor:
        """The conditioner's output ``(batch, num_params * n, *rest)``, shape-checked.

        ``rest`` is the inputs' shape after dimension 1 (default: the declared
        ``features[1:]``).
        """
        params = self.net(context)
        rest = self.event_shape[1:] if rest is None else tuple(rest)
        expected = (context.shape[0], self._param_channels, *rest)
        if params.shape != expected:
            raise ValueError(
                f"net must map the context {tuple(context.shape)} to "
                f"{expected}, got output shape {tuple(params.shape)}"
            )
        return params

    def conditioned_params(self, inputs: Tensor, context: Tensor) -> Tensor:
        """`params` for ``inputs``, repeated if a context row conditions several rows."""
        return repeat_rows(self.params(context, inputs.shape[2:]), inputs.shape[0])

    # Unchecked maps, for callers that checked already (couplings, stochastic layers).
    def run(self, inputs: Tensor, context: Tensor, inverse: bool = False) -> tuple[Tensor, Tensor]:
        """``(outputs, logabsdet (batch,))``; context rows may divide the input rows."""
        params = self.conditioned_params(inputs, context)
        outputs, logabsdet = self.function_call(inverse)(inputs, params)
        if logabsdet is None:
            return outputs, inputs.new_zeros(inputs.shape[0])
        return outputs, sum_event(logabsdet)

    def function_call(self, inverse: bool) -> Callable[..., tuple[Tensor, Tensor | None]]:
        """The map's direction as a plain method, or as a module call when it has hooks."""
        function = self.function
        if inverse:
            return function.inverse
        return function if has_hooks(function) else function.forward

    def map(self, inputs: Tensor, context: Tensor, inverse: bool = False) -> tuple[Tensor, Tensor]:
        """[`run`][flowjoint.ConditionalElementwise.run] through a module call when hooks are set.

        Layers call ``map`` instead of calling this module, skipping the argument checks
        they have made; when this module (or every module) has a hook, the forward
        direction goes through ``__call__``, so that the hooks fire.
        """
        if not inverse and has_hooks(self):
            return self(inputs, context)
        return self.run(inputs, context, inverse)

    def _check(self, inputs: Tensor, context: Tensor | None) -> None:
        if len(self.event_shape) == 1:  # a channel split may carry positions after dim 1
            check_inputs(inputs, None, channels=self.features)
        else:
            check_inputs(inputs, self.event_shape)
        check_inputs(context, None, "context", channels=self.context_features)
        rows = inputs.shape[0]
        if not spreads_over(context.shape[0], rows):
            raise ValueError(
                f"context must have the batch size of the inputs ({rows}) or a divisor of it "
                f"(one context row for several draws), got shape {tuple(context.shape)}"
            )

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``inputs`` ``(batch, *features)``, ``context`` ``(batch, context_features, ...)``."""
        self._check(inputs, context)
        return self.run(inputs, context)

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The inverse map; logabsdet ``(batch,)`` of the inverse."""
        self._check(inputs, context)
        return self.run(inputs, context, inverse=True)


class ConditionalAffine(ConditionalElementwise):
    """Conditional element-wise affine map, the Gaussian reparametrization.

    Forward (data -> noise) and its log-det::

        shift, log_scale = net(c)                     # log_scale = soft_clamp(raw)
        y = shift + exp(log_scale) * x
        logabsdet = sum(log_scale)

    With ``x = eps`` and ``c = x_data`` this is the VAE's ``z = mu(x) + sigma(x) * eps``.
    With ``additive=True`` the scale is fixed at 1 (NICE): ``y = shift + x``, log-det 0.

    Args:
        features: number of transformed features ``n`` (or an event shape, with ``net``).
        context_features: number of conditioning features (>= 1).
        hidden_features: width of the default MLP conditioner.
        num_hidden_layers: depth of the default MLP conditioner.
        net: optional module replacing the MLP, mapping ``(batch, context_features)``
            to ``(batch, n)`` if additive, else ``(batch, 2n)`` (the shift, then the
            unconstrained log-scale, in that order).
        additive: fix the scale at 1 (NICE's additive coupling).
        log_scale_bound: the soft bound of [`soft_clamp`][flowjoint.soft_clamp] on the log-scale
            (see [`AffineMap`][flowjoint.AffineMap]); ``None`` means unbounded.
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
        features: int | Sequence[int],
        context_features: int,
        hidden_features: int | Sequence[int] = 64,
        num_hidden_layers: int = 2,
        net: nn.Module | None = None,
        *,
        additive: bool = False,
        log_scale_bound: float | None = 3.0,
        zero_init: bool = True,
    ) -> None:
        elementwise = AdditiveMap() if additive else AffineMap(log_scale_bound)
        super().__init__(
            elementwise,
            features,
            context_features,
            net,
            hidden_features,
            num_hidden_layers,
            zero_init,
        )
        self.additive = bool(additive)

    @property
    def log_scale_bound(self) -> float | None:
        """The soft bound on the log-scale (``None`` for the additive map)."""
        return None if self.additive else self.function.log_scale_bound

    def shift_and_log_scale(self, context: Tensor) -> tuple[Tensor, Tensor | None]:
        """Conditioner output: ``shift`` and ``log_scale``, each ``(batch, *features)``.

        ``log_scale`` is ``None`` for the additive map.
        """
        params = self.params(context)
        if self.additive:
            return params, None
        return self.function.shift_and_log_scale(params)
