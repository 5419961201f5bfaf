"""FSP distillation (Yim, Joo, Bae & Kim 2017, "A Gift from Knowledge Distillation: Fast Optimization,
Network Minimization and Transfer Learning").

Stage 1 trains the whole student to match the teacher's "flow of solution procedure" matrices
``G(x)_ij = sum_{h,w} F1_i(h,w) F2_j(h,w) / (H W)`` between pairs of layers,
``min 1/B sum_b sum_i lambda_i ||G_s^i - G_t^i||_F^2``; stage 2 is ordinary training on the labels.
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
from modelpress.distill.feature_losses import fsp_loss, fsp_matrix
from modelpress.distill.features import (
    FeatureTap,
    check_stage_config,
    feature_shapes,
    normalize_pairs,
    prepare_feature_models,
    sequential_outputs,
    stage_loader,
    stage_path,
)
from modelpress.train import OptimizerName, TrainConfig, TrainResult, train

__all__ = ["FSPConfig", "FSPObjective", "FSPResult", "default_fsp_pairs", "fsp_distill", "parse_fsp_pairs"]


@dataclass(frozen=True)
class FSPConfig:
    """FSP settings.

    Args:
        student_pairs: ``((layer_a, layer_b), ...)``: FSP matrix ``i`` of the student is between these.
        teacher_pairs: the teacher's, same length; matrix ``i`` needs the same channel counts in both.
        stage1: training of the FSP stage (no validation: ``patience`` must be None); ``None``:
            ``stage2`` with ``stage1_epochs`` epochs of Adam at ``stage1_lr`` (see :meth:`stage1_config`).
        stage2: ordinary cross-entropy training afterwards (validation and early stopping allowed).
        weights: ``lambda_i`` per matrix, non-negative; ``None`` weights all equally, as the paper does.
        normalize: divide each matrix's squared error by its entry count (see
            :func:`~modelpress.distill.feature_losses.fsp_loss`).
        fsp_pairs: the pairs as texts ``"SA,SB:TA,TB"`` (two student layers, two teacher layers), one
            per matrix; they set ``student_pairs`` and ``teacher_pairs``.
        stage1_epochs, stage1_lr: the derived first stage's epochs and Adam step size.

    Raises:
        ConfigError: empty or different-length pairs, malformed names, or bad weights.
    """

    student_pairs: tuple[tuple[str, str], ...] = ()
    teacher_pairs: tuple[tuple[str, str], ...] = ()
    stage1: TrainConfig | None = None
    stage2: TrainConfig = nested(TrainConfig)
    weights: tuple[float, ...] | None = None
    normalize: bool = opt(False, "bool", expose=False)
    fsp_pairs: tuple[str, ...] = opt((), "texts", flag="fsp-pair", metavar="SA,SB:TA,TB",
                                     help="two student layers and the two teacher layers whose flow matrix they "
                                          "match; repeatable")
    stage1_epochs: int = opt(2, "integer", lo=1, tunable=True, help="epochs of the FSP stage")
    stage1_lr: float = opt(1e-3, lo=0, lo_open=True, tunable=True, help="Adam learning rate of the FSP stage")

    def __post_init__(self) -> None:
        if self.fsp_pairs:
            object.__setattr__(self, "fsp_pairs", tuple(self.fsp_pairs))
            student_pairs, teacher_pairs = parse_fsp_pairs(self.fsp_pairs)
            object.__setattr__(self, "student_pairs", student_pairs)
            object.__setattr__(self, "teacher_pairs", teacher_pairs)
        if not self.student_pairs:
            raise ConfigError("fsp needs the layers of each flow matrix: fsp_pairs (--fsp-pair SA,SB:TA,TB, repeatable; "
                              "`modelpress layers MODEL` lists the names). Student and teacher matrices must have "
                              "equal channel counts")
        object.__setattr__(self, "student_pairs", normalize_pairs(self.student_pairs, "student_pairs"))
        object.__setattr__(self, "teacher_pairs", normalize_pairs(self.teacher_pairs, "teacher_pairs"))
        if not self.student_pairs or len(self.student_pairs) != len(self.teacher_pairs):
            raise ConfigError(f"student_pairs and teacher_pairs must be non-empty and of the same length; "
                              f"got {len(self.student_pairs)} and {len(self.teacher_pairs)}")
        if self.stage1 is not None:
            check_stage_config(self.stage1, "stage1")
        if not isinstance(self.stage2, TrainConfig):
            raise ConfigError(f"stage2 must be a TrainConfig; got {type(self.stage2).__name__}")
        if self.weights is not None:
            weights = tuple(float(w) for w in self.weights)
            if len(weights) != len(self.student_pairs) or any(not w >= 0 for w in weights):
                raise ConfigError(f"weights must be {len(self.student_pairs)} non-negative numbers (one per pair); "
                                  f"got {self.weights!r}")
            object.__setattr__(self, "weights", weights)
        check_declared(self)

    def stage1_config(self) -> TrainConfig:
        """The FSP stage's training: ``stage1`` if given, else ``stage2`` with Adam at ``stage1_lr`` for
        ``stage1_epochs`` epochs and no early stopping."""
        if self.stage1 is not None:
            return self.stage1
        return replace(self.stage2, epochs=self.stage1_epochs, optimizer=OptimizerName.ADAM, lr=self.stage1_lr,
                       patience=None)


def parse_fsp_pairs(texts) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
    """``["SA,SB:TA,TB", ...]`` -> ``(student_pairs, teacher_pairs)``.

    Raises:
        ConfigError: a text that is not two student layers, a colon and two teacher layers.
    """
    student_pairs, teacher_pairs = [], []
    for text in texts:
        student_side, sep, teacher_side = text.partition(":")
        s_layers, t_layers = student_side.split(","), teacher_side.split(",")
        if not sep or len(s_layers) != 2 or len(t_layers) != 2:
            raise ConfigError(f"fsp_pairs (--fsp-pair) want SA,SB:TA,TB (two student layers, two teacher layers); "
                              f"got {text!r}")
        student_pairs.append(tuple(s_layers))
        teacher_pairs.append(tuple(t_layers))
    return tuple(student_pairs), tuple(teacher_pairs)


def _pair_labels(config: FSPConfig) -> list[str]:
    return [f"student {s} vs teacher {t}" for s, t in zip(config.student_pairs, config.teacher_pairs)]


class FSPObjective:
    """Stage-1 objective ``(model, x, y, idx) -> sum_i lambda_i ||G_s^i - G_t^i||_F^2`` (batch mean).

    Args:
        teacher: the teacher module (eval mode, run under ``no_grad``).
        config: the layer pairs, weights and normalisation.
    """

    def __init__(self, teacher: nn.Module, config: FSPConfig) -> None:
        self.teacher, self.config = teacher.eval(), config
        self.labels = _pair_labels(config)

    @staticmethod
    def _matrices(tap: FeatureTap, pairs) -> list[torch.Tensor]:
        return [fsp_matrix(tap.outputs[a], tap.outputs[b]) for a, b in pairs]  # each (B, C_a, C_b)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, idx: torch.Tensor | None = None) -> torch.Tensor:
        t_names = [name for pair in self.config.teacher_pairs for name in pair]
        with torch.no_grad(), FeatureTap(self.teacher, t_names, detach=True) as t_tap:
            self.teacher(x)
        with FeatureTap(model, [name for pair in self.config.student_pairs for name in pair]) as s_tap:
            model(x)
        return fsp_loss(self._matrices(s_tap, self.config.student_pairs), self._matrices(t_tap, self.config.teacher_pairs),
                        self.config.weights, names=self.labels, normalize=self.config.normalize)


def _check_layers(model: nn.Module, x: torch.Tensor, pairs, who: str) -> list[tuple[int, int]]:
    """Channel counts ``(C_a, C_b)`` of each pair; ShapeError if a layer is not 4-D or a pair is not poolable."""
    shapes = feature_shapes(model, x, [name for pair in pairs for name in pair])
    channels = []
    for a, b in pairs:
        sa, sb = shapes.get(a, ()), shapes.get(b, ())
        if len(sa) != 3 or len(sb) != 3:
            raise ShapeError(f"FSP needs 4-D feature maps; {who} layers {a!r} and {b!r} give {sa} and {sb} per example")
        if not ((sa[1] >= sb[1] and sa[2] >= sb[2]) or (sa[1] <= sb[1] and sa[2] <= sb[2])):
            raise ShapeError(f"{who} layers {a!r} ({sa[1]}x{sa[2]}) and {b!r} ({sb[1]}x{sb[2]}) cannot be pooled to one size")
        channels.append((sa[0], sb[0]))
    return channels


def _check_config(student: nn.Module, teacher: nn.Module, x: torch.Tensor, config: FSPConfig) -> None:
    s_channels = _check_layers(student, x, config.student_pairs, "student")
    t_channels = _check_layers(teacher, x, config.teacher_pairs, "teacher")
    for s_pair, t_pair, s_c, t_c in zip(config.student_pairs, config.teacher_pairs, s_channels, t_channels):
        if s_c != t_c:
            raise ShapeError(f"FSP matrix of student layers {s_pair} is {s_c[0]}x{s_c[1]} but that of teacher layers "
                             f"{t_pair} is {t_c[0]}x{t_c[1]}; paired layers need the same channel counts")


def default_fsp_pairs(model: nn.Module, x: torch.Tensor) -> list[tuple[str, str]]:
    """First and last candidate layer of each resolution stage, as in Yim et al.'s stage-wise FSP.

    Candidates are those of :func:`~modelpress.distill.features.sequential_outputs`; a stage is a
    run of consecutive candidates with the same spatial size; stages with a single candidate are skipped.

    Args:
        model: any ``nn.Module``.
        x: a few inputs ``(B, *input_shape)``.

    Returns:
        ``[(first_layer, last_layer), ...]`` from shallow to deep.

    Raises:
        ShapeError: no stage has two candidate layers.
    """
    stages: list[list[str]] = []
    previous = None
    for name, shape in sequential_outputs(model, x):
        if shape[1:] != previous:
            stages.append([])
            previous = shape[1:]
        stages[-1].append(name)
    pairs = [(stage[0], stage[-1]) for stage in stages if len(stage) > 1]
    if not pairs:
        raise ShapeError(f"{type(model).__name__} has no resolution stage with two tappable 4-D layers; name the FSP pairs yourself")
    return pairs


def fsp_distill(
    student: nn.Module,
    teacher: nn.Module,
    data: DataSplits | DataLoader,
    config: FSPConfig,
    *,
    checkpoint_path: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool | None = None,
    callbacks: Sequence[object] = (),
    val_loader: DataLoader | None = None,
    log: Callable[[str], None] | None = None,
) -> FSPResult:
    """FSP distillation (Yim et al. 2017): match FSP matrices (stage 1), then train on the labels (stage 2).

    Args:
        student: trained in place (all of it, in both stages).
        teacher: an ``nn.Module`` (eval mode, never updated).
        data: :class:`DataSplits` or a DataLoader of ``(x, y[, index])`` batches.
        config: see :class:`FSPConfig`.
        checkpoint_path: stage ``k`` checkpoints to ``f"{checkpoint_path}.stage{k}"``.
        resume, progress, log: as for :func:`~modelpress.train.train`.
        callbacks: training callbacks, given to both stages.
        val_loader: validation batches for stage 2 when ``data`` is a DataLoader.

    Returns:
        An :class:`FSPResult`: the student in eval mode and both stages' TrainResults.

    Raises:
        ConfigError: unknown layer names, or a teacher that is not an ``nn.Module``.
        ShapeError: class-count mismatch, non-4-D layers, unpoolable pairs, or FSP matrices whose
            channel counts differ between student and teacher (the message names the layers).
    """
    x = prepare_feature_models(student, teacher, data)
    _check_config(student, teacher, x, config)
    objective = FSPObjective(teacher, config)
    stage1 = config.stage1_config()
    fsp_result = train(student, stage_loader(data, stage1), stage1, objective=objective,
                       checkpoint_path=stage_path(checkpoint_path, 1), resume=resume, progress=progress,
                       callbacks=callbacks, log=log, description="fsp stage 1")
    result = train(student, data, config.stage2, val_loader=val_loader, checkpoint_path=stage_path(checkpoint_path, 2),
                   resume=resume, progress=progress, callbacks=callbacks, log=log, description="fsp stage 2")
    return FSPResult(student, fsp_result, result)


@dataclass
class FSPResult:
    """What :func:`fsp_distill` returns: the ``student`` and the TrainResults of stage 1 (``fsp_result``)
    and stage 2 (``distill_result``)."""

    student: nn.Module
    fsp_result: TrainResult
    distill_result: TrainResult
