"""scikit-learn bundled sets and the locally generated MNIST-1D."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from modelpress.core.errors import ConfigError
from modelpress.data import load_dataset
from modelpress.data.synthetic import generate_mnist1d


@pytest.mark.parametrize(
    ("name", "shape", "classes", "total"),
    [("digits", (1, 8, 8), 10, 1797), ("breast-cancer", (30,), 2, 569), ("wine", (13,), 3, 178)],
)
def test_sklearn_shapes_and_stratification(name, shape, classes, total):
    data = load_dataset(name, seed=0)
    assert data.input_shape == shape and data.num_classes == classes and len(data.class_names) == classes
    sizes = [len(data.y_train), len(data.y_val), len(data.y_test)]
    assert sum(sizes) == total
    assert sizes[1] == round(0.2 * total) and sizes[2] == round(0.2 * total)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    everything = torch.cat([data.y_train, data.y_val, data.y_test])
    overall = torch.bincount(everything, minlength=classes).double() / total
    for y in (data.y_train, data.y_val, data.y_test):
        share = torch.bincount(y, minlength=classes).double() / len(y)
        # Stratified: each split's class shares match the whole set's within rounding.
        assert torch.allclose(share, overall, atol=1.5 / len(y) + 1e-9)


@pytest.mark.parametrize("name", ["breast-cancer", "wine"])
def test_tabular_standardised_with_train_stats(name):
    data = load_dataset(name, seed=1)
    features = data.input_shape[0]
    assert (data.mean, data.std) == (0.0, 1.0)
    assert len(data.info["feature_mean"]) == len(data.info["feature_std"]) == features
    assert torch.allclose(data.x_train.mean(0), torch.zeros(features), atol=1e-5)
    assert torch.allclose(data.x_train.std(0, unbiased=False), torch.ones(features), atol=1e-4)


def test_digits_image_normalisation():
    data = load_dataset("digits", seed=0)
    assert abs(float(data.x_train.mean())) < 1e-5 and abs(float(data.x_train.std()) - 1) < 1e-3
    assert 0 < data.mean < 1 and 0 < data.std < 1  # statistics of pixels scaled to [0, 1]


def test_sklearn_seeds():
    a, b, c = (load_dataset("wine", seed=s) for s in (7, 7, 8))
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_test, c.x_test)


def test_sklearn_val_size_and_limit():
    data = load_dataset("digits", val_size=100, limit=50, limit_test=30)
    assert data.info["full_sizes"]["val"] == 100
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (50, 30, 30)
    with pytest.raises(ConfigError, match=r"val_size=170 gives 170 of 178"):
        load_dataset("wine", val_size=170)
    with pytest.raises(ConfigError, match=r"val_size=2 gives 2 of 178 .* between 3 and"):
        load_dataset("wine", val_size=2)  # fewer than one example per class


def test_mnist1d_offline_deterministic_and_seeded():
    state = np.random.get_state()
    python_state = random.getstate()
    a = load_dataset("mnist1d", seed=0)
    # Loading must not disturb the caller's global random streams.
    assert random.getstate() == python_state
    after = np.random.get_state()
    assert after[0] == state[0] and np.array_equal(after[1], state[1]) and after[2:] == state[2:]
    assert a.input_shape == (40,) and a.num_classes == 10
    assert (len(a.y_train), len(a.y_val), len(a.y_test)) == (3500, 500, 1000)
    assert set(a.y_train.unique().tolist()) == set(range(10))
    assert a.x_train.dtype == torch.float32 and a.y_train.dtype == torch.int64
    generate_mnist1d.cache_clear()  # really regenerate, not just hit the cache
    b = load_dataset("mnist1d", seed=0)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.x_test, b.x_test)
    c = load_dataset("mnist1d", seed=1, val_size=0.25)
    assert len(c.y_val) == 1000
    assert not torch.equal(a.x_test, c.x_test)
