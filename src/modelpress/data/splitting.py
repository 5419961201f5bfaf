"""Seeded, validated splitting helpers shared by every data set loader.

Every random choice draws from its own numpy stream, ``default_rng([seed, STREAM])``, so
that e.g. changing ``limit`` never changes which examples land in the validation split.
"""

from __future__ import annotations

import numbers
from dataclasses import replace

import numpy as np
import torch

from modelpress.core.errors import ConfigError
from modelpress.data.base import DataSplits

# One independent random stream per purpose (see module docstring).
STREAM_VAL = 1
STREAM_TEST = 2
STREAM_LIMIT_TRAIN = 3
STREAM_LIMIT_VAL = 4
STREAM_LIMIT_TEST = 5


def check_seed(seed: object) -> int:
    """Return ``seed`` if it is a non-negative integer, else raise ConfigError."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer; got {seed!r}")
    return int(seed)


def check_limit(name: str, value: object) -> int | None:
    """Validate ``limit`` / ``limit_test``: None (keep everything) or a positive integer."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"{name} must be a positive integer or None (keep every example); got {value!r}")
    return int(value)


def resolve_count(name: str, value: object, total: int, *, default: int | float, minimum: int = 1,
                  at_most: int | None = None, of_what: str = "examples") -> int:
    """Turn a size given as a count or a fraction into a count, validating it.

    Args:
        name: the parameter name, for error messages (``"val_size"``).
        value: None (use ``default``), an int count, or a float fraction in (0, 1) of ``total``.
        total: the number of examples the size is taken from.
        default: used when ``value`` is None; an int count or a float fraction.
        minimum: smallest allowed count (e.g. the number of classes for a stratified split).
        at_most: largest allowed count (leaving room for the other splits); ``total - 1``
            when None.
        of_what: what ``total`` counts, for error messages.

    Returns:
        The count, ``minimum <= count <= at_most``.

    Raises:
        ConfigError: ``value`` has the wrong type, is out of range, or gives a count outside
            ``[minimum, at_most]``; the message names ``name`` and the value given.
    """
    at_most = total - 1 if at_most is None else at_most
    given = value
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, numbers.Real)):
        raise ConfigError(f"{name} must be an int count or a float fraction in (0, 1); got {given!r}")
    if isinstance(value, numbers.Integral):
        count = int(value)
    else:
        if not 0.0 < float(value) < 1.0:
            raise ConfigError(
                f"{name} as a fraction must lie strictly between 0 and 1; got {given!r} "
                f"(pass an int for a number of examples)"
            )
        count = int(round(float(value) * total))
    if count < minimum or count > at_most:
        raise ConfigError(
            f"{name}={given!r} gives {count} of {total} {of_what}; it must give between {minimum} and "
            f"{at_most} so that every split keeps enough examples"
        )
    return count


def rng(seed: int, stream: int) -> np.random.Generator:
    """The numpy generator of one purpose (``STREAM_*``) under ``seed``."""
    return np.random.default_rng([seed, stream])


def split_off(n: int, count: int, seed: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random split of ``range(n)`` into ``count`` indices and the rest.

    Both index arrays are sorted, so each split keeps the order of the source file.
    """
    perm = rng(seed, stream).permutation(n)
    return np.sort(perm[:count]), np.sort(perm[count:])


def limit_indices(n: int, limit: int | None, seed: int, stream: int) -> np.ndarray | None:
    """Indices of the first ``limit`` examples of a seeded permutation (sorted), or None for all."""
    if limit is None or limit >= n:
        return None
    return np.sort(rng(seed, stream).permutation(n)[:limit])


def apply_limits(splits: DataSplits, *, seed: int, limit: int | None, limit_test: int | None) -> DataSplits:
    """Keep a seeded random subset of ``limit`` train and ``limit_test`` val and test examples.

    A limit larger than a split keeps the whole split. The sizes before limiting go to
    ``info["full_sizes"]``.
    """
    info = dict(splits.info)
    info["full_sizes"] = {"train": len(splits.y_train), "val": len(splits.y_val), "test": len(splits.y_test)}
    info["limit"], info["limit_test"] = limit, limit_test
    fields = {}
    for which, limit_value, stream in (
        ("train", limit, STREAM_LIMIT_TRAIN),
        ("val", limit_test, STREAM_LIMIT_VAL),
        ("test", limit_test, STREAM_LIMIT_TEST),
    ):
        x, y = splits.split(which)
        keep = limit_indices(len(y), limit_value, seed, stream)
        if keep is not None:
            index = torch.from_numpy(keep)
            fields[f"x_{which}"], fields[f"y_{which}"] = x[index], y[index]
    return replace(splits, info=info, **fields)
