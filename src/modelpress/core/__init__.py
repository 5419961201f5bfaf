"""Small shared pieces: typed errors, the name registry, atomic file writes, seeding."""

from modelpress.core.errors import (
    ConfigError,
    DataError,
    ModelFileError,
    ModelpressError,
    ShapeError,
    TrainingDivergedError,
)
from modelpress.core.io import atomic_write
from modelpress.core.registry import Registry
from modelpress.core.seed import seed_everything

__all__ = [
    "ConfigError",
    "DataError",
    "ModelFileError",
    "ModelpressError",
    "Registry",
    "ShapeError",
    "TrainingDivergedError",
    "atomic_write",
    "seed_everything",
]
