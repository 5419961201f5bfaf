"""Token batches: padding and masks, length-grouped shuffling that depends only on (seed, epoch)."""

from __future__ import annotations

import pytest
import torch

from modelpress.core.errors import ConfigError
from modelpress.data.tokens import LengthGroupedSampler, _pad, model_inputs


def test_pad_builds_masks_and_fixed_lengths():
    rows = [{"input_ids": [5, 6, 7]}, {"input_ids": [8]}]
    batch = _pad(rows, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    fixed = _pad(rows, pad_id=9, length=5)
    assert fixed["input_ids"].tolist() == [[5, 6, 7, 9, 9], [8, 9, 9, 9, 9]]
    assert set(model_inputs({**batch, "extra": torch.zeros(1)})) == {"input_ids", "attention_mask"}


def test_length_grouped_sampler_is_a_seeded_permutation_of_homogeneous_batches():
    lengths = [i % 50 for i in range(400)]
    sampler = LengthGroupedSampler(lengths, batch_size=8, seed=1, pool=10)
    first = list(sampler)
    assert sorted(first) == list(range(400))
    assert list(sampler) == first  # same epoch, same order
    sampler.set_epoch(1)
    assert list(sampler) != first
    spreads = [max(lengths[i] for i in first[b:b + 8]) - min(lengths[i] for i in first[b:b + 8]) for b in range(0, 400, 8)]
    assert sum(spreads) / len(spreads) < 10  # random batches of 8 from 0..49 would spread ~38


def test_tokenize_needs_two_tokens():
    from modelpress.data.tokens import tokenize

    with pytest.raises(ConfigError, match="max_len"):
        tokenize(lambda *a, **k: {}, ["x"], 1)


def test_the_short_batch_comes_last_so_every_full_batch_stays_grouped():
    sampler = LengthGroupedSampler(list(range(70)), 8, seed=0)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = list(iter(sampler))
        assert sorted(order) == list(range(70))
        spans = [max(order[i:i + 8]) - min(order[i:i + 8]) for i in range(0, 64, 8)]
        assert max(spans) == 7  # lengths are the indices: each full batch is 8 neighbouring lengths
