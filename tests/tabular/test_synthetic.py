"""MUNGE and smearing: shapes, seeds, where samples fall, nominal attributes, speed, clear errors."""

from __future__ import annotations

import time

import numpy as np
import pytest

from modelpress.core.errors import ConfigError, ShapeError
from modelpress.tabular.synthetic import (
    categorical_mask,
    make_synthetic,
    munge,
    nearest_neighbours,
    smear,
)


def table(n: int = 60, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    x[:, 3] = rng.integers(0, 3, size=n)  # a nominal attribute with codes 0..2
    return x


def test_munge_shape_and_seed():
    x = table()
    a = munge(x, 150, seed=1, categorical=[3])
    assert a.shape == (150, 4)
    np.testing.assert_array_equal(a, munge(x, 150, seed=1, categorical=[3]))
    assert not np.array_equal(a, munge(x, 150, seed=2, categorical=[3]))


def test_munge_with_p_zero_copies_training_rows_once_per_round():
    x = table()
    out = munge(x, 120, p=0.0)
    np.testing.assert_array_equal(out, np.vstack([x, x]))


def test_munge_nominal_values_come_from_the_row_or_its_neighbour():
    x = table()
    out = munge(x, len(x), p=1.0, categorical=[3], seed=0)
    neighbour = nearest_neighbours(x, categorical_mask([3], 4))
    np.testing.assert_array_equal(out[:, 3], x[neighbour, 3])  # p = 1: always the neighbour's value


def test_munge_continuous_draws_centre_on_the_neighbour_with_the_gap_as_spread():
    x = np.array([[0.0], [1.0], [10.0], [10.5]])
    # Each full round makes one sample per row, in row order.
    draws = munge(x, 4 * 4000, p=1.0, s=1.0, seed=0)[:, 0].reshape(4000, 4)
    # Row 0's neighbour is row 1 (gap 1): draws ~ N(1, 1).
    assert abs(draws[:, 0].mean() - 1.0) < 0.06
    assert abs(draws[:, 0].std() - 1.0) < 0.06
    # Row 2's neighbour is row 3 (gap 0.5): N(10.5, 0.5); a larger s narrows it.
    assert abs(draws[:, 2].std() - 0.5) < 0.03
    narrow = munge(x, 4 * 4000, p=1.0, s=5.0, seed=1)[:, 0].reshape(4000, 4)
    assert abs(narrow[:, 2].std() - 0.1) < 0.01


def test_nearest_neighbour_is_never_the_row_itself_even_with_duplicates():
    x = np.array([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0], [5.1, 5.0]])
    nn = nearest_neighbours(x, np.zeros(2, dtype=bool))
    assert nn.tolist() == [1, 0, 3, 2]


def test_smear_noise_scale_and_nominal_marginal():
    x = table(200)
    assert np.isin(smear(x, 500, scale=0.0, p=0.0), x).all()  # no noise: exact training values
    out = smear(x, 5000, scale=0.5, p=1.0, categorical=[3], seed=3)
    assert set(np.unique(out[:, 3])) <= {0.0, 1.0, 2.0}
    two_values = np.array([[0.0], [100.0]] * 50)  # std 50, so scale 0.1 is noise of sd 5
    noisy = smear(two_values, 20_000, scale=0.1, seed=4)[:, 0]
    residual = noisy - np.round(noisy / 100.0) * 100.0
    assert abs(residual.std() - 5.0) < 0.2


def test_large_synthetic_set_is_fast():
    x = table(2000)
    start = time.perf_counter()
    out = munge(x, 200_000, categorical=[3])
    assert out.shape == (200_000, 4)
    assert time.perf_counter() - start < 5.0


def test_make_synthetic_dispatch_and_none():
    x = table()
    assert make_synthetic("none", x, 100).shape == (0, 4)
    assert make_synthetic("smear", x, 7).shape == (7, 4)
    with pytest.raises(ConfigError, match="unknown synthetic data method"):
        make_synthetic("gan", x, 10)


@pytest.mark.parametrize("call, error, message", [
    (lambda: munge(np.zeros((1, 3)), 10), ShapeError, "at least 2 examples"),
    (lambda: munge(np.array([[0.0, np.nan], [1.0, 2.0]]), 10), ConfigError, "NaN"),
    (lambda: munge(table(), 10, p=1.5), ConfigError, "probability"),
    (lambda: munge(table(), 10, s=0.0), ConfigError, "spread"),
    (lambda: munge(table(), 0), ConfigError, "n_samples"),
    (lambda: munge(table(), 10, categorical=[7]), ConfigError, "outside"),
    (lambda: smear(table(), 10, scale=-1.0), ConfigError, "scale"),
])
def test_bad_input_is_named(call, error, message):
    with pytest.raises(error, match=message):
        call()
