"""When to prune: one shot, iterative prune -> retrain, gradual (Zhu & Gupta), and lottery tickets.

All retraining goes through :func:`modelpress.train.train`; gradual pruning is a callback of it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import torch
from torch import nn

from modelpress.core.errors import ConfigError
from modelpress.prune.magnitude import LayerFilter, PruneConfig, SparsityReport, is_pruned, prune_
from modelpress.prune.scores import polynomial_sparsity
from modelpress.train import TrainConfig, train


class GradualPruning:
    """A :func:`~modelpress.train.train` callback raising sparsity along Zhu & Gupta's cubic schedule.

    Every ``every`` optimizer steps between ``start_step`` and ``end_step`` (and at ``end_step``), the
    selected layers are pruned to ``polynomial_sparsity(step)``; the masks stay in place in between,
    so the network recovers while it loses weights.
    """

    def __init__(self, final_sparsity: float, *, end_step: int, start_step: int = 0, every: int = 100,
                 initial_sparsity: float = 0.0, config: PruneConfig = PruneConfig(),
                 filter_fn: LayerFilter | None = None) -> None:
        if every < 1:
            raise ConfigError(f"every must be at least 1 step; got {every}")
        polynomial_sparsity(start_step, initial=initial_sparsity, final=final_sparsity, start=start_step, end=end_step)
        self.final_sparsity, self.initial_sparsity = final_sparsity, initial_sparsity
        self.start_step, self.end_step, self.every = start_step, end_step, every
        self.config, self.filter_fn = config, filter_fn
        self.history: list[tuple[int, float]] = []
        self.settles_at_step = end_step  # train() picks its best epoch only once the masks are final

    def sparsity_at(self, step: int) -> float:
        return polynomial_sparsity(step, initial=self.initial_sparsity, final=self.final_sparsity,
                                   start=self.start_step, end=self.end_step)

    def on_batch_end(self, step: int, model: nn.Module) -> None:
        due = (step - self.start_step) % self.every == 0 or step == self.end_step
        if self.start_step <= step <= self.end_step and due:
            sparsity = self.sparsity_at(step)
            prune_(model, replace(self.config, sparsity=sparsity), filter_fn=self.filter_fn)
            self.history.append((step, sparsity))


def iterative_prune(model: nn.Module, data, sparsities: Sequence[float], retrain: TrainConfig, *,
                    config: PruneConfig = PruneConfig(), filter_fn: LayerFilter | None = None,
                    progress: bool | None = None) -> list[SparsityReport]:
    """Han et al.'s loop: prune to each sparsity in turn, retraining with the masks fixed after each.

    Args:
        model: a trained model, pruned in place.
        data: :class:`~modelpress.data.DataSplits` or a DataLoader.
        sparsities: increasing targets, e.g. ``[0.5, 0.75, 0.9]``.
        retrain: training settings of each retraining phase.

    Returns:
        The sparsity report after each round.
    """
    if list(sparsities) != sorted(sparsities):
        raise ConfigError(f"sparsities must increase; got {list(sparsities)}")
    reports = []
    for sparsity in sparsities:
        report = prune_(model, replace(config, sparsity=sparsity), filter_fn=filter_fn)
        train(model, data, retrain, progress=progress, description=f"retrain at {sparsity:.0%} sparsity")
        reports.append(report)
    return reports


def capture_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's effective weights, to rewind to later (at initialisation, or after k epochs)."""
    state = {}
    for name, tensor in model.state_dict().items():
        if name.endswith("_mask"):
            continue
        state[name.removesuffix("_orig")] = tensor.detach().clone()
    return state


@torch.no_grad()
def rewind_(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Reset every parameter and buffer to ``state`` (from :func:`capture_state`), keeping the masks.

    Frankle & Carbin (2019): the surviving weights, reset to their initial values and retrained with
    the mask fixed, train to the accuracy of the dense network ("winning tickets").
    """
    modules = dict(model.named_modules())
    for name, value in state.items():
        owner_name, _, attr = name.rpartition(".")
        owner = modules[owner_name]
        target_attr = f"{attr}_orig" if attr == "weight" and is_pruned(owner) else attr
        getattr(owner, target_attr).copy_(value)


def lottery_ticket(model: nn.Module, data, train_config: TrainConfig, rewind_state: dict[str, torch.Tensor],
                   sparsities: Sequence[float], *, config: PruneConfig = PruneConfig(),
                   filter_fn: LayerFilter | None = None, progress: bool | None = None) -> list[SparsityReport]:
    """Iterative magnitude pruning with rewinding: train, prune to the next sparsity, rewind, repeat;
    then train the final ticket. ``model`` must hold the weights of ``rewind_state`` on entry.

    Returns:
        The sparsity report after each pruning round; ``model`` ends as the trained ticket.
    """
    reports = []
    for sparsity in sparsities:
        train(model, data, train_config, progress=progress, description="lottery ticket round")
        reports.append(prune_(model, replace(config, sparsity=sparsity), filter_fn=filter_fn))
        rewind_(model, rewind_state)
    train(model, data, train_config, progress=progress, description="lottery ticket")
    return reports
