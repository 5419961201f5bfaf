"""Codistillation across ranks: every process trains its own model, pulled toward the others' predictions.

Anil, Pereyra, Passos, Ormandi, Dahl & Hinton (2018), "Large scale distributed neural network training
through online distillation" (the seeds' Algorithm 1). Launched with ``torchrun --nproc-per-node N``,
rank ``i`` trains model ``theta_i`` (its own initialisation, seed + i; no gradient averaging) on

    CE(y, z_i) + weight * 1[step >= burn_in] * T^2 KL(pbar_{-i} || softmax(z_i / T))

where ``pbar_{-i}`` averages the other ranks' softmaxes on the *same* batch: all ranks iterate the
training split in the same order, and every ``exchange_every`` steps they all-gather their logits
``(B, C)`` (a few kilobytes, against megabytes of gradients for data parallelism). The pull is
:func:`modelpress.distill.mutual.mutual_pull`, the loss of single-process mutual learning.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from modelpress.core.errors import ConfigError
from modelpress.data.base import DataSplits
from modelpress.distill.mutual import check_pull_config, mutual_pull
from modelpress.distill.schemes import build_seeded
from modelpress.distributed.context import init_distributed
from modelpress.distributed.hooks import CommStats
from modelpress.train import TrainConfig, TrainResult, train


@dataclass(frozen=True)
class CodistillConfig:
    """How the ranks teach each other.

    Args:
        temperature: T of the compared softmaxes.
        weight: strength of the pull toward the others (>= 0; 0 trains the ranks independently and
            exchanges nothing).
        burn_in_steps: steps of labels only before the first exchange (the seeds' ``n_burn_in``).
        exchange_every: exchange predictions (and pull) every this many steps after burn-in.
        train: the training loop's settings; ``patience`` must be ``None``, since ranks that stopped at
            different epochs would wait on each other forever.
    """

    temperature: float = 1.0
    weight: float = 1.0
    burn_in_steps: int = 0
    exchange_every: int = 1
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        check_pull_config(self, {"burn_in_steps": 0, "exchange_every": 1})
        if self.train.patience is not None:
            raise ConfigError("codistillation cannot stop early (patience): every rank must take every step")


def gather_logits(logits: torch.Tensor) -> torch.Tensor:
    """Every rank's ``logits`` ``(B, C)`` stacked to ``(W, B, C)`` (no gradient), rank order."""
    parts = [torch.empty_like(logits) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, logits.detach().contiguous())
    return torch.stack(parts)


class CodistillObjective(nn.Module):
    """Objective ``(model, x, y, idx) -> loss`` of one rank (see the module docstring).

    ``step`` is a buffer, so a resumed rank knows whether burn-in is over; ``stats`` counts the bytes
    each exchange sends (``B * C * 4``).

    Args:
        config: temperature, weight, burn-in and exchange interval.
        stats: optional byte counter (one "step" per exchange).
    """

    def __init__(self, config: CodistillConfig, stats: CommStats | None = None) -> None:
        super().__init__()
        self.temperature, self.weight = config.temperature, config.weight
        self.burn_in_steps, self.exchange_every = config.burn_in_steps, config.exchange_every
        self.stats = stats
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def exchanges_at(self, step: int) -> bool:
        """Whether optimiser step ``step`` (0-based) exchanges predictions."""
        return self.weight > 0 and step >= self.burn_in_steps and (step - self.burn_in_steps) % self.exchange_every == 0

    def forward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
        logits = model(x)  # (B, C)
        step = int(self.step)
        self.step += 1
        loss = F.cross_entropy(logits, y)
        if self.exchanges_at(step):
            peers = gather_logits(logits)  # (W, B, C), constants
            rank = dist.get_rank()
            stacked = torch.cat([peers[:rank], logits.unsqueeze(0), peers[rank + 1:]])  # (W, B, C), own row trainable
            # mutual_pull sums every rank's term; only this rank's depends on its parameters
            loss = loss + self.weight * mutual_pull(stacked, self.temperature)
            if self.stats is not None:
                self.stats.add(logits.numel() * logits.element_size(), last_bucket=True)
        return loss


@dataclass
class CodistillResult:
    """This rank's trained model (eval mode), its history, and what the exchanges cost."""

    model: nn.Module
    history: TrainResult
    rank: int
    world_size: int
    exchanges: int
    bytes_per_exchange: float


def codistill(
    model: nn.Module | Callable[[], nn.Module],
    data: DataSplits | DataLoader,
    config: CodistillConfig = CodistillConfig(),
    *,
    checkpoint_path: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool | None = None,
) -> CodistillResult:
    """Codistillation (Anil et al. 2018) with one model per process; call it on every rank.

    Args:
        model: a builder ``() -> nn.Module``, called with the RNG seeded to ``config.train.seed + rank``
            so the ranks start apart; or this rank's module, trained in place. The ranks' models may
            differ in architecture but must predict the same classes.
        data: the same :class:`DataSplits` (or DataLoader, in the same order) on every rank.
        config: pull strength, temperature, burn-in, exchange interval and training settings.
        checkpoint_path: each rank checkpoints to ``PATH.rank{r}``.
        resume: continue from those checkpoints.
        progress: rank 0's progress display (other ranks stay quiet).

    Returns:
        This rank's :class:`CodistillResult`.

    Raises:
        ConfigError: not launched on two or more processes (use mutual learning in one process).
    """
    ctx = init_distributed()
    if ctx is None:
        raise ConfigError("codistillation trains one model per process: launch with torchrun --nproc-per-node N "
                          "(N >= 2); in one process use mutual learning (distill --method mutual)")
    if callable(model) and not isinstance(model, nn.Module):
        model = build_seeded(model, config.train.seed + ctx.rank)
    stats = CommStats()
    objective = CodistillObjective(config, stats)
    ckpt = f"{checkpoint_path}.rank{ctx.rank}" if checkpoint_path is not None else None
    history = train(model, data, config.train, objective=objective, checkpoint_path=ckpt, resume=resume,
                    progress=progress if ctx.is_main else False, data_parallel=False,
                    description=f"codistill rank {ctx.rank}/{ctx.world_size}")
    return CodistillResult(model, history, ctx.rank, ctx.world_size, stats.steps, stats.bytes_per_step)


@torch.no_grad()
def peer_predictions(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Every rank's logits on the same inputs ``x`` ``(N, *input_shape)``, as ``(W, N, C)`` on every rank
    (for agreement between the ranks and the accuracy of their ensemble)."""
    was_training = model.training
    model.eval()
    logits = torch.cat([model(chunk) for chunk in x.split(batch_size)])  # (N, C)
    model.train(was_training)
    return gather_logits(logits)
