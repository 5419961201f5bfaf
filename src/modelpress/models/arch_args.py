"""Argument checks shared by every architecture builder (``zoo.py``, ``sequence.py``).

They live below both so that the zoo can list the sequence models without ``sequence.py`` importing
the zoo back (no import cycle, no registration by import side effect).
"""

from __future__ import annotations

from modelpress.core.errors import ConfigError, ShapeError


def take_options(name: str, options: dict, allowed: dict) -> dict:
    """``options`` completed with the defaults in ``allowed``.

    Raises:
        ConfigError: an option not in ``allowed`` (the message lists the allowed ones).
    """
    unknown = set(options) - set(allowed)
    if unknown:
        raise ConfigError(f"{name} got unknown option(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    return {key: options.get(key, default) for key, default in allowed.items()}


def require_image(name: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """``input_shape`` as ``(C, H, W)``.

    Raises:
        ShapeError: the data are not images.
    """
    if len(input_shape) != 3:
        raise ShapeError(f"{name} needs image inputs (C, H, W); the data have shape {input_shape}")
    return input_shape  # type: ignore[return-value]


def parse_widths(name: str, args: str) -> list[int]:
    """Layer widths from a spec's arguments, ``"1200-1200"`` -> ``[1200, 1200]`` (``""`` -> ``[]``).

    Raises:
        ConfigError: a width that is not a positive integer.
    """
    try:
        widths = [int(w) for w in args.split("-")] if args else []
    except ValueError:
        raise ConfigError(f"{name} hidden sizes must look like '1200-1200', got {args!r}") from None
    if any(w <= 0 for w in widths):
        raise ConfigError(f"{name} hidden sizes must be positive, got {args!r}")
    return widths
