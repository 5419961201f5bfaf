"""Tiny recipes on a slice of scikit-learn's digits: every run takes a few seconds."""

from __future__ import annotations

import copy

import pytest
import yaml

TINY = {
    "name": "tiny",
    "seed": 0,
    "data": {"name": "digits", "limit": 240, "limit_test": 120},
    "measure": {"latency": False},
    "stages": [
        {"kind": "train", "name": "teacher", "model": "mlp:48", "epochs": 3, "lr": 0.1},
        {"kind": "prune", "sparsity": 0.7, "retrain_epochs": 2},
        {"kind": "quantize", "bits": 4, "finetune_epochs": 1},
        {"kind": "encode"},
    ],
}


@pytest.fixture
def tiny_raw() -> dict:
    """A fresh copy of the tiny recipe as plain data."""
    return copy.deepcopy(TINY)


@pytest.fixture
def write_recipe(tmp_path):
    """Write a recipe dict as YAML under tmp_path and return its path."""

    def write(raw: dict, name: str = "recipe.yaml"):
        path = tmp_path / name
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path

    return write
