"""Training checkpoints: everything needed to continue a run exactly, written atomically, loaded without pickle.

They live in core because both the training loop (writer) and the model loader (reader) use them."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from modelpress.core.errors import ModelFileError
from modelpress.core.io import atomic_write

CHECKPOINT_VERSION = 1


def save_checkpoint(path: str | os.PathLike[str], state: dict) -> None:
    """Write a checkpoint dict (tensors, numbers, strings, lists, dicts only) atomically."""
    with atomic_write(path) as tmp:
        torch.save({"checkpoint_version": CHECKPOINT_VERSION, **state}, tmp)


def load_checkpoint(path: str | os.PathLike[str]) -> dict:
    """Read a checkpoint with ``weights_only=True``: no arbitrary code can run from the file.

    Raises:
        ModelFileError: the file is missing, corrupt, or of an unknown checkpoint version.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types for a damaged zip/pickle
        raise ModelFileError(f"checkpoint {path} is corrupt or not a modelpress checkpoint: {err}") from None
    if not isinstance(state, dict) or state.get("checkpoint_version") != CHECKPOINT_VERSION:
        raise ModelFileError(f"{path} is not a modelpress checkpoint of version {CHECKPOINT_VERSION}")
    return state
