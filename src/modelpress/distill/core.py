"""``distill(student, teacher, data, config)``: train a student on a teacher's soft targets and hard labels."""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from modelpress.core.errors import ConfigError, ShapeError
from modelpress.core.options import check_declared, nested, opt
from modelpress.data.base import DataSplits
from modelpress.distill.losses import LossName, ModelIO, loss_name, make_logit_loss, mix_hard_labels
from modelpress.distill.teachers import Teacher, TeacherStore, as_teacher
from modelpress.train import TrainConfig, TrainResult, train


class DistillMethod(str, Enum):
    """The two classic logit-level losses; ``distill.losses.logit_loss_names()`` lists every registered one."""

    HINTON = "hinton"  # soft targets at temperature T (Hinton et al. 2015)
    LOGITS = "logits"  # L2 regression on logits (Ba & Caruana 2014)


@dataclass(frozen=True)
class DistillConfig:
    """How to distil.

    Args:
        method: a registered logit-level loss (``distill.losses.logit_loss_names()``): ``hinton`` (soft
            targets at ``temperature``), ``logits`` (logit regression), or one of ``distill/loss_*.py``.
            Stored as a :class:`~modelpress.distill.losses.LossName` (a ``str``; equal to ``DistillMethod`` members).
        temperature: T of the soft targets; the student is evaluated at T = 1.
        alpha: weight of the teacher term (the seeds' lambda); ``1 - alpha`` weights the hard labels.
        train: the training loop's settings.
        kd_epochs: early-stopped KD (Cho & Hariharan 2019, "On the Efficacy of Knowledge
            Distillation"): the loss above is used for the first ``kd_epochs`` epochs only; after
            that it is plain cross-entropy on hard labels, ``CE(softmax(z_s), y)``, and the teacher
            is no longer run. A small student gets the teacher's early guidance without having to
            match, later on, a teacher it lacks the capacity to mimic. ``None`` (default) keeps the
            teacher term for the whole run; a value ``>= train.epochs`` does the same.
    """

    # a text checked against the loss registry (not a fixed choice), so a new loss file needs no edit here
    method: LossName = opt(LossName("hinton"), "text", expose=False, help="a registered logit-level loss")
    temperature: float = opt(4.0, lo=0, lo_open=True, tunable=True, help="softmax temperature T of the soft targets")
    alpha: float = opt(0.9, lo=0, hi=1, tunable=True,
                       help="weight of the teacher term; 1 - alpha weights the hard labels")
    train: TrainConfig = nested(TrainConfig)
    kd_epochs: int | None = opt(None, "integer", lo=1, optional=True, tunable=True,
                                help="early-stopped KD: epochs with the teacher term, then labels only")

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", loss_name(self.method, "method"))
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be positive; got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha must be in [0, 1]; got {self.alpha}")
        if self.kd_epochs is not None and (
            isinstance(self.kd_epochs, bool) or not isinstance(self.kd_epochs, int) or self.kd_epochs < 1
        ):
            raise ConfigError(f"kd_epochs must be None or an integer >= 1; got {self.kd_epochs!r}")
        if not isinstance(self.train, TrainConfig):
            raise ConfigError(f"train must be a TrainConfig; got {type(self.train).__name__}")
        check_declared(self)


@dataclass
class DistillResult:
    """What :func:`distill` returns: the trained ``student`` (the object given) and its training history."""

    student: nn.Module
    train: TrainResult


def teacher_weight(config: DistillConfig, epoch: int, alpha: float | None = None) -> float:
    """The teacher term's weight at ``epoch`` (from 0): ``alpha`` (default ``config.alpha``), or 0 once
    early-stopped KD (``config.kd_epochs``) has switched to hard labels."""
    if config.kd_epochs is not None and epoch >= config.kd_epochs:
        return 0.0
    return config.alpha if alpha is None else alpha


class DistillationObjective:
    """Training objective ``(model, x, y, idx) -> loss`` that asks ``teacher`` for targets.

    It is also a training callback: ``on_epoch_start`` tells it the epoch, so with
    ``config.kd_epochs`` set it switches to hard labels only from epoch ``kd_epochs`` on (counted
    from 0). ``train`` calls ``on_epoch_start`` for every epoch it runs, a resumed run included, so
    the epoch needs no checkpointing and the objective stays a plain object (checkpoints unchanged).
    ``alpha`` starts at ``config.alpha``; a schedule may set it each epoch (FitNets anneals it).
    """

    def __init__(self, teacher: Teacher, config: DistillConfig) -> None:
        self.teacher = teacher
        self.config = config
        self.alpha = config.alpha
        self.epoch = 0
        # the teacher term, one registered loss with the one signature (student_io, teacher_io, targets)
        self.loss = make_logit_loss(config.method, temperature=config.temperature)

    def on_epoch_start(self, epoch: int, model: nn.Module) -> None:
        self.epoch = epoch

    @property
    def uses_teacher(self) -> bool:
        """Whether the current epoch still has the teacher term (always, unless ``kd_epochs`` is set)."""
        return self.config.kd_epochs is None or self.epoch < self.config.kd_epochs

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
        alpha = teacher_weight(self.config, self.epoch, self.alpha)
        if alpha == 0.0:  # hard labels only (early-stopped KD, an annealed weight): the teacher is not even run
            return F.cross_entropy(model(x), y)
        teacher_logits = self.teacher(x, idx)  # (B, C), no grad
        student_logits = model(x)  # (B, C)
        teacher_term = self.loss(ModelIO(logits=student_logits), ModelIO(logits=teacher_logits), y)
        return mix_hard_labels(teacher_term, student_logits, y, alpha)


def check_compatible(student: nn.Module, teacher: Teacher, x: torch.Tensor, idx: torch.Tensor | None, num_classes: int | None) -> None:
    """Run both on a few examples and fail early, with a clear message, if they disagree on classes.

    Raises:
        ShapeError: the student cannot take the inputs, or teacher, student and data differ in class count.
    """
    was_training = student.training
    student.eval()
    try:
        with torch.no_grad():
            student_out = student(x)
    except RuntimeError as err:
        raise ShapeError(f"the student cannot take inputs of shape {tuple(x.shape[1:])}: {str(err).splitlines()[0]}") from None
    finally:
        student.train(was_training)
    try:
        teacher_out = teacher(x, idx)
    except RuntimeError as err:
        raise ShapeError(f"the teacher cannot take inputs of shape {tuple(x.shape[1:])}: {str(err).splitlines()[0]}") from None
    s, t = student_out.shape[-1], teacher_out.shape[-1]
    if s != t:
        raise ShapeError(f"class-count mismatch: the teacher predicts {t} classes but the student predicts {s}")
    if num_classes is not None and s != num_classes:
        raise ShapeError(f"class-count mismatch: the models predict {s} classes but the data have {num_classes}")


def distill(
    student: nn.Module,
    teacher: nn.Module | Sequence[nn.Module] | Teacher | TeacherStore,
    data: DataSplits | DataLoader,
    config: DistillConfig = DistillConfig(),
    *,
    val_loader: DataLoader | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool | None = None,
    callbacks: Sequence[object] = (),
    log: Callable[[str], None] | None = None,
) -> DistillResult:
    """Train ``student`` to match ``teacher`` (Hinton et al. 2015; Ba & Caruana 2014).

    Args:
        student: the model to train, in place; logits ``(B, C)``.
        teacher: an ``nn.Module``, a list of modules (uniform ensemble), an
            :class:`~modelpress.distill.teachers.EnsembleTeacher` with weights, or a
            :class:`~modelpress.distill.teachers.TeacherStore` of precomputed outputs for the train split.
        data: :class:`DataSplits` or a DataLoader of ``(x, y)`` / ``(x, y, index)`` batches.
        config: method, temperature, alpha, ``kd_epochs`` (early-stopped KD) and training settings.
        callbacks: extra training callbacks, run after the objective's own ``on_epoch_start``.

    Returns:
        A :class:`DistillResult`: the trained student (the same object, in eval mode) and the
        :class:`~modelpress.train.TrainResult`.

    Raises:
        ShapeError: teacher, student and data disagree on the number of classes or input shape.

    Example:
        >>> result = distill(build_model("mlp:800-800", (1, 28, 28), 10), teacher, splits,
        ...                   DistillConfig(temperature=4, alpha=0.9))
    """
    teacher = as_teacher(teacher)
    if isinstance(data, DataSplits):
        x, idx, num_classes = data.x_train[:8], torch.arange(min(8, len(data.y_train))), data.num_classes
    else:
        batch = next(iter(data))
        x, idx, num_classes = batch[0][:8], (batch[2][:8] if len(batch) == 3 else None), None
    check_compatible(student, teacher, x, idx, num_classes)
    objective = DistillationObjective(teacher, config)
    result: TrainResult = train(
        student, data, config.train, objective=objective, val_loader=val_loader,
        checkpoint_path=checkpoint_path, resume=resume, progress=progress, callbacks=callbacks, log=log,
        description=f"distill ({config.method.value})",
    )
    return DistillResult(student, result)
