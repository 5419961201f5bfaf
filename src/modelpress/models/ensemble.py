"""An ensemble of classifiers as one ordinary ``nn.Module``, so it is trained, checkpointed and
measured like any single model (born-again ensembles, mutual-learning cohorts)."""

from __future__ import annotations

import math
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


class EnsembleModel(nn.Module):
    """Uniform ensemble of classifiers mapping ``(B, *input_shape)`` to logits ``(B, C)``.

    ``combine="probs"`` returns ``log((1/M) sum_m softmax(z_m))``, the log of the mixture the
    ensembles of Hinton et al. (2015) and Furlanello et al. (2018, "Born-Again Neural Networks",
    their Ens*k columns) average; its argmax is the ensemble's vote and its softmax the mixture
    itself, so ``modelpress.measure`` scores it like any classifier. ``combine="logits"`` returns
    ``(1/M) sum_m z_m`` (a geometric mean of the members' probabilities, up to normalisation).

    Members are held in an ``nn.ModuleList``, so ``.eval()``, ``state_dict()`` and the optimiser of
    :func:`modelpress.train.train` reach all of them.

    Args:
        members: one or more classifiers that predict the same number of classes.
        combine: ``"probs"`` (default) or ``"logits"``.

    Raises:
        ConfigError: no members, or an unknown ``combine``.
        ShapeError: (at forward) the members disagree on the number of classes.
    """

    def __init__(self, members: Sequence[nn.Module], combine: str | Combine = Combine.PROBS) -> None:
        super().__init__()
        members = list(members)
        if not members:
            raise ConfigError("an ensemble needs at least one member; got an empty list")
        self.combine = coerce_enum(Combine, combine, "combine")
        self.members = nn.ModuleList(members)

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
            return stacked.mean(0)  # (B, C)
        # log mean_m softmax(z_m), in log space so confident members cannot underflow to log(0)
        return torch.logsumexp(F.log_softmax(stacked, dim=-1), dim=0) - math.log(len(self.members))  # (B, C)

    def extra_repr(self) -> str:
        return f"combine={self.combine.value}, members={len(self.members)}"
