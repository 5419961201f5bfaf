"""Fixtures for the data tests: tiny MNIST-layout folders written with write_idx, an isolated environment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelpress.data import mnist as mnist_module
from modelpress.data.idx import write_idx


def write_mnist_folder(folder: Path, n_train: int = 300, n_test: int = 100, *, gzip: bool = True,
                       seed: int = 0) -> Path:
    """Write four MNIST-layout files of random uint8 images and cycling labels into ``folder``."""
    rng = np.random.default_rng(seed)
    suffix = ".gz" if gzip else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{split}-images-idx3-ubyte{suffix}",
                  rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8), gzip=gzip)
        write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", (np.arange(n) % 10).astype(np.uint8), gzip=gzip)
    return folder


@pytest.fixture
def isolated_env(tmp_path, monkeypatch):
    """No MODELPRESS_DATA, HOME in tmp_path, and the system data folder pointed into tmp_path.

    Returns the fake system data folder, so tests never depend on what this machine has.
    """
    monkeypatch.delenv("MODELPRESS_DATA", raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    system = tmp_path / "system-datasets"
    monkeypatch.setattr(mnist_module, "SYSTEM_DATA_DIRS", (system,))
    return system


@pytest.fixture
def make_mnist_folder():
    """The :func:`write_mnist_folder` helper, as a fixture (test modules cannot import conftest safely)."""
    return write_mnist_folder


@pytest.fixture
def tiny_mnist(tmp_path) -> Path:
    """A folder ``tiny-set`` with 300 train and 100 test random 28x28 images, gzipped."""
    return write_mnist_folder(tmp_path / "tiny-set")
