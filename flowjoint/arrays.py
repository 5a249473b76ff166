"""Your own data: an array from a ``.npy``, ``.npz`` or ``.csv`` file, checked and split.

The file holds one array of shape ``(n, features)`` (any of the three formats) or of
images ``(n, H, W)`` or ``(n, C, H, W)`` (``.npy``, ``.npz``). Rows are examples.
`load_array` reads it, checks it (numbers, finite, integer levels if
``levels`` is given) and splits the rows at random into training, validation and
test parts; every problem is a ``ValueError`` whose message starts with the file's
name. The parts are float32 numpy arrays, which `fit` accepts
as they are.

Nothing here imports torch.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["SUFFIXES", "ArrayData", "load_array", "read_array", "split_indices"]

SUFFIXES: tuple[str, ...] = (".npy", ".npz", ".csv")


@dataclass(frozen=True)
class ArrayData:
    """A user's array split into training, validation and test parts.

    Attributes:
        name: the file's name without its suffix.
        path: the file.
        train, val, test: float32 ``(n, *event_shape)`` arrays.
        levels: the number of integer levels (pixel data, values ``0 .. levels - 1``),
            or None for continuous data.
        event_shape: ``(D,)`` for vectors, ``(C, H, W)`` for images (a file of
            ``(n, H, W)`` images has ``C = 1``).
    """

    name: str
    path: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    levels: int | None
    event_shape: tuple[int, ...]

    @property
    def features(self) -> int:
        """``D``, the entries of one example."""
        return math.prod(self.event_shape)

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        """``(C, H, W)`` for images, None for vectors."""
        return self.event_shape if len(self.event_shape) == 3 else None  # type: ignore[return-value]


def _read_csv(path: Path) -> np.ndarray:
    # One header line of column names is allowed: if the first line is not numeric,
    # it is skipped.
    with open(path) as handle:
        first = handle.readline()
    try:
        [float(cell) for cell in first.split(",")]
        skip = 0
    except ValueError:
        skip = 1
    return np.loadtxt(path, delimiter=",", ndmin=2, skiprows=skip, dtype=np.float64)


def _read_npz(path: Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as archive:
        keys = list(archive.keys())
        if len(keys) == 1:
            return archive[keys[0]]
        if "x" in keys:
            return archive["x"]
        raise ValueError(
            f"holds {len(keys)} arrays ({', '.join(keys) or 'none'}); keep one, or name the "
            "data 'x'"
        )


def _read_npy(path: Path) -> np.ndarray:
    with open(path, "rb") as handle:
        magic = handle.read(6)
    if magic != b"\x93NUMPY":
        raise ValueError("not a .npy file (it does not start with NumPy's magic string)")
    array = np.load(path, allow_pickle=False)
    return array


def read_array(path: str | os.PathLike) -> np.ndarray:
    """The array in a ``.npy``, ``.npz`` (one array, or the one named ``x``) or ``.csv`` file.

    A ``.csv`` file has one example per line, values separated by commas, and may
    start with one line of column names.

    Raises:
        ValueError: no such file, another suffix, or a file that cannot be read as an
            array of numbers; the message starts with the file's name.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{path}: expected a {', '.join(SUFFIXES)} file, got suffix {suffix!r}")
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        if suffix == ".csv":
            array = _read_csv(path)
        elif suffix == ".npz":
            array = _read_npz(path)
        else:
            array = _read_npy(path)
    except Exception as error:  # numpy raises many kinds (OSError, EOFError, zip errors)
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"{path}: cannot read it as an array of numbers: {detail}") from error
    return array


def _check_array(array: np.ndarray, path: Path, levels: int | None) -> np.ndarray:
    """``array`` as float32 ``(n, D)`` or ``(n, C, H, W)``, or a ValueError naming ``path``."""
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise ValueError(f"{path}: expected numbers, got an array of dtype {array.dtype}")
    if array.ndim == 3:
        array = array[:, None]  # (n, H, W) -> (n, 1, H, W)
    if array.ndim not in (2, 4) or array.shape[0] == 0 or 0 in array.shape[1:]:
        raise ValueError(
            f"{path}: expected shape (n, features), (n, H, W) or (n, C, H, W), got {array.shape}"
        )
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        rows = np.flatnonzero(~np.isfinite(array.reshape(len(array), -1)).all(1))
        raise ValueError(f"{path}: rows {rows[:5].tolist()} hold NaN or infinite values")
    if levels is not None:
        bad = (array != np.floor(array)) | (array < 0) | (array > levels - 1)
        if bad.any():
            raise ValueError(
                f"{path}: with levels={levels} every value must be an integer from 0 to "
                f"{levels - 1}, got values such as {np.unique(array[bad])[:3].tolist()}"
            )
    return array


def split_indices(
    num_examples: int, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random training, validation and test row indices.

    ``perm = numpy.random.default_rng(seed).permutation(n)``; the test rows are the
    first ``round(test_fraction * n)`` of ``perm`` (at least one), the validation rows
    the next ``round(val_fraction * n)`` (at least one unless ``val_fraction`` is 0),
    the training rows the rest.

    Args:
        num_examples: ``n``.
        val_fraction: in ``[0, 1)``.
        test_fraction: in ``(0, 1)``, with ``val_fraction + test_fraction < 1``.
        seed: the permutation's seed.

    Example:
        >>> [len(part) for part in split_indices(10, 0.1, 0.2, seed=0)]
        [7, 1, 2]
    """
    for name, value, low_open in (
        ("val_fraction", val_fraction, False),
        ("test_fraction", test_fraction, True),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number, got {value!r}")
        if not (0 < value < 1 if low_open else 0 <= value < 1):
            interval = "(0, 1)" if low_open else "[0, 1)"
            raise ValueError(f"{name} must be in {interval}, got {value}")
    if val_fraction + test_fraction >= 1:
        raise ValueError(
            f"val_fraction + test_fraction must be below 1 to leave training data, got "
            f"{val_fraction} + {test_fraction}"
        )
    num_test = max(1, round(test_fraction * num_examples))
    num_val = max(1, round(val_fraction * num_examples)) if val_fraction > 0 else 0
    if num_examples - num_test - num_val < 1:
        raise ValueError(
            f"{num_examples} examples are too few for {num_test} test and {num_val} "
            "validation examples and at least one training example"
        )
    perm = np.random.default_rng(seed).permutation(num_examples)
    test, val = perm[:num_test], perm[num_test : num_test + num_val]
    return perm[num_test + num_val :], val, test


def load_array(
    path: str | os.PathLike,
    levels: int | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> ArrayData:
    """Read, check and split the array in ``path`` (see `read_array`, `split_indices`).

    Args:
        path: a ``.npy``, ``.npz`` or ``.csv`` file of shape ``(n, features)``, or
            images ``(n, H, W)`` / ``(n, C, H, W)`` (``.npy``, ``.npz``).
        levels: for integer pixel data, the number of levels (values must be integers
            ``0 .. levels - 1``; models then dequantize them); None for continuous data.
        val_fraction: share of the rows used for validation (early stopping, best
            epoch), in ``[0, 1)``.
        test_fraction: share of the rows used for the test set, in ``(0, 1)``.
        seed: seed of the random split.

    Returns:
        An `ArrayData`.

    Raises:
        ValueError: the file cannot be read, has another shape, holds non-finite
            values, values outside the levels, or too few rows for the split; the
            message starts with the file's name.

    Example:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "points.npy")
        >>> np.save(path, np.random.default_rng(0).normal(size=(100, 2)))
        >>> data = load_array(path)
        >>> data.train.shape, data.val.shape, data.test.shape, data.levels
        ((70, 2), (10, 2), (20, 2), None)
    """
    path = Path(path)
    if levels is not None and (isinstance(levels, bool) or not isinstance(levels, int)):
        raise TypeError(f"levels must be an int or None, got {levels!r}")
    if levels is not None and levels < 2:
        raise ValueError(f"levels must be >= 2, got {levels}")
    array = _check_array(read_array(path), path, levels)
    try:
        train, val, test = split_indices(len(array), val_fraction, test_fraction, seed)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error
    return ArrayData(
        name=path.stem,
        path=str(path),
        train=array[train],
        val=array[val],
        test=array[test],
        levels=levels,
        event_shape=tuple(int(s) for s in array.shape[1:]),
    )
