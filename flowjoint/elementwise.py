"""Element-wise maps and the conditional element-wise map, the seed's building block.

An element-wise map ``y = h(x; theta)`` acts on every scalar of ``x`` with its own
parameters ``theta``, so its Jacobian is diagonal. A conditioner network computes
``theta`` from a context ``c``; the result, :class:`ConditionalElementwise`, is the
building block shared by coupling layers (``c`` = the kept part), the VAE's
reparametrization (``c = x``, the map acts on ``eps``) and variational
dequantization::

    theta = net(c)                      # (batch, num_params * n, *rest)
    y = h(x; theta)                     # element-wise
    logabsdet = sum log |h'(x; theta)|  # (batch,)

Parameter layout: a conditioner's output stacks the parameter kinds in blocks along
dimension 1: for the affine map ``(batch, 2n, *rest)`` is every shift, then every
unconstrained log-scale; for images ``(batch, 2C, H, W)`` is the shift channels,
then the log-scale channels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from nflows.transforms import Transform
from torch import Tensor, nn

from flowjoint.checks import (
    check_context,
    check_event_shape,
    check_inputs,
    check_log_scale_bound,
    check_number,
    check_positive_int,
    sum_event,
)
from flowjoint.nets import MLP

__all__ = [
    "AdditiveMap",
    "AffineMap",
    "ConditionalAffine",
    "ConditionalElementwise",
    "ElementwiseMap",
    "SplineMap",
    "rational_quadratic_spline",
    "soft_clamp",
]


def soft_clamp(raw: Tensor, bound: float | None) -> Tensor:
    """Map an unconstrained log-scale into ``(-bound, bound)``: ``bound * tanh(raw / bound)``.

    Near zero it is the identity (slope 1), so learning is unaffected for moderate
    scales; far from zero it saturates, so one layer can never scale by more than
    ``exp(bound)`` or less than ``exp(-bound)``. ``bound=None`` leaves ``raw`` as is.
    """
    if bound is None:
        return raw
    return torch.tanh(raw / bound) * bound


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


class AffineMap(ElementwiseMap):
    """``y = shift + exp(log_scale) * x``, ``log_scale = soft_clamp(raw, log_scale_bound)``.

    Args:
        log_scale_bound: soft bound on the log-scale (:func:`soft_clamp`). The default 3
            lets one layer scale by ``exp(±3)`` (between 0.05 and 20) while keeping a
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

    def shift_and_log_scale(self, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, raw = params.chunk(2, dim=1)  # (batch, n, *rest) each
        return shift, soft_clamp(raw, self.log_scale_bound)

    def forward(self, inputs: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale = self.shift_and_log_scale(params)
        return torch.addcmul(shift, inputs, log_scale.exp()), log_scale

    def inverse(self, inputs: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale = self.shift_and_log_scale(params)
        return (inputs - shift) * torch.exp(-log_scale), -log_scale


class AdditiveMap(ElementwiseMap):
    """``y = x + shift``: NICE's volume-preserving map (log-det zero)."""

    num_params = 1

    def forward(self, inputs: Tensor, params: Tensor) -> tuple[Tensor, None]:
        return inputs + params, None

    def inverse(self, inputs: Tensor, params: Tensor) -> tuple[Tensor, None]:
        return inputs - params, None


def _spline_knots(raw: Tensor, bound: float, min_size: float) -> Tensor:
    """Knots ``(..., K + 1)`` from ``-bound`` to ``bound``: bin sizes ``softmax(raw)``, floored.

    Each bin gets at least ``min_size`` of the interval; the two ends are exact, so the
    spline meets the identity outside without a float-rounding step.
    """
    num_bins = raw.shape[-1]
    sizes = min_size + (1 - min_size * num_bins) * torch.softmax(raw, dim=-1)  # (..., K)
    inner = torch.cumsum(sizes[..., :-1], dim=-1)  # (..., K - 1)
    knots = F.pad(F.pad(inner, (1, 0), value=0.0), (0, 1), value=1.0)  # (..., K + 1)
    return (2 * bound) * knots - bound


def rational_quadratic_spline(
    inputs: Tensor,
    widths: Tensor,
    heights: Tensor,
    derivatives: Tensor,
    inverse: bool = False,
    bound: float = 3.0,
    min_bin_width: float = 1e-3,
    min_bin_height: float = 1e-3,
    min_derivative: float = 1e-3,
) -> tuple[Tensor, Tensor]:
    """Monotonic rational-quadratic spline on ``[-bound, bound]``, identity outside.

    In the bin ``[x_k, x_{k+1}]`` with heights ``y_k``, slope ``s = dy / dx`` and knot
    derivatives ``d_k``, ``t = (x - x_k) / dx``::

        y = y_k + dy (s t^2 + d_k t (1 - t)) / (s + (d_k + d_{k+1} - 2 s) t (1 - t))

    The inverse solves the quadratic in ``t`` with the stable root; ``t`` is clipped to
    ``[0, 1]``, so float rounding can neither pick a point outside the bin nor make the
    log-derivative NaN. Every point is computed (inputs outside are clamped first and
    their result discarded), without boolean indexing or a data-dependent branch.

    Args:
        inputs: ``(...)``, any shape.
        widths, heights: unnormalised bin sizes ``(..., K)``.
        derivatives: unconstrained inner knot derivatives ``(..., K - 1)``; the knot
            derivative is ``min_derivative + softplus(derivatives)``, and 1 at both ends
            (the slope of the identity outside).
        inverse: evaluate the inverse map.
        bound: half-width of the interval.
        min_bin_width, min_bin_height, min_derivative: floors (see :class:`SplineMap`).

    Returns:
        ``outputs`` and the element-wise ``log |dy/dx|`` (of the inverse if ``inverse``),
        both of the shape of ``inputs``.

    References:
        Neural Spline Flows. Durkan, Bekasov, Murray, Papamakarios, 2019.
        arXiv:1906.04032.
    """
    inside = (inputs >= -bound) & (inputs <= bound)
    x = inputs.clamp(-bound, bound)
    knots_x = _spline_knots(widths, bound, min_bin_width)  # (..., K + 1)
    knots_y = _spline_knots(heights, bound, min_bin_height)  # (..., K + 1)
    slopes = F.pad(min_derivative + F.softplus(derivatives), (1, 1), value=1.0)  # (..., K + 1)
    knots = knots_y if inverse else knots_x
    bin_index = (x.unsqueeze(-1) >= knots[..., 1:-1]).sum(-1, keepdim=True)  # (..., 1)
    table = torch.stack(
        [
            knots_x[..., :-1],
            knots_x[..., 1:],
            knots_y[..., :-1],
            knots_y[..., 1:],
            slopes[..., :-1],
            slopes[..., 1:],
        ],
        dim=-2,
    )  # (..., 6, K)
    index = bin_index.unsqueeze(-2).expand(*bin_index.shape[:-1], 6, 1)  # (..., 6, 1)
    x0, x1, y0, y1, d0, d1 = table.gather(-1, index).squeeze(-1).unbind(-1)  # (...) each
    bin_width, bin_height = x1 - x0, y1 - y0
    s = bin_height / bin_width
    curvature = d0 + d1 - 2 * s
    if inverse:
        dy = x - y0
        a = dy * curvature + bin_height * (s - d0)
        b = bin_height * d0 - dy * curvature
        c = -s * dy
        discriminant = (b * b - 4 * a * c).clamp_min(0.0)
        t = ((2 * c) / (-b - torch.sqrt(discriminant))).clamp(0.0, 1.0)
        outputs = x0 + t * bin_width
    else:
        t = (x - x0) / bin_width
    t_1mt = t * (1 - t)
    denominator = s + curvature * t_1mt
    if not inverse:
        outputs = y0 + bin_height * (s * t * t + d0 * t_1mt) / denominator
    numerator = s * s * (d1 * t * t + 2 * s * t_1mt + d0 * (1 - t) * (1 - t))
    logabsdet = torch.log(numerator) - 2 * torch.log(denominator)
    if inverse:
        logabsdet = -logabsdet
    return torch.where(inside, outputs, inputs), torch.where(inside, logabsdet, 0.0)


class SplineMap(ElementwiseMap):
    """Monotonic rational-quadratic spline on ``[-tail_bound, tail_bound]``, identity outside.

    ``num_bins`` bins with ``3 * num_bins - 1`` parameters per scalar (widths, heights,
    inner derivatives), evaluated by :func:`rational_quadratic_spline` (nflows'
    parametrisation with linear tails). The raw derivatives are offset so that
    all-zero parameters give the identity (uniform bins, unit derivatives), like a
    zero-initialised affine map; nflows itself starts at derivative ``softplus(0) = 0.69``.

    Args:
        num_bins: number of bins ``K`` (>= 2).
        tail_bound: half-width ``B`` of the interval where the spline acts.
        min_bin_width, min_bin_height, min_derivative: floors that keep the spline
            strictly monotonic and invertible in floating point (nflows' defaults).

    References:
        Neural Spline Flows. Durkan, Bekasov, Murray, Papamakarios, 2019.
        arXiv:1906.04032.
    """

    def __init__(
        self,
        num_bins: int = 8,
        tail_bound: float = 3.0,
        min_bin_width: float = 1e-3,
        min_bin_height: float = 1e-3,
        min_derivative: float = 1e-3,
    ) -> None:
        super().__init__()
        self.num_bins = check_positive_int(num_bins, "num_bins", minimum=2)
        self.tail_bound = check_number(tail_bound, "tail_bound", low=0.0, low_open=True)
        for name, value in (("min_bin_width", min_bin_width), ("min_bin_height", min_bin_height)):
            check_number(value, name, low=0.0, high=1.0 / num_bins, low_open=True, high_open=True)
        self.min_bin_width, self.min_bin_height = float(min_bin_width), float(min_bin_height)
        self.min_derivative = check_number(
            min_derivative, "min_derivative", low=0.0, high=1.0, low_open=True, high_open=True
        )
        self.num_params = 3 * num_bins - 1
        # softplus(offset) + min_derivative = 1: zero parameters give unit derivatives.
        self.derivative_offset = math.log(math.expm1(1.0 - self.min_derivative))

    def extra_repr(self) -> str:
        return f"num_bins={self.num_bins}, tail_bound={self.tail_bound}"

    def _run(self, inputs: Tensor, params: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        k = self.num_bins
        theta = params.unflatten(1, (self.num_params, -1)).movedim(1, -1)  # (b, n, *rest, P)
        return rational_quadratic_spline(
            inputs,
            theta[..., :k],
            theta[..., k : 2 * k],
            theta[..., 2 * k :] + self.derivative_offset,
            inverse=inverse,
            bound=self.tail_bound,
            min_bin_width=self.min_bin_width,
            min_bin_height=self.min_bin_height,
            min_derivative=self.min_derivative,
        )

    def forward(self, inputs: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self._run(inputs, params, inverse=False)

    def inverse(self, inputs: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self._run(inputs, params, inverse=True)


def _repeat_rows(params: Tensor, rows: int) -> Tensor:
    """``params`` computed once per context row, repeated for the ``rows`` inputs it conditions.

    A context row conditions ``rows // len(params)`` consecutive input rows (the draws
    of a stochastic layer for one example).
    """
    if params.shape[0] == rows:
        return params
    return params.repeat_interleave(rows // params.shape[0], dim=0)


class ConditionalElementwise(Transform):
    """Element-wise map whose parameters a network computes from a context.

    Forward (data -> noise) and its log-det::

        theta = net(c)
        y = h(x; theta)
        logabsdet = sum log |h'(x; theta)|

    A context row may condition several consecutive input rows (``K`` draws of the
    same example): the network then runs once per context row.

    Args:
        elementwise: the map ``h`` (:class:`AffineMap`, :class:`AdditiveMap`,
            :class:`SplineMap` or your own :class:`ElementwiseMap`).
        features: the event shape of ``x``: an int ``n`` for vectors ``(batch, n)``, or
            a shape such as ``(C, H, W)``.
        context_features: size of dimension 1 of the context (>= 1).
        net: module mapping the context ``(batch, context_features, *rest)`` to
            ``(batch, num_params * n, *rest)``; required unless both are vectors, where
            the default is an MLP.
        hidden_features, num_hidden_layers: the default MLP's width and depth.
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
        """:meth:`params` for ``inputs``, repeated if a context row conditions several rows."""
        return _repeat_rows(self.params(context, inputs.shape[2:]), inputs.shape[0])

    # Unchecked maps, for callers that checked already (couplings, stochastic layers).
    def run(self, inputs: Tensor, context: Tensor, inverse: bool = False) -> tuple[Tensor, Tensor]:
        """``(outputs, logabsdet (batch,))``; context rows may divide the input rows."""
        params = self.conditioned_params(inputs, context)
        fn = self.function.inverse if inverse else self.function
        outputs, logabsdet = fn(inputs, params)
        if logabsdet is None:
            return outputs, inputs.new_zeros(inputs.shape[0])
        return outputs, sum_event(logabsdet)

    def _check(self, inputs: Tensor, context: Tensor | None) -> None:
        check_inputs(inputs, self.event_shape)
        check_context(context, inputs.shape[0], self.context_features)

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
        log_scale_bound: the soft bound of :func:`soft_clamp` on the log-scale
            (see :class:`AffineMap`); ``None`` means unbounded.
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
