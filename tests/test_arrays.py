"""flowjoint.arrays: reading, checking and splitting a user's array; the docs page runs."""

import re
import sys
from pathlib import Path

import numpy as np
import pytest

from flowjoint.arrays import load_array, read_array, split_indices

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_formats_give_the_same_array(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 3))
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "one.npz", anything=x)
    np.savez(tmp_path / "named.npz", x=x, labels=np.arange(50))
    np.savetxt(tmp_path / "plain.csv", x, delimiter=",")
    np.savetxt(tmp_path / "header.csv", x, delimiter=",", header="a,b,c", comments="")
    for name in ("x.npy", "one.npz", "named.npz", "plain.csv", "header.csv"):
        np.testing.assert_allclose(read_array(tmp_path / name), x, rtol=1e-15, err_msg=name)


def test_images_get_a_channel_and_parts_are_float32(tmp_path):
    np.save(tmp_path / "gray.npy", np.zeros((30, 5, 4), dtype=np.uint8))
    data = load_array(tmp_path / "gray.npy", levels=256)
    assert data.event_shape == (1, 5, 4) and data.image_shape == (1, 5, 4)
    assert data.train.dtype == np.float32 and data.features == 20
    np.save(tmp_path / "rgb.npy", np.zeros((30, 3, 4, 4)))
    assert load_array(tmp_path / "rgb.npy").event_shape == (3, 4, 4)
    np.save(tmp_path / "vectors.npy", np.zeros((30, 7)))
    assert load_array(tmp_path / "vectors.npy").image_shape is None


def test_split_is_a_seeded_permutation():
    train, val, test = split_indices(100, 0.1, 0.25, seed=3)
    perm = np.random.default_rng(3).permutation(100)
    assert np.array_equal(test, perm[:25]) and np.array_equal(val, perm[25:35])
    assert np.array_equal(np.sort(np.concatenate([train, val, test])), np.arange(100))
    assert [len(p) for p in split_indices(100, 0.0, 0.5, seed=0)] == [50, 0, 50]
    assert not np.array_equal(
        split_indices(100, 0.1, 0.2, 0)[2], split_indices(100, 0.1, 0.2, 1)[2]
    )


@pytest.mark.parametrize(
    "args, error",
    [
        ((10, -0.1, 0.2), "val_fraction must be in"),
        ((10, 0.1, 0.0), "test_fraction must be in"),
        ((10, 0.5, 0.5), "must be below 1"),
        ((2, 0.4, 0.4), "too few"),
    ],
)
def test_bad_splits(args, error):
    with pytest.raises(ValueError, match=error):
        split_indices(*args, seed=0)


def test_bad_files_name_the_file(tmp_path):
    np.save(tmp_path / "strings.npy", np.array([["a", "b"]]))
    np.save(tmp_path / "inf.npy", np.array([[0.0, np.inf], [1, 2], [3, 4]]))
    np.save(tmp_path / "half.npy", np.full((10, 2), 0.5))
    (tmp_path / "x.txt").write_text("1,2")
    cases = {
        "strings.npy": ("expected numbers", {}),
        "inf.npy": ("rows [0] hold NaN or infinite", {}),
        "half.npy": ("every value must be an integer from 0 to 3", {"levels": 4}),
        "x.txt": ("expected a .npy, .npz, .csv file", {}),
        "absent.csv": ("no such file", {}),
    }
    for name, (fragment, kwargs) in cases.items():
        with pytest.raises(ValueError) as info:
            load_array(tmp_path / name, **kwargs)
        message = str(info.value)
        assert message.startswith(f"{tmp_path / name}: ") and fragment in message, message
    with pytest.raises(ValueError, match="levels must be >= 2"):
        load_array(tmp_path / "half.npy", levels=1)


def test_the_own_data_page_runs(tmp_path, monkeypatch, one_thread):
    # the code of docs/guide/own_data.md, run in order in one namespace (like test_docs.py)
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / "guide" / "own_data.md").read_text(), re.S)
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "docs_example"}
    for index, block in enumerate(blocks):
        exec(compile(block, f"own_data.md:block{index}", "exec"), namespace)
        if "matplotlib.pyplot" in sys.modules:
            sys.modules["matplotlib.pyplot"].close("all")
    assert (tmp_path / "runs" / "quick" / "points" / "results.md").exists()
