"""Normalization layers as flow transforms: ActNorm and batch normalization."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flowjoint.transforms import Transform, check_inputs, check_positive_int

__all__ = ["ActNorm", "BatchNorm"]


def _world_size() -> int:
    distributed = torch.distributed
    if distributed.is_available() and distributed.is_initialized():
        return distributed.get_world_size()
    return 1


def _global_mean_and_std(inputs: Tensor) -> tuple[Tensor, Tensor]:
    """Per-feature mean and unbiased std of the rows of ``inputs`` on every rank together."""
    distributed = torch.distributed
    count = inputs.new_tensor(float(inputs.shape[0]))
    totals = torch.cat([inputs.sum(0), count.reshape(1)])  # (features + 1,)
    distributed.all_reduce(totals)
    n = totals[-1]
    mean = totals[:-1] / n
    squares = (inputs - mean).square().sum(0)  # (features,)
    distributed.all_reduce(squares)
    var = squares / (n - 1) if bool(n > 1) else torch.ones_like(squares)
    return mean, var.sqrt()


class ActNorm(Transform):
    """Per-feature affine map initialised from the first batch it sees.

    Forward and log-det::

        y = x * exp(log_scale) + shift
        logabsdet = sum(log_scale)          # the same for every batch item

    On the first forward call in training mode, ``log_scale = -log(std + init_eps)``
    and ``shift = -mean * exp(log_scale)`` so that the outputs of that batch have
    zero mean and unit variance per feature. Whether this has happened is a buffer,
    so a loaded ``state_dict`` is never initialised again.

    Args:
        features: number of features.
        init_eps: added to the batch standard deviation at initialisation, so a
            constant feature gives a finite scale ``1 / init_eps``.

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
        self.init_eps = init_eps
        self.log_scale = nn.Parameter(torch.zeros(features))
        self.shift = nn.Parameter(torch.zeros(features))
        self.register_buffer("initialized", torch.tensor(False))
        self._initialized = False
        self.register_load_state_dict_post_hook(ActNorm._sync_initialized)

    @staticmethod
    def _sync_initialized(module: ActNorm, incompatible_keys: object) -> None:
        module._initialized = bool(module.initialized)

    def extra_repr(self) -> str:
        return f"features={self.features}"

    @torch.no_grad()
    def initialize(self, inputs: Tensor) -> None:
        """Set scale and shift so that ``inputs`` ``(batch, features)`` are standardised.

        Under an initialised ``torch.distributed`` process group the statistics are
        those of the batches of all ranks together (two all-reduces, once), so that
        every rank starts from the same scale and shift, the one a single process
        would compute on the global batch.
        """
        if _world_size() > 1:
            mean, std = _global_mean_and_std(inputs)
            self.log_scale.copy_(-torch.log(std + self.init_eps))
            self.shift.copy_(-mean * self.log_scale.exp())
            self.initialized.fill_(True)
            self._initialized = True
            return
        std = inputs.std(0) if inputs.shape[0] > 1 else torch.ones_like(inputs[0])
        self.log_scale.copy_(-torch.log(std + self.init_eps))
        self.shift.copy_(-inputs.mean(0) * self.log_scale.exp())
        self.initialized.fill_(True)
        self._initialized = True

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_inputs(inputs, self.features)
        if self.training and not self._initialized:
            self.initialize(inputs)
        outputs = torch.addcmul(self.shift, inputs, self.log_scale.exp())
        return outputs, self.log_scale.sum().expand(inputs.shape[0])

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_inputs(inputs, self.features)
        outputs = (inputs - self.shift) * torch.exp(-self.log_scale)
        return outputs, (-self.log_scale.sum()).expand(inputs.shape[0])


class BatchNorm(Transform):
    """Batch normalization as a flow layer.

    Forward and log-det, with batch statistics in training mode and running
    statistics in eval mode::

        y = (x - mean) / sqrt(var + eps) * exp(log_gamma) + beta
        logabsdet = sum(log_gamma - 0.5 * log(var + eps))

    The inverse uses the running statistics, so it inverts the forward map in eval
    mode; in training mode it raises (the batch statistics of the outputs are not
    those of the inputs). Call ``.eval()`` before sampling.

    Args:
        features: number of features.
        momentum: weight of the new batch in the running averages.
        eps: added to the variance for numerical safety, as in ``torch.nn.BatchNorm1d``.

    References:
        Density estimation using Real NVP. Dinh, Sohl-Dickstein, Bengio, 2016.
        arXiv:1605.08803.
    """

    def __init__(self, features: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.features = check_positive_int(features, "features")
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        if not eps >= 0.0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.momentum, self.eps = momentum, eps
        self.log_gamma = nn.Parameter(torch.zeros(features))
        self.beta = nn.Parameter(torch.zeros(features))
        self.register_buffer("running_mean", torch.zeros(features))
        self.register_buffer("running_var", torch.ones(features))

    def extra_repr(self) -> str:
        return f"features={self.features}, momentum={self.momentum}, eps={self.eps}"

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_inputs(inputs, self.features)
        if self.training:
            if inputs.shape[0] < 2:
                raise ValueError(
                    f"inputs must hold at least 2 rows in training mode (batch statistics), "
                    f"got shape {tuple(inputs.shape)}"
                )
            mean, var = inputs.mean(0), inputs.var(0, unbiased=False)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(var.detach(), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        log_scale = self.log_gamma - 0.5 * torch.log(var + self.eps)  # (features,)
        outputs = (inputs - mean) * log_scale.exp() + self.beta
        return outputs, log_scale.sum().expand(inputs.shape[0])

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_inputs(inputs, self.features)
        if self.training:
            raise RuntimeError(
                "BatchNorm.inverse uses running statistics and inverts forward only in eval "
                "mode; call .eval() first"
            )
        log_scale = self.log_gamma - 0.5 * torch.log(self.running_var + self.eps)
        outputs = (inputs - self.beta) * torch.exp(-log_scale) + self.running_mean
        return outputs, (-log_scale.sum()).expand(inputs.shape[0])
