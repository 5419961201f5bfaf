"""Deep mutual learning / codistillation: N peers trained together, each pulled toward the others.

Zhang, Xiang, Hospedales & Lu (2018), "Deep Mutual Learning"; Anil, Pereyra, Passos, Ormandi, Dahl &
Hinton (2018), "Large scale distributed neural network training through online distillation"
(codistillation, the seeds' Algorithm 1). The peers live in one :class:`Cohort` module, so the one
training loop trains, validates and checkpoints them as a single model with a single optimiser.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from modelpress.core.errors import ConfigError, ShapeError
from modelpress.core.options import check_declared, nested, opt
from modelpress.data.base import DataSplits
from modelpress.distill.schemes import build_seeded
from modelpress.models.ensemble import EnsembleModel
from modelpress.train import TrainConfig, TrainResult, train


@dataclass(frozen=True)
class MutualConfig:
    """How to train a cohort.

    Args:
        peers: how many peers to build when :func:`mutual_learning` is given a builder (>= 2).
        temperature: T of the softmaxes compared by the pull term.
        weight: psi's weight, the strength of the pull toward the others (>= 0; 0 trains the peers
            independently, on the same batches).
        burn_in_steps: optimiser steps of plain cross-entropy before the pull starts (the seeds'
            ``n_burn_in``): peers first learn something worth agreeing on; without it, peers pulled
            together from random initialisation agree on their early mistakes. ``None``: one epoch.
        train: the training loop's settings, shared by all peers.
    """

    peers: int = opt(2, "integer", lo=2, help="peers trained together")
    temperature: float = opt(1.0, lo=0, lo_open=True, tunable=True, help="T of the softmaxes the pull compares")
    weight: float = opt(1.0, lo=0, tunable=True, help="strength of each peer's pull toward the others")
    burn_in_steps: int | None = opt(None, "integer", lo=0, optional=True, flag="burn-in", metavar="STEPS",
                                    help="steps of labels only before peers pull (default one epoch; 0 pulls "
                                         "from the start)")
    train: TrainConfig = nested(TrainConfig)

    def __post_init__(self) -> None:
        check_pull_config(self, {"peers": 2} | ({} if self.burn_in_steps is None else {"burn_in_steps": 0}))
        check_declared(self)

    def resolved(self, steps_per_epoch: int) -> MutualConfig:
        """This config with ``burn_in_steps=None`` made explicit: one epoch of ``steps_per_epoch`` steps."""
        return self if self.burn_in_steps is not None else replace(self, burn_in_steps=steps_per_epoch)


def check_pull_config(config, minimum_integers: dict[str, int]) -> None:
    """Validate the settings every peer-pull method shares: ``temperature``, ``weight``, ``train`` and integer counts.

    Raises:
        ConfigError: naming the field and what it must be.
    """
    for name, low in minimum_integers.items():
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{name} must be an integer >= {low}; got {value!r}")
    if not config.temperature > 0:
        raise ConfigError(f"temperature must be positive; got {config.temperature}")
    if not config.weight >= 0 or not math.isfinite(config.weight):
        raise ConfigError(f"weight must be a finite number >= 0; got {config.weight}")
    if not isinstance(config.train, TrainConfig):
        raise ConfigError(f"train must be a TrainConfig; got {type(config.train).__name__}")


class Cohort(EnsembleModel):
    """The peers of mutual learning as one module.

    ``forward(x)`` returns ``log((1/N) sum_i softmax(z_i))``, ``(B, C)``: the cohort's ensemble, so
    validation, early stopping and ``restore_best`` in :func:`~modelpress.train.train` follow the
    ensemble's accuracy (use any single peer on its own after training). ``member_logits(x)`` gives
    every peer's logits ``(N, B, C)`` for the objective.

    Args:
        peers: two or more classifiers with the same number of classes (architectures may differ).
    """

    def __init__(self, peers: Sequence[nn.Module]) -> None:
        super().__init__(peers, combine="probs")

    @property
    def peers(self) -> nn.ModuleList:
        return self.members


def mutual_pull(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``sum_i T^2 KL(pbar_{-i} || q_i)``: each peer pulled toward the others' mean prediction.

    ``q_i = softmax(z_i / T)`` and ``pbar_{-i} = (1/(N-1)) sum_{j != i} softmax(z_j / T)``, the latter
    treated as a constant (detached), as in Algorithm 1 of Anil et al. (2018), where the others'
    predictions are targets. With N = 2 this is Zhang et al.'s (2018) pairwise DML term. ``T^2``
    keeps the gradient's size independent of T (Hinton et al. 2015).

    Args:
        logits: every peer's logits, ``(N, B, C)``, N >= 2.
        temperature: T > 0.

    Returns:
        Scalar, zero exactly when every peer equals the others' average; its gradient reaches
        peer i only through ``q_i``.
    """
    n = logits.shape[0]
    if n < 2:
        raise ShapeError(f"the pull needs at least 2 peers; got logits of {n}")
    log_q = F.log_softmax(logits / temperature, dim=-1)  # (N, B, C)
    log_p = log_q.detach()  # (N, B, C): the others' predictions are targets, not trained through
    total = logits.new_zeros(())
    for i in range(n):
        others = torch.cat([log_p[:i], log_p[i + 1 :]])  # (N-1, B, C)
        log_avg = torch.logsumexp(others, dim=0) - math.log(n - 1)  # (B, C) log of the mean probability
        total = total + F.kl_div(log_q[i], log_avg, reduction="batchmean", log_target=True)
    return total * temperature**2


class MutualObjective(nn.Module):
    """Objective ``(cohort, x, y, idx) -> loss`` of mutual learning.

    ``loss = sum_i [CE(z_i, y) + weight * 1[step >= burn_in_steps] * T^2 KL(pbar_{-i} || q_i)]`` (see
    :func:`mutual_pull`). Summing over peers with one optimiser gives each peer the gradient of its
    own term, since no term depends on another peer's parameters. Unlike Algorithm 1, all peers see
    the same batch and step together (as in Zhang et al.'s DML).

    ``step`` is a buffer counting the calls (one per training step), so ``train`` checkpoints it
    with the objective and a resumed run knows whether burn-in is over.

    Args:
        config: temperature, weight and burn-in.
    """

    def __init__(self, config: MutualConfig) -> None:
        super().__init__()
        self.temperature = config.temperature
        self.weight = config.weight
        # a config whose burn-in is still None (one epoch) was not resolved by mutual_learning: no burn-in
        self.burn_in_steps = config.burn_in_steps or 0
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def forward(self, model: Cohort, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
        logits = model.member_logits(x)  # (N, B, C)
        pulling = self.weight > 0 and int(self.step) >= self.burn_in_steps
        self.step += 1
        loss = sum(F.cross_entropy(z, y) for z in logits)  # each peer also learns from the labels
        if pulling:  # burn-in skips the pull entirely: nothing to compute
            loss = loss + self.weight * mutual_pull(logits, self.temperature)
        return loss


@dataclass
class MutualResult:
    """Trained peers (eval mode), the cohort holding them, and the run's history."""

    peers: list[nn.Module]
    cohort: Cohort
    history: TrainResult


def mutual_learning(
    peers: Sequence[nn.Module] | Callable[[], nn.Module],
    data: DataSplits | DataLoader,
    config: MutualConfig,
    *,
    checkpoint_path: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool | None = None,
) -> MutualResult:
    """Deep mutual learning / codistillation (Zhang et al. 2018; Anil et al. 2018).

    All peers are trained from their current weights, together, in one call of
    :func:`~modelpress.train.train` with :class:`MutualObjective`; validation scores the cohort's
    ensemble.

    Args:
        peers: two or more distinct modules mapping ``(B, *input_shape)`` to logits ``(B, C)``, trained
            in place; or a builder ``() -> nn.Module`` called ``config.peers`` times, the i-th time with the
            global RNG seeded to ``config.train.seed + i``.
        data: :class:`DataSplits` or a DataLoader of ``(x, y[, index])`` batches.
        config: pull strength, temperature, burn-in and training settings.
        checkpoint_path: one checkpoint for the whole cohort (and the objective's step count).
        resume: continue from ``checkpoint_path`` to the same result as an uninterrupted run.
        progress: passed to ``train``.

    Returns:
        A :class:`MutualResult`.

    Raises:
        ConfigError: fewer than two peers, or one module given twice.
        ShapeError: a peer cannot take the inputs, or the peers (or the data) disagree on class count.
    """
    members = _collect_peers(peers, config)
    cohort = Cohort(members)
    _check_peers(cohort, data)
    steps = -(-len(data.y_train) // config.train.batch_size) if isinstance(data, DataSplits) else len(data)
    config = config.resolved(steps)
    history = train(cohort, data, config.train, objective=MutualObjective(config), checkpoint_path=checkpoint_path,
                    resume=resume, progress=progress, description=f"mutual learning ({len(members)} peers)")
    return MutualResult(members, cohort, history)


def _collect_peers(peers, config: MutualConfig) -> list[nn.Module]:
    if callable(peers) and not isinstance(peers, nn.Module):
        return [build_seeded(peers, config.train.seed + i) for i in range(config.peers)]
    if not isinstance(peers, (list, tuple, nn.ModuleList)):
        raise ConfigError(f"peers must be a list of modules or a builder () -> nn.Module; got a {type(peers).__name__}")
    members = list(peers)
    if len(members) < 2:
        raise ConfigError(f"mutual learning needs at least 2 peers; got {len(members)}")
    if len({id(m) for m in members}) != len(members):
        raise ConfigError("the peers must be distinct modules; one was given twice")
    return members


@torch.no_grad()
def _check_peers(cohort: Cohort, data: DataSplits | DataLoader) -> None:
    """Run every peer on a few training inputs and fail early, with a clear message, on a mismatch."""
    if isinstance(data, DataSplits):
        x, num_classes = data.x_train[:8], data.num_classes
    else:
        x, num_classes = next(iter(data))[0][:8], None
    was_training = cohort.training
    cohort.eval()
    try:
        sizes = []
        for i, peer in enumerate(cohort.peers):
            try:
                sizes.append(peer(x).shape[-1])
            except RuntimeError as err:
                raise ShapeError(f"peer {i} cannot take inputs of shape {tuple(x.shape[1:])}: "
                                 f"{str(err).splitlines()[0]}") from None
    finally:
        cohort.train(was_training)
    if len(set(sizes)) != 1:
        raise ShapeError(f"class-count mismatch: the peers predict {sizes} classes; they must agree")
    if num_classes is not None and sizes[0] != num_classes:
        raise ShapeError(f"class-count mismatch: the peers predict {sizes[0]} classes but the data have {num_classes}")
