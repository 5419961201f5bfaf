"""An ensemble of classifiers as one ordinary ``nn.Module``, so it is trained, checkpointed and
measured like any single model (born-again ensembles, mutual-learning cohorts)."""

from __future__ import annotations

from enum import Enum
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from modelpress.core.config import coerce_enum
from modelpress.core.errors import ConfigError, ShapeError


class Combine(str, Enum):
    PROBS = "probs"  # mixture of probabilities: log mean_m softmax(z_m)
    LOGITS = "logits"  # mean of raw logits


def normalized_weights(weights: Sequence[float] | None, members: int) -> torch.Tensor:
    """Member weights ``(M,)`` scaled to sum to 1 (uniform when ``None``).

    Raises:
        ConfigError: a count other than ``members``, a negative or non-finite weight, or all zero.
    """
    if weights is None:
        return torch.full((members,), 1.0 / members)
    if len(weights) != members:
        raise ConfigError(f"{members} ensemble members but {len(weights)} weights")
    w = torch.tensor([float(v) for v in weights], dtype=torch.float32)
    if (w < 0).any() or not w.sum() > 0 or not torch.isfinite(w).all():
        raise ConfigError(f"ensemble weights must be non-negative and not all zero; got {list(weights)}")
    return w / w.sum()


def mixture_log_probs(member_logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``log sum_m w_m softmax(z_m)``: the log of a weighted mixture of the members' probabilities.

    With two members and weights ``(gamma, 1 - gamma)`` this is Geras et al.'s (2016) LSTM/CNN blend
    ``p = gamma p_LSTM + (1 - gamma) p_CNN``. Computed in log space so that a confident member cannot
    underflow to ``log 0``; a zero weight drops its member exactly.

    Args:
        member_logits: ``(M, B, C)``.
        weights: ``(M,)``, non-negative, summing to 1.

    Returns:
        Log-probabilities ``(B, C)`` (their softmax is the mixture itself).
    """
    log_w = torch.log(weights.to(member_logits)).view(-1, 1, 1)  # (M, 1, 1); log 0 = -inf drops a member
    return torch.logsumexp(log_w + F.log_softmax(member_logits, dim=-1), dim=0)  # (B, C)


class EnsembleModel(nn.Module):
    """Ensemble of classifiers mapping ``(B, *input_shape)`` to logits ``(B, C)``, uniform unless weighted.

    ``combine="probs"`` returns ``log((1/M) sum_m softmax(z_m))``, the log of the mixture the
    ensembles of Hinton et al. (2015) and Furlanello et al. (2018, "Born-Again Neural Networks",
    their Ens*k columns) average; its argmax is the ensemble's vote and its softmax the mixture
    itself, so ``modelpress.measure`` scores it like any classifier. ``combine="logits"`` returns
    ``(1/M) sum_m z_m`` (a geometric mean of the members' probabilities, up to normalisation).
    ``weights`` replace ``1/M`` by ``w_m / sum w`` in either (:func:`mixture_log_probs`): Geras et al.'s
    blend ``gamma p_LSTM + (1 - gamma) p_CNN`` is ``EnsembleModel([lstm, cnn], weights=[gamma, 1 - gamma])``.

    Members are held in an ``nn.ModuleList``, so ``.eval()``, ``state_dict()`` and the optimiser of
    :func:`modelpress.train.train` reach all of them.

    Args:
        members: one or more classifiers that predict the same number of classes.
        combine: ``"probs"`` (default) or ``"logits"``.
        weights: one non-negative weight per member, normalised to sum to 1; default uniform.

    Raises:
        ConfigError: no members, an unknown ``combine``, or bad ``weights``.
        ShapeError: (at forward) the members disagree on the number of classes.
    """

    def __init__(self, members: Sequence[nn.Module], combine: str | Combine = Combine.PROBS,
                 weights: Sequence[float] | None = None) -> None:
        super().__init__()
        members = list(members)
        if not members:
            raise ConfigError("an ensemble needs at least one member; got an empty list")
        self.combine = coerce_enum(Combine, combine, "combine")
        self.members = nn.ModuleList(members)
        # not persistent: state_dicts (and the files of cohorts saved before weights existed) stay as they were
        self.register_buffer("weights", normalized_weights(weights, len(members)), persistent=False)  # (M,)

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's logits stacked, ``(M, B, C)``.

        Raises:
            ShapeError: the members predict different numbers of classes.
        """
        outputs = [member(x) for member in self.members]  # M x (B, C_m)
        sizes = [out.shape[-1] for out in outputs]
        if len(set(sizes)) != 1:
            raise ShapeError(f"ensemble members disagree on the number of classes: they predict {sizes} "
                             "(in member order); give members built for the same class count")
        return torch.stack(outputs)  # (M, B, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stacked = self.member_logits(x)  # (M, B, C)
        if self.combine is Combine.LOGITS:
            return (self.weights.view(-1, 1, 1) * stacked).sum(0)  # (B, C)
        return mixture_log_probs(stacked, self.weights)  # (B, C)

    def extra_repr(self) -> str:
        return f"combine={self.combine.value}, members={len(self.members)}, weights={[round(float(w), 4) for w in self.weights]}"
