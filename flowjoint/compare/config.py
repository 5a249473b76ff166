"""What a comparison runs: the model registry, each model's settings per data set.

This module imports neither torch nor the library's models, so that the command
line can list data sets and models (``flowjoint compare --help``) at once; a
model's builder is named by ``"module:function"`` and imported when the model is
built (`build_model`).

A model is registered once with `register_model`, with its settings on each
group of data sets (``"digits"``, ``"mnist5k"``, ``"toy"``, ``"array"`` for a user's
file); `default_config` then gives them, shrunk by `QUICK` for an
end-to-end check.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace

__all__ = [
    "DATASETS",
    "DATA_GROUPS",
    "MODELS",
    "ModelConfig",
    "ModelSpec",
    "PIXEL_DATASETS",
    "QUICK",
    "TOY_DATASETS",
    "DEFAULT_MODELS",
    "config_fields",
    "default_config",
    "default_models",
    "data_group",
    "model_spec",
    "register_model",
]

PIXEL_DATASETS: tuple[str, ...] = ("digits", "mnist5k")
#: The 2-D toys of `toys` (named here so that no torch import is needed).
TOY_DATASETS: tuple[str, ...] = ("moons", "8gaussians", "checkerboard", "rings", "2spirals")
DATASETS: tuple[str, ...] = PIXEL_DATASETS + TOY_DATASETS
#: Groups of data sets that share model settings: each pixel data set, the toys, and
#: a user's array file (``--dataset path.npy``).
DATA_GROUPS: tuple[str, ...] = ("digits", "mnist5k", "toy", "array")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and training budget of one model on one data set.

    Attributes:
        epochs, batch_size, lr, weight_decay, schedule, patience, clip_grad_norm:
            passed to `fit` (see `FitOptions`).
        num_layers: coupling layers (NICE, Real NVP) or encoder/decoder pairs (the
            augmented flow's ``num_steps``).
        hidden_features: width of every hidden layer.
        num_hidden_layers: depth of each conditioner, encoder and decoder MLP.
        latent_features: ``d``, the dimension of ``eps`` (VAE, augmented flow).
        mask_pattern: ``"halves"`` or ``"checkerboard"`` coupling masks.
        actnorm: an ActNorm before each Real NVP coupling.
        alpha: the logit squeeze of pixel data ([`Logit`][flowjoint.Logit]).
        dequantization: ``"uniform"`` or ``"variational"``: the first layer of a
            model of pixel data ([`pixel_preprocessing`][flowjoint.pixel_preprocessing]).
        num_scales: scales of a multi-scale image flow (``num_layers`` is then its
            couplings of each kind per scale, ``hidden_features`` its conditioners'
            channels and ``num_hidden_layers`` their residual blocks).
        conv1x1: an invertible 1x1 convolution before each coupling of an image flow.
        num_bins: bins of a spline coupling.
        tail_bound: half-width of the interval where a spline coupling acts.
    """

    epochs: int = 40
    batch_size: int = 100
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str | None = "onecycle"
    patience: int | None = None
    clip_grad_norm: float | None = 100.0
    num_layers: int = 8
    hidden_features: int = 256
    num_hidden_layers: int = 2
    latent_features: int = 16
    mask_pattern: str = "checkerboard"
    actnorm: bool = True
    alpha: float = 0.01
    dequantization: str = "uniform"
    num_scales: int = 2
    conv1x1: bool = False
    num_bins: int = 8
    tail_bound: float = 3.0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "num_layers", "hidden_features"):
            _check_positive_int(getattr(self, name), name)
        _check_positive_int(self.num_hidden_layers, "num_hidden_layers")
        _check_positive_int(self.latent_features, "latent_features")
        _check_positive_int(self.num_scales, "num_scales")
        _check_positive_int(self.num_bins, "num_bins")
        if not self.tail_bound > 0:
            raise ValueError(f"tail_bound must be > 0, got {self.tail_bound!r}")
        if self.mask_pattern not in ("halves", "checkerboard"):
            raise ValueError(
                f"mask_pattern must be 'halves' or 'checkerboard', got {self.mask_pattern!r}"
            )
        if self.dequantization not in ("uniform", "variational"):
            raise ValueError(
                f"dequantization must be 'uniform' or 'variational', got {self.dequantization!r}"
            )
        if not 0 <= self.alpha < 0.5:
            raise ValueError(f"alpha must be in [0, 0.5), got {self.alpha!r}")

    @property
    def fit_options(self) -> dict[str, object]:
        """The fields that are `FitOptions` fields."""
        names = ("epochs", "batch_size", "lr", "weight_decay", "schedule", "patience")
        return {name: getattr(self, name) for name in (*names, "clip_grad_norm")}


def _check_positive_int(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


@dataclass(frozen=True)
class ModelSpec:
    """A model the comparison can train.

    Attributes:
        name: the name on the command line and in the table.
        summary: one line for ``--help``.
        builder: ``"module:function"``; the function takes ``(data, config)`` (a
            `DataSpec` and a `ModelConfig`) and
            returns a [`Flow`][flowjoint.Flow] whose stack starts with the data's
            preprocessing.
        images: the model takes images ``(n, C, H, W)``; otherwise vectors ``(n, D)``.
            A model that takes images runs only on data with an image shape.
        defaults: its `ModelConfig` per group of `DATA_GROUPS`.
    """

    name: str
    summary: str
    builder: str
    images: bool = False
    defaults: Mapping[str, ModelConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if ":" not in self.builder:
            raise ValueError(f"builder must be 'module:function', got {self.builder!r}")
        unknown = set(self.defaults) - set(DATA_GROUPS)
        if unknown:
            raise ValueError(
                f"defaults has unknown data groups {sorted(unknown)}; groups are "
                f"{', '.join(DATA_GROUPS)}"
            )


#: The registered models, in table order.
MODELS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add ``spec`` to `MODELS` (a model of the same name is replaced)."""
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"spec must be a ModelSpec, got {type(spec).__name__}")
    MODELS[spec.name] = spec
    return spec


# The digits settings were tuned on the validation set (docs/results.md): 8 layers,
# 256-wide MLPs, Adam with a one-cycle schedule from 1e-3, batch 100; MNIST-5k uses
# them as they are. The toys have 50,000 training points, hence batch 500.
_PIXEL = {
    "nice": ModelConfig(epochs=80, num_layers=8, num_hidden_layers=3, weight_decay=1e-4),
    "realnvp": ModelConfig(epochs=40, num_layers=8, weight_decay=1e-4),
    "vae": ModelConfig(epochs=400, hidden_features=256, latent_features=16),
    "augmented": ModelConfig(epochs=200, num_layers=2, hidden_features=256, latent_features=16),
}
_TOY = {
    "nice": ModelConfig(
        epochs=60, batch_size=500, lr=2e-3, hidden_features=128, mask_pattern="halves"
    ),
    "realnvp": ModelConfig(
        epochs=120, batch_size=500, lr=2e-3, hidden_features=128, mask_pattern="halves"
    ),
    "vae": ModelConfig(epochs=60, batch_size=500, lr=2e-3, hidden_features=128, latent_features=2),
    "augmented": ModelConfig(
        epochs=60, batch_size=500, lr=2e-3, num_layers=4, hidden_features=128, latent_features=2
    ),
}
# A user's file: no tuning is possible, so moderate models and 100 epochs (override
# with --epochs and the other budget options).
_ARRAY = {
    "nice": ModelConfig(epochs=100, hidden_features=128, num_hidden_layers=3),
    "realnvp": ModelConfig(epochs=100, hidden_features=128),
    "vae": ModelConfig(epochs=100, hidden_features=128, latent_features=8),
    "augmented": ModelConfig(epochs=100, num_layers=2, hidden_features=128, latent_features=8),
}
_SUMMARIES = {
    "nice": "NICE: additive couplings, then a diagonal scaling (exact likelihood)",
    "realnvp": "Real NVP: affine couplings, an ActNorm before each (exact likelihood)",
    "vae": "VAE with a Gaussian decoder, a flow on (x, eps) (bounds)",
    "augmented": "augmented flow: encoder/decoder coupling pairs on (x, eps) (bounds)",
}
for _name, _summary in _SUMMARIES.items():
    register_model(
        ModelSpec(
            _name,
            _summary,
            f"flowjoint.compare.models:build_{_name}",
            defaults={
                "digits": _PIXEL[_name],
                "mnist5k": _PIXEL[_name],
                "toy": _TOY[_name],
                "array": _ARRAY[_name],
            },
        )
    )

# Image models (they take (n, C, H, W)). Settings measured on MNIST-5k's validation set
# (docs/results.md): 3 scales (28 -> 14 -> 7) with two checkerboard and two channel
# couplings per scale, 32-channel residual conditioners, 1x1 convolutions, batch 32,
# logit squeeze 1e-6 (Real NVP's MNIST value); on digits (8 -> 4 -> 2) the same shape.
_MULTISCALE = ModelConfig(
    epochs=25,
    batch_size=32,
    lr=1e-3,
    schedule="cosine",
    num_layers=2,
    hidden_features=32,
    num_hidden_layers=1,
    num_scales=3,
    conv1x1=True,
    alpha=1e-6,
)
_CONV_VAE = ModelConfig(
    epochs=40, batch_size=64, lr=1e-3, hidden_features=256, latent_features=32, alpha=1e-6
)
_IMAGE_MODELS = {
    "msrealnvp": (
        "multi-scale Real NVP on images, uniform dequantization (exact density of x + u)",
        "build_msrealnvp",
        _MULTISCALE,
    ),
    "msrealnvp-vd": (
        "multi-scale Real NVP on images, variational dequantization (bounds)",
        "build_msrealnvp",
        replace(_MULTISCALE, dequantization="variational"),
    ),
    "convvae": (
        "VAE with convolutional encoder and decoder on images, Gaussian decoder (bounds)",
        "build_convvae",
        _CONV_VAE,
    ),
    "convaugmented": (
        "augmented flow with convolutional encoders and decoders on images (bounds)",
        "build_convaugmented",
        replace(_CONV_VAE, num_layers=2),
    ),
}
# The digits are 8 x 8 (8 -> 4 -> 2 with three scales); a user's image file gets the
# MNIST-5k settings.
_DIGITS_IMAGES = {"epochs": 60, "alpha": 0.01}
for _name, (_summary, _builder, _config) in _IMAGE_MODELS.items():
    register_model(
        ModelSpec(
            _name,
            _summary,
            f"flowjoint.compare.models:{_builder}",
            images=True,
            defaults={
                "digits": replace(_config, **_DIGITS_IMAGES),
                "mnist5k": _config,
                "array": _config,
            },
        )
    )

# Spline couplings on the 2-D toys (benchmarks/toy_splines.py, docs/results.md): three
# couplings of 32 bins on [-4, 4], 128-wide conditioners, one-cycle from 5e-3, 15 epochs.
_SPLINE = ModelConfig(
    epochs=15,
    batch_size=500,
    lr=5e-3,
    num_layers=3,
    hidden_features=128,
    mask_pattern="halves",
    actnorm=False,
    num_bins=32,
    tail_bound=4.0,
)
register_model(
    ModelSpec(
        "spline",
        "rational-quadratic spline couplings (exact likelihood)",
        "flowjoint.compare.models:build_spline",
        defaults={
            "toy": _SPLINE,
            "array": replace(_SPLINE, epochs=100, lr=1e-3),
            # pixel data in logit space: Real NVP's budget, splines on [-5, 5]
            "digits": replace(_PIXEL["realnvp"], num_bins=16, tail_bound=5.0, actnorm=False),
            "mnist5k": replace(_PIXEL["realnvp"], num_bins=16, tail_bound=5.0, actnorm=False),
        },
    )
)

#: The models a comparison runs by default, per group of data sets.
DEFAULT_MODELS: dict[str, tuple[str, ...]] = {
    "digits": ("nice", "realnvp", "vae", "augmented", "msrealnvp"),
    "mnist5k": ("realnvp", "msrealnvp", "msrealnvp-vd", "convvae", "convaugmented"),
    "toy": ("nice", "realnvp", "spline", "vae", "augmented"),
    "array": ("nice", "realnvp", "vae", "augmented"),
}

#: What ``--quick`` changes: tiny models and 2 epochs, an end-to-end check in seconds.
QUICK: dict[str, object] = dict(
    epochs=2, num_layers=2, hidden_features=32, num_hidden_layers=1, latent_features=2
)


def data_group(dataset: str) -> str:
    """The group of `DATA_GROUPS` whose settings ``dataset`` uses.

    A name of `DATASETS` gives its own group (the toys share ``"toy"``); any
    other string is taken as a user's file (``"array"``).
    """
    if dataset in PIXEL_DATASETS:
        return dataset
    return "toy" if dataset in TOY_DATASETS else "array"


def model_spec(model: str) -> ModelSpec:
    """The registered `ModelSpec` of ``model``, or a ValueError naming the choices."""
    if model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}; got {model!r}")
    return MODELS[model]


def default_config(dataset: str, model: str, quick: bool = False) -> ModelConfig:
    """The settings of ``model`` on ``dataset`` (tiny ones with ``quick``).

    Args:
        dataset: a name of `DATASETS`, or anything else for a user's file.
        model: a name of `MODELS`.
        quick: apply `QUICK`.

    Example:
        >>> default_config("digits", "realnvp").epochs, default_config("digits", "vae").epochs
        (40, 400)
    """
    spec = model_spec(model)
    group = data_group(dataset)
    config = spec.defaults.get(group)
    if config is None:
        raise ValueError(f"model {model!r} has no settings for data like {dataset!r}")
    return replace(config, **QUICK) if quick else config


def default_models(dataset: str) -> tuple[str, ...]:
    """The models ``flowjoint compare`` runs on ``dataset`` when none are named."""
    return DEFAULT_MODELS[data_group(dataset)]


def config_fields() -> tuple[str, ...]:
    """The names of `ModelConfig`'s fields (what ``overrides`` may set)."""
    return tuple(f.name for f in fields(ModelConfig))
