"""The registry of named data sets and :func:`load_dataset`, the one entry point to all of them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from modelpress.core.errors import ConfigError
from modelpress.core.registry import Registry
from modelpress.data.base import DataSplits
from modelpress.data.mnist import MNIST_FILES, find_mnist_dir, load_mnist_folder
from modelpress.data.splitting import apply_limits, check_limit, check_seed
from modelpress.data.synthetic import load_mnist1d
from modelpress.data.tabular import SKLEARN_SETS, load_sklearn_set

__all__ = ["DATASETS", "DatasetLoader", "dataset_names", "load_dataset"]

#: A loader: ``(seed=, val_size=, data_dir=) -> DataSplits`` with full (unlimited) splits.
DatasetLoader = Callable[..., DataSplits]

DATASETS: Registry[DatasetLoader] = Registry("data set")


def _register_mnist_layout(name: str) -> None:
    @DATASETS.register(name)
    def load(*, seed: int, val_size: int | float | None, data_dir: str | None) -> DataSplits:
        return load_mnist_folder(find_mnist_dir(name, data_dir), name=name, seed=seed, val_size=val_size)


def _register_sklearn(name: str) -> None:
    @DATASETS.register(name)
    def load(*, seed: int, val_size: int | float | None, data_dir: str | None) -> DataSplits:
        # Bundled with scikit-learn: data_dir has nothing to point at.
        return load_sklearn_set(name, seed=seed, val_size=val_size)


for _name in ("fashion-mnist", "mnist"):
    _register_mnist_layout(_name)
for _name in SKLEARN_SETS:
    _register_sklearn(_name)


@DATASETS.register("mnist1d")
def _load_mnist1d(*, seed: int, val_size: int | float | None, data_dir: str | None) -> DataSplits:
    return load_mnist1d(seed=seed, val_size=val_size)


def dataset_names() -> list[str]:
    """The registered data set names, sorted."""
    return DATASETS.names()


def load_dataset(
    name_or_path: str | os.PathLike[str],
    *,
    seed: int = 0,
    val_size: int | float | None = None,
    limit: int | None = None,
    limit_test: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
) -> DataSplits:
    """Load a data set by name, or an MNIST-layout folder, as seeded train / val / test splits.

    Args:
        name_or_path: a registered name (``"fashion-mnist"``, ``"mnist"``, ``"digits"``,
            ``"breast-cancer"``, ``"wine"``, ``"mnist1d"``; see :func:`dataset_names`) or a
            folder holding the four MNIST-layout IDX files (``train-images-idx3-ubyte``,
            ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``,
            each optionally ``.gz``); the data set is then named after the folder. A registered
            name wins over a folder of the same name in the working directory; write
            ``./mnist`` for the folder.
        seed: seeds every random choice (validation split, stratified splits, limits, the
            MNIST-1D generator). Same seed, identical tensors; another seed, another split.
        val_size: validation size, an int count or a float fraction in (0, 1). MNIST layout:
            drawn from the training file, default 5000 (1/12 of a smaller file). scikit-learn sets: fraction of the
            whole set, default 0.2 (test is another 0.2). MNIST-1D: of the 4000 generated
            training examples, default 500.
        limit: keep only a seeded random ``limit`` examples of the train split (quick runs);
            None keeps all, a limit above the split size keeps all.
        limit_test: likewise for the val and test splits.
        data_dir: for ``fashion-mnist`` / ``mnist``, a folder to search first (see
            :func:`~modelpress.data.mnist.find_mnist_dir`); ignored by the bundled and generated
            sets; not allowed together with a folder ``name_or_path``.

    Returns:
        :class:`~modelpress.data.base.DataSplits`: float32 inputs (``(N, 1, 28, 28)`` for
        MNIST layout, ``(N, 1, 8, 8)`` digits, ``(N, F)`` tabular, ``(N, 40)`` MNIST-1D),
        int64 labels; ``info["source"]`` says where the data came from, ``info["full_sizes"]``
        the split sizes before ``limit``.

    Raises:
        ConfigError: unknown name that is not a folder (the message lists the known names),
            or an invalid ``seed`` / ``val_size`` / ``limit`` / ``limit_test`` / ``data_dir``.
        DataNotFoundError: the files of a named MNIST-layout set are nowhere to be found (the
            message lists every place searched and how to get them).
        DataError: the files are truncated, corrupt or inconsistent.
    """
    seed = check_seed(seed)
    limit = check_limit("limit", limit)
    limit_test = check_limit("limit_test", limit_test)
    name = _check_name(name_or_path)
    if name in DATASETS:
        splits = DATASETS.get(name)(seed=seed, val_size=val_size, data_dir=data_dir)
    else:
        folder = _as_folder(name)
        if data_dir is not None:
            raise ConfigError(
                f"data_dir={str(data_dir)!r} only applies to named data sets; {name!r} is already a folder. "
                f"Pass one or the other"
            )
        splits = load_mnist_folder(folder, seed=seed, val_size=val_size)
    return apply_limits(splits, seed=seed, limit=limit, limit_test=limit_test)


def _check_name(name_or_path: object) -> str:
    if isinstance(name_or_path, os.PathLike):
        name_or_path = os.fspath(name_or_path)
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ConfigError(
            f"data set must be a name ({', '.join(DATASETS.names())}) or a folder path; got {name_or_path!r}"
        )
    return name_or_path


def _as_folder(name: str) -> Path:
    """``name`` as an existing folder, or ConfigError listing the known names."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    files = ", ".join(f"{base}[.gz]" for base in MNIST_FILES.values())
    what = f"{name!r} is a file, not a folder" if path.exists() else f"unknown data set {name!r}"
    raise ConfigError(
        f"{what}; known data sets: {', '.join(DATASETS.names())}. "
        f"A folder holding the four MNIST-layout IDX files ({files}) also works"
    )
