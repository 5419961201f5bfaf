"""Data sets for modelpress: loading, seeded splitting, normalisation and batch augmentation.

Start with :func:`load_dataset`::

    >>> from modelpress.data import load_dataset
    >>> data = load_dataset("digits", seed=0)
    >>> data.input_shape
    (1, 8, 8)
"""

from modelpress.data.base import DataSplits, EpochShuffleSampler, IndexedTensorDataset, data_metadata
from modelpress.data.idx import read_idx, write_idx
from modelpress.data.mnist import download_mnist, find_mnist_dir, load_mnist_folder, mnist_search_path
from modelpress.data.registry import DATASETS, dataset_names, load_dataset
from modelpress.data.transforms import Compose, GaussianNoise, RandomShift, build_jitter

__all__ = [
    "data_metadata",
    "DATASETS",
    "Compose",
    "DataSplits",
    "EpochShuffleSampler",
    "GaussianNoise",
    "IndexedTensorDataset",
    "RandomShift",
    "build_jitter",
    "dataset_names",
    "download_mnist",
    "find_mnist_dir",
    "load_dataset",
    "load_mnist_folder",
    "mnist_search_path",
    "read_idx",
    "write_idx",
]
