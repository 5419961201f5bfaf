"""Typed recipe fields: what each option of a stage accepts, and the tunable form ``{tune: ...}``.

A stage's options are a frozen dataclass whose fields carry an :class:`Opt` in their metadata
(:func:`opt`, declared once in :mod:`modelpress.core.options`; nested configs are flattened). :func:`parse_options` turns a YAML mapping into that dataclass, checking every value
against its :class:`Opt` and naming the field, what it expects and what it got. A field marked
tunable may instead hold a :class:`Tunable`: ``{tune: [lo, hi], log: true}`` (a range: exactly two
numbers), ``{tune: [4, 5, 6]}`` (three or more values: a choice) or ``{choices: [a, b]}`` (any
choice), each with an optional ``default:``. ``modelpress run`` uses the default (explicit, else the
middle of the range or choice list); ``modelpress tune`` samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from modelpress.core.errors import ConfigError
from modelpress.core.options import REQUIRED, Opt, build, flat_fields, opt

__all__ = ["REQUIRED", "Opt", "Tunable", "is_tunable_form", "opt", "parse_options", "parse_tunable"]


@dataclass(frozen=True)
class Tunable:
    """A searched option: a ``range`` (``low``..``high``, ``log`` scale) or a ``choices`` list, with its ``default``."""

    low: Any = None
    high: Any = None
    log: bool = False
    choices: tuple = ()
    default: Any = None

    @property
    def is_range(self) -> bool:
        return not self.choices

    def to_json(self) -> dict:
        if self.is_range:
            return {"tune": [self.low, self.high], "log": self.log, "default": self.default}
        return {"choices": list(self.choices), "default": self.default}


def is_tunable_form(value: Any) -> bool:
    """Whether a raw YAML value is the ``{tune: ...}`` / ``{choices: ...}`` form."""
    return isinstance(value, dict) and ("tune" in value or "choices" in value)


def parse_tunable(raw: dict, o: Opt, where: str) -> Tunable:
    """Check a ``{tune: ...}`` / ``{choices: ...}`` mapping against field ``o``; ``where`` prefixes errors."""
    extra = set(raw) - {"tune", "choices", "log", "default"}
    if extra or ("tune" in raw and "choices" in raw):
        raise ConfigError(f"{where} a tunable value has keys tune (or choices), log and default; got {sorted(raw)}")
    if not o.tunable:
        raise ConfigError(f"{where} is not tunable; give {o.describe()}")
    values = raw.get("tune", raw.get("choices"))
    if not isinstance(values, list) or len(values) < 2:
        raise ConfigError(f"{where} tune/choices wants a list of at least two values; got {values!r}")
    for v in values:
        if not o.accepts(v):
            raise ConfigError(f"{where} every tuned value must be {o.describe()}, got {v!r}")
    is_range = "tune" in raw and len(values) == 2 and o.type in ("number", "integer")
    log = raw.get("log", False)
    if not isinstance(log, bool) or (log and not is_range):
        raise ConfigError(f"{where} log must be true or false, and only for a range [lo, hi]; got {log!r}")
    if is_range and (None in values or raw.get("default", 0) is None):
        raise ConfigError(f"{where} a range [lo, hi] takes two numbers (and a number as default); "
                          f"to include null, list it with choices: [...]; got {raw!r}")
    if is_range:
        low, high = (o.coerce(v) for v in values)
        if not low < high or (log and low <= 0):
            raise ConfigError(f"{where} a range [lo, hi] needs lo < hi (and lo > 0 with log: true); got {values}")
        middle = math.sqrt(low * high) if log else (low + high) / 2
        default = raw.get("default", round(middle) if o.type == "integer" else middle)
        if not (o.accepts(default) and low <= default <= high):
            raise ConfigError(f"{where} default must be {o.describe()} within [{low}, {high}]; got {default!r}")
        return Tunable(low=low, high=high, log=log, default=o.coerce(default))
    choices = tuple(o.coerce(v) for v in values)
    default = raw.get("default", choices[(len(choices) - 1) // 2])
    if not o.accepts(default) or o.coerce(default) not in choices:
        raise ConfigError(f"{where} default must be one of the choices {list(choices)}; got {default!r}")
    return Tunable(choices=choices, default=o.coerce(default))


def parse_options(cls: type, raw: dict, where: str, *, skip: tuple[str, ...] = ()) -> tuple[Any, dict[str, Tunable]]:
    """Build the options dataclass ``cls`` from the mapping ``raw``.

    Args:
        cls: a frozen dataclass whose fields were declared with :func:`opt`.
        raw: the YAML mapping (keys in ``skip`` belong to the caller and are ignored).
        where: error prefix, e.g. ``"recipe stage 2 'prune':"``.

    Returns:
        ``(options, tunables)``: the dataclass with every tunable at its default, and field name -> Tunable.

    Raises:
        ConfigError: an unknown or missing field, a value of the wrong type or range, or a rule of
            ``cls.__post_init__`` broken; the message starts with ``where`` and names the field.
    """
    known = {item.name: item for item in flat_fields(cls)}
    unknown = sorted(set(raw) - set(known) - set(skip))
    if unknown:
        raise ConfigError(f"{where} unknown field {unknown[0]!r}; known fields: {', '.join(sorted(known))}")
    values, tunables = {}, {}
    for name, item in known.items():
        o: Opt = item.opt
        here = f"{where} field {name!r}"
        if name not in raw:
            if item.required:
                raise ConfigError(f"{here} is required: {o.describe()}")
            continue
        value = raw[name]
        if is_tunable_form(value):
            tunables[name] = parse_tunable(value, o, here)
            value = tunables[name].default
        elif not o.accepts(value):
            raise ConfigError(f"{here} must be {o.describe()}, got {value!r}")
        values[name] = value
    try:
        return build(cls, values), tunables
    except ConfigError as err:
        raise ConfigError(f"{where} {err}") from None
