import torch

from modelpress.data.base import EpochShuffleSampler


def test_shuffle_order_is_a_pure_function_of_seed_and_epoch():
    a, b = EpochShuffleSampler(50, seed=3), EpochShuffleSampler(50, seed=3)
    a.set_epoch(2)
    list(b)  # consuming epoch 0 first must not change epoch 2's order
    b.set_epoch(2)
    assert list(a) == list(b) and sorted(a) == list(range(50))
    b.set_epoch(3)
    assert list(a) != list(b)
    assert list(EpochShuffleSampler(50, seed=4)) != list(EpochShuffleSampler(50, seed=3))


def test_loader_yields_examples_with_their_indices(tiny_splits):
    loader = tiny_splits.loader("train", batch_size=16, shuffle=True, seed=1)
    x, y, idx = next(iter(loader))
    assert x.shape == (16, *tiny_splits.input_shape)
    assert torch.equal(x, tiny_splits.x_train[idx]) and torch.equal(y, tiny_splits.y_train[idx])
    assert tiny_splits.describe().startswith("blobs: 256 train / 64 val / 128 test")
