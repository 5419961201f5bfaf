"""Blending an LSTM and a CNN into one CNN: Geras et al. (2016), "Blending LSTMs into CNNs" (ICLR workshop).

The teacher is the mixture ``p(y|x) = gamma p_LSTM(y|x) + (1 - gamma) p_CNN(y|x)`` of two trained models
(a weighted :class:`~modelpress.models.EnsembleModel`, the same maths as the CLI's ``--teacher-weights``),
with ``gamma`` chosen on validation data; a CNN student then learns from it with the seeds' loss
``L(lambda) = lambda [-sum_c p(c|x) log q(c|x)] + (1 - lambda) [-log q(y|x)]`` (:func:`distill` with
``temperature=1`` and ``alpha=lambda``). The point: the student runs at the CNN's speed but can be as
accurate as the slower blend.

    choice = choose_gamma(lstm, cnn, splits.x_val, splits.y_val)
    result = blend(build_model("cnn1d", (40,), 10), lstm, cnn, splits, BlendConfig())
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from modelpress.core.errors import ConfigError, ShapeError
from modelpress.data.base import DataSplits
from modelpress.distill.core import DistillConfig, distill
from modelpress.distill.teachers import precompute_teacher
from modelpress.measure.metrics import predict_logits
from modelpress.models.ensemble import EnsembleModel, mixture_log_probs
from modelpress.train import TrainResult

DEFAULT_GAMMAS = tuple(i / 10 for i in range(11))


def _geras_distill() -> DistillConfig:
    return DistillConfig(temperature=1.0, alpha=0.5)


@dataclass(frozen=True)
class BlendConfig:
    """How to blend.

    Args:
        gammas: the weights of the recurrent model tried on the validation split (0 = the CNN alone,
            1 = the LSTM alone).
        gamma: a fixed weight instead of choosing one; ``None`` (default) chooses from ``gammas``.
        distill: the student's training; default the seeds' loss at temperature 1 with lambda 0.5.
    """

    gammas: tuple[float, ...] = DEFAULT_GAMMAS
    gamma: float | None = None
    distill: DistillConfig = field(default_factory=_geras_distill)

    def __post_init__(self) -> None:
        object.__setattr__(self, "gammas", tuple(float(g) for g in self.gammas))
        if not self.gammas:
            raise ConfigError("gammas must hold at least one weight in [0, 1]; got an empty list")
        for g in self.gammas + (() if self.gamma is None else (float(self.gamma),)):
            if not 0.0 <= g <= 1.0:
                raise ConfigError(f"gamma (the recurrent model's weight) must be in [0, 1]; got {g}")
        if not isinstance(self.distill, DistillConfig):
            raise ConfigError(f"distill must be a DistillConfig; got {type(self.distill).__name__}")


@dataclass(frozen=True)
class GammaChoice:
    """The chosen ``gamma`` and, per tried value, the blend's validation ``errors`` and mean ``nll`` (nats)."""

    gamma: float
    scores: tuple[dict, ...]
    n: int


def blend_teacher(recurrent: nn.Module, convolutional: nn.Module, gamma: float) -> EnsembleModel:
    """The mixture ``gamma p_recurrent + (1 - gamma) p_convolutional`` as one module, in eval mode.

    Returns:
        An :class:`EnsembleModel` mapping ``(B, *input_shape)`` to mixture log-probabilities ``(B, C)``,
        so it is measured (accuracy, latency) and used as a teacher like any classifier.
    """
    if not 0.0 <= gamma <= 1.0:
        raise ConfigError(f"gamma (the recurrent model's weight) must be in [0, 1]; got {gamma}")
    return EnsembleModel([recurrent, convolutional], combine="probs", weights=[gamma, 1.0 - gamma]).eval()


def score_gammas(member_logits: torch.Tensor, labels: torch.Tensor, gammas: Sequence[float]) -> list[dict]:
    """Errors and mean negative log-likelihood of the two-member mixture for each ``gamma``.

    Args:
        member_logits: ``(2, N, C)``: the recurrent model's logits, then the convolutional model's.
        labels: ``(N,)`` int64.
        gammas: weights of the first member, each in [0, 1].

    Returns:
        One dict per gamma: ``gamma``, ``errors`` (count), ``nll`` (mean nats).
    """
    if member_logits.dim() != 3 or member_logits.shape[0] != 2 or member_logits.shape[1] != labels.shape[0]:
        raise ShapeError(f"need logits (2, N, C) for N = {labels.shape[0]} labels; got {tuple(member_logits.shape)}")
    rows = []
    for gamma in gammas:
        log_p = mixture_log_probs(member_logits, torch.tensor([gamma, 1.0 - gamma]))  # (N, C)
        rows.append({"gamma": float(gamma), "errors": int((log_p.argmax(1) != labels).sum()),
                     "nll": float(F.nll_loss(log_p, labels))})
    return rows


def choose_gamma(recurrent: nn.Module, convolutional: nn.Module, x_val: torch.Tensor, y_val: torch.Tensor,
                 gammas: Sequence[float] = DEFAULT_GAMMAS) -> GammaChoice:
    """Pick the blend weight with the fewest validation errors; ties go to the lower validation NLL,
    which on a few hundred examples separates weights that the error count cannot.

    Args:
        recurrent, convolutional: trained classifiers of the same classes.
        x_val: ``(N, *input_shape)`` validation inputs; ``y_val``: ``(N,)`` labels.
        gammas: candidate weights of ``recurrent``.
    """
    if len(y_val) == 0:
        raise ConfigError("choosing gamma needs validation examples; the validation split is empty")
    first, second = predict_logits(recurrent, x_val), predict_logits(convolutional, x_val)  # (N, C) each
    if first.shape != second.shape:
        raise ShapeError(f"the two models disagree on the number of classes: {first.shape[-1]} and {second.shape[-1]}")
    logits = torch.stack([first, second])  # (2, N, C)
    scores = score_gammas(logits, y_val, gammas)
    best = min(scores, key=lambda row: (row["errors"], row["nll"]))
    return GammaChoice(best["gamma"], tuple(scores), len(y_val))


@dataclass
class BlendResult:
    """The trained student, the gamma choice, the teacher it was taught by (kept for measuring) and the
    distillation's training history."""

    student: nn.Module
    choice: GammaChoice
    teacher: EnsembleModel
    train: TrainResult | None = None


def blend(
    student: nn.Module,
    recurrent: nn.Module,
    convolutional: nn.Module,
    data: DataSplits,
    config: BlendConfig = BlendConfig(),
    *,
    checkpoint_path: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> BlendResult:
    """Distil the gamma-blend of ``recurrent`` and ``convolutional`` into ``student`` (Geras et al. 2016).

    ``gamma`` is chosen on ``data``'s validation split (unless ``config.gamma`` fixes it); the blend's
    outputs on the training split are computed once and stored, so the slow recurrent model is not run
    again every epoch.

    Args:
        student: the model to train in place, e.g. ``build_model("cnn1d", (40,), 10)``.
        recurrent, convolutional: the trained members (any two classifiers of the same classes work).
        data: train / val / test splits; the student learns on the training split.
        config: the gamma grid or a fixed gamma, and the distillation settings.

    Returns:
        A :class:`BlendResult`; ``result.student`` is ``student``, trained, in eval mode.

    Raises:
        ConfigError: bad config, or no validation examples to choose gamma with.
        ShapeError: student, members and data disagree on classes or input shape.
    """
    if config.gamma is not None:
        choice = GammaChoice(float(config.gamma), (), 0)
    else:
        choice = choose_gamma(recurrent, convolutional, data.x_val, data.y_val, config.gammas)
    if log is not None:
        log(f"blend: gamma = {choice.gamma:g} (weight of the recurrent model)")
    teacher = blend_teacher(recurrent, convolutional, choice.gamma)
    store = precompute_teacher(teacher, data.x_train)
    taught = distill(student, store, data, config.distill, checkpoint_path=checkpoint_path, resume=resume,
                     progress=progress, log=log)
    return BlendResult(student, choice, teacher, taught.train)
