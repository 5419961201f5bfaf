"""MNIST-1D: a small 1-D "digits" data set generated locally by the ``mnist1d`` package.

We call ``mnist1d.data.make_dataset`` (pure computation) and never ``get_dataset``, which
downloads a pickle from GitHub and writes it into the working directory.
"""

from __future__ import annotations

import functools
import random

import numpy as np
import torch

from modelpress.data.base import DataSplits
from modelpress.data.splitting import STREAM_VAL, resolve_count, split_off

__all__ = ["load_mnist1d", "generate_mnist1d"]

DEFAULT_VAL_SIZE = 500  # of the 4000 generated training examples


@functools.lru_cache(maxsize=4)
def generate_mnist1d(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Generate MNIST-1D with the package's default arguments and ``args.seed = seed``.

    ``make_dataset`` seeds Python's and NumPy's *global* generators from ``args.seed``, so
    the output is a pure function of the seed. We save and restore those global states
    around the call, so loading data never changes the random stream of the caller.
    Takes about a second; cached per seed (the arrays are returned read-only).

    Returns:
        ``(x_train, y_train, x_test, y_test)``: float64 ``(4000, 40)``, int64 ``(4000,)``,
        float64 ``(1000, 40)``, int64 ``(1000,)``.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = seed % 2**32  # np.random.seed only takes 32-bit seeds
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    arrays = (data["x"], data["y"], data["x_test"], data["y_test"])
    for array in arrays:
        array.setflags(write=False)
    return arrays


def load_mnist1d(*, seed: int = 0, val_size: int | float | None = None) -> DataSplits:
    """Load MNIST-1D, generated offline, split into train / val / test.

    Args:
        seed: passed to the generator (so a different seed gives a different sample of the
            data set, test split included) and seeds the validation split.
        val_size: validation examples carved out of the 4000 generated training examples:
            an int count or a float fraction in (0, 1); 500 by default. The test split is the
            generator's own 1000 test examples.

    Returns:
        DataSplits with float32 ``(N, 40)`` inputs (already standardised by the generator over
        the whole generated set; ``mean`` / ``std`` stay 0 / 1) and int64 labels in [0, 10).

    Raises:
        ConfigError: ``val_size`` is invalid or leaves no training examples.
    """
    x_all, y_all, x_test, y_test = generate_mnist1d(seed)
    n_val = resolve_count("val_size", val_size, len(y_all), default=DEFAULT_VAL_SIZE,
                          of_what="generated MNIST-1D training examples")
    val, train = split_off(len(y_all), n_val, seed, STREAM_VAL)

    def part(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.int64)

    (x_train, y_train), (x_val, y_val) = part(x_all[train], y_all[train]), part(x_all[val], y_all[val])
    x_te, y_te = part(x_test, y_test)
    return DataSplits(
        name="mnist1d", x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val, x_test=x_te, y_test=y_te,
        num_classes=10, class_names=tuple(str(d) for d in range(10)),
        info={
            "source": "mnist1d.data.make_dataset (generated locally, default arguments)",
            "generator_seed": seed % 2**32,
            "seed": seed,
            "val_size": n_val,
            "split": f"val: {n_val} seeded from the 4000 generated training examples; test: the generator's 1000",
        },
    )
