"""Feature-distillation losses: hints, attention maps, FSP matrices.

Pure tensor functions first; then each as a loss class with the one signature of
:mod:`modelpress.distill.losses`, ``loss(student_io, teacher_io, targets) -> Tensor``, that reads the
named features of the ios (the layer to read is configuration, as in torchdistill's mid-level
losses), with its options a frozen config declared with ``opt``. :data:`FEATURE_LOSSES` lists them.

Feature maps are ``(B, C, H, W)``; where two maps of different spatial size meet, the larger one is
adaptive-average-pooled to the smaller size, which needs it to be at least as large in both H and W.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from modelpress.core.errors import ConfigError, ShapeError
from modelpress.core.options import REQUIRED, check_declared, opt
from modelpress.core.registry import Registry
from modelpress.distill.losses import IO, as_io

__all__ = [
    "FEATURE_LOSSES", "AttentionLossConfig", "AttentionTransferLoss", "FSPLoss", "FSPLossConfig", "HintLoss",
    "HintLossConfig", "attention_map", "attention_transfer_loss", "fsp_loss", "fsp_matrix", "hint_loss",
]


def _require_4d(t: torch.Tensor, what: str) -> None:
    if t.dim() != 4:
        raise ShapeError(f"{what} must be a 4-D feature map (B, C, H, W); got shape {tuple(t.shape)}")


def _common_size(a: tuple[int, int], b: tuple[int, int], what: str) -> tuple[int, int]:
    """The smaller of two spatial sizes; ShapeError when neither is at least as large in both H and W."""
    if a[0] >= b[0] and a[1] >= b[1]:
        return b
    if b[0] >= a[0] and b[1] >= a[1]:
        return a
    raise ShapeError(f"{what}: spatial sizes {a} and {b} cannot be pooled to one another "
                     "(neither is at least as large in both height and width)")


def _pool_to(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return t if tuple(t.shape[-2:]) == size else F.adaptive_avg_pool2d(t, size)


def attention_map(features: torch.Tensor, p: float = 2.0, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Activation-based spatial attention (Zagoruyko & Komodakis 2017, "Paying More Attention to
    Attention: Improving the Performance of Convolutional Neural Networks via Attention Transfer").

    ``Q = sum_c |A_c|^p`` over channels, flattened and L2-normalised per example: ``Q / ||Q||_2``.
    The normalisation makes the map independent of the channel count and of the activations' scale.

    Args:
        features: ``(B, C, H, W)``.
        p: exponent; the paper uses 2.
        size: if given and smaller than ``(H, W)``, the map ``Q`` (not the signed features, whose
            signs would cancel) is adaptive-average-pooled to it before normalising.

    Returns:
        ``(B, H*W)`` (or ``(B, h*w)`` for ``size=(h, w)``), each row of unit L2 norm (or zero).

    Raises:
        ShapeError: ``features`` is not 4-D.
    """
    _require_4d(features, "attention_map features")
    q = features.abs().pow(p).sum(dim=1, keepdim=True)  # (B, 1, H, W)
    if size is not None:
        q = _pool_to(q, tuple(size))  # (B, 1, h, w)
    return F.normalize(q.flatten(1), dim=1)  # (B, h*w)


def attention_transfer_loss(student_feats: torch.Tensor, teacher_feats: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Attention-transfer loss of one layer pair (Zagoruyko & Komodakis 2017).

    The paper writes ``|| Q_s/||Q_s||_2 - Q_t/||Q_t||_2 ||_p``; we use the authors' code,
    ``(at(s) - at(t)).pow(2).mean()``: the squared L2 distance of the normalised maps, averaged over
    batch and positions. Methods weight it by ``beta / 2`` (the authors' code, beta = 1000).
    Channel counts may differ. When the spatial sizes differ, the larger attention map is
    adaptive-average-pooled to the smaller size.

    Args:
        student_feats: ``(B, C_s, H_s, W_s)``.
        teacher_feats: ``(B, C_t, H_t, W_t)``; treated as constant by callers (pass it detached).
        p: exponent of :func:`attention_map`.

    Returns:
        Scalar, zero when the two attention maps agree.

    Raises:
        ShapeError: a map is not 4-D, batch sizes differ, or the spatial sizes cannot be pooled together.
    """
    _require_4d(student_feats, "student features")
    _require_4d(teacher_feats, "teacher features")
    if student_feats.shape[0] != teacher_feats.shape[0]:
        raise ShapeError(f"batch sizes differ: student {student_feats.shape[0]}, teacher {teacher_feats.shape[0]}")
    size = _common_size(tuple(student_feats.shape[-2:]), tuple(teacher_feats.shape[-2:]), "attention transfer")
    q_s = attention_map(student_feats, p, size)  # (B, h*w)
    q_t = attention_map(teacher_feats, p, size)  # (B, h*w)
    return (q_s - q_t).pow(2).mean()


def fsp_matrix(f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
    """Flow of Solution Procedure matrix (Yim, Joo, Bae & Kim 2017, "A Gift from Knowledge
    Distillation: Fast Optimization, Network Minimization and Transfer Learning").

    ``G_ij = sum_{h,w} F1_i(h, w) * F2_j(h, w) / (H * W)``: the Gram-like inner products between the
    channels of two layers. When the spatial sizes differ, the larger map is adaptive-average-pooled
    to the smaller one.

    Args:
        f1: ``(B, C1, H, W)``.
        f2: ``(B, C2, H', W')``.

    Returns:
        ``(B, C1, C2)``.

    Raises:
        ShapeError: not 4-D, different batch sizes, or spatial sizes that cannot be pooled together.
    """
    _require_4d(f1, "FSP first layer")
    _require_4d(f2, "FSP second layer")
    if f1.shape[0] != f2.shape[0]:
        raise ShapeError(f"FSP layers have different batch sizes: {f1.shape[0]} and {f2.shape[0]}")
    size = _common_size(tuple(f1.shape[-2:]), tuple(f2.shape[-2:]), "FSP matrix")
    f1, f2 = _pool_to(f1, size), _pool_to(f2, size)  # (B, C1, h, w), (B, C2, h, w)
    return torch.einsum("bihw,bjhw->bij", f1, f2) / (size[0] * size[1])  # (B, C1, C2)


def fsp_loss(
    student_matrices: Sequence[torch.Tensor],
    teacher_matrices: Sequence[torch.Tensor],
    weights: Sequence[float] | None = None,
    *,
    names: Sequence[str] | None = None,
    normalize: bool = False,
) -> torch.Tensor:
    """FSP loss (Yim et al. 2017): ``1/B sum_b sum_i lambda_i || G_s^i(b) - G_t^i(b) ||_F^2``.

    Args:
        student_matrices: list of ``(B, C1_i, C2_i)`` from :func:`fsp_matrix`.
        teacher_matrices: the teacher's, same length and shapes; treated as constants.
        weights: ``lambda_i`` (the paper uses equal weights); default all 1.
        names: a label per matrix for error messages, e.g. ``"student (a, b) vs teacher (c, d)"``.
        normalize: divide each squared Frobenius norm by ``C1_i * C2_i`` (a mean over entries), which
            keeps the loss's size independent of the channel counts; off by default (the paper's form).

    Returns:
        Scalar, zero when all matrices agree.

    Raises:
        ShapeError: the lists differ in length, or a student and teacher matrix differ in shape.
    """
    if len(student_matrices) != len(teacher_matrices) or not student_matrices:
        raise ShapeError(f"need the same, non-zero number of student and teacher FSP matrices; "
                         f"got {len(student_matrices)} and {len(teacher_matrices)}")
    weights = [1.0] * len(student_matrices) if weights is None else list(weights)
    if len(weights) != len(student_matrices):
        raise ShapeError(f"{len(student_matrices)} FSP matrices but {len(weights)} weights")
    total = student_matrices[0].new_zeros(())
    for i, (g_s, g_t, w) in enumerate(zip(student_matrices, teacher_matrices, weights)):
        if g_s.shape != g_t.shape:
            label = names[i] if names is not None else f"pair {i}"
            raise ShapeError(f"FSP matrices of {label} differ: student {tuple(g_s.shape)}, teacher {tuple(g_t.shape)}; "
                             "the paired layers need the same channel counts")
        per_example = (g_s - g_t).pow(2).sum(dim=(1, 2))  # (B,)
        if normalize:
            per_example = per_example / (g_s.shape[1] * g_s.shape[2])
        total = total + w * per_example.mean()
    return total


def hint_loss(regressed: torch.Tensor, hint: torch.Tensor) -> torch.Tensor:
    """FitNets hint loss (Romero et al. 2015, "FitNets: Hints for Thin Deep Nets").

    ``1/2 || u_h(x) - r(v_g(x)) ||^2`` summed over the feature entries, averaged over the batch.

    Args:
        regressed: the regressor's output ``r(v_g)``, any shape ``(B, ...)``.
        hint: the teacher's hint ``u_h``, same shape, treated as constant.

    Returns:
        Scalar, zero when the two agree.

    Raises:
        ShapeError: the shapes differ.
    """
    if regressed.shape != hint.shape:
        raise ShapeError(f"regressed student features {tuple(regressed.shape)} do not match the hint {tuple(hint.shape)}")
    return 0.5 * (hint - regressed).pow(2).flatten(1).sum(dim=1).mean()


# ------------------------------------------------------------------------- the same, behind one signature


@dataclass(frozen=True)
class HintLossConfig:
    """Which features FitNets' hint loss compares: the student's *regressed* guided layer and the teacher's hint."""

    student: str = opt(REQUIRED, "text", help="student io key of the regressed guided-layer features r(v_g)")
    teacher: str = opt(REQUIRED, "text", help="teacher io key of the hint layer u_h")

    def __post_init__(self) -> None:
        check_declared(self)


class HintLoss:
    """Romero et al. (2015), FitNets: ``1/2 ||u_h - r(v_g)||^2`` per example, batch mean (:func:`hint_loss`).

    The regressor ``r`` is trainable and belongs to the objective, which puts ``r(v_g)`` into the
    student io under ``config.student``.
    """

    def __init__(self, config: HintLossConfig) -> None:
        self.config = config

    def __call__(self, student_io: IO, teacher_io: IO, targets: torch.Tensor | None = None) -> torch.Tensor:
        return hint_loss(as_io(student_io)[self.config.student], as_io(teacher_io)[self.config.teacher])


def _check_layer_lists(student: tuple, teacher: tuple, what: str) -> None:
    if not student or len(student) != len(teacher):
        raise ConfigError(f"{what} needs the same, non-zero number of student and teacher layers; "
                          f"got {len(student)} and {len(teacher)}")


@dataclass(frozen=True)
class AttentionLossConfig:
    """Layer pairs and weights of attention transfer (Zagoruyko & Komodakis 2017)."""

    student_layers: tuple[str, ...] = opt(REQUIRED, "texts", help="student io keys, one per pair")
    teacher_layers: tuple[str, ...] = opt(REQUIRED, "texts", help="teacher io keys, paired in order")
    p: float = opt(2.0, lo=0, lo_open=True, help="exponent of the attention map sum_c |A_c|^p")
    beta: float = opt(1000.0, lo=0, tunable=True, help="the loss is beta / 2 * sum over pairs (authors' beta = 1000)")

    def __post_init__(self) -> None:
        object.__setattr__(self, "student_layers", tuple(self.student_layers))
        object.__setattr__(self, "teacher_layers", tuple(self.teacher_layers))
        _check_layer_lists(self.student_layers, self.teacher_layers, "attention transfer")
        check_declared(self)


class AttentionTransferLoss:
    """Zagoruyko & Komodakis (2017): ``beta/2 * sum_pairs mean((Q_s/||Q_s|| - Q_t/||Q_t||)^2)``,
    ``Q = sum_c |A_c|^p`` (:func:`attention_transfer_loss` per pair)."""

    def __init__(self, config: AttentionLossConfig) -> None:
        self.config = config

    def __call__(self, student_io: IO, teacher_io: IO, targets: torch.Tensor | None = None) -> torch.Tensor:
        s_io, t_io, c = as_io(student_io), as_io(teacher_io), self.config
        at = sum(attention_transfer_loss(s_io[s], t_io[t], c.p) for s, t in zip(c.student_layers, c.teacher_layers))
        return c.beta / 2 * at


def _split_pair(text: str, field_name: str) -> tuple[str, str]:
    first, sep, second = text.partition(":")
    if not sep or not first or not second:
        raise ConfigError(f"{field_name} entries must be 'first_layer:second_layer'; got {text!r}")
    return first, second


@dataclass(frozen=True)
class FSPLossConfig:
    """Layer pairs of the FSP loss (Yim et al. 2017), each ``"first:second"`` (two io keys of one model)."""

    student_pairs: tuple[str, ...] = opt(REQUIRED, "texts", help="student 'first:second' io keys, one per matrix")
    teacher_pairs: tuple[str, ...] = opt(REQUIRED, "texts", help="teacher 'first:second' io keys, paired in order")
    normalize: bool = opt(False, "bool", help="divide each squared Frobenius norm by C1 * C2")

    def __post_init__(self) -> None:
        object.__setattr__(self, "student_pairs", tuple(self.student_pairs))
        object.__setattr__(self, "teacher_pairs", tuple(self.teacher_pairs))
        _check_layer_lists(self.student_pairs, self.teacher_pairs, "FSP")
        check_declared(self)
        for name in ("student_pairs", "teacher_pairs"):
            for text in getattr(self, name):
                _split_pair(text, name)


class FSPLoss:
    """Yim et al. (2017): ``1/B sum_b sum_i ||G_s^i(b) - G_t^i(b)||_F^2`` over the configured pairs,
    ``G = fsp_matrix(F1, F2)`` (:func:`fsp_loss`, equal weights as in the paper)."""

    def __init__(self, config: FSPLossConfig) -> None:
        self.config = config

    def _matrices(self, io, pairs: tuple[str, ...], field_name: str) -> list[torch.Tensor]:
        return [fsp_matrix(io[a], io[b]) for a, b in (_split_pair(p, field_name) for p in pairs)]

    def __call__(self, student_io: IO, teacher_io: IO, targets: torch.Tensor | None = None) -> torch.Tensor:
        c = self.config
        g_s = self._matrices(as_io(student_io), c.student_pairs, "student_pairs")
        with torch.no_grad():  # the teacher's matrices are constants
            g_t = self._matrices(as_io(teacher_io), c.teacher_pairs, "teacher_pairs")
        return fsp_loss(g_s, g_t, names=[f"student {s} vs teacher {t}" for s, t in zip(c.student_pairs, c.teacher_pairs)],
                        normalize=c.normalize)


FEATURE_LOSSES: Registry[tuple[type, type]] = Registry("feature-level loss")
FEATURE_LOSSES.register("hint")((HintLossConfig, HintLoss))
FEATURE_LOSSES.register("attention")((AttentionLossConfig, AttentionTransferLoss))
FEATURE_LOSSES.register("fsp")((FSPLossConfig, FSPLoss))
