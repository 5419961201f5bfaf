"""Where training runs: the GPU when there is one (each torchrun rank on its own), else the CPU.

:func:`~modelpress.train.train` moves the model, what its objective holds (teachers, stored teacher
outputs, trainable regressors) and every batch to the chosen device, and hands the model back on the
device it came on, so the stages around training (pruning masks, k-means, encoding, measuring) keep
working on ordinary CPU modules and a recipe needs no change between a laptop and a GPU node.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from modelpress.core.device import DEVICE_ENV, module_device
from modelpress.core.errors import ConfigError

__all__ = ["DEVICE_ENV", "move_", "placed_on", "resolve_device"]


def resolve_device(device: str | torch.device | None, model: nn.Module) -> torch.device:
    """The device to train on.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a ``torch.device``; ``None`` reads
            ``$MODELPRESS_DEVICE`` and, when that is unset too, takes the GPU when CUDA is available
            (under torchrun, the one ``init_distributed`` assigned to this rank), else ``model``'s device.
        model: the module to be trained.

    Raises:
        ConfigError: the name is not a device, or CUDA is asked for where there is none.
    """
    spec = device if device is not None else (os.environ.get(DEVICE_ENV) or None)
    if spec is None:
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else module_device(model)
    where = f"{DEVICE_ENV}={spec}" if device is None else f"device {spec!r}"
    try:
        chosen = torch.device(spec)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{where} is not a torch device; use cpu, cuda or cuda:N") from None
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{where} asks for a GPU but CUDA is not available here (torch {torch.__version__}); use cpu")
        if chosen.index is None:
            chosen = torch.device("cuda", torch.cuda.current_device())
        elif chosen.index >= torch.cuda.device_count():
            raise ConfigError(f"{where}: this machine has {torch.cuda.device_count()} GPU(s)")
    elif chosen.type != "cpu":
        raise ConfigError(f"{where}: training runs on cpu or cuda")
    return chosen


@contextmanager
def placed_on(device: torch.device, model: nn.Module, *holders: object) -> Iterator[None]:
    """Inside the block ``model`` and ``holders`` (objective, callbacks) live on ``device``; afterwards,
    however the block ends, they are back on the device ``model`` came on."""
    home = module_device(model)
    if device == home:
        yield
        return
    move_((model, holders), device)
    try:
        yield
    finally:
        move_((model, holders), home)


def move_(obj: object, device: torch.device) -> object:
    """Put every tensor ``obj`` holds on ``device``, in place where possible; returns ``obj`` (or, for
    a tensor or a tuple, its moved copy).

    Walks modules (``.to``), tensors, lists, tuples and dicts, and the attributes of modelpress's own
    objects (teachers, objectives, stores) and of modules (a teacher kept as a plain attribute). A
    closure objective is opaque: what it captures must be put on the device by its author.
    """
    return _move(obj, device, set())


def _move(obj: object, device: torch.device, seen: set[int]) -> object:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if id(obj) in seen:
        return obj
    seen.add(id(obj))
    if isinstance(obj, nn.Module):
        obj.to(device)
        for module in obj.modules():
            seen.add(id(module))
            _move_attributes(module, device, seen, skip=("_parameters", "_buffers", "_modules"))
        return obj
    if isinstance(obj, list):
        obj[:] = [_move(item, device, seen) for item in obj]
        return obj
    if isinstance(obj, tuple):
        return type(obj)(*(_move(item, device, seen) for item in obj)) if hasattr(obj, "_fields") \
            else tuple(_move(item, device, seen) for item in obj)
    if isinstance(obj, dict):
        for key, value in obj.items():
            obj[key] = _move(value, device, seen)
        return obj
    if type(obj).__module__.startswith("modelpress.") and hasattr(obj, "__dict__"):
        _move_attributes(obj, device, seen)
    return obj


def _move_attributes(obj: object, device: torch.device, seen: set[int], skip: tuple[str, ...] = ()) -> None:
    for name, value in list(vars(obj).items()):
        if name in skip or name.startswith("__"):
            continue
        moved = _move(value, device, seen)
        if moved is not value:
            # object.__setattr__: a frozen dataclass holding a tensor is still ours to move
            object.__setattr__(obj, name, moved)
