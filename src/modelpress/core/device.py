"""Which device a module lives on, and the environment variable that picks where training runs."""

from __future__ import annotations

import os

import torch
from torch import nn

DEVICE_ENV = "MODELPRESS_DEVICE"


def cpu_requested() -> bool:
    """True when ``$MODELPRESS_DEVICE`` asks for the CPU (e.g. to train on the CPU of a GPU machine)."""
    return os.environ.get(DEVICE_ENV, "").strip().lower().startswith("cpu")


def module_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter or buffer (the CPU for a module without any)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")
