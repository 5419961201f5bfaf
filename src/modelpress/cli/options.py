"""Command-line flags generated from a config's declaration (:mod:`modelpress.core.options`).

``add_options(group, TrainConfig)`` adds ``--epochs``, ``--lr``, ... with the types, choices, help and
defaults the config declares; ``options_from_args(TrainConfig, args)`` builds the config from the
flags that were given, through the same :func:`~modelpress.core.options.build` that recipes use, so
an option left out takes the config's own default, never a second copy of it.
"""

from __future__ import annotations

import argparse
from typing import Any, Iterable

from modelpress.core.options import REQUIRED, FlatField, Opt, build, flat_fields


def _parse_as(o: Opt, flag: str):
    def parse(text: str) -> Any:
        if o.optional and text.lower() in ("none", "null"):
            return None
        try:
            return int(text) if o.type == "integer" else float(text)
        except ValueError:
            noun = "an integer" if o.type == "integer" else "a number"
            raise argparse.ArgumentTypeError(f"{flag} takes {noun}; got {text!r}") from None
    return parse


def _help(item: FlatField) -> str:
    text = item.opt.help
    if item.opt.type == "bool":
        return text
    if item.required:
        return f"{text} (required)".strip()
    default = item.opt.to_json(item.default)
    return f"{text} (default {default})".strip() if default not in (None, (), []) else text


def add_options(group, cls: type, *, skip: Iterable[str] = (), overrides: dict[str, dict] | None = None) -> list[str]:
    """Add one flag per option of ``cls`` to ``group`` (a parser or argument group).

    Args:
        skip: flat option names the command defines itself (``seed`` beside ``--data``) or fixes.
        overrides: per option name, extra ``add_argument`` keywords (``required``, ``help``).

    Returns:
        The option names added; :func:`options_from_args` reads exactly these.
    """
    added = []
    for item in flat_fields(cls):
        if item.name in skip:
            continue
        o = item.opt
        kwargs: dict[str, Any] = {"dest": item.name, "default": argparse.SUPPRESS, "help": _help(item)}
        if o.type == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif o.type == "choice":
            kwargs["choices"] = list(o.choices) + (["none"] if o.optional else [])
        elif o.type == "texts":
            kwargs["action"] = "append"
        elif o.type != "text":
            kwargs["type"] = _parse_as(o, item.flag)
        if o.metavar:
            kwargs["metavar"] = o.metavar
        if item.required:
            kwargs["required"] = True
        kwargs.update((overrides or {}).get(item.name, {}))
        group.add_argument(item.flag, **kwargs)
        added.append(item.name)
    return added


def given_options(cls: type, args: argparse.Namespace, *, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The flat values of ``cls``'s options that ``args`` holds (flags given), plus ``extra``."""
    values = {}
    for item in flat_fields(cls):
        if hasattr(args, item.name) and getattr(args, item.name) is not REQUIRED:
            value = getattr(args, item.name)
            values[item.name] = None if (item.opt.type == "choice" and value == "none") else value
    return values | (extra or {})


def options_from_args(cls: type, args: argparse.Namespace, **extra) -> Any:
    """``cls`` built from the flags in ``args`` that were given (see :func:`add_options`) and ``extra``."""
    return build(cls, given_options(cls, args, extra=extra))
