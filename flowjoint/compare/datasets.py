"""The data of a comparison: a named data set or a user's array file, in one form.

Every data set becomes a `ComparisonData`: training, validation and test
tensors ``(n, D)`` (integer levels for pixel data, values as they are otherwise),
the number of levels, the image shape ``(C, H, W)`` if the examples are images, and
a JSON description of where it came from (so that a re-run can tell whether its
output folder holds results for the same data). Models that take images get
``(n, C, H, W)`` views (`ComparisonData.inputs`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from flowjoint.arrays import SUFFIXES, load_array
from flowjoint.compare.config import DATASETS, PIXEL_DATASETS
from flowjoint.compare.models import DataSpec

__all__ = ["ComparisonData", "SplitOptions", "integer_hint", "is_data_file", "load_data"]

#: Examples kept by ``quick`` (train, validation, test): pixel data and files, toys.
QUICK_SIZES = (300, 100, 100)
TOY_SIZES = {"quick": (2000, 500, 2000), "full": (50000, 5000, 20000)}


@dataclass(frozen=True)
class SplitOptions:
    """How a user's file is read and split (`load_array`).

    Attributes:
        levels: number of integer levels of pixel data; None for continuous data.
        val_fraction: share of the rows for validation.
        test_fraction: share of the rows for the test set.
        seed: seed of the random split.
    """

    levels: int | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    seed: int = 0


@dataclass(frozen=True)
class ComparisonData:
    """Training, validation and test data of a comparison.

    Attributes:
        name: the data set's name (a file's stem for a file).
        train, val, test: float32 ``(n, D)``.
        levels: number of integer levels (pixel data), or None (continuous data).
        image_shape: ``(C, H, W)`` if the examples are images, else None.
        entropy: the true density's entropy in nats (the 2-D toys), else None.
        description: JSON-able record of the source, split and sizes.
    """

    name: str
    train: Tensor
    val: Tensor
    test: Tensor
    levels: int | None = None
    image_shape: tuple[int, int, int] | None = None
    entropy: float | None = None
    description: dict = field(default_factory=dict)

    @property
    def spec(self) -> DataSpec:
        """What a model builder needs to know."""
        return DataSpec(self.train.shape[1], self.image_shape, self.levels)

    def inputs(self, part: str, images: bool = False) -> Tensor:
        """``part`` (``"train"``, ``"val"``, ``"test"``) as ``(n, D)`` or ``(n, C, H, W)``."""
        x = getattr(self, part)
        if not images:
            return x
        return x.view(x.shape[0], *self.spec.event_shape(images=True))


def is_data_file(dataset: str) -> bool:
    """Whether ``dataset`` names a file (by its suffix) rather than a named data set."""
    return Path(dataset).suffix.lower() in SUFFIXES


def _pixel(name: str, quick: bool) -> ComparisonData:
    from flowjoint.data import load_digits, load_mnist5k

    data = load_digits() if name == "digits" else load_mnist5k(validation_size=500)
    train, val, test = data.train, data.val, data.test
    if quick:
        train, val, test = (x[:n] for x, n in zip((train, val, test), QUICK_SIZES))
    return ComparisonData(
        name,
        train,
        val,
        test,
        levels=data.levels,
        image_shape=(1, *data.image_shape),
        description={"dataset": name},
    )


def _toy(name: str, quick: bool, seed: int) -> ComparisonData:
    from flowjoint.toys import toy_data

    sizes = TOY_SIZES["quick" if quick else "full"]
    toy = toy_data(name, *sizes, seed=seed)
    description = {"dataset": name, "seed": seed, "sizes": list(sizes)}
    return ComparisonData(
        name, toy.train, toy.val, toy.test, entropy=toy.entropy, description=description
    )


def _file(path: str, quick: bool, split: SplitOptions) -> ComparisonData:
    data = load_array(path, split.levels, split.val_fraction, split.test_fraction, split.seed)
    parts = [torch.from_numpy(x.reshape(len(x), -1)) for x in (data.train, data.val, data.test)]
    if quick:
        parts = [x[:n] for x, n in zip(parts, QUICK_SIZES)]
    description = {
        "dataset": str(Path(path).resolve()),
        "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest(),
        "levels": split.levels,
        "val_fraction": split.val_fraction,
        "test_fraction": split.test_fraction,
        "split_seed": split.seed,
        "shape": [len(data.train) + len(data.val) + len(data.test), *data.event_shape],
    }
    return ComparisonData(
        data.name,
        *parts,
        levels=data.levels,
        image_shape=data.image_shape,
        description=description,
    )


def load_data(
    dataset: str, quick: bool = False, seed: int = 0, split: SplitOptions | None = None
) -> ComparisonData:
    """The data of a comparison on ``dataset``.

    Args:
        dataset: a name of `DATASETS` (fixed splits,
            see `data` and `toys`) or the path of a
            ``.npy``, ``.npz`` or ``.csv`` file (`load_array`).
        quick: keep a few hundred examples (`QUICK_SIZES`; the toys draw
            `TOY_SIZES`).
        seed: seeds the toys' draws.
        split: how a file is read and split (only for a file).

    Raises:
        ValueError: an unknown name, a bad file (the message names it), or ``split``
            given with a named data set.
    """
    if is_data_file(dataset):
        return _file(dataset, quick, split or SplitOptions())
    if dataset not in DATASETS:
        raise ValueError(
            f"dataset must be one of {', '.join(DATASETS)} or a {', '.join(SUFFIXES)} file, "
            f"got {dataset!r}"
        )
    if split is not None and split != SplitOptions():
        raise ValueError(
            f"levels and the split options apply to a data file; {dataset!r} has its own "
            "levels and fixed splits"
        )
    if dataset in PIXEL_DATASETS:
        return _pixel(dataset, quick)
    return _toy(dataset, quick, seed)


def integer_hint(data: ComparisonData) -> str | None:
    """A hint when continuous data look like pixel levels (all integers in 0..255)."""
    if data.levels is not None or data.entropy is not None:
        return None
    values = torch.cat([data.train, data.val, data.test])
    if bool((values == values.floor()).all()) and values.min() >= 0 and values.max() <= 255:
        top = int(values.max().item())
        return (
            f"the values are integers from 0 to {top}: to model them as pixel levels "
            f"(dequantized, scored in bits/dim), pass --levels N with N > {top} the number "
            "of levels"
        )
    return None
