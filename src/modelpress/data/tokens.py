"""Token batches for text models: tokenize once, pad per batch, group texts of similar length.

Batches are ``(tokens, labels, index)`` as :func:`modelpress.train.train` expects, with ``tokens`` a dict
of ``(B, L)`` int64 tensors (``input_ids``, ``attention_mask``, ``token_type_ids``) that a Hugging Face
encoder takes as keyword arguments. Any tokenizer with the Hugging Face call signature works.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import DataLoader, SequentialSampler

from modelpress.core.errors import ConfigError
from modelpress.data.base import EpochShuffleSampler

__all__ = ["LengthGroupedSampler", "model_inputs", "text_loader", "tokenize"]

_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def tokenize(tokenizer, texts: Sequence[str], max_len: int) -> list[dict[str, list[int]]]:
    """Token ids (and the tokenizer's other model inputs) of each text, truncated to ``max_len``, unpadded."""
    if max_len < 2:
        raise ConfigError(f"max_len must be at least 2 tokens; got {max_len}")
    encoded = tokenizer(list(texts), truncation=True, max_length=max_len)
    keys = [k for k in _MODEL_INPUTS if k in encoded]
    return [{k: encoded[k][i] for k in keys} for i in range(len(texts))]


def _pad(rows: Sequence[dict[str, list[int]]], pad_id: int, length: int | None = None) -> dict[str, torch.Tensor]:
    """Pad token rows to the longest (or ``length``): ``{"input_ids": (B, L), "attention_mask": (B, L), ...}``."""
    length = length or max(len(r["input_ids"]) for r in rows)
    batch = {}
    for key in rows[0]:
        fill = pad_id if key == "input_ids" else 0
        batch[key] = torch.tensor([r[key][:length] + [fill] * (length - len(r[key][:length])) for r in rows])
    if "attention_mask" not in batch:
        batch["attention_mask"] = torch.tensor([[1] * len(r["input_ids"][:length]) + [0] * (length - len(r["input_ids"][:length]))
                                                for r in rows])
    return batch


class LengthGroupedSampler(EpochShuffleSampler):
    """An epoch's shuffled order in which each run of ``batch_size`` indices holds texts of similar length.

    The permutation of :class:`EpochShuffleSampler` is cut into pools of ``pool`` batches; each pool is
    sorted by length and cut into batches, and the batches are shuffled. Batches then pad to about their
    own length instead of the longest text's, which makes training several times cheaper on short texts.
    The order depends only on ``(seed, epoch)``, so a resumed run sees the same batches.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, pool: int = 50) -> None:
        super().__init__(len(lengths), seed)
        self.lengths, self.batch_size, self.pool = list(lengths), batch_size, pool

    def __iter__(self):
        order = list(super().__iter__())
        span = self.batch_size * self.pool
        batches = []
        for start in range(0, len(order), span):
            chunk = sorted(order[start:start + span], key=lambda i: self.lengths[i])
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch + 1)
        shuffled = [batches[b] for b in torch.randperm(len(batches), generator=generator).tolist()]
        # The DataLoader re-cuts this flat order every batch_size indices, so the one short batch (the
        # last pool's remainder) must come last, or every batch after it would straddle two groups.
        shuffled.sort(key=lambda batch: len(batch) < self.batch_size)
        return iter([i for batch in shuffled for i in batch])


def text_loader(tokenizer, texts: Sequence[str], labels: torch.Tensor | None = None, *, batch_size: int = 32,
                max_len: int = 64, shuffle: bool = False, seed: int = 0, pad_to: int | None = None) -> DataLoader:
    """Batches ``(tokens, labels, index)`` for :func:`modelpress.train.train`, padded per batch.

    ``tokens`` is a dict of ``(B, L)`` int64 tensors (``input_ids``, ``attention_mask``, ...). Unlabelled
    texts get labels 0. With ``shuffle`` the order depends only on ``(seed, epoch)`` and batches group
    texts of similar length (:class:`LengthGroupedSampler`); without it texts keep their order.
    ``pad_to`` pads every batch to that many tokens (fixed shapes for latency measurement).
    """
    rows = tokenize(tokenizer, texts, max_len)
    y = torch.zeros(len(rows), dtype=torch.int64) if labels is None else torch.as_tensor(labels, dtype=torch.int64)
    if len(y) != len(rows):
        raise ConfigError(f"{len(rows)} texts but {len(y)} labels")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def collate(indices: list[int]):
        index = torch.tensor(indices)
        return _pad([rows[i] for i in indices], pad_id, pad_to), y[index], index

    sampler = (LengthGroupedSampler([len(r["input_ids"]) for r in rows], batch_size, seed) if shuffle
               else SequentialSampler(range(len(rows))))
    return DataLoader(range(len(rows)), batch_size=batch_size, sampler=sampler, collate_fn=collate)


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of a token batch an encoder's forward takes."""
    return {k: v for k, v in batch.items() if k in _MODEL_INPUTS}
