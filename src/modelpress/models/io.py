"""The modelpress model file (``.mpk``): a safetensors file whose metadata holds the architecture.

Layout: an ordinary safetensors file (weights and buffers of ``state_dict()``) with string metadata
``format = "modelpress-model"``, ``format_version``, ``spec`` (JSON of :class:`ModelSpec`) and
``extra`` (JSON: training summary, data normalisation). It loads without pickle, and any
safetensors tool can read the weights.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from modelpress.core.checkpoint import load_checkpoint
from modelpress.core.errors import ModelFileError
from modelpress.core.io import atomic_write
from modelpress.models.zoo import ModelSpec, build_from_spec

FORMAT = "modelpress-model"
FORMAT_VERSION = 1


@dataclass
class LoadedModel:
    """A model read from a file, with the spec that rebuilt it and the file's extra metadata."""

    model: nn.Module
    spec: ModelSpec
    extra: dict
    path: Path


def save_model(model: nn.Module, path: str | os.PathLike[str], *, spec: ModelSpec | None = None, extra: dict | None = None) -> Path:
    """Write ``model`` to ``path`` atomically.

    Args:
        model: a module built by :func:`modelpress.models.build_model` (or any module, with ``spec``).
        path: destination file, conventionally ``*.mpk``.
        spec: architecture; defaults to ``model.modelpress_spec``.
        extra: JSON-serialisable metadata stored beside the weights.

    Raises:
        ModelFileError: the model has no spec, or ``extra`` is not JSON-serialisable.
    """
    spec = spec or getattr(model, "modelpress_spec", None)
    if spec is None:
        raise ModelFileError(
            "this model has no architecture spec: build it with modelpress.models.build_model "
            "or pass spec=ModelSpec(...) to save_model"
        )
    try:
        metadata = {
            "format": FORMAT,
            "format_version": str(FORMAT_VERSION),
            "spec": json.dumps(spec.to_json()),
            "extra": json.dumps(extra or {}),
        }
    except TypeError as err:
        raise ModelFileError(f"extra metadata is not JSON-serialisable: {err}") from None
    # safetensors refuses shared or non-contiguous storage; a clone per tensor is cheap for our sizes
    tensors = {name: t.detach().contiguous().clone() for name, t in model.state_dict().items()}
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def read_model_file(path: str | os.PathLike[str]) -> LoadedModel:
    """Load a ``.mpk`` file (or a training checkpoint) into a fresh module, in eval mode, without pickle.

    Raises:
        ModelFileError: the file is missing, truncated, corrupt, not a modelpress model file, of a
            newer format version, or its weights do not fit its architecture.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    with open(path, "rb") as handle:
        if handle.read(4) == b"PK\x03\x04":  # a zip: torch.save's format, i.e. a training checkpoint
            return _read_checkpoint(path)
    metadata = _read_metadata(path)
    if metadata.get("format") == "modelpress-teacher-store":
        raise ModelFileError(f"{path} holds stored teacher outputs, not a model: give it to `distill --teacher-store`")
    if metadata.get("format") != FORMAT:
        raise ModelFileError(f"{path} is a safetensors file but not a modelpress model (no '{FORMAT}' marker)")
    version = int(metadata.get("format_version", "0"))
    if version > FORMAT_VERSION:
        raise ModelFileError(f"{path} has format version {version}; this modelpress reads up to {FORMAT_VERSION}: upgrade it")
    try:
        spec = ModelSpec.from_json(json.loads(metadata["spec"]))
        extra = json.loads(metadata.get("extra", "{}"))
    except (KeyError, json.JSONDecodeError) as err:
        raise ModelFileError(f"{path} has a corrupt architecture header: {err}") from None
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelFileError(f"{path} is corrupt or truncated: {err}") from None
    model = build_from_spec(spec)
    add_missing_masks(model, state)  # a model saved while pruned comes back pruned, masks in force
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise ModelFileError(f"{path}: weights do not match architecture {spec.arch!r}: {first}") from None
    model.eval()
    return LoadedModel(model, spec, extra, path)


def add_missing_masks(model: nn.Module, state: dict) -> None:
    """A pruned model (``weight_orig`` / ``weight_mask`` in its saved state) loads into a fresh dense model:
    give that model the same reparametrization first, so the state loads and the masks stay in force."""
    from torch.nn.utils import prune as torch_prune

    modules = dict(model.named_modules())
    for key in state:
        owner, _, attr = key.rpartition(".")
        if attr.endswith("_mask") and owner in modules and not hasattr(modules[owner], attr):
            torch_prune.identity(modules[owner], attr.removesuffix("_mask"))


def _read_checkpoint(path: Path) -> LoadedModel:
    """Rebuild the model of a training checkpoint (``*.ckpt``) that recorded its architecture."""
    state = load_checkpoint(path)
    if not state.get("spec"):
        raise ModelFileError(f"checkpoint {path} does not record its architecture (the model was not built by modelpress)")
    spec = ModelSpec.from_json(json.loads(state["spec"]))
    model = build_from_spec(spec)
    add_missing_masks(model, state["model"])
    model.load_state_dict(state["model"])
    model.eval()
    return LoadedModel(model, spec, {"checkpoint_epoch": int(state["epoch"])}, path)


def load_model(path: str | os.PathLike[str]) -> nn.Module:
    """Load a ``.mpk`` file and return just the module (eval mode). See :func:`read_model_file`."""
    return read_model_file(path).model


def _read_metadata(path: Path) -> dict:
    """Parse the safetensors header by hand so a foreign or truncated file gets a clear error."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ModelFileError(f"{path} is not a modelpress model file (only {size} bytes)")
        header_len = int.from_bytes(prefix, "little")
        if header_len <= 0 or header_len > size - 8 or header_len > 100_000_000:
            raise ModelFileError(f"{path} is not a modelpress model file, or is truncated (bad header length)")
        try:
            header = json.loads(handle.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ModelFileError(f"{path} is not a modelpress model file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{path} is not a modelpress model file (header is not a JSON object)")
    return dict(header.get("__metadata__", {}))
