"""TinyBERT's layer-wise losses as pure tensor functions (Jiao et al. 2020, "TinyBERT: Distilling BERT
for Natural Language Understanding", Sec. 3.1).

With ``S`` the student and ``T`` the teacher, ``m = 0`` the embedding layer, ``m = 1..M`` the student's
Transformer layers and ``g`` the layer mapping:

- embedding layer: ``MSE(E^S W_e, E^T)``
- hidden states: ``MSE(H^S_m W_h, H^T_g(m))``
- attention: ``(1/h) sum_i MSE(A^S_{m,i}, A^T_{g(m),i})`` over heads ``i``
- prediction layer: soft cross-entropy of the student's logits against the teacher's at temperature T
  (:func:`modelpress.distill.losses.soft_target_loss`)

Every function takes the attention mask ``(B, L)`` (1 = token, 0 = padding) and averages over real
tokens only, so how much a batch is padded does not change the loss.
"""

from __future__ import annotations

import torch

from modelpress.core.errors import ConfigError, ShapeError

__all__ = ["align_heads", "attention_loss", "attention_probabilities", "attention_scores", "masked_mse",
           "uniform_layer_map"]


def uniform_layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """TinyBERT's uniform mapping ``g(m) = m * N / M``, rounded down, for ``m = 1..M``.

    Teacher layers count from 1 (0 is the embedding layer); the last student layer always maps to the
    last teacher layer. E.g. ``(3, 6) -> [2, 4, 6]``, ``(4, 6) -> [1, 3, 4, 6]``.

    Raises:
        ConfigError: ``student_layers`` is not in ``1..teacher_layers``.
    """
    if not 1 <= student_layers <= teacher_layers:
        raise ConfigError(f"a student needs 1 to {teacher_layers} layers to map onto a {teacher_layers}-layer "
                          f"teacher; got {student_layers}")
    return [m * teacher_layers // student_layers for m in range(1, student_layers + 1)]


def masked_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the real tokens of a batch.

    Args:
        student: ``(B, L, D)``, already projected to the teacher's width.
        teacher: ``(B, L, D)``.
        mask: ``(B, L)``, 1 for tokens, 0 for padding.

    Returns:
        Scalar: the mean over real tokens and the ``D`` features of the squared difference.
    """
    if student.shape != teacher.shape:
        raise ShapeError(f"student states {tuple(student.shape)} and teacher states {tuple(teacher.shape)} differ; "
                         "project the student to the teacher's width first")
    weight = mask.to(student.dtype).unsqueeze(-1)  # (B, L, 1)
    squared = (student - teacher).pow(2) * weight  # (B, L, D)
    return squared.sum() / (weight.sum() * student.shape[-1]).clamp_min(1.0)


def attention_scores(query: torch.Tensor, key: torch.Tensor, heads: int) -> torch.Tensor:
    """Unnormalised attention ``Q K^T / sqrt(d)`` per head, what TinyBERT distils.

    Args:
        query, key: outputs of a layer's query and key projections, ``(B, L, heads * d)``.
        heads: the layer's number of attention heads.

    Returns:
        ``(B, heads, L, L)``: row ``q``, column ``k`` is how strongly token ``q`` attends to ``k``
        before the softmax (and before the padding mask is added).
    """
    batch, length, width = query.shape
    if width % heads:
        raise ShapeError(f"width {width} is not divisible by {heads} heads")
    q = query.view(batch, length, heads, width // heads).transpose(1, 2)  # (B, h, L, d)
    k = key.view(batch, length, heads, width // heads).transpose(1, 2)  # (B, h, L, d)
    return q @ k.transpose(-1, -2) / (width // heads) ** 0.5  # (B, h, L, L)


def attention_probabilities(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax of :func:`attention_scores` over the real keys: the model's own attention weights.

    Args:
        scores: ``(B, h, L, L)``.
        mask: ``(B, L)``, 1 for tokens.

    Returns:
        ``(B, h, L, L)``, rows summing to 1 over real keys, 0 on padded keys.
    """
    keys = mask[:, None, None, :].bool()  # (B, 1, 1, L)
    return torch.softmax(scores.masked_fill(~keys, torch.finfo(scores.dtype).min), dim=-1)


def align_heads(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Make student and teacher attention maps comparable head by head.

    Equal head counts pair head ``i`` with head ``i`` (TinyBERT). When the teacher's count is a multiple
    of the student's, each student head is compared with the mean of a group of consecutive teacher
    heads (head order is arbitrary, so any fixed grouping is a valid target the student can learn).
    Otherwise both sides are averaged over all heads, a single map per layer.

    Args:
        student: ``(B, hs, L, L)``.
        teacher: ``(B, ht, L, L)``.

    Returns:
        Two tensors ``(B, h, L, L)`` with the same ``h``.
    """
    hs, ht = student.shape[1], teacher.shape[1]
    if hs == ht:
        return student, teacher
    if ht % hs == 0:
        b, _, length, _ = teacher.shape
        return student, teacher.view(b, hs, ht // hs, length, length).mean(dim=2)  # (B, hs, L, L)
    return student.mean(dim=1, keepdim=True), teacher.mean(dim=1, keepdim=True)  # (B, 1, L, L)


def attention_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """TinyBERT's attention loss: MSE between attention maps over real query/key pairs, mean over heads.

    Args:
        student: ``(B, hs, L, L)`` scores or probabilities.
        teacher: ``(B, ht, L, L)``, the same kind; heads are matched by :func:`align_heads`.
        mask: ``(B, L)``, 1 for tokens.

    Returns:
        Scalar loss.
    """
    student, teacher = align_heads(student, teacher)
    if student.shape != teacher.shape:
        raise ShapeError(f"attention maps {tuple(student.shape)} and {tuple(teacher.shape)} differ in batch or length")
    m = mask.to(student.dtype)
    pairs = (m[:, :, None] * m[:, None, :]).unsqueeze(1)  # (B, 1, L, L): real query and real key
    squared = (student - teacher).pow(2) * pairs  # (B, h, L, L)
    return squared.sum() / (pairs.sum() * student.shape[1]).clamp_min(1.0)
