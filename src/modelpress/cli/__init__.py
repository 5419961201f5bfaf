"""The ``modelpress`` command line: a thin face over the Python API (see :mod:`modelpress.cli.main`)."""

from modelpress.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
