"""The one data set object every part of modelpress consumes: normalised tensors split three ways."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from modelpress.core.errors import ShapeError


class IndexedTensorDataset(Dataset):
    """``(x, y, index)`` triples, so a stored teacher output can be looked up by example index.

    Args:
        x: inputs, float32 ``(N, *input_shape)``.
        y: labels, int64 ``(N,)``.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if x.shape[0] != y.shape[0]:
            raise ShapeError(f"{x.shape[0]} inputs but {y.shape[0]} labels")
        self.x = x
        self.y = y

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int):
        return self.x[i], self.y[i], i


class EpochShuffleSampler(Sampler[int]):
    """A permutation that depends only on ``(seed, epoch)``.

    The trainer calls :meth:`set_epoch` before each epoch, so a run resumed at epoch k sees
    exactly the batches an uninterrupted run would have seen (as ``DistributedSampler`` does).
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())

    def __len__(self) -> int:
        return self.n


@dataclass(frozen=True)
class DataSplits:
    """Train / validation / test tensors of one classification data set.

    Inputs are float32 ``(N, *input_shape)`` already normalised with ``mean`` and ``std``
    (statistics of the training file, so they do not depend on the split seed); labels are
    int64 ``(N,)`` in ``[0, num_classes)``.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    class_names: tuple[str, ...] = ()
    mean: float = 0.0
    std: float = 1.0
    info: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, e.g. ``(1, 28, 28)`` for images or ``(30,)`` for tabular data."""
        return tuple(self.x_train.shape[1:])

    def split(self, which: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of ``"train"``, ``"val"`` or ``"test"``."""
        pairs = {
            "train": (self.x_train, self.y_train),
            "val": (self.x_val, self.y_val),
            "test": (self.x_test, self.y_test),
        }
        if which not in pairs:
            raise ValueError(f"split must be one of train, val, test; got {which!r}")
        return pairs[which]

    def loader(self, which: str, batch_size: int = 256, *, shuffle: bool = False, seed: int = 0) -> DataLoader:
        """A DataLoader over ``(x, y, index)`` of one split.

        With ``shuffle=True`` the order comes from an :class:`EpochShuffleSampler`, so it is a
        pure function of ``(seed, epoch)``.
        """
        x, y = self.split(which)
        dataset = IndexedTensorDataset(x, y)
        sampler = EpochShuffleSampler(len(dataset), seed) if shuffle else None
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False)

    def describe(self) -> str:
        """One line: name, sizes of the three splits, input shape and class count."""
        return (
            f"{self.name}: {len(self.y_train)} train / {len(self.y_val)} val / {len(self.y_test)} test, "
            f"input {self.input_shape}, {self.num_classes} classes"
        )


def data_metadata(splits: DataSplits) -> dict:
    """What a model file records about the data it was made on (read back by evaluate and reports)."""
    return {"name": splits.name, "mean": splits.mean, "std": splits.std, "num_classes": splits.num_classes,
            "input_shape": list(splits.input_shape), "class_names": list(splits.class_names)}
