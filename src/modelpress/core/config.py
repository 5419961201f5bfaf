"""Helpers shared by the frozen, validated config dataclasses of every family."""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

from modelpress.core.errors import ConfigError

E = TypeVar("E", bound=Enum)


def coerce_enum(cls: type[E], value, field_name: str) -> E:
    """``cls(value)``, or a ConfigError that names the field and lists the allowed values."""
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(m.value for m in cls)
        raise ConfigError(f"{field_name} must be one of {allowed}; got {value!r}") from None
