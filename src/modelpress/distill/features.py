"""Tap intermediate layers of any ``nn.Module`` by name, so feature distillation works on models we did not write.

Everything here uses forward hooks (``Module.register_forward_hook``) on the submodules that
``model.named_modules()`` names, e.g. ``"features.4"``; the model's own code is never changed.
The hook manager follows torchdistill's forward-hook design (Matsubara 2021, "torchdistill: A
Modular, Configuration-Driven Framework for Knowledge Distillation").
"""

from __future__ import annotations

import difflib
import os
from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from modelpress.core.errors import ConfigError, ShapeError
from modelpress.data.base import DataSplits
from modelpress.distill.core import check_compatible
from modelpress.distill.teachers import ModuleTeacher
from modelpress.train import TrainConfig

__all__ = ["FeatureTap", "layer_names", "feature_shapes", "forward_until", "sequential_outputs", "match_layers"]


def layer_names(model: nn.Module) -> list[str]:
    """Names of every tappable submodule, in registration order (the root ``""`` excluded).

    Args:
        model: any ``nn.Module``.

    Returns:
        Names as ``model.named_modules()`` gives them, e.g. ``["features", "features.0", ...]``.
    """
    return [name for name, _ in model.named_modules() if name]


def _resolve(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    """Map each name to its submodule, or raise ConfigError naming the unknown one and some valid ones."""
    modules = dict(model.named_modules())
    resolved: dict[str, nn.Module] = {}
    for name in names:
        if not isinstance(name, str) or not name or name not in modules:
            valid = layer_names(model)
            close = difflib.get_close_matches(str(name), valid, n=5, cutoff=0.5)
            hint = f"closest: {', '.join(close)}; " if close else ""
            shown = ", ".join(valid[:20]) + (f", ... ({len(valid)} in all)" if len(valid) > 20 else "")
            raise ConfigError(f"layer {name!r} is not a submodule of {type(model).__name__}; {hint}valid names: {shown}")
        resolved[name] = modules[name]
    return resolved


class FeatureTap:
    """Record the outputs of named submodules during forward passes.

    While attached, each forward of ``model`` stores the output of every named submodule in
    ``tap.outputs[name]`` (a module called several times keeps its last output). Use it as a
    context manager, or call :meth:`attach` / :meth:`remove` yourself.

    In-place activations: a ``Conv2d`` or ``BatchNorm2d`` followed by ``ReLU(inplace=True)`` returns a
    tensor the ReLU then overwrites, so a stored reference would show the post-ReLU values. With
    ``clone=True`` (the default) each output is copied when the hook runs, so the tap holds exactly
    what the module returned; ``clone`` is differentiable, so gradients still reach the model.
    ``clone=False`` saves the copy when no in-place op follows the tapped layer.

    Args:
        model: the module to tap.
        names: submodule names (see :func:`layer_names`).
        detach: store ``output.detach()``: for teachers, whose features need no gradient.
        clone: copy each output (see above).

    Raises:
        ConfigError: a name is not a submodule; the message lists the closest and the first valid names.

    Example:
        >>> with FeatureTap(model, ["features.4"]) as tap:
        ...     logits = model(x)
        >>> tap.outputs["features.4"].shape  # (B, C, H, W)
    """

    def __init__(self, model: nn.Module, names: Sequence[str], detach: bool = False, clone: bool = True) -> None:
        if isinstance(names, str):  # a lone string would otherwise be read as a list of characters
            names = [names]
        self.model = model
        self.names = tuple(dict.fromkeys(names))
        self.detach = detach
        self.clone = clone
        self._modules = _resolve(model, self.names)
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles: list = []

    def _keep(self, value):
        if isinstance(value, torch.Tensor):
            if self.detach:
                value = value.detach()
            return value.clone() if self.clone else value
        if isinstance(value, (tuple, list)):
            return type(value)(self._keep(v) for v in value)
        return value

    def _hook_for(self, name: str):
        def hook(module: nn.Module, inputs, output) -> None:
            self.outputs[name] = self._keep(output)

        return hook

    def attach(self) -> "FeatureTap":
        """Register the hooks (idempotent); returns ``self``."""
        if not self._handles:
            self._handles = [m.register_forward_hook(self._hook_for(n)) for n, m in self._modules.items()]
        return self

    def remove(self) -> None:
        """Remove the hooks; ``outputs`` keeps what was recorded."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def clear(self) -> None:
        """Forget the recorded outputs (the hooks stay)."""
        self.outputs = {}

    def __enter__(self) -> "FeatureTap":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.remove()


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the wanted layer has run."""


def forward_until(model: nn.Module, x: torch.Tensor, name: str) -> torch.Tensor:
    """Run ``model`` on ``x`` only as far as submodule ``name`` and return that module's output.

    Layers after ``name`` never run: that saves their compute and, in training mode, leaves their
    BatchNorm statistics untouched (FitNets' stage 1 trains only the layers up to the guided one).
    The output is returned before any later in-place op could change it, so no copy is made.

    Args:
        model: any ``nn.Module``.
        x: a batch ``(B, *input_shape)``.
        name: the submodule whose output to return.

    Returns:
        That submodule's output, e.g. ``(B, C, H, W)``, with its autograd graph.

    Raises:
        ConfigError: ``name`` is not a submodule.
        ShapeError: the submodule did not run during the forward pass.
    """
    module = _resolve(model, [name])[name]
    caught: list = []

    def hook(mod: nn.Module, inputs, output):
        caught.append(output)
        raise _Stop

    handle = module.register_forward_hook(hook)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not caught:  # also reached if the model's own code swallowed the _Stop: then `caught` is filled
        raise ShapeError(f"layer {name!r} of {type(model).__name__} did not run in the forward pass")
    return caught[0]


def _recorded_shapes(model: nn.Module, x: torch.Tensor, names: Sequence[str]) -> "OrderedDict[str, tuple[int, ...]]":
    """Per-example output shapes of ``names`` in the order their forwards finished (eval mode, no grad)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FeatureTap(model, names, detach=True, clone=False) as tap:
            model(x)
    finally:
        model.train(was_training)
    shapes: OrderedDict[str, tuple[int, ...]] = OrderedDict()
    for name, out in tap.outputs.items():  # dict order = order in which the hooks fired
        if isinstance(out, torch.Tensor):
            shapes[name] = tuple(out.shape[1:])
    return shapes


def feature_shapes(model: nn.Module, x: torch.Tensor, names: Sequence[str] | None = None) -> dict[str, tuple[int, ...]]:
    """Per-example output shapes of named layers from one forward pass (eval mode, no gradient).

    Args:
        model: any ``nn.Module``; its training mode is restored afterwards.
        x: a batch ``(B, *input_shape)``, B >= 1.
        names: layers to report; ``None`` reports every tappable submodule (:func:`layer_names`),
            containers included.

    Returns:
        ``{name: shape without the batch dimension}`` in the order the layers finished their forward;
        layers that did not run or returned a non-tensor are left out.

    Raises:
        ConfigError: an unknown layer name.
    """
    return dict(_recorded_shapes(model, x, layer_names(model) if names is None else list(names)))


def _parents(model: nn.Module) -> dict[str, nn.Module]:
    return {f"{parent_name}.{child}" if parent_name else child: parent
            for parent_name, parent in model.named_modules() for child, _ in parent.named_children()}


def sequential_outputs(model: nn.Module, x: torch.Tensor) -> list[tuple[str, tuple[int, ...]]]:
    """The candidate layers for automatic pairing, in forward order, with their ``(C, H, W)`` shapes.

    A candidate is an outermost direct child of an ``nn.Sequential`` (not itself inside another
    candidate) whose output is 4-D: the stages and blocks of most conv nets (``features.4`` of the
    zoo's ``vgg_mini``, ``layer2.1`` of a ResNet). A model without such children falls back to every
    submodule with a 4-D output.

    Args:
        model: any ``nn.Module``.
        x: a batch ``(B, *input_shape)``.

    Returns:
        ``[(name, (C, H, W)), ...]`` ordered by when each layer finished its forward.
    """
    shapes = _recorded_shapes(model, x, layer_names(model))
    spatial = [(n, s) for n, s in shapes.items() if len(s) == 3]
    parents = _parents(model)
    in_sequential = {n for n, _ in spatial if isinstance(parents.get(n), nn.Sequential)}
    outermost = [(n, s) for n, s in spatial if n in in_sequential
                 and not any(n.startswith(f"{other}.") for other in in_sequential)]
    return outermost or spatial


def match_layers(student: nn.Module, teacher: nn.Module, x: torch.Tensor) -> list[tuple[str, str]]:
    """Pair student and teacher layers automatically, for users who do not name them.

    Rule: among the candidates of :func:`sequential_outputs`, for every spatial size ``(H, W)`` that
    both models produce, pair the student's LAST candidate at that size with the teacher's LAST
    candidate at that size (the end of a resolution stage, where FitNets hints and attention
    transfer take their features). Pairs are ordered from shallow to deep, by the student's forward.

    Args:
        student: the student model.
        teacher: the teacher model.
        x: a few inputs ``(B, *input_shape)`` (B >= 1) to run both models on.

    Returns:
        ``[(student_layer, teacher_layer), ...]``.

    Raises:
        ShapeError: the two models share no spatial size among their 4-D outputs.
    """
    def last_per_size(model: nn.Module) -> dict[tuple[int, int], str]:
        last: dict[tuple[int, int], str] = {}
        for name, shape in sequential_outputs(model, x):
            last.pop(shape[1:], None)  # re-insert, so dict order follows the last occurrence
            last[shape[1:]] = name
        return last

    s_last, t_last = last_per_size(student), last_per_size(teacher)
    pairs = [(s_name, t_last[size]) for size, s_name in s_last.items() if size in t_last]
    if not pairs:
        raise ShapeError(f"student and teacher share no spatial size among their 4-D layer outputs "
                         f"(student: {sorted(s_last)}, teacher: {sorted(t_last)}); name the layer pairs yourself")
    return pairs


# --- plumbing shared by the feature methods (hints, attention, fsp) ---------------------------------


def prepare_feature_models(student: nn.Module, teacher: nn.Module, data: DataSplits | DataLoader, n: int = 8) -> torch.Tensor:
    """Check a student/teacher pair for feature distillation; return a few training inputs to probe shapes.

    Puts the teacher in eval mode (it stays there, as with :class:`ModuleTeacher`).

    Args:
        student: the student module.
        teacher: the teacher; must be an ``nn.Module`` because its layers are tapped.
        data: :class:`DataSplits` or a DataLoader of ``(x, y[, index])`` batches.
        n: how many examples to return.

    Returns:
        Inputs ``(min(n, N), *input_shape)`` from the start of the training data.

    Raises:
        ConfigError: the teacher is not an ``nn.Module`` (e.g. a stored teacher or an ensemble).
        ShapeError: student, teacher and data disagree on the number of classes or the input shape.
    """
    if not isinstance(teacher, nn.Module):
        raise ConfigError(f"feature distillation taps the teacher's layers, so the teacher must be an nn.Module; "
                          f"got {type(teacher).__name__}")
    teacher.eval()
    if isinstance(data, DataSplits):
        x, num_classes = data.x_train[:n], data.num_classes
    else:
        x, num_classes = next(iter(data))[0][:n], None
    check_compatible(student, ModuleTeacher(teacher), x, None, num_classes)
    return x


def check_stage_config(value: TrainConfig, name: str) -> None:
    """Validate the TrainConfig of a feature-matching stage (field ``name`` of a method's config).

    Raises:
        ConfigError: not a TrainConfig, or ``patience`` set: such a stage has no validation metric.
    """
    if not isinstance(value, TrainConfig):
        raise ConfigError(f"{name} must be a TrainConfig; got {type(value).__name__}")
    if value.patience is not None:
        raise ConfigError(f"{name}.patience must be None: this stage has no validation metric "
                          f"(it minimises a feature loss, not the error); got {value.patience}")


def parse_layer_pairs(text: str, where: str) -> tuple[tuple[str, str], ...]:
    """``"s1:t1,s2:t2"`` -> ``(("s1", "t1"), ("s2", "t2"))``, as the CLI and recipes write layer pairs.

    Raises:
        ConfigError: an item that is not ``STUDENT_LAYER:TEACHER_LAYER``; the message starts with ``where``.
    """
    pairs = []
    for item in text.split(","):
        student_layer, sep, teacher_layer = item.strip().partition(":")
        if not sep or not student_layer or not teacher_layer:
            raise ConfigError(f"{where} wants STUDENT_LAYER:TEACHER_LAYER pairs separated by commas; got {item!r}")
        pairs.append((student_layer, teacher_layer))
    return tuple(pairs)


def normalize_pairs(pairs, field_name: str) -> tuple[tuple[str, str], ...]:
    """``pairs`` as a tuple of ``(str, str)`` (lists from JSON accepted).

    Raises:
        ConfigError: not a sequence of pairs of non-empty strings; the message names ``field_name``.
    """
    try:
        out = tuple((a, b) for a, b in pairs)
    except (TypeError, ValueError):
        raise ConfigError(f"{field_name} must be a sequence of (layer, layer) pairs; got {pairs!r}") from None
    for a, b in out:
        if not (isinstance(a, str) and a and isinstance(b, str) and b):
            raise ConfigError(f"{field_name} must hold pairs of non-empty layer names; got {(a, b)!r}")
    return out


def stage_loader(data: DataSplits | DataLoader, config: TrainConfig) -> DataLoader:
    """Training batches for a feature-matching stage, without a validation split.

    Such a stage minimises a feature loss, so validation accuracy says nothing about it, and
    ``train``'s ``restore_best`` would hand back the weights it started from.
    """
    if isinstance(data, DataSplits):
        return data.loader("train", config.batch_size, shuffle=True, seed=config.seed)
    return data


def stage_path(path: str | os.PathLike[str] | None, stage: int) -> str | None:
    """``f"{path}.stage{stage}"``: one checkpoint file per stage of a multi-stage method."""
    return None if path is None else f"{os.fspath(path)}.stage{stage}"
