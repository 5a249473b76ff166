"""Normalization layers as flow transforms: ActNorm and batch normalization."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from flowjoint.checks import (
    check_inputs,
    check_number,
    check_positive_int,
    is_functorch_wrapped,
)
from flowjoint.transforms import SavedSettings, Transform

__all__ = ["ActNorm", "BatchNorm"]


def _per_channel(values: Tensor) -> Tensor:
    """``(batch, C, *rest)`` -> ``(C, batch * prod(rest))``: the samples of each channel."""
    return values.transpose(0, 1).reshape(values.shape[1], -1)


def _view(parameter: Tensor, inputs: Tensor) -> Tensor:
    """A per-channel ``(C,)`` parameter shaped ``(C, 1, ..., 1)`` to broadcast over ``rest``."""
    return parameter.view(-1, *([1] * (inputs.dim() - 2)))


def _positions(inputs: Tensor) -> int:
    """Entries per channel in one example: ``prod(rest)``."""
    return math.prod(inputs.shape[2:])


def _world_size() -> int:
    distributed = torch.distributed
    if distributed.is_available() and distributed.is_initialized():
        return distributed.get_world_size()
    return 1


def _global_mean_and_std(samples: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and unbiased std of ``samples`` ``(C, n)`` on every rank together."""
    distributed = torch.distributed
    count = samples.new_tensor(float(samples.shape[1]))
    totals = torch.cat([samples.sum(1), count.reshape(1)])  # (C + 1,)
    distributed.all_reduce(totals)
    n = totals[-1]
    mean = totals[:-1] / n
    squares = (samples - mean.unsqueeze(1)).square().sum(1)  # (C,)
    distributed.all_reduce(squares)
    var = squares / (n - 1) if bool(n > 1) else torch.ones_like(squares)
    return mean, var.sqrt()


class ActNorm(Transform):
    """Per-channel affine map initialised from the first batch it sees.

    On vectors ``(batch, D)`` a channel is a feature; on images ``(batch, C, H, W)``
    each channel has one scale and shift shared by all positions (Glow). Forward and
    log-det::

        y = x * exp(log_scale) + shift
        logabsdet = H * W * sum(log_scale)   # the same for every batch item

    On the first forward call in training mode, ``log_scale = -log(std + init_eps)``
    and ``shift = -mean * exp(log_scale)`` so that the outputs of that batch have
    zero mean and unit variance per channel. Whether this has happened is a buffer,
    so a loaded ``state_dict`` is never initialised again. An empty first batch
    cannot initialise it and raises ``ValueError``.

    Args:
        features: number of channels (features of a vector).
        init_eps: added to the batch standard deviation at initialisation, so a
            constant channel gives a finite scale ``1 / init_eps``.

    References:
        Glow: Generative Flow with Invertible 1x1 Convolutions. Kingma, Dhariwal,
        2018. arXiv:1807.03039.

    Example:
        >>> import torch
        >>> layer = ActNorm(2)
        >>> y, _ = layer(3.0 + 2.0 * torch.randn(1000, 2))
        >>> bool(y.mean(0).abs().max() < 1e-5)
        True
    """

    def __init__(self, features: int, init_eps: float = 1e-6) -> None:
        super().__init__()
        self.features = check_positive_int(features, "features")
        self.init_eps = check_number(init_eps, "init_eps", low=0.0, low_open=True)
        self.log_scale = nn.Parameter(torch.zeros(features))
        self.shift = nn.Parameter(torch.zeros(features))
        self.register_buffer("initialized", torch.tensor(False))
        # The buffer known to hold True: reading a buffer's value costs a device
        # synchronisation, so it is read only while it is not this one (a fresh layer, a
        # loaded state, the buffers torch.func.functional_call substitutes).
        self._known_initialized: Tensor | None = None
        self.register_load_state_dict_post_hook(ActNorm._forget_initialized)

    @staticmethod
    def _forget_initialized(module: ActNorm, incompatible_keys: object) -> None:
        # Loading is eager: read the loaded flag now, so that a later forward (traced by
        # torch.compile, say) need not.
        buffer = module.initialized
        known = not buffer.is_meta and bool(buffer)
        module._known_initialized = buffer if known else None

    def _needs_initialization(self) -> bool:
        buffer = self.initialized
        if buffer is self._known_initialized:
            return False
        if buffer.is_meta:  # no value to read: initialise, which reads none either
            return True
        if torch.compiler.is_compiling() or is_functorch_wrapped(buffer):
            # Under torch.compile or vmap the value cannot steer Python: trust what this
            # module knows of its own buffer.
            return self._known_initialized is None
        if bool(buffer):
            self._known_initialized = buffer
            return False
        return True

    def extra_repr(self) -> str:
        return f"features={self.features}"

    @torch.no_grad()
    def initialize(self, inputs: Tensor) -> None:
        """Set scale and shift so that ``inputs`` ``(batch, C, *rest)`` are standardised.

        Under an initialised ``torch.distributed`` process group the statistics are
        those of the batches of all ranks together (two all-reduces, once), so that
        every rank starts from the same scale and shift, the one a single process
        would compute on the global batch.
        """
        samples = _per_channel(inputs)  # (C, n)
        if samples.shape[1] == 0:
            raise ValueError(
                "ActNorm is initialised from its first training batch, got an empty batch "
                f"of shape {tuple(inputs.shape)}"
            )
        if _world_size() > 1:
            mean, std = _global_mean_and_std(samples)
        else:
            mean = samples.mean(1)
            std = samples.std(1) if samples.shape[1] > 1 else torch.ones_like(mean)
        self.log_scale.copy_(-torch.log(std + self.init_eps))
        self.shift.copy_(-mean * self.log_scale.exp())
        self.initialized.fill_(True)
        self._known_initialized = self.initialized

    def _check(self, inputs: Tensor) -> None:
        check_inputs(inputs, None, channels=self.features)

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(inputs)
        if self.training and self._needs_initialization():
            self.initialize(inputs)
        log_scale, shift = _view(self.log_scale, inputs), _view(self.shift, inputs)
        outputs = torch.addcmul(shift, inputs, log_scale.exp())
        logabsdet = self.log_scale.sum() * _positions(inputs)
        return outputs, logabsdet.expand(inputs.shape[0])

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(inputs)
        log_scale, shift = _view(self.log_scale, inputs), _view(self.shift, inputs)
        outputs = (inputs - shift) * torch.exp(-log_scale)
        logabsdet = -self.log_scale.sum() * _positions(inputs)
        return outputs, logabsdet.expand(inputs.shape[0])


class BatchNorm(SavedSettings, Transform):
    """Batch normalization as a flow layer, per channel (per feature of a vector).

    Forward and log-det, with batch statistics in training mode and running
    statistics in eval mode (statistics over the batch and, for images, the
    positions of each channel)::

        y = (x - mean) / sqrt(var + eps) * exp(log_gamma) + beta
        logabsdet = H * W * sum(log_gamma - 0.5 * log(var + eps))

    The inverse uses the running statistics, so it inverts the forward map in eval
    mode; in training mode it raises (the batch statistics of the outputs are not
    those of the inputs). Call ``.eval()`` before sampling.

    Args:
        features: number of channels (features of a vector).
        momentum: weight of the new batch in the running averages.
        eps: added to the variance for numerical safety, as in ``torch.nn.BatchNorm1d``.

    References:
        Density estimation using Real NVP. Dinh, Sohl-Dickstein, Bengio, 2016.
        arXiv:1605.08803.
    """

    def __init__(self, features: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.features = check_positive_int(features, "features")
        self.momentum = check_number(momentum, "momentum", low=0.0, high=1.0, low_open=True)
        self.eps = check_number(eps, "eps", low=0.0)
        self.log_gamma = nn.Parameter(torch.zeros(features))
        self.beta = nn.Parameter(torch.zeros(features))
        self.register_buffer("running_mean", torch.zeros(features))
        self.register_buffer("running_var", torch.ones(features))

    def extra_repr(self) -> str:
        return f"features={self.features}, momentum={self.momentum}, eps={self.eps}"

    def settings(self) -> dict[str, object]:
        return {"momentum": self.momentum, "eps": self.eps}

    def _statistics(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        if not self.training:
            return self.running_mean, self.running_var
        samples = _per_channel(inputs)  # (C, n)
        if samples.shape[1] < 2:
            raise ValueError(
                f"inputs must hold at least 2 values per channel in training mode (batch "
                f"statistics), got shape {tuple(inputs.shape)}"
            )
        mean, var = samples.mean(1), samples.var(1, unbiased=False)
        with torch.no_grad():
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(var.detach(), self.momentum)
        return mean, var

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_inputs(inputs, None, channels=self.features)
        mean, var = self._statistics(inputs)
        log_scale = self.log_gamma - 0.5 * torch.log(var + self.eps)  # (C,)
        outputs = (inputs - _view(mean, inputs)) * _view(log_scale.exp(), inputs)
        outputs = outputs + _view(self.beta, inputs)
        logabsdet = log_scale.sum() * _positions(inputs)
        return outputs, logabsdet.expand(inputs.shape[0])

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_inputs(inputs, None, channels=self.features)
        if self.training:
            raise RuntimeError(
                "BatchNorm.inverse uses running statistics and inverts forward only in eval "
                "mode; call .eval() first"
            )
        log_scale = self.log_gamma - 0.5 * torch.log(self.running_var + self.eps)
        outputs = (inputs - _view(self.beta, inputs)) * _view(torch.exp(-log_scale), inputs)
        outputs = outputs + _view(self.running_mean, inputs)
        logabsdet = -log_scale.sum() * _positions(inputs)
        return outputs, logabsdet.expand(inputs.shape[0])
