"""DIST: distillation by matching the *relations* of the predictions, not their values.

Huang, You, Wang, Qian & Xu (2022), "Knowledge Distillation from A Stronger Teacher" (NeurIPS).
With ``Y = softmax(Z / tau)`` ``(B, C)`` for student (``Y^s``) and teacher (``Y^t``) and Pearson's
correlation ``rho(u, v) = cov(u, v) / (std(u) std(v))``::

    L_inter = 1 - 1/B sum_i rho(Y^s_{i,:}, Y^t_{i,:})    # each example's ranking of the classes
    L_intra = 1 - 1/C sum_j rho(Y^s_{:,j}, Y^t_{:,j})    # each class's ranking of the examples
    L_DIST  = tau^2 (beta L_inter + gamma L_intra)

Pearson's rho is invariant to a positive affine map of either argument, so the student need only
keep the teacher's relations, not its exact probabilities: the paper's remedy for the gap between a
small student and a much stronger teacher, where exact matching (KL) is too hard. As in the authors'
code, ``rho`` is the cosine of the centred vectors with ``eps = 1e-8`` added to the norms' product.

Registered as ``dist``: ``DistillConfig(method="dist")`` (the run's ``temperature`` is ``tau``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from modelpress.core.options import check_declared, opt
from modelpress.distill.losses import IO, LogitLossSpec, io_logits

_EPS = 1e-8  # the authors' value: keeps a constant row or column (zero variance) at correlation 0


def pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = _EPS) -> torch.Tensor:
    """Pearson's correlation of each row of ``a`` with the same row of ``b``.

    Args:
        a: ``(N, D)``.
        b: ``(N, D)``.
        eps: added to the product of the centred rows' norms.

    Returns:
        ``(N,)`` in [-1, 1].
    """
    a = a - a.mean(dim=1, keepdim=True)  # (N, D)
    b = b - b.mean(dim=1, keepdim=True)  # (N, D)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)  # (N,)


def dist_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
              inter_weight: float = 1.0, intra_weight: float = 1.0) -> torch.Tensor:
    """``tau^2 (beta L_inter + gamma L_intra)`` of Huang et al. (2022); see the module docstring.

    Args:
        student_logits: ``(B, C)``.
        teacher_logits: ``(B, C)``, no gradient needed.
        temperature: tau > 0.
        inter_weight: beta, weight of the inter-class (per example) relation.
        intra_weight: gamma, weight of the intra-class (per class, across the batch) relation.

    Returns:
        Scalar, zero (up to ``eps``) when the two agree.
    """
    y_s = torch.softmax(student_logits / temperature, dim=1)  # (B, C)
    y_t = torch.softmax(teacher_logits / temperature, dim=1)  # (B, C)
    inter = 1.0 - pearson_rows(y_s, y_t).mean()
    intra = 1.0 - pearson_rows(y_s.t(), y_t.t()).mean()  # columns: (C, B)
    return temperature**2 * (inter_weight * inter + intra_weight * intra)


@dataclass(frozen=True)
class DISTConfig:
    """Options of DIST (the paper's defaults: tau = 1, beta = gamma = 1)."""

    temperature: float = opt(1.0, lo=0, lo_open=True, tunable=True, help="softmax temperature tau of DIST")
    inter_weight: float = opt(1.0, lo=0, tunable=True, help="beta: weight of the inter-class relation")
    intra_weight: float = opt(1.0, lo=0, tunable=True, help="gamma: weight of the intra-class relation")

    def __post_init__(self) -> None:
        check_declared(self)


class DISTLoss:
    """DIST (Huang et al. 2022) with the one loss signature; ``targets`` are not used."""

    def __init__(self, config: DISTConfig = DISTConfig()) -> None:
        self.config = config

    def __call__(self, student_io: IO, teacher_io: IO, targets: torch.Tensor | None = None) -> torch.Tensor:
        c = self.config
        return dist_loss(io_logits(student_io), io_logits(teacher_io), c.temperature, c.inter_weight, c.intra_weight)


LOSS = LogitLossSpec("dist", DISTConfig, DISTLoss,
                     "relations of the predictions by Pearson correlation (Huang et al. 2022, DIST)")
