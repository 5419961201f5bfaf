"""Gradual pruning towards a per-layer (or global) target inside one retraining run.

Han et al. prune in a few large steps and retrain after each. Zhu & Gupta's cubic schedule instead
raises sparsity a little every few hundred optimizer steps, so the network recovers while it loses
weights; at the high sparsities of Deep Compression's push this costs less accuracy for the same
epochs. :class:`modelpress.prune.GradualPruning` keeps per-layer overrides fixed; this callback
scales the whole :class:`~modelpress.prune.PruneConfig` (global sparsity, Han's ``quality`` and
every per-layer target) by the schedule's fraction, so each layer reaches its own target at the end.
"""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from modelpress.core.errors import ConfigError
from modelpress.prune import PruneConfig, prune_
from modelpress.prune.scores import polynomial_sparsity


def scaled_prune_config(prune: PruneConfig, fraction: float) -> PruneConfig:
    """``prune`` with every target (global, per layer, threshold quality) times ``fraction`` in [0, 1]."""
    return replace(prune, sparsity=prune.sparsity * fraction, quality=prune.quality * fraction,
                   layer_sparsity={name: value * fraction for name, value in prune.layer_sparsity.items()})


class ScaledGradualPruning:
    """A :func:`~modelpress.train.train` callback: at optimizer step ``t`` the targets are scaled by
    ``f(t) = polynomial_sparsity(t, 0 -> 1, start_step -> end_step)`` (Zhu & Gupta's cubic ramp), and
    the model is pruned to them every ``every`` steps and at ``end_step``.

    Masks multiply in (``prune_`` keeps a pruned weight pruned), so sparsity only grows. Magnitude
    pruning measures the *effective* weight, so weights pruned earlier count as the smallest.

    Args:
        prune: the final targets.
        end_step: the optimizer step at which the final targets are reached (steps count from 1).
        start_step: the first pruning step.
        every: steps between pruning updates.
    """

    def __init__(self, prune: PruneConfig, *, end_step: int, start_step: int = 0, every: int = 100) -> None:
        if every < 1:
            raise ConfigError(f"every must be at least 1 step; got {every}")
        if end_step <= start_step:
            raise ConfigError(f"gradual pruning needs end_step > start_step; got {start_step}, {end_step}")
        self.prune, self.start_step, self.end_step, self.every = prune, start_step, end_step, every
        self.settles_at_step = end_step  # train() picks its best epoch only once the masks are final
        self.history: list[tuple[int, float]] = []  # (step, fraction of the final targets)

    def fraction_at(self, step: int) -> float:
        return polynomial_sparsity(step, initial=0.0, final=1.0, start=self.start_step, end=self.end_step)

    def on_batch_end(self, step: int, model: nn.Module) -> None:
        due = (step - self.start_step) % self.every == 0 or step == self.end_step
        if self.start_step <= step <= self.end_step and due:
            fraction = self.fraction_at(step)
            prune_(model, scaled_prune_config(self.prune, fraction))
            self.history.append((step, fraction))
