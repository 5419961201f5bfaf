"""Model zoo (named architectures) and the ``.mpk`` model file."""

from modelpress.models.ensemble import EnsembleModel
from modelpress.models.io import LoadedModel, load_model, read_model_file, save_model
from modelpress.models.zoo import MODELS, ModelSpec, build_from_spec, build_model

__all__ = [
    "MODELS",
    "EnsembleModel",
    "LoadedModel",
    "ModelSpec",
    "build_from_spec",
    "build_model",
    "load_model",
    "read_model_file",
    "save_model",
]
