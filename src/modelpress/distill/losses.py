"""Distillation losses as pure tensor functions of logits.

All take student logits ``(B, C)`` and teacher logits ``(B, C)`` (any per-row shift of the teacher's
logits, e.g. log-probabilities, gives the same soft targets).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network".

    ``T^2 * KL(p_T || q_T)`` averaged over the batch, where ``p_T = softmax(z_t / T)`` and
    ``q_T = softmax(z_s / T)``. The KL differs from the paper's cross-entropy ``-sum p log q`` only by
    the teacher's entropy, a constant, so gradients are identical; KL is zero when the two agree.
    The gradient with respect to the student logits is ``T (q_T - p_T) / B``; since soft-target
    gradients shrink as ``1/T^2`` (Hinton et al., Sec. 2), the ``T^2`` factor keeps their size
    comparable to the hard-label term when T changes.

    Args:
        student_logits: ``(B, C)``.
        teacher_logits: ``(B, C)``, no gradient needed.
        temperature: T > 0; 1 gives ordinary probabilities, larger T softer ones.

    Returns:
        Scalar loss (nats).
    """
    log_q = F.log_softmax(student_logits / temperature, dim=-1)  # (B, C)
    log_p = F.log_softmax(teacher_logits / temperature, dim=-1)  # (B, C)
    kl = F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)
    return kl * temperature**2


def logit_regression_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Ba & Caruana (2014), "Do Deep Nets Really Need to be Deep?": regress the teacher's logits.

    ``1/(2B) * sum_b ||z_s(b) - z_t(b)||^2``. Hinton et al. show this is the high-temperature limit
    of :func:`soft_target_loss` when logits are zero-mean per example.

    Args:
        student_logits: ``(B, C)``.
        teacher_logits: ``(B, C)``.

    Returns:
        Scalar loss.
    """
    return 0.5 * (student_logits - teacher_logits).pow(2).sum(dim=-1).mean()


def mixed_distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha: float,
    temperature: float = 1.0,
    method: str = "hinton",
) -> torch.Tensor:
    """The seeds' ``L(lambda) = lambda * L_soft + (1 - lambda) * CE(q_1, y)``, with ``alpha`` as lambda.

    Args:
        student_logits: ``(B, C)``.
        teacher_logits: ``(B, C)``.
        labels: hard labels ``(B,)`` int64.
        alpha: weight of the teacher term in [0, 1]; 1 ignores labels, 0 ignores the teacher.
        temperature: softmax temperature of the soft term (``hinton`` only).
        method: ``"hinton"`` (soft targets) or ``"logits"`` (Ba & Caruana regression).
    """
    if method == "hinton":
        teacher_term = soft_target_loss(student_logits, teacher_logits, temperature)
    elif method == "logits":
        teacher_term = logit_regression_loss(student_logits, teacher_logits)
    else:
        raise ValueError(f"method must be 'hinton' or 'logits', got {method!r}")
    if alpha >= 1.0:
        return teacher_term
    return alpha * teacher_term + (1.0 - alpha) * F.cross_entropy(student_logits, labels)
