"""Attention transfer (Zagoruyko & Komodakis 2017, "Paying More Attention to Attention: Improving the
Performance of Convolutional Neural Networks via Attention Transfer").

The student is trained on ``(1 - alpha) CE(z_s, y) + alpha T^2 KL(p_T || q_T) + beta/2 sum_j AT_j``,
where ``AT_j = mean (Q_s^j/||Q_s^j|| - Q_t^j/||Q_t^j||)^2`` compares the normalised spatial attention
maps ``Q = sum_c |A_c|^p`` of layer pair ``j``. ``alpha = 0`` is the paper's AT; ``alpha > 0`` is AT+KD.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from modelpress.core.errors import ConfigError, ShapeError
from modelpress.core.options import check_declared, nested, opt
from modelpress.data.base import DataSplits
from modelpress.distill.core import DistillConfig, teacher_weight
from modelpress.distill.feature_losses import attention_transfer_loss
from modelpress.distill.features import (
    FeatureTap,
    feature_shapes,
    match_layers,
    normalize_pairs,
    parse_layer_pairs,
    prepare_feature_models,
)
from modelpress.distill.losses import mixed_distillation_loss
from modelpress.train import TrainResult, train

__all__ = ["AttentionConfig", "AttentionResult", "AttentionTransferObjective", "attention_transfer"]


@dataclass(frozen=True)
class AttentionConfig:
    """Attention-transfer settings.

    Args:
        pairs: ``((student_layer, teacher_layer), ...)``; empty pairs the layers automatically with
            :func:`~modelpress.distill.features.match_layers` (the last layer of each shared resolution).
        beta: the paper's beta; each pair's loss is weighted by ``beta / 2`` as in the authors' code,
            whose per-pair loss is a mean over batch and positions (hence the large default, 1000).
        p: exponent of the attention map ``sum_c |A_c|^p`` (the paper uses 2).
        kd: ``kd.alpha`` weights Hinton KD at ``kd.temperature`` (0, the default, is AT with
            cross-entropy only); ``kd.train`` holds the training settings.

    Raises:
        ConfigError: malformed pairs, negative beta, non-positive p, or a kd that is not a DistillConfig.
    """

    pairs: tuple[tuple[str, str], ...] = ()
    beta: float = opt(1000.0, lo=0, tunable=True, help="attention: weight of the attention term")
    p: float = opt(2.0, lo=0, lo_open=True, expose=False)
    kd: DistillConfig = nested(DistillConfig, expose=("temperature", "alpha", "train"), alpha=0.0)
    layers: str | None = opt(None, "text", optional=True, metavar="S:T[,S:T...]",
                             help="student:teacher layer pairs (default: matched automatically by spatial size)")

    def __post_init__(self) -> None:
        if self.layers is not None:
            object.__setattr__(self, "pairs", parse_layer_pairs(self.layers, "layers"))
        object.__setattr__(self, "pairs", normalize_pairs(self.pairs, "pairs"))
        if not self.beta >= 0:
            raise ConfigError(f"beta must be >= 0; got {self.beta}")
        if not self.p > 0:
            raise ConfigError(f"p must be positive; got {self.p}")
        if not isinstance(self.kd, DistillConfig):
            raise ConfigError(f"kd must be a DistillConfig; got {type(self.kd).__name__}")
        check_declared(self)


class AttentionTransferObjective:
    """Objective ``(model, x, y, idx) -> (1-alpha) CE + alpha KD_T + beta/2 sum_pairs AT`` for ``train``.

    The student's features are tapped during its ordinary forward (one pass gives logits and maps);
    the teacher runs in eval mode under ``no_grad``. Also a callback: with ``config.kd.kd_epochs``
    set, the KD term is dropped from that epoch on (the AT term stays).

    Args:
        teacher: the teacher module.
        config: pairs (must be non-empty here), beta, p and KD settings.

    Raises:
        ConfigError: no pairs, or a layer name that is not a submodule (raised at the first batch).
    """

    def __init__(self, teacher: nn.Module, config: AttentionConfig) -> None:
        if not config.pairs:
            raise ConfigError("AttentionTransferObjective needs explicit layer pairs; attention_transfer() matches them")
        self.teacher, self.config, self.epoch = teacher.eval(), config, 0
        self.student_layers = [s for s, _ in config.pairs]
        self.teacher_layers = [t for _, t in config.pairs]

    def on_epoch_start(self, epoch: int, model: nn.Module) -> None:
        self.epoch = epoch

    def transfer_losses(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(sum_pairs AT, student logits (B, C), teacher logits (B, C))`` for a batch ``x``."""
        with torch.no_grad(), FeatureTap(self.teacher, self.teacher_layers, detach=True) as t_tap:
            teacher_logits = self.teacher(x)
        with FeatureTap(model, self.student_layers) as s_tap:
            student_logits = model(x)
        at = sum(attention_transfer_loss(s_tap.outputs[s], t_tap.outputs[t], self.config.p)
                 for s, t in self.config.pairs)
        return at, student_logits, teacher_logits

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
        at, student_logits, teacher_logits = self.transfer_losses(model, x)
        kd = self.config.kd
        task = mixed_distillation_loss(student_logits, teacher_logits, y, alpha=teacher_weight(kd, self.epoch),
                                       temperature=kd.temperature, method=kd.method.value)
        return task + self.config.beta / 2 * at


def _check_pairs(student: nn.Module, teacher: nn.Module, x: torch.Tensor, pairs) -> None:
    """Every pair must name two layers with 4-D outputs whose spatial sizes can be pooled together."""
    s_shapes = feature_shapes(student, x, [s for s, _ in pairs])
    t_shapes = feature_shapes(teacher, x, [t for _, t in pairs])
    for s, t in pairs:
        s_shape, t_shape = s_shapes.get(s, ()), t_shapes.get(t, ())
        if len(s_shape) != 3 or len(t_shape) != 3:
            raise ShapeError(f"attention transfer needs 4-D feature maps; student {s!r} gives {s_shape}, "
                             f"teacher {t!r} gives {t_shape} per example")
        (hs, ws), (ht, wt) = s_shape[1:], t_shape[1:]
        if not ((hs >= ht and ws >= wt) or (hs <= ht and ws <= wt)):
            raise ShapeError(f"attention maps of student {s!r} ({hs}x{ws}) and teacher {t!r} ({ht}x{wt}) "
                             "cannot be pooled to one size")


def attention_transfer(
    student: nn.Module,
    teacher: nn.Module,
    data: DataSplits | DataLoader,
    config: AttentionConfig = AttentionConfig(),
    *,
    checkpoint_path: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool | None = None,
    callbacks: Sequence[object] = (),
    val_loader: DataLoader | None = None,
    log: Callable[[str], None] | None = None,
) -> AttentionResult:
    """Train ``student`` with attention transfer from ``teacher`` (Zagoruyko & Komodakis 2017).

    Args:
        student: trained in place; ``(B, *input_shape) -> (B, C)``.
        teacher: an ``nn.Module`` (eval mode, never updated).
        data: :class:`DataSplits` or a DataLoader of ``(x, y[, index])`` batches.
        config: layer pairs (empty: matched automatically), beta, p, KD and training settings.
        checkpoint_path, resume, progress, callbacks, val_loader, log: as for :func:`~modelpress.train.train`.

    Returns:
        An :class:`AttentionResult`: the student in eval mode, the layer pairs used and the TrainResult.

    Raises:
        ConfigError: unknown layer names, or a teacher that is not an ``nn.Module``.
        ShapeError: class-count mismatch, non-4-D layers, or no shared spatial size to match.

    Example:
        >>> attention_transfer(student, teacher, splits, AttentionConfig(beta=1000))
    """
    x = prepare_feature_models(student, teacher, data)
    pairs = config.pairs or tuple(match_layers(student, teacher, x))
    _check_pairs(student, teacher, x, pairs)
    resolved = replace(config, pairs=pairs, layers=None)
    objective = AttentionTransferObjective(teacher, resolved)
    result = train(student, data, config.kd.train, objective=objective, val_loader=val_loader,
                   checkpoint_path=checkpoint_path, resume=resume, progress=progress,
                   callbacks=callbacks, log=log, description="attention transfer")
    return AttentionResult(student, pairs, result)


@dataclass
class AttentionResult:
    """What :func:`attention_transfer` returns: the ``student``, the layer ``pairs`` used, and its ``train`` history."""

    student: nn.Module
    pairs: tuple[tuple[str, str], ...]
    train: TrainResult
