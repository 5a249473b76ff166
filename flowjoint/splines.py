"""The monotonic rational-quadratic spline, an element-wise map for couplings.

References:
    Neural Spline Flows. Durkan, Bekasov, Murray, Papamakarios, 2019.
    arXiv:1906.04032.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from flowjoint.checks import check_number, check_positive_int
from flowjoint.elementwise import ElementwiseMap
from flowjoint.transforms import SavedSettings

__all__ = ["SplineMap", "rational_quadratic_spline"]


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
        min_bin_width: floor on a bin's width (see [`SplineMap`][flowjoint.SplineMap]).
        min_bin_height: floor on a bin's height.
        min_derivative: floor on the knot derivatives.

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


class SplineMap(SavedSettings, ElementwiseMap):
    """Monotonic rational-quadratic spline on ``[-tail_bound, tail_bound]``, identity outside.

    ``num_bins`` bins with ``3 * num_bins - 1`` parameters per scalar (widths, heights,
    inner derivatives), evaluated by `rational_quadratic_spline` (nflows'
    parametrisation with linear tails). The raw derivatives are offset so that
    all-zero parameters give the identity (uniform bins, unit derivatives), like a
    zero-initialised affine map; nflows itself starts at derivative ``softplus(0) = 0.69``.

    Args:
        num_bins: number of bins ``K`` (>= 2).
        tail_bound: half-width ``B`` of the interval where the spline acts.
        min_bin_width: floor on a bin's width, as a fraction of the interval; with
            the other two floors it keeps the spline strictly monotonic and
            invertible in floating point (nflows' defaults).
        min_bin_height: floor on a bin's height, as a fraction of the interval.
        min_derivative: floor on the derivative at the knots.

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

    def settings(self) -> dict[str, object]:
        return {
            "num_bins": self.num_bins,
            "tail_bound": self.tail_bound,
            "min_bin_width": self.min_bin_width,
            "min_bin_height": self.min_bin_height,
            "min_derivative": self.min_derivative,
        }

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
