"""Small data sets bundled with scikit-learn: ``digits`` (8x8 images), ``breast-cancer``, ``wine``.

They ship with scikit-learn, so they always load offline. Having no official test split, each
is split three ways, stratified by class and seeded (60 / 20 / 20 by default).
"""

from __future__ import annotations

import numpy as np
import torch

from modelpress.core.errors import ConfigError
from modelpress.data.base import DataSplits
from modelpress.data.splitting import STREAM_TEST, STREAM_VAL, resolve_count, rng

__all__ = ["SKLEARN_SETS", "load_sklearn_set", "stratified_split"]

#: Our name -> name of the ``sklearn.datasets`` loader function.
SKLEARN_SETS: dict[str, str] = {
    "digits": "load_digits",
    "breast-cancer": "load_breast_cancer",
    "wine": "load_wine",
}

TEST_FRACTION = 0.2
DEFAULT_VAL_FRACTION = 0.2
DIGITS_MAX_PIXEL = 16.0  # load_digits pixels count the set bits (0..16) of 4x4 blocks of a 32x32 bitmap


def stratified_split(y: np.ndarray, n_val: int, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded stratified split of ``range(len(y))`` into train / val / test index arrays.

    Uses scikit-learn's ``train_test_split`` twice (test off the whole set, then val off the
    rest), each with its own seeded stream. Returned index arrays are sorted.
    """
    from sklearn.model_selection import train_test_split

    def state(stream: int) -> int:
        # sklearn wants a 32-bit seed; derive one from our own stream so any seed works.
        return int(rng(seed, stream).integers(2**31))

    everything = np.arange(len(y))
    rest, test = train_test_split(everything, test_size=n_test, stratify=y, random_state=state(STREAM_TEST))
    train, val = train_test_split(rest, test_size=n_val, stratify=y[rest], random_state=state(STREAM_VAL))
    return np.sort(train), np.sort(val), np.sort(test)


def load_sklearn_set(name: str, *, seed: int = 0, val_size: int | float | None = None) -> DataSplits:
    """Load one scikit-learn bundled data set as normalised, stratified splits.

    Args:
        name: ``"digits"``, ``"breast-cancer"`` or ``"wine"``.
        seed: seeds the stratified train / val / test split.
        val_size: validation examples: an int count or a float fraction in (0, 1) of the
            whole set; 20 % by default. The test split is always 20 % of the whole set.

    Returns:
        DataSplits. ``digits``: float32 ``(N, 1, 8, 8)`` images, pixels divided by 16 then
        normalised by the scalar mean / std of the train split (stored in ``mean`` / ``std``).
        ``breast-cancer`` (30 features) and ``wine`` (13 features): float32 ``(N, F)``,
        each feature standardised with the train split's mean / std, recorded as lists in
        ``info["feature_mean"]`` / ``info["feature_std"]`` (``mean`` / ``std`` stay 0 / 1).

    Raises:
        ConfigError: unknown ``name``, or ``val_size`` leaves a split with fewer examples
            than classes.
    """
    if name not in SKLEARN_SETS:
        raise ConfigError(f"unknown scikit-learn data set {name!r}; known: {', '.join(SKLEARN_SETS)}")
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, SKLEARN_SETS[name])()
    x = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target, dtype=np.int64)
    num_classes = int(y.max()) + 1
    n = len(y)
    n_test = int(round(TEST_FRACTION * n))
    # Stratification needs at least one example of every class in every split.
    n_val = resolve_count(
        "val_size", val_size, n, default=DEFAULT_VAL_FRACTION, minimum=num_classes,
        at_most=n - n_test - num_classes, of_what=f"examples of {name} ({n_test} more go to the test split)",
    )
    train, val, test = stratified_split(y, n_val, n_test, seed)

    info = {
        "source": f"sklearn.datasets.{SKLEARN_SETS[name]} (bundled with scikit-learn)",
        "seed": seed,
        "val_size": n_val,
        "split": f"stratified, seeded: {len(train)} train / {n_val} val / {n_test} test",
    }
    x, mean, std = _prepare_inputs(name, x, bunch, train, info)

    def part(index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(x[index].astype(np.float32)), torch.from_numpy(y[index])

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = part(train), part(val), part(test)
    class_names = tuple(str(c) for c in bunch.target_names)
    return DataSplits(
        name=name, x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val, x_test=x_test, y_test=y_test,
        num_classes=num_classes, class_names=class_names, mean=mean, std=std, info=info,
    )


def _prepare_inputs(name: str, x: np.ndarray, bunch, train: np.ndarray, info: dict) -> tuple[np.ndarray, float, float]:
    """``(inputs, mean, std)`` normalised with train statistics: digits as ``(N, 1, 8, 8)`` images with a
    scalar mean / std, the other sets per feature (their statistics and names go into ``info``)."""
    if name == "digits":
        x, mean, std = _normalise_images(x / DIGITS_MAX_PIXEL, train)
        return x.reshape(len(x), 1, 8, 8), mean, std
    x, feature_mean, feature_std = _standardise_features(x, train)
    info.update(feature_mean=feature_mean.tolist(), feature_std=feature_std.tolist(),
                feature_names=[str(f) for f in bunch.feature_names])
    return x, 0.0, 1.0


def _normalise_images(x: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Scalar normalisation with the train split's pixel statistics (no test leakage)."""
    mean = float(x[train].mean())
    std = float(x[train].std()) or 1.0
    return (x - mean) / std, mean, std


def _standardise_features(x: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-feature standardisation with train-split statistics; constant features keep std 1."""
    mean = x[train].mean(axis=0)
    std = x[train].std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return (x - mean) / std, mean, std
