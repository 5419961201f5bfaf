"""Architecture changes made by compression, recorded so that a changed model can be saved and rebuilt.

Structured pruning, factorization and compact-block conversion change a model's *shape*, not just its
weights, so the zoo spec alone no longer rebuilds it. Each such method calls :func:`record_surgery`
after changing the model; the record (JSON: a kind and its arguments) joins ``model.modelpress_spec``.
Loading builds the original architecture from the spec and replays every record in order (with
placeholder weights) before the saved weights are loaded, so no code is ever unpickled.

A kind's replay function lives with its family and is found through :data:`REPLAYS`, a fixed table of
``"module:function"`` names imported on first use: nothing needs importing in advance.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import replace
from typing import Callable

from torch import nn

from modelpress.core.errors import ConfigError, ModelFileError

# kind -> "module:function" whose function(model, **args) redoes the change in place
REPLAYS: dict[str, str] = {
    "resize": "modelpress.prune.structured:replay_resize",
    "svd": "modelpress.factorize.svd:replay_svd",
    "tucker": "modelpress.factorize.tucker:replay_tucker",
    "cp": "modelpress.factorize.cp:replay_cp",
    "separable": "modelpress.factorize.separable:replay_separable",
}


def _replay_function(kind: str) -> Callable[..., None]:
    if kind not in REPLAYS:
        raise ModelFileError(f"unknown architecture change {kind!r}; this modelpress knows {sorted(REPLAYS)}: upgrade it")
    module_name, _, function = REPLAYS[kind].partition(":")
    return getattr(importlib.import_module(module_name), function)


def record_surgery(model: nn.Module, kind: str, **args) -> None:
    """Append one change to ``model.modelpress_spec.surgery`` (a no-op for models without a spec).

    Args:
        model: the changed model, already in its new shape.
        kind: a key of :data:`REPLAYS`.
        **args: JSON-serialisable arguments of the replay function.

    Raises:
        ConfigError: unknown kind, or arguments that are not JSON-serialisable.
    """
    if kind not in REPLAYS:
        raise ConfigError(f"unknown architecture change {kind!r}; known: {sorted(REPLAYS)}")
    try:
        entry = json.loads(json.dumps({"kind": kind, **args}))
    except TypeError as err:
        raise ConfigError(f"the arguments of a {kind!r} change must be JSON-serialisable: {err}") from None
    spec = getattr(model, "modelpress_spec", None)
    if spec is not None:
        model.modelpress_spec = replace(spec, surgery=(*spec.surgery, entry))


def replay_surgery(model: nn.Module, surgery) -> nn.Module:
    """Redo recorded changes, in order, on a freshly built model of the original architecture.

    Raises:
        ModelFileError: a record of an unknown kind, or one that does not fit the model.
    """
    for entry in surgery:
        args = {k: v for k, v in entry.items() if k != "kind"}
        try:
            _replay_function(entry["kind"])(model, **args)
        except (KeyError, TypeError, AttributeError, ValueError, RuntimeError) as err:
            raise ModelFileError(f"cannot redo the recorded architecture change {entry!r}: {err}") from None
    return model


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` where the submodule called ``name`` (as in ``named_modules()``) is.

    Raises:
        ConfigError: no submodule of that name.
    """
    parent_name, _, child = name.rpartition(".")
    try:
        parent = model.get_submodule(parent_name) if parent_name else model
    except AttributeError:
        raise ConfigError(f"the model has no submodule {parent_name!r}") from None
    if child not in parent._modules:
        raise ConfigError(f"the model has no submodule {name!r}")
    parent._modules[child] = module
