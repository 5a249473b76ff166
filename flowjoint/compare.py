"""Compare NICE, Real NVP, a VAE and an augmented flow on one data set, in one unit.

:func:`compare` trains each model with :func:`flowjoint.train.fit` and evaluates it
on the test set, in nats per example and bits per dimension of the same density:

* pixel data (digits, MNIST-5k): the dequantized ``x + u`` on its original scale
  ``[0, levels)^D``; every model is fitted in logit space through
  :class:`~flowjoint.preprocess.Preprocessed`, whose log-dets are counted;
* 2-D toys: the raw points (reported in nats; compare with the true entropy).

Flows give the exact log-likelihood (metric ``exact``). The VAE and the augmented
flow give bounds: ``elbo``, ``iwae_K`` for ``K`` in 1, 10, 100, 1000, and ``joint``,
the exact negative log-density ``-log p(x, eps)`` of the flow on the augmented space
``(x, eps)``, ``eps ~ N(0, I_d)`` (per dimension of ``D + d``).

The 95% interval is over independent dequantization draws of the test set
(``mean +- t_{0.975, R-1} sd / sqrt(R)``); for the toys, which are not dequantized,
it is over test points (``mean +- 1.96 sd / sqrt(n)``).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from flowjoint.data import TOY_DATASETS, dequantize, load_digits, load_mnist5k, toy_data
from flowjoint.flows import nice, realnvp
from flowjoint.preprocess import Preprocessed, nats_to_bits_per_dim, pixel_preprocessing
from flowjoint.train import FitResult, evaluate, fit

__all__ = [
    "DATASETS",
    "MODELS",
    "ModelConfig",
    "build_model",
    "compare",
    "default_config",
    "evaluate_model",
    "format_table",
]

MODELS: tuple[str, ...] = ("nice", "realnvp", "vae", "augmented")
PIXEL_DATASETS: tuple[str, ...] = ("digits", "mnist5k")
DATASETS: tuple[str, ...] = PIXEL_DATASETS + TOY_DATASETS
IWAE_SAMPLES: tuple[int, ...] = (1, 10, 100, 1000)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and training budget of one model on one data set.

    Attributes:
        epochs, batch_size, lr, weight_decay, schedule, patience, clip_grad_norm:
            passed to :func:`flowjoint.train.fit`.
        num_layers: coupling layers (NICE, Real NVP) or encoder/decoder pairs
            (augmented flow; ``num_steps``).
        hidden_features: width of every hidden layer.
        num_hidden_layers: depth of each conditioner / encoder / decoder MLP.
        latent_features: ``d`` of the VAE and the augmented flow.
        mask_pattern: ``"halves"`` or ``"checkerboard"`` coupling masks.
        actnorm: an ActNorm before each Real NVP coupling.
        alpha: the logit squeeze of the pixel preprocessing.
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


_PIXEL_DEFAULTS: dict[str, ModelConfig] = {
    "nice": ModelConfig(epochs=80, num_layers=8, num_hidden_layers=3, weight_decay=1e-4),
    "realnvp": ModelConfig(epochs=40, num_layers=8, weight_decay=1e-4),
    "vae": ModelConfig(epochs=400, hidden_features=256, latent_features=16),
    "augmented": ModelConfig(epochs=200, num_layers=2, hidden_features=256, latent_features=16),
}
_TOY_DEFAULTS: dict[str, ModelConfig] = {
    "nice": ModelConfig(
        epochs=60, batch_size=500, lr=2e-3, num_layers=8, hidden_features=128, mask_pattern="halves"
    ),
    "realnvp": ModelConfig(
        epochs=120,
        batch_size=500,
        lr=2e-3,
        num_layers=8,
        hidden_features=128,
        mask_pattern="halves",
    ),
    "vae": ModelConfig(epochs=60, batch_size=500, lr=2e-3, hidden_features=128, latent_features=2),
    "augmented": ModelConfig(
        epochs=60, batch_size=500, lr=2e-3, num_layers=4, hidden_features=128, latent_features=2
    ),
}
_QUICK = dict(epochs=2, num_layers=2, hidden_features=32, num_hidden_layers=1, latent_features=2)


def default_config(dataset: str, model: str, quick: bool = False) -> ModelConfig:
    """The tuned defaults of ``model`` on ``dataset`` (tiny ones with ``quick``)."""
    _check_choice(dataset, DATASETS, "dataset")
    _check_choice(model, MODELS, "model")
    table = _PIXEL_DEFAULTS if dataset in PIXEL_DATASETS else _TOY_DEFAULTS
    config = table[model]
    if quick:
        config = replace(config, **_QUICK)
    return config


def _check_choice(value: object, choices: Sequence[str], name: str) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def build_model(model: str, features: int, config: ModelConfig, levels: int | None) -> nn.Module:
    """A fresh model: on pixel data (``levels`` set) wrapped in the counted preprocessing.

    Args:
        model: one of :data:`MODELS`.
        features: ``D``.
        config: architecture (see :class:`ModelConfig`).
        levels: pixel levels (17, 256), or None for data used as is (the toys).
    """
    _check_choice(model, MODELS, "model")
    c = config
    if model == "nice":
        net: nn.Module = nice(
            features,
            c.num_layers,
            c.hidden_features,
            c.num_hidden_layers,
            mask_pattern=c.mask_pattern,
        )
    elif model == "realnvp":
        net = realnvp(
            features,
            c.num_layers,
            c.hidden_features,
            c.num_hidden_layers,
            mask_pattern=c.mask_pattern,
            actnorm=c.actnorm,
        )
    elif model == "vae":
        from flowjoint.vae import JointVAE

        net = JointVAE(
            features,
            c.latent_features,
            hidden_features=c.hidden_features,
            likelihood="gaussian",
            num_hidden_layers=c.num_hidden_layers,
        )
    else:
        from flowjoint.augmented import AugmentedFlow

        net = AugmentedFlow(
            features,
            c.latent_features,
            num_steps=c.num_layers,
            hidden_features=c.hidden_features,
            num_hidden_layers=c.num_hidden_layers,
        )
    if levels is None:
        return net
    return Preprocessed(net, pixel_preprocessing(levels, c.alpha))


def _interval(values: Tensor, over_draws: bool) -> tuple[float, float]:
    """95% interval of the mean of ``values`` ``(n,)``: Student t over draws, normal else."""
    n = values.numel()
    mean = values.mean().item()
    if n < 2:
        return mean, mean
    if over_draws:
        from scipy.stats import t

        quantile = float(t.ppf(0.975, n - 1))
    else:
        quantile = 1.959963984540054
    half = quantile * values.std().item() / math.sqrt(n)
    return mean - half, mean + half


def _parts(model: nn.Module) -> tuple[nn.Module, Callable[[Tensor], tuple[Tensor, Tensor]]]:
    """The inner model and the preprocessing ``x -> (h, logabsdet)`` (identity for toys)."""
    if isinstance(model, Preprocessed):
        return model.model, model.transform
    return model, lambda x: (x, x.new_zeros(x.shape[0]))


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    test: Tensor,
    levels: int | None,
    num_draws: int = 5,
    iwae_samples: Sequence[int] = IWAE_SAMPLES,
    seed: int = 0,
    batch_size: int = 500,
) -> list[dict[str, object]]:
    """Test-set rows ``{metric, nll_nats, bits_per_dim, ci95_nats, ci95_bits_per_dim}``.

    Args:
        model: a trained model from :func:`build_model`.
        test: ``(n, D)`` test data (raw levels if ``levels`` is set).
        levels: dequantize with ``num_draws`` independent noise draws; None: use as is.
        num_draws: dequantization draws (ignored for toys).
        iwae_samples: the ``K`` of the ``iwae_K`` rows (bound models only).
        seed: seeds the dequantization noise and the model's draws.
        batch_size: test examples per pass (at most ``20000 // K`` for the IWAE).
    """
    model.eval()
    inner, pre = _parts(model)
    bound = hasattr(inner, "elbo")
    dims = test.shape[1]
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed + 10_000)
    draws = (
        [test]
        if levels is None
        else [dequantize(test, levels, generator) for _ in range(num_draws)]
    )

    def per_example(fn: Callable[[Tensor], Tensor], k: int = 1) -> Tensor:
        # (draws, n) negative log-likelihoods, in nats per example
        # about 20,000 rows (x, eps) per pass: big enough to keep the matmuls efficient
        size = max(1, min(batch_size, 20000 // k))
        return torch.stack([-evaluate(fn, x, size) for x in draws])

    metrics: dict[str, tuple[Tensor, int]] = {}
    if not bound:
        metrics["exact"] = (per_example(model.log_prob), dims)
    else:
        d = inner.latent_features

        def joint(x: Tensor) -> Tensor:
            h, logabsdet = pre(x)
            eps = torch.randn(h.shape[0], d, dtype=h.dtype, device=h.device)
            return inner.log_prob(h, eps) + logabsdet

        metrics["elbo"] = (per_example(lambda x: model.elbo(x)), dims)
        metrics["joint"] = (per_example(joint), dims + d)
        for k in iwae_samples:
            metrics[f"iwae_{k}"] = (per_example(lambda x, k=k: model.iwae(x, k), k), dims)
    rows = []
    for metric, (nll, metric_dims) in metrics.items():
        if levels is None:
            values, over_draws = nll[0], False
        else:
            values, over_draws = nll.mean(1), True
        low, high = _interval(values, over_draws)
        mean = nll.mean().item()
        rows.append(
            {
                "metric": metric,
                "nll_nats": mean,
                "bits_per_dim": nats_to_bits_per_dim(mean, metric_dims),
                "ci95_nats": [low, high],
                "ci95_bits_per_dim": [
                    nats_to_bits_per_dim(low, metric_dims),
                    nats_to_bits_per_dim(high, metric_dims),
                ],
                "dims": metric_dims,
                "interval_over": "dequantization draws" if over_draws else "test points",
                "num_draws": len(draws),
            }
        )
    return rows


@dataclass
class ComparisonResult:
    """Rows of the table, per-model training histories and the trained models."""

    rows: list[dict[str, object]] = field(default_factory=list)
    fits: dict[str, FitResult] = field(default_factory=dict)
    models: dict[str, nn.Module] = field(default_factory=dict)
    seconds: float = 0.0


def _load(dataset: str, quick: bool, seed: int) -> tuple[Tensor, Tensor, Tensor, int | None, dict]:
    """Train, validation, test, levels and a description of the data set."""
    if dataset == "digits":
        data = load_digits()
    elif dataset == "mnist5k":
        data = load_mnist5k(validation_size=500)
    else:
        n = (2000, 500, 2000) if quick else (50000, 5000, 20000)
        toy = toy_data(dataset, *n, seed=seed)
        info = {"entropy_nats": toy.entropy, "image_shape": None}
        return toy.train, toy.val, toy.test, None, info
    train, val, test = data.train, data.val, data.test
    if quick:
        train, val, test = train[:300], val[:100], test[:100]
    return train, val, test, data.levels, {"image_shape": data.image_shape}


def compare(
    dataset: str = "digits",
    models: Sequence[str] = MODELS,
    out: str | os.PathLike | None = None,
    seed: int = 0,
    quick: bool = False,
    overrides: dict[str, object] | None = None,
    num_draws: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> ComparisonResult:
    """Train every model on ``dataset``, evaluate on its test set, write results and plots.

    Args:
        dataset: one of :data:`DATASETS`.
        models: a subset of :data:`MODELS`, in table order.
        out: folder for ``results.json``, ``results.md`` and the PNG plots (None: no files).
        seed: seeds the toy data, the models' initialisation and training, the noise.
        quick: tiny models, 2 epochs, a few hundred examples: an end-to-end check.
        overrides: :class:`ModelConfig` fields applied to every model (budget options).
        num_draws: dequantization draws for the test set (default 5, 2 when quick).
        progress: tqdm bars while training.
        log: where progress lines and the final table go (None: silent).

    Returns:
        A :class:`ComparisonResult`.
    """
    started = time.perf_counter()
    _check_choice(dataset, DATASETS, "dataset")
    models = list(models)
    if not models:
        raise ValueError("models must name at least one model, got none")
    for name in models:
        _check_choice(name, MODELS, "model")
    overrides = dict(overrides or {})
    unknown = set(overrides) - set(ModelConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"overrides has unknown fields {sorted(unknown)}")
    num_draws = num_draws if num_draws is not None else (2 if quick else 5)
    say = log or (lambda _: None)
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        if out_dir.exists() and not out_dir.is_dir():
            raise ValueError(f"out must be a directory, got an existing file {str(out_dir)!r}")
        out_dir.mkdir(parents=True, exist_ok=True)

    train, val, test, levels, info = _load(dataset, quick, seed)
    result = ComparisonResult()
    for index, name in enumerate(models):
        config = replace(default_config(dataset, name, quick), **overrides)
        torch.manual_seed(seed + index)
        model = build_model(name, train.shape[1], config, levels)
        tic = time.perf_counter()
        fitted = fit(
            model,
            train,
            val,
            epochs=config.epochs,
            batch_size=config.batch_size,
            lr=config.lr,
            weight_decay=config.weight_decay,
            schedule=config.schedule,
            clip_grad_norm=config.clip_grad_norm,
            patience=config.patience,
            levels=levels,
            seed=seed + index,
            progress=progress,
            description=f"{dataset}/{name}",
        )
        train_seconds = time.perf_counter() - tic
        rows = evaluate_model(model, test, levels, num_draws, seed=seed + 100 + index)
        eval_seconds = time.perf_counter() - tic - train_seconds
        for row in rows:
            row.update(
                dataset=dataset,
                model=name,
                train_seconds=train_seconds,
                eval_seconds=eval_seconds,
                best_epoch=fitted.best_epoch,
                epochs_run=len(fitted.history),
                num_parameters=sum(p.numel() for p in model.parameters()),
                config=asdict(config),
                test_size=test.shape[0],
                seed=seed,
            )
            if "entropy_nats" in info:
                row["entropy_nats"] = info["entropy_nats"]
        result.rows.extend(rows)
        result.fits[name] = fitted
        result.models[name] = model
        best = min(rows, key=lambda r: r["nll_nats"])
        say(
            f"{name}: {best['metric']} {best['nll_nats']:.2f} nats, "
            f"{best['bits_per_dim']:.3f} bits/dim (train {train_seconds:.0f} s, "
            f"eval {eval_seconds:.0f} s)"
        )
    result.seconds = time.perf_counter() - started
    table = format_table(result.rows, dataset, info.get("entropy_nats"))
    say(table)
    if out_dir is not None:
        ordered = [_ordered(row) for row in result.rows]
        (out_dir / "results.json").write_text(json.dumps(ordered, indent=2) + "\n")
        (out_dir / "results.md").write_text(table + "\n")
        plot_samples(
            result.models, test, levels, info["image_shape"], out_dir / "samples.png", seed=seed
        )
        plot_curves(result.fits, levels is not None, out_dir / "curves.png")
        plot_jacobians(result.models, test, levels, out_dir / "jacobians.png", seed=seed)
    return result


_FIRST = (
    "dataset",
    "model",
    "metric",
    "nll_nats",
    "bits_per_dim",
    "ci95_nats",
    "ci95_bits_per_dim",
)


def _ordered(row: dict[str, object]) -> dict[str, object]:
    first = {k: row[k] for k in _FIRST if k in row}
    return {**first, **{k: v for k, v in row.items() if k not in first}}


def format_table(rows: Sequence[dict], dataset: str, entropy: float | None = None) -> str:
    """A Markdown table of the rows (nats per example, bits/dim, 95% intervals)."""
    lines = [
        f"## {dataset}: test negative log-likelihood (lower is better)",
        "",
        "| model | metric | NLL (nats/example) | 95% interval | bits/dim | 95% interval |",
        "|---|---|---:|---|---:|---|",
    ]
    for r in rows:
        lo, hi = r["ci95_nats"]
        blo, bhi = r["ci95_bits_per_dim"]
        lines.append(
            f"| {r['model']} | {r['metric']} | {r['nll_nats']:.3f} | [{lo:.3f}, {hi:.3f}] "
            f"| {r['bits_per_dim']:.4f} | [{blo:.4f}, {bhi:.4f}] |"
        )
    lines.append("")
    if entropy is not None:
        lines.append(f"True-density entropy (the best achievable NLL): {entropy:.3f} nats.")
    else:
        lines.append(
            "Densities of the dequantized data x + u on its original scale; intervals over "
            "dequantization draws of the test set. `joint` is -log p(x, eps) per dimension "
            "of (x, eps); the other bounds are per pixel."
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Plots (matplotlib, the ``plot`` extra).
# ---------------------------------------------------------------------------


def _pyplot():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _image_grid(images: Tensor, image_shape: tuple[int, int], side: int) -> Tensor:
    """``(side**2, h*w)`` -> one ``(side*h, side*w)`` mosaic."""
    h, w = image_shape
    grid = images[: side * side].reshape(side, side, h, w)
    return grid.permute(0, 2, 1, 3).reshape(side * h, side * w)


@torch.no_grad()
def plot_samples(
    models: dict[str, nn.Module],
    test: Tensor,
    levels: int | None,
    image_shape: tuple[int, int] | None,
    path: str | os.PathLike,
    seed: int = 0,
) -> None:
    """Real test data beside samples from each model; saved as a PNG at ``path``.

    Pixel data: 8x8 mosaics of images (samples clipped to ``[0, levels - 1]``). Toys:
    2-D histograms of 20,000 points on a common window.
    """
    plt = _pyplot()
    torch.manual_seed(seed)
    panels = {"data": test}
    for name, model in models.items():
        model.eval()
        panels[name] = model.sample(64 if levels is not None else 20000).detach().cpu()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    for ax, (title, x) in zip(axes[0], panels.items()):
        if levels is not None:
            x = x.clamp(0, levels - 1)
            ax.imshow(
                _image_grid(x, image_shape, 8).numpy(),
                cmap="gray_r",
                vmin=0,
                vmax=levels - 1,
                interpolation="nearest",
            )
        else:
            x = x[torch.isfinite(x).all(1)]
            ax.hist2d(
                x[:, 0].numpy(), x[:, 1].numpy(), bins=150, range=[[-4.5, 4.5]] * 2, cmap="viridis"
            )
            ax.set_aspect("equal")
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(fits: dict[str, FitResult], bits: bool, path: str | os.PathLike) -> None:
    """Validation (solid) and training (dashed) loss per epoch for every model."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, fitted in fits.items():
        epochs = [row["epoch"] for row in fitted.history]
        dims = None
        if bits and fitted.history:
            row = fitted.history[0]
            dims = row["val_loss"] / row["val_bits_per_dim"] / math.log(2.0)
        scale = (1.0 / (dims * math.log(2.0))) if dims else 1.0
        line = ax.plot(
            epochs, [r["val_loss"] * scale for r in fitted.history], label=f"{name} (val)"
        )[0]
        ax.plot(
            epochs,
            [r["train_loss"] * scale for r in fitted.history],
            ls="--",
            color=line.get_color(),
            alpha=0.7,
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("bits/dim (train dashed)" if bits else "nats/example (train dashed)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _first_coupling(model: nn.Module, kind: type) -> nn.Module | None:
    for module in model.modules():
        if type(module) is kind:
            return module
    return None


def plot_jacobians(
    models: dict[str, nn.Module],
    test: Tensor,
    levels: int | None,
    path: str | os.PathLike,
    seed: int = 0,
) -> None:
    """Jacobian sparsity of one NICE layer, one Real NVP layer and the VAE's encoder coupling.

    Each is taken from the trained model when it was compared, else from a fresh one
    with randomised weights; evaluated at a few (preprocessed) test points, with rows
    and columns ordered kept-then-transformed (:func:`flowjoint.plot_jacobian_patterns`).
    """
    from flowjoint.coupling import AdditiveCoupling, AffineCoupling
    from flowjoint.jacobian import jacobian, plot_jacobian_patterns
    from flowjoint.testing import randomize_parameters

    features = test.shape[1]
    x = test[:4].double()
    if levels is not None:
        x = dequantize(x, levels, torch.Generator().manual_seed(seed))
    config = replace(ModelConfig(), num_layers=2, hidden_features=16, latent_features=4)
    jacobians, masks = {}, {}
    for name, kind, title in (
        ("nice", AdditiveCoupling, "NICE coupling"),
        ("realnvp", AffineCoupling, "Real NVP coupling"),
        ("vae", None, "VAE encoder coupling (x, eps)"),
    ):
        model = models.get(name)
        if model is None:
            try:
                model = build_model(name, features, config, levels)
            except ImportError:  # the VAE module is optional for this figure
                continue
            randomize_parameters(model, seed=seed)
        model = model.double().eval()
        inner, pre = _parts(model)
        h = pre(x)[0]  # (4, D)
        if name == "vae":
            layer = inner.encoder_coupling
            h = torch.cat(
                [h, torch.randn(h.shape[0], inner.latent_features, dtype=h.dtype)], 1
            )  # (4, D + d)
        else:
            layer = _first_coupling(inner, kind)
        jacobians[title] = jacobian(layer, h)
        masks[title] = layer.mask
        model.float()
    fig = plot_jacobian_patterns(jacobians, masks, path=str(path))
    _pyplot().close(fig)
