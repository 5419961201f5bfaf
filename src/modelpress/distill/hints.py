"""FitNets (Romero et al. 2015, "FitNets: Hints for Thin Deep Nets"): hint training, then annealed KD.

Stage 1 trains the student up to its *guided* layer ``v_g`` (plus a regressor ``r``) to predict the
teacher's *hint* layer ``u_h``: ``min 1/2 ||u_h(x) - r(v_g(x))||^2``. Stage 2 trains the whole student
with Hinton KD, ``(1 - lambda) CE(z_s, y) + lambda T^2 KL(p_T || q_T)``, with lambda annealed.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from modelpress.core.errors import ConfigError, ShapeError
from modelpress.core.options import check_declared, nested, opt
from modelpress.data.base import DataSplits
from modelpress.distill.core import DistillationObjective, DistillConfig
from modelpress.distill.feature_losses import hint_loss
from modelpress.distill.features import (
    check_stage_config,
    feature_shapes,
    forward_until,
    match_layers,
    parse_layer_pairs,
    prepare_feature_models,
    stage_loader,
    stage_path,
)
from modelpress.distill.teachers import ModuleTeacher
from modelpress.train import OptimizerName, TrainConfig, TrainResult, train

__all__ = [
    "FitNetsResult",
    "HintConfig",
    "HintObjective",
    "HintRegressor",
    "LinearAlphaAnneal",
    "annealed_alpha",
    "fit_hints",
    "fitnets",
    "resolve_hint_layers",
]


class HintRegressor(nn.Module):
    """FitNets' regressor ``r``: maps the student's guided-layer features to the teacher hint's shape.

    Both 4-D: a ``Conv2d`` without padding whose kernel is ``(H_s - H_t + 1, W_s - W_t + 1)``, so its
    output is exactly ``(C_t, H_t, W_t)`` (the paper's convolutional regressor; 1x1 when the sizes
    agree). Otherwise a ``Linear`` from the flattened student features to the flattened hint,
    reshaped to the hint's shape. FitNets asks ``r`` and ``u_h`` to share their non-linearity:
    ``relu=True`` appends a ReLU, for hints taken after one.

    Args:
        student_shape: per-example shape of the guided layer, e.g. ``(C_s, H_s, W_s)``.
        teacher_shape: per-example shape of the hint, e.g. ``(C_t, H_t, W_t)``.
        relu: end with a ReLU.

    Raises:
        ShapeError: the student map is spatially smaller than the hint's (a valid conv cannot grow it).
    """

    def __init__(self, student_shape: Sequence[int], teacher_shape: Sequence[int], relu: bool = False) -> None:
        super().__init__()
        self.student_shape, self.teacher_shape = tuple(student_shape), tuple(teacher_shape)
        self.relu = relu
        if len(self.student_shape) == 3 and len(self.teacher_shape) == 3:
            (c_s, h_s, w_s), (c_t, h_t, w_t) = self.student_shape, self.teacher_shape
            if h_s < h_t or w_s < w_t:
                raise ShapeError(f"the guided layer's map {h_s}x{w_s} is smaller than the hint's {h_t}x{w_t}; "
                                 "choose a guided layer at least as large as the hint layer")
            self.layer: nn.Module = nn.Conv2d(c_s, c_t, kernel_size=(h_s - h_t + 1, w_s - w_t + 1))
        else:
            self.layer = nn.Linear(math.prod(self.student_shape), math.prod(self.teacher_shape))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, *student_shape) -> (B, *teacher_shape)``."""
        if tuple(features.shape[1:]) != self.student_shape:
            raise ShapeError(f"the regressor expects features of shape {self.student_shape}, got {tuple(features.shape[1:])}")
        if isinstance(self.layer, nn.Conv2d):
            out = self.layer(features)  # (B, C_t, H_t, W_t)
        else:
            out = self.layer(features.flatten(1)).view(features.shape[0], *self.teacher_shape)
        return F.relu(out) if self.relu else out


@dataclass(frozen=True)
class HintConfig:
    """FitNets settings.

    Args:
        student_layer: the student's guided layer (a name from :func:`~modelpress.distill.features.layer_names`);
            ``None`` (with ``teacher_layer``): the middle pair of
            :func:`~modelpress.distill.features.match_layers`, as FitNets guides the middle of the
            student by the middle of the teacher.
        teacher_layer: the teacher's hint layer.
        stage1: training of the hint stage (no validation: ``patience`` must be None; ``max_norm``
            leaves the frozen layers alone). ``None``: ``kd.train`` with ``stage1_epochs`` epochs of
            Adam at ``stage1_lr`` and no early stopping (see :meth:`stage1_config`).
        kd: stage 2, Hinton KD; ``kd.alpha`` is the initial lambda and ``kd.train`` its training settings.
        anneal: decay lambda linearly over stage 2 (see :func:`annealed_alpha`); off keeps ``kd.alpha``.
        regressor_relu: end the regressor with a ReLU; ``None`` decides from the hint (ReLU when the
            teacher's hint is non-negative on a sample batch, i.e. taken after a ReLU).
        layers: ``"S:T"``, the guided and hint layer in one text (sets both layer fields).
        stage1_epochs, stage1_lr: the derived first stage's epochs and Adam step size (its loss sums
            over whole feature maps, and SGD at a classifier's step size diverges).

    Raises:
        ConfigError: an empty layer name, a wrong type, or a stage-1 setting listed above.
    """

    student_layer: str | None = opt(None, "text", optional=True, expose=False)
    teacher_layer: str | None = opt(None, "text", optional=True, expose=False)
    stage1: TrainConfig | None = None
    kd: DistillConfig = nested(DistillConfig, expose=("temperature", "alpha", "train"))
    anneal: bool = opt(True, "bool", help="fitnets: anneal the KD weight linearly to 0 over stage 2")
    regressor_relu: bool | None = None
    layers: str | None = opt(None, "text", optional=True, metavar="S:T",
                             help="student:teacher layer pair, the guided and the hint layer (default: the middle "
                                  "pair matched by spatial size; `modelpress layers MODEL` lists names)")
    stage1_epochs: int = opt(2, "integer", lo=1, tunable=True, help="epochs of the hint stage")
    stage1_lr: float = opt(1e-3, lo=0, lo_open=True, tunable=True, help="Adam learning rate of the hint stage")

    def __post_init__(self) -> None:
        if self.layers is not None:
            pairs = parse_layer_pairs(self.layers, "layers")
            if len(pairs) != 1:
                raise ConfigError(f"fitnets guides one student layer by one teacher layer: give one layers S:T, "
                                  f"got {len(pairs)}")
            object.__setattr__(self, "student_layer", pairs[0][0])
            object.__setattr__(self, "teacher_layer", pairs[0][1])
        named = [getattr(self, n) for n in ("student_layer", "teacher_layer")]
        if named.count(None) == 1:
            raise ConfigError("give both student_layer and teacher_layer, or neither (the middle pair is matched)")
        for name in ("student_layer", "teacher_layer"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"{name} must be a non-empty layer name; got {value!r}")
        if self.stage1 is not None:
            check_stage_config(self.stage1, "stage1")
        if not isinstance(self.kd, DistillConfig):
            raise ConfigError(f"kd must be a DistillConfig; got {type(self.kd).__name__}")
        if not isinstance(self.anneal, bool) or self.regressor_relu not in (None, True, False):
            raise ConfigError(f"anneal must be a bool and regressor_relu a bool or None; "
                              f"got {self.anneal!r}, {self.regressor_relu!r}")
        check_declared(self)

    def stage1_config(self) -> TrainConfig:
        """The hint stage's training: ``stage1`` if given, else ``kd.train`` with Adam at ``stage1_lr`` for
        ``stage1_epochs`` epochs and no early stopping (stage 1 has no validation)."""
        if self.stage1 is not None:
            return self.stage1
        return replace(self.kd.train, epochs=self.stage1_epochs, optimizer=OptimizerName.ADAM, lr=self.stage1_lr,
                       patience=None)


def resolve_hint_layers(student: nn.Module, teacher: nn.Module, x: torch.Tensor, config: HintConfig) -> HintConfig:
    """``config`` with its guided and hint layer named: as given, else the middle pair matched by spatial size."""
    if config.student_layer is not None:
        return config
    matched = match_layers(student, teacher, x)
    student_layer, teacher_layer = matched[len(matched) // 2]  # FitNets: the middle guides the middle
    return replace(config, student_layer=student_layer, teacher_layer=teacher_layer)


class HintObjective(nn.Module):
    """Stage-1 objective ``(model, x, y, idx) -> 1/2 ||u_h(x) - r(v_g(x))||^2`` (batch mean).

    An ``nn.Module`` so that ``train`` trains and checkpoints the regressor with the student. The
    teacher is held outside the module's registry: it is neither trained nor written to checkpoints.
    Both networks run only up to their layer (:func:`~modelpress.distill.features.forward_until`).

    Args:
        teacher: the teacher module, in eval mode.
        student_layer: guided layer name.
        teacher_layer: hint layer name.
        regressor: a :class:`HintRegressor` from guided to hint shape.
    """

    def __init__(self, teacher: nn.Module, student_layer: str, teacher_layer: str, regressor: HintRegressor) -> None:
        super().__init__()
        object.__setattr__(self, "teacher", teacher)  # bypasses nn.Module registration on purpose
        self.student_layer, self.teacher_layer = student_layer, teacher_layer
        self.regressor = regressor

    def forward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, idx: torch.Tensor | None = None) -> torch.Tensor:
        with torch.no_grad():
            hint = forward_until(self.teacher, x, self.teacher_layer)  # (B, *teacher_shape)
        guided = forward_until(model, x, self.student_layer)  # (B, *student_shape)
        return hint_loss(self.regressor(guided), hint)


def annealed_alpha(epoch: int, epochs: int, start: float) -> float:
    """The KD weight lambda of epoch ``epoch`` (0-based) of ``epochs``: linear from ``start`` to 0.

    FitNets anneals lambda linearly during KD training; we decay it from ``start`` at the first
    epoch to 0 at the last, so the run ends on the hard labels alone. One epoch keeps ``start``.
    """
    if epochs <= 1:
        return start
    return start * (1.0 - min(epoch, epochs - 1) / (epochs - 1))


class LinearAlphaAnneal:
    """Training callback: at each epoch's start, set ``objective.alpha = annealed_alpha(epoch, epochs, start)``.

    ``train`` calls ``on_epoch_start`` for every epoch it runs, a resumed run included, so the alpha
    is a function of the epoch alone and needs no checkpointing.
    """

    def __init__(self, objective: DistillationObjective, start: float, epochs: int) -> None:
        self.objective, self.start, self.epochs = objective, start, epochs

    def on_epoch_start(self, epoch: int, model: nn.Module) -> None:
        self.objective.alpha = annealed_alpha(epoch, self.epochs, self.start)


def _guided_parameter_ids(student: nn.Module, x: torch.Tensor, layer: str) -> set[int]:
    """Ids of the student parameters the guided layer's output depends on (found by autograd)."""
    was_training = student.training
    student.eval()  # eval: no BatchNorm statistics change; the dependency graph is the same
    try:
        out = forward_until(student, x, layer)
        params = [p for p in student.parameters() if p.requires_grad]
        if not isinstance(out, torch.Tensor) or not out.requires_grad:
            raise ConfigError(f"student layer {layer!r} has no trainable parameters before it; choose a deeper guided layer")
        grads = torch.autograd.grad(out.sum(), params, allow_unused=True)
    finally:
        student.train(was_training)
    return {id(p) for p, g in zip(params, grads) if g is not None}


@contextmanager
def _train_only(model: nn.Module, keep: set[int]):
    """Freeze every parameter not in ``keep``; restore all ``requires_grad`` flags afterwards.

    Frozen parameters get no gradient, and ``torch.optim`` skips parameters whose ``grad`` is None,
    so neither weight decay nor momentum moves them.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            if id(p) not in keep:
                p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def fit_hints(
    student: nn.Module,
    teacher: nn.Module,
    data: DataSplits | DataLoader,
    config: HintConfig,
    *,
    checkpoint_path: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool | None = None,
    callbacks: Sequence[object] = (),
    log: Callable[[str], None] | None = None,
) -> tuple[TrainResult, HintObjective]:
    """FitNets stage 1 alone: train the student up to its guided layer, and a regressor, on the hint loss.

    Only the parameters the guided layer depends on (and the regressor's) are trained; the others are
    frozen and restored afterwards. The teacher runs in eval mode under ``no_grad``.

    Args:
        student: trained in place; ``(B, *input_shape) -> (B, C)``.
        teacher: an ``nn.Module`` with the same number of classes.
        data: :class:`DataSplits` (its training split is used, without validation) or a DataLoader.
        config: layers and ``stage1`` training settings.
        checkpoint_path, resume, progress, callbacks, log: as for :func:`~modelpress.train.train`.

    Returns:
        ``(TrainResult, HintObjective)``; the result's ``train_loss`` is the epoch's mean hint loss and
        the objective holds the trained regressor and the layers used.

    Raises:
        ConfigError: unknown layer names, or a teacher that is not an ``nn.Module``.
        ShapeError: class-count mismatch, or a guided layer spatially smaller than the hint.
    """
    x = prepare_feature_models(student, teacher, data)
    config = resolve_hint_layers(student, teacher, x, config)
    stage1 = config.stage1_config()
    s_shape = feature_shapes(student, x, [config.student_layer]).get(config.student_layer)
    t_shape = feature_shapes(teacher, x, [config.teacher_layer]).get(config.teacher_layer)
    if s_shape is None or t_shape is None:
        raise ShapeError(f"layers {config.student_layer!r} (student) and {config.teacher_layer!r} (teacher) "
                         "must both run and return a tensor")
    relu = config.regressor_relu
    if relu is None:
        with torch.no_grad():
            relu = bool((forward_until(teacher, x, config.teacher_layer) >= 0).all())
    with torch.random.fork_rng(devices=[]):  # the regressor's init depends on the seed only
        torch.manual_seed(stage1.seed)
        regressor = HintRegressor(s_shape, t_shape, relu=relu)
    objective = HintObjective(teacher, config.student_layer, config.teacher_layer, regressor)
    with _train_only(student, _guided_parameter_ids(student, x, config.student_layer)):
        result = train(student, stage_loader(data, stage1), stage1, objective=objective,
                       checkpoint_path=checkpoint_path, resume=resume, progress=progress, callbacks=callbacks,
                       log=log, description="fitnets hints")
    return result, objective


def fitnets(
    student: nn.Module,
    teacher: nn.Module,
    data: DataSplits | DataLoader,
    config: HintConfig,
    *,
    checkpoint_path: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool | None = None,
    callbacks: Sequence[object] = (),
    val_loader: DataLoader | None = None,
    log: Callable[[str], None] | None = None,
) -> FitNetsResult:
    """FitNets (Romero et al. 2015): hint training (:func:`fit_hints`), then KD with annealed lambda.

    Args:
        student: trained in place.
        teacher: an ``nn.Module``; kept in eval mode and never updated.
        data: :class:`DataSplits` or a DataLoader of ``(x, y[, index])`` batches.
        config: see :class:`HintConfig`.
        checkpoint_path: stage ``k`` checkpoints to ``f"{checkpoint_path}.stage{k}"``; with ``resume``
            a finished stage 1 is restored, not rerun.
        resume, progress, log: as for :func:`~modelpress.train.train`.
        callbacks: training callbacks, given to both stages.
        val_loader: validation batches for stage 2 when ``data`` is a DataLoader.

    Returns:
        A :class:`FitNetsResult`: the student (eval mode), the layers used and both stages' histories.

    Raises:
        ConfigError, ShapeError: see :func:`fit_hints`.

    Example:
        >>> fitnets(student, teacher, splits, HintConfig("features.1", "features.4"))
    """
    hint_result, hints = fit_hints(student, teacher, data, config, checkpoint_path=stage_path(checkpoint_path, 1),
                               resume=resume, progress=progress, callbacks=callbacks, log=log)
    objective = DistillationObjective(ModuleTeacher(teacher), config.kd)
    schedule = [LinearAlphaAnneal(objective, config.kd.alpha, config.kd.train.epochs)] if config.anneal else []
    result = train(student, data, config.kd.train, objective=objective, val_loader=val_loader,
                   checkpoint_path=stage_path(checkpoint_path, 2), resume=resume, progress=progress,
                   callbacks=[*schedule, *callbacks], log=log, description="fitnets kd")
    return FitNetsResult(student, (hints.student_layer, hints.teacher_layer), hint_result, result)


@dataclass
class FitNetsResult:
    """What :func:`fitnets` returns: the ``student``, its ``(guided, hint)`` ``layers``, and the
    :class:`~modelpress.train.TrainResult` of the hint stage (``hint_result``) and of KD (``distill_result``)."""

    student: nn.Module
    layers: tuple[str, str]
    hint_result: TrainResult
    distill_result: TrainResult
