"""The comparison's pictures: samples beside real data, training curves, Jacobian patterns.

Each function writes one PNG (matplotlib, the ``plot`` extra) from the models that
have finished so far, so the pictures grow with the table.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from flowjoint.augmented import EncoderCoupling
from flowjoint.compare.config import ModelConfig
from flowjoint.compare.datasets import ComparisonData
from flowjoint.compare.evaluation import continuous_part
from flowjoint.compare.models import build_model
from flowjoint.coupling import AdditiveCoupling, AffineCoupling
from flowjoint.data import dequantize
from flowjoint.flows import Flow
from flowjoint.transforms import Compose, Transform

__all__ = ["image_grid", "plot_curves", "plot_jacobians", "plot_samples"]

#: Sampling temperatures of the pixel-data panels (Glow's convention: the base noise's
#: standard deviation); below 1 the samples are smoother and more typical.
TEMPERATURES: tuple[float, ...] = (1.0, 0.7)


#: Fewer points than this are drawn as dots; more as a 2-D histogram.
SCATTER_BELOW = 5000


def _pyplot():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def image_grid(images: Tensor, side: int, gap: int = 1) -> Tensor:
    """``(n, C, H, W)`` -> one ``(side (H + gap) - gap, side (W + gap) - gap, C)`` mosaic.

    The gaps between tiles are NaN (drawn in the colour map's "bad" colour), so that
    neighbouring images can be told apart.
    """
    n, c, h, w = images.shape
    grid = torch.full((side * (h + gap) - gap, side * (w + gap) - gap, c), math.nan)
    for index in range(min(n, side * side)):
        row, col = divmod(index, side)
        top, left = row * (h + gap), col * (w + gap)
        grid[top : top + h, left : left + w] = images[index].permute(1, 2, 0)  # (H, W, C)
    return grid


def _draw(model: Flow, count: int, temperature: float) -> Tensor | None:
    try:
        return model.sample(count, temperature=temperature).detach().cpu()
    except ValueError:  # a base density that takes no temperature
        return None


def _show_images(ax, images: Tensor, data: ComparisonData) -> None:  # noqa: ANN001
    shape = data.image_shape or (1, *_square(data.train.shape[1]))
    x = images.reshape(-1, *shape).clamp(0, data.levels - 1) / (data.levels - 1)
    grid = image_grid(x, 8).numpy()
    cmap = _pyplot().get_cmap("gray").with_extremes(bad="white")  # the gaps
    ax.imshow(
        grid[..., 0] if shape[0] == 1 else grid[..., :3],
        cmap=cmap,
        vmin=0,
        vmax=1,
        interpolation="nearest",
    )


def _square(features: int) -> tuple[int, int]:
    side = math.isqrt(features)
    return (side, side) if side * side == features else (1, features)


def _window(points: Tensor) -> list[list[float]]:
    low, high = torch.quantile(points[:, :2], torch.tensor([0.005, 0.995]), dim=0)
    pad = 0.1 * (high - low)
    return [[(low[i] - pad[i]).item(), (high[i] + pad[i]).item()] for i in range(2)]


@torch.no_grad()
def plot_samples(
    models: Mapping[str, Flow], data: ComparisonData, path: str | os.PathLike, seed: int = 0
) -> None:
    """Real test data beside samples of each model; a PNG at ``path``.

    Pixel data: 8x8 mosaics, one row per temperature of `TEMPERATURES` (the
    data column shows other test images in each row). Continuous data: 2-D
    histograms of 20,000 points (the first two features) on the test data's window.
    """
    plt = _pyplot()
    torch.manual_seed(seed)
    pixels = data.levels is not None
    temperatures = TEMPERATURES if pixels else (1.0,)
    columns = {"test data": None, **models}
    fig, axes = plt.subplots(
        len(temperatures),
        len(columns),
        figsize=(3.0 * len(columns), 3.2 * len(temperatures)),
        squeeze=False,
    )
    window = None if pixels else _window(data.test)
    for row, temperature in enumerate(temperatures):
        for ax, (name, model) in zip(axes[row], columns.items()):
            if model is None:
                x = data.test[64 * row : 64 * (row + 1)] if pixels else data.test
            else:
                x = _draw(model.eval(), 64 if pixels else 20000, temperature)
                name = f"{name}, T = {temperature}" if pixels else name
            ax.set_title(name, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            if x is None or x.shape[0] == 0:  # no temperature; or too few test images
                continue
            x = x.reshape(x.shape[0], -1)
            if pixels:
                _show_images(ax, x, data)
            else:
                x = x[torch.isfinite(x).all(1)]
                if x.shape[0] < SCATTER_BELOW:
                    ax.scatter(x[:, 0].numpy(), x[:, 1].numpy(), s=2)
                    ax.set_xlim(*window[0])
                    ax.set_ylim(*window[1])
                    continue
                ax.hist2d(x[:, 0].numpy(), x[:, 1].numpy(), bins=150, range=window, cmap="viridis")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _set_ylim(ax, values: list[float]) -> None:  # noqa: ANN001
    values = [v for v in values if math.isfinite(v)]
    if values:
        low, high = min(values), max(values)
        pad = 0.05 * (high - low) or 0.05 * abs(high) or 1.0
        ax.set_ylim(low - pad, high + pad)


def plot_curves(
    histories: Mapping[str, Sequence[dict]], bits: bool, path: str | os.PathLike
) -> None:
    """Validation (solid) and training (dashed) loss per epoch of every model.

    Left: every epoch but the first tenth of each run (at least one), whose losses are
    far above the end of training and would flatten the differences between models.
    Right: the validation losses of the second half of each run, where the models
    are told apart.
    """
    plt = _pyplot()
    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(11, 4.2))
    kept, tails = [], []
    for name, history in histories.items():
        if not history:
            continue
        epochs = [row["epoch"] for row in history]
        first = history[0]
        # val_bits_per_dim = val_loss / (D ln 2): the same factor converts train_loss.
        scale = first["val_bits_per_dim"] / first["val_loss"] if bits and first["val_loss"] else 1
        val = [row["val_loss"] * scale for row in history]
        train = [row["train_loss"] * scale for row in history]
        line = ax.plot(epochs, val, label=f"{name} (validation)")[0]
        ax.plot(epochs, train, ls="--", color=line.get_color(), alpha=0.7)
        skip, half = max(1, math.ceil(0.1 * len(history))), len(history) // 2
        zoom.plot(epochs[half:], val[half:], color=line.get_color(), label=name)
        kept += val[skip:] + train[skip:]
        tails += val[half:]
    _set_ylim(ax, kept)
    _set_ylim(zoom, tails)
    unit = "bits/dim" if bits else "nats/example"
    ax.set_ylabel(f"{unit} (training dashed; first epochs clipped)")
    ax.set_title("training and validation", fontsize=10)
    zoom.set_ylabel(f"validation {unit}")
    zoom.set_title("validation, second half of each run", fontsize=10)
    for axes in (ax, zoom):
        axes.set_xlabel("epoch")
    if histories:
        zoom.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


_PANELS = (
    ("nice", AdditiveCoupling, "NICE coupling"),
    ("realnvp", AffineCoupling, "Real NVP coupling"),
    ("vae", EncoderCoupling, "VAE encoder coupling on (x, ε)"),
)


def _layer_and_input(model: Flow, kind: type, x: Tensor) -> tuple[Transform, object] | None:
    """The first top-level layer of ``kind`` in ``model``'s continuous stack and its input."""
    flow = continuous_part(model)
    if not isinstance(flow.transform, Compose):
        return None
    for index, layer in enumerate(flow.transform):
        if type(layer) is kind:
            inputs = flow.transform[:index](x)[0] if index else x
            return layer, inputs
    return None


@torch.no_grad()
def _panel(model: Flow, kind: type, x: Tensor) -> tuple[Tensor, Tensor] | None:
    """The Jacobian ``(batch, out, in)`` of the first ``kind`` layer at ``x`` and its mask."""
    from flowjoint.jacobians import jacobian

    found = _layer_and_input(model, kind, x)
    if found is None:
        return None
    layer, inputs = found
    layer = copy.deepcopy(layer).double()
    if isinstance(inputs, Tensor):
        inputs = inputs.double()
        mask = layer.mask.flatten()
    else:  # (x, eps)
        inputs = type(inputs)(*(part.double() for part in inputs))
        features, d = inputs.data[0].numel(), inputs.latent.shape[1]
        mask = torch.cat([torch.zeros(features, dtype=torch.bool), torch.ones(d, dtype=torch.bool)])
    with torch.enable_grad():
        return jacobian(layer, inputs), mask


def _image_panels(seed: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Jacobians of a checkerboard and a channel coupling on a small image, and their masks.

    Fresh layers with random weights, on a 1x6x6 image and on the 4x3x3 image a squeeze
    makes of it: the multi-scale flow's two kinds of coupling, over pixels.
    """
    from flowjoint import AffineCoupling, ResidualConvNet, channel_mask, checkerboard_mask
    from flowjoint.jacobians import jacobian
    from flowjoint.testing import randomize_parameters

    torch.manual_seed(seed)
    checker = checkerboard_mask((1, 6, 6))
    channels = channel_mask(4)
    layers = {
        "checkerboard coupling, 1x6x6 image": (
            AffineCoupling(checker, 8, 1),
            torch.randn(4, 1, 6, 6),
            checker,
        ),
        "channel coupling, 4x3x3 image": (
            AffineCoupling(channels, net=ResidualConvNet(2, 4, 8, 1)),
            torch.randn(4, 4, 3, 3),
            channels.view(4, 1, 1).expand(4, 3, 3),
        ),
    }
    jacobians, masks = {}, {}
    for title, (layer, x, mask) in layers.items():
        layer = randomize_parameters(layer, seed=seed).double()
        with torch.enable_grad():
            jacobians[title] = jacobian(layer, x.double())
        masks[title] = mask.flatten()
    return jacobians, masks


def plot_jacobians(
    models: Mapping[str, Flow], data: ComparisonData, path: str | os.PathLike, seed: int = 0
) -> None:
    """Jacobian patterns of a NICE layer, a Real NVP layer, the VAE's encoder coupling and,
    on images, a checkerboard and a channel coupling.

    Each is taken from the trained model when it was compared, else from a fresh small
    one with random weights; evaluated at four test points (dequantized and
    preprocessed like the model's input), rows and columns ordered kept-then-
    transformed, so the block lower-triangular shape shows.
    """
    from flowjoint.jacobians import plot_jacobian_patterns
    from flowjoint.testing import randomize_parameters

    generator = torch.Generator().manual_seed(seed)
    x = data.test[:4]
    if data.levels is not None:
        x = dequantize(x, data.levels, generator)
    small = ModelConfig(num_layers=2, hidden_features=16, latent_features=4)
    jacobians, masks = {}, {}
    for name, kind, title in _PANELS:
        model = models.get(name)
        if model is None:
            torch.manual_seed(seed)
            model = randomize_parameters(build_model(name, data.spec, small), seed=seed)
        panel = _panel(model.eval(), kind, x)
        if panel is not None:
            jacobians[title], masks[title] = panel
    if data.spec.image_shape is not None:
        images, image_masks = _image_panels(seed)
        jacobians.update(images)
        masks.update(image_masks)
    plt = _pyplot()
    fig = plot_jacobian_patterns(jacobians, masks)
    fig.text(
        0.5,
        0.01,
        "black: non-zero entry; white: zero. Rows and columns: kept, then transformed features.",
        ha="center",
        fontsize=9,
    )
    fig.subplots_adjust(bottom=0.15, top=0.86)
    fig.savefig(path, dpi=120)
    plt.close(fig)
