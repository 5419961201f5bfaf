"""The ``modelpress`` command: one parser assembled from the command modules, one dispatch.

Each module in :data:`COMMAND_MODULES` defines ``register(sub)``, which adds its sub-commands' parsers
(their option groups generated from the methods' configs where a method has one) and sets
``handler``, a function of the parsed arguments, as each parser's default. Bad input (unknown model,
missing data, corrupt file, class-count mismatch) prints one line ``modelpress: error: ...`` and exits
with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from modelpress import __version__
from modelpress.core.errors import ModelpressError

# in the order ``modelpress --help`` lists their commands
COMMAND_MODULES: tuple[str, ...] = (
    "modelpress.cli.train", "modelpress.cli.distill", "modelpress.cli.compress", "modelpress.cli.shrink",
    "modelpress.cli.export", "modelpress.cli.mimic", "modelpress.cli.recipes", "modelpress.cli.distributed",
    "modelpress.cli.text",
)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: ``modelpress COMMAND [options]``."""
    parser = argparse.ArgumentParser(
        prog="modelpress",
        description="Make trained classifiers small and fast, with a report of what was gained and lost.",
    )
    parser.add_argument("--version", action="version", version=f"modelpress {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, run the command's handler; 2 on a user error, 130 on Ctrl-C."""
    args = build_parser().parse_args(argv)
    try:
        result = args.handler(args)
    except ModelpressError as err:
        print(f"modelpress: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("modelpress: interrupted; rerun with --resume to continue from the last checkpoint", file=sys.stderr)
        return 130
    if getattr(args, "json", False) and result is not None:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
