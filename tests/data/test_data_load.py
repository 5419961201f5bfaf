"""load_dataset: names, folders, seeded splits, limits and argument validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from modelpress.core.errors import ConfigError, DataNotFoundError
from modelpress.data import dataset_names, load_dataset

EXPECTED_NAMES = {"fashion-mnist", "mnist", "digits", "breast-cancer", "wine", "mnist1d"}
REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")


def assert_same(a, b):
    for which in ("train", "val", "test"):
        for left, right in zip(a.split(which), b.split(which)):
            assert torch.equal(left, right)


def test_registered_names():
    assert set(dataset_names()) == EXPECTED_NAMES


def test_folder_path_loads_and_is_named_after_folder(tiny_mnist):
    data = load_dataset(str(tiny_mnist), val_size=50)
    assert data.name == "tiny-set"
    assert data.input_shape == (1, 28, 28)
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (250, 50, 100)
    assert data.info["source"] == str(tiny_mnist.resolve())
    assert data.info["full_sizes"] == {"train": 250, "val": 50, "test": 100}
    load_dataset(tiny_mnist, val_size=50)  # a Path works too


def test_same_seed_same_tensors_other_seed_other_split(tiny_mnist):
    a = load_dataset(str(tiny_mnist), seed=3, val_size=50, limit=100, limit_test=40)
    b = load_dataset(str(tiny_mnist), seed=3, val_size=50, limit=100, limit_test=40)
    assert_same(a, b)
    c = load_dataset(str(tiny_mnist), seed=4, val_size=50, limit=100, limit_test=40)
    assert not torch.equal(a.x_val, c.x_val)
    assert not torch.equal(a.x_train, c.x_train)
    # Normalisation statistics come from the whole training file: independent of the seed.
    assert (a.mean, a.std) == (c.mean, c.std)


def test_val_fraction(tiny_mnist):
    data = load_dataset(str(tiny_mnist), val_size=0.2)
    assert (len(data.y_train), len(data.y_val)) == (240, 60)


def test_limits(tiny_mnist):
    full = load_dataset(str(tiny_mnist), val_size=50)
    small = load_dataset(str(tiny_mnist), val_size=50, limit=30, limit_test=20)
    assert (len(small.y_train), len(small.y_val), len(small.y_test)) == (30, 20, 20)
    assert small.info["full_sizes"] == {"train": 250, "val": 50, "test": 100}
    # Limiting picks a subset of the same split: every kept example is in the full split.
    full_rows = {tuple(row.flatten()[:20].tolist()) for row in full.x_train}
    assert all(tuple(row.flatten()[:20].tolist()) in full_rows for row in small.x_train)
    # limit does not change which examples are in the validation split.
    only_train = load_dataset(str(tiny_mnist), val_size=50, limit=30)
    assert torch.equal(only_train.x_val, full.x_val)
    # A limit above the split size keeps the whole split.
    assert len(load_dataset(str(tiny_mnist), val_size=50, limit=10_000).y_train) == 250


def test_data_dir_for_named_set(tmp_path, isolated_env, make_mnist_folder):
    folder = make_mnist_folder(tmp_path / "my-mnist", 120, 30)
    data = load_dataset("mnist", data_dir=str(folder), val_size=20)
    assert data.name == "mnist" and data.info["source"] == str(folder.resolve())


def test_named_set_not_found_lists_places(tmp_path, isolated_env):
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("fashion-mnist", data_dir=str(tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere") in str(info.value)
    assert str(isolated_env / "fashion-mnist") in str(info.value)


def test_unknown_name_lists_known_names():
    with pytest.raises(ConfigError) as info:
        load_dataset("cifar-11")
    message = str(info.value)
    assert "unknown data set 'cifar-11'" in message
    for name in EXPECTED_NAMES:
        assert name in message
    assert "MNIST-layout IDX files" in message


def test_file_instead_of_folder(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("1,2\n")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        load_dataset(str(path))


def test_folder_without_idx_files(tmp_path):
    with pytest.raises(DataNotFoundError, match="not a complete MNIST-layout folder"):
        load_dataset(str(tmp_path))


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"limit": -1}, r"limit must be a positive integer .*got -1"),
        ({"limit": 0}, r"limit must be a positive integer .*got 0"),
        ({"limit": 2.5}, r"limit must be a positive integer .*got 2\.5"),
        ({"limit_test": -5}, r"limit_test must be a positive integer .*got -5"),
        ({"val_size": 300}, r"val_size=300 gives 300 of 300"),
        ({"val_size": 0}, r"val_size=0 gives 0 of 300"),
        ({"val_size": -3}, r"val_size=-3"),
        ({"val_size": 1.5}, r"val_size as a fraction must lie strictly between 0 and 1; got 1\.5"),
        ({"val_size": "10"}, r"val_size must be an int count or a float fraction .*got '10'"),
        ({"val_size": True}, r"val_size must be an int count"),
        ({"seed": -1}, r"seed must be a non-negative integer; got -1"),
        ({"seed": "0"}, r"seed must be a non-negative integer; got '0'"),
        ({"data_dir": "/somewhere"}, r"data_dir='/somewhere' only applies to named data sets"),
    ],
)
def test_argument_validation(tiny_mnist, kwargs, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_dataset(str(tiny_mnist), **kwargs)


@pytest.mark.skipif(not REAL_FASHION.is_dir(), reason="needs Debian's dataset-fashion-mnist package")
def test_real_fashion_mnist(isolated_env, monkeypatch):
    from modelpress.data import mnist as mnist_module

    monkeypatch.setattr(mnist_module, "SYSTEM_DATA_DIRS", (REAL_FASHION.parent,))
    data = load_dataset("fashion-mnist", seed=0, limit=2000, limit_test=500)
    assert data.info["full_sizes"] == {"train": 55_000, "val": 5_000, "test": 10_000}
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (2000, 500, 500)
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    assert data.class_names[0] == "T-shirt/top"
    assert data.info["source"] == str(REAL_FASHION.resolve())
    # Fashion-MNIST's well-known training-set pixel statistics.
    assert data.mean == pytest.approx(0.2860, abs=1e-3) and data.std == pytest.approx(0.3530, abs=1e-3)
    assert set(data.y_train.unique().tolist()) == set(range(10))
