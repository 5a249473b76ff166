"""The soft clamp of an affine layer's log-scale: ``bound * tanh(raw / bound)``.

Every affine map of the library (coupling layers, the VAE's reparametrization, the
Gaussian decoder's scale) bounds its log-scale with it by default, so it is on the hot
path of every pass: written for the fewest kernels and no per-call conversions.
"""

from __future__ import annotations

import functools
import math
import numbers

import torch
from torch import Tensor

from flowjoint.checks import check_number

__all__ = ["soft_clamp"]


def soft_clamp(raw: Tensor, bound: float | Tensor | None) -> Tensor:
    """Map an unconstrained log-scale into ``[-bound, bound]``: ``bound * tanh(raw / bound)``.

    Near zero it is the identity (slope 1), so learning is unaffected for moderate
    scales; far from zero it saturates, so one layer can never scale by more than
    ``exp(bound)`` or less than ``exp(-bound)``. ``bound=None`` leaves ``raw`` as is.

    Computed as ``2 b sigmoid(2 raw / b) - b``, with ``tanh(u) = 2 sigmoid(2u) - 1``, in
    three kernels (a product, an in-place sigmoid, one fused multiply-add): on CPU, ATen's
    sigmoid costs a fraction of its tanh (measured 2.6x cheaper on a (64, 392) float32
    tensor), is not split across threads below 32768 elements (tanh is, from about 1024
    on: one thread fork and join per layer) and has a one-kernel backward. The price is
    an absolute rather than a relative rounding error, at most about ``2.5 eps * bound``
    (the sigmoid's, that of ``2 / bound`` in the input's dtype and the last operation's;
    9e-7 in float32 for the default bound 3): a log-scale 2 ulp off at worst.
    ``|result| <= bound`` holds exactly; ``+-inf`` gives ``+-bound`` and NaN stays NaN.

    ``bound``: ``None``, a positive finite real number (a Python or NumPy scalar;
    ``TypeError``/``ValueError`` naming it otherwise), or a tensor, used as given so that a
    gradient reaches it. Under ``torch.compile`` it is not checked (it may be symbolic).
    """
    if bound is None or isinstance(bound, Tensor) or torch.compiler.is_compiling():
        return _soft_clamp(raw, bound)
    if isinstance(bound, bool) or not isinstance(bound, numbers.Real):
        raise TypeError(f"bound must be None, a positive real number or a tensor, got {bound!r}")
    return _soft_clamp(raw, check_number(float(bound), "bound", low=0.0, low_open=True))


def _soft_clamp(raw: Tensor, bound: float | None) -> Tensor:
    """`soft_clamp` for a bound already checked (a layer's, checked when it was built; or a
    tensor, which the annotation leaves out for TorchScript)."""
    if bound is None:
        return raw
    return _signed_soft_clamp(raw, bound, 1.0)


def _signed_soft_clamp(raw: Tensor, bound: float, sign: float) -> Tensor:
    """``sign * soft_clamp(raw, bound)``: the same function of ``raw`` on every path.

    Where ``torch.add(c, x, alpha=a)`` is one fused multiply-add (ATen's AVX2 and AVX-512
    CPU kernels; probed once per device type and dtype by `_add_is_fused`), three
    kernels: a product, an in-place sigmoid and
    ``torch.add(-sign b, sigma, alpha=2 sign b)``, one rounding of the exact
    ``2 sign b sigma - sign b``. Elsewhere ``(sigmoid(2 raw / b) - 1/2) * (2 sign b)``,
    where ``sigma - 1/2`` is exact for ``sigma >= 1/4``: one rounding of the same exact
    value there, so both forms give the same bits where ``sigma >= 1/4`` and the fused
    one a single rounding below. Either way ``sign=-1`` is exactly the negation of
    ``sign=1`` (rounding is symmetric; an affine inverse uses its forward's log-scale).

    On the fused path the factors ``2 / b`` and ``-sign b`` are 0-dim tensors made once
    per bound and dtype (`_clamp_factors`): a Python number would be converted to a tensor
    at every call, about 1.6 us per operation on this kind of CPU. Off plain eager
    execution (`_eager_factors`: ``torch.compile``, functorch transforms, tracing, modes),
    for tensor subclasses, tensor bounds and dtypes other than float32 and float64 the
    second form is used, with Python numbers and no ``alpha=``: inductor drops an
    ``alpha`` whose operand is symbolic, as a bound becomes when one compiled function
    meets a second bound, and a cached constant must never be a wrapped, fake or traced
    tensor. ``sign=-1`` is the exact negation of ``sign=1`` on one path; a compiled
    forward and an eager inverse take different paths.
    """
    if not torch.jit.is_scripting():
        factors = _eager_factors(raw, bound, sign)
        if factors is not None:
            scale, offset = factors
            return torch.add(offset, (raw * scale).sigmoid_(), alpha=2.0 * sign * bound)
    return (torch.sigmoid(raw * (2.0 / bound)) - 0.5).mul_(2.0 * sign * bound)


def _eager_factors(raw: Tensor, bound: object, sign: float) -> tuple[Tensor, Tensor] | None:
    """The fused form's cached factors, or ``None`` off its path: a plain float32/float64
    tensor, a float bound, and plain eager execution (no ``torch.compile``, functorch
    transform, ``jit.trace``, dispatch mode or torch-function mode such as a
    ``torch.device`` context), so that the cache only ever holds, and the probe only ever
    runs on, plain tensors."""
    if (
        type(raw) is not Tensor
        or raw.dtype not in _CACHED_DTYPES
        or type(bound) is not float
        or torch.compiler.is_compiling()
        or torch._C._are_functorch_transforms_active()
        or torch._C._get_tracing_state() is not None
        or torch._C._len_torch_dispatch_stack()
        or torch._C._is_torch_function_mode_enabled()
    ):
        return None
    return _clamp_factors(bound, sign, raw.dtype, raw.device.type)


_CACHED_DTYPES = (torch.float32, torch.float64)


@functools.lru_cache(maxsize=64)
def _clamp_factors(
    bound: float, sign: float, dtype: torch.dtype, device_type: str
) -> tuple[Tensor, Tensor] | None:
    """``2 / bound`` and ``-sign * bound`` as 0-dim CPU tensors of ``dtype``, or ``None``
    where `_add_is_fused` is false. CPU scalars are usable with inputs on any device; they
    are made outside inference mode so that a clamp first called under
    ``torch.inference_mode`` still trains afterwards."""
    if not _add_is_fused(dtype, device_type):
        return None
    with torch.inference_mode(False):
        return (
            torch.tensor(2.0 / bound, dtype=dtype, device="cpu"),
            torch.tensor(-sign * bound, dtype=dtype, device="cpu"),
        )


@functools.cache
def _add_is_fused(dtype: torch.dtype, device_type: str) -> bool:
    """Whether ``torch.add(c, x, alpha=a)`` rounds once (a fused multiply-add) in every lane
    on ``device_type``: ``(1 + 2^-k)^2 - (1 + 2^(1-k))`` is ``2^-2k`` fused and 0 rounded
    twice. Devices other than CPU and CUDA are not probed (false)."""
    if device_type not in ("cpu", "cuda"):
        return False
    k = round(-math.log2(torch.finfo(dtype).eps)) // 2 + 1  # half the significand, and one
    with torch.no_grad():
        x = torch.full((67,), 1 + 2.0**-k, dtype=dtype, device=device_type)  # lanes and a tail
        offset = torch.tensor(-(1 + 2.0 ** (1 - k)), dtype=dtype, device="cpu")
        return bool((torch.add(offset, x, alpha=1 + 2.0**-k) == 2.0 ** (-2 * k)).all())
