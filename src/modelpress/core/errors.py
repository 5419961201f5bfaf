"""Typed errors with messages a user can act on.

Every error modelpress raises for bad input derives from :class:`ModelpressError`, so the CLI can
print one clear line instead of a traceback. Subclasses also derive from the builtin a Python
user would expect (``ValueError``, ``FileNotFoundError``) so ordinary ``except`` clauses work.
"""


class ModelpressError(Exception):
    """Base class of every error modelpress raises on purpose."""


class ConfigError(ModelpressError, ValueError):
    """A parameter, recipe field or name is invalid; the message names it and the allowed values."""


class ShapeError(ModelpressError, ValueError):
    """Tensors or models disagree on shape or on the number of classes."""


class DataError(ModelpressError, ValueError):
    """A data set is missing, truncated or malformed."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A data set could not be found in any of the places searched."""


class ModelFileError(ModelpressError, ValueError):
    """A model, checkpoint or store file is missing, corrupt, truncated or of another format."""


class TrainingDivergedError(ModelpressError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
