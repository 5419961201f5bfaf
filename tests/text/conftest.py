"""Fixtures for transformer distillation: a tiny random BERT teacher saved as a local Hugging Face folder, and a
folder of fake fortunes in three categories whose words the teacher's WordPiece vocabulary covers."""

from __future__ import annotations

import random

import pytest

WORDS = {
    "cats": "cat kitten purr meow whisker paw fur mouse nap".split(),
    "code": "code bug compile python linux kernel byte disk loop".split(),
    "food": "bread cheese apple soup pie bake salt sugar tea".split(),
}
COMMON = "the a is and of to in it my".split()


@pytest.fixture(scope="session")
def fake_fortunes(tmp_path_factory):
    """A fortunes folder: 3 categories x 60 texts of 5-14 words."""
    rnd = random.Random(0)
    root = tmp_path_factory.mktemp("fortunes")
    for category, words in WORDS.items():
        entries = {" ".join(rnd.choice(words + COMMON) for _ in range(rnd.randint(5, 14))) for _ in range(60)}
        (root / category).write_text("\n%\n".join(sorted(entries)) + "\n%\n")
    return root


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory):
    """A random 2-layer, 64-wide, 4-head BERT with a WordPiece tokenizer, written with save_pretrained."""
    pytest.importorskip("transformers")
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("teacher")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted({w for ws in WORDS.values() for w in ws} | set(COMMON))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    return folder
