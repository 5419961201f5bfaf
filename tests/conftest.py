"""Shared fixtures: tiny, fast, deterministic data sets and models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modelpress.data.base import DataSplits


def make_blobs(n: int, num_classes: int, shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian class blobs: each class has its own random mean pattern plus unit noise."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(num_classes, *shape, generator=torch.Generator().manual_seed(1234)) * 1.5
    y = torch.randint(0, num_classes, (n,), generator=g)
    x = centers[y] + torch.randn(n, *shape, generator=g)
    return x.float(), y.long()


def make_splits(num_classes: int = 4, shape: tuple[int, ...] = (1, 8, 8), n_train: int = 256, seed: int = 0) -> DataSplits:
    x_tr, y_tr = make_blobs(n_train, num_classes, shape, seed)
    x_va, y_va = make_blobs(64, num_classes, shape, seed + 1)
    x_te, y_te = make_blobs(128, num_classes, shape, seed + 2)
    return DataSplits("blobs", x_tr, y_tr, x_va, y_va, x_te, y_te, num_classes=num_classes)


@pytest.fixture
def tiny_splits() -> DataSplits:
    return make_splits()


@pytest.fixture
def tiny_mnist_dir(tmp_path):
    """A folder of the four MNIST-layout IDX files (300 train / 100 test, 28x28, 10 classes)."""
    from modelpress.data.idx import write_idx

    rng = np.random.default_rng(0)
    folder = tmp_path / "my-mnist"
    folder.mkdir()
    for prefix, n in (("train", 300), ("t10k", 100)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        # class-dependent bright square so the task is learnable in a few epochs
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            r, c = divmod(int(label), 4)
            images[i, 2 + 6 * r : 8 + 6 * r, 2 + 6 * c : 8 + 6 * c] = 255
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels)
    return folder
