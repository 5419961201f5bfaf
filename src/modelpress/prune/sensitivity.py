"""Per-layer sensitivity to pruning, and a per-layer sparsity allocation derived from it.

Han et al. chose each layer's sparsity from a sensitivity analysis: prune one layer at a time,
without retraining, and see how fast the error grows. Per-layer targets tuned on MNIST need not
suit another data set (on Fashion-MNIST, LeNet-5's conv2 breaks down at MNIST's 88%);
:func:`allocate_sparsity` turns a scan into targets for a given number of kept weights, taking
weights first from the layers whose error grows least.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from modelpress.core.errors import ConfigError
from modelpress.measure.metrics import evaluate_accuracy
from modelpress.prune.magnitude import effective_weight, is_pruned, prunable_layers
from modelpress.prune.scores import magnitude_mask

# coarse where little changes, fine near 1 where one point of a big layer is thousands of weights
DEFAULT_GRID = tuple(round(0.05 * k, 2) for k in range(1, 18)) + tuple(round(0.86 + 0.01 * k, 2) for k in range(14))


@dataclass(frozen=True)
class SensitivityScan:
    """Error (%) after pruning one layer alone to each sparsity, the others untouched.

    Attributes:
        reference_error: error (%) of the unpruned model on the same examples.
        layers: layer name -> number of weights.
        errors: layer name -> {sparsity: error (%)}.
    """

    reference_error: float
    layers: dict[str, int]
    errors: dict[str, dict[float, float]]

    def rows(self) -> list[dict]:
        """One row per layer: its size and the error at each sparsity of the grid (for a table)."""
        return [{"layer": name, "weights": n, **{f"{s:g}": self.errors[name][s] for s in self.errors[name]}}
                for name, n in self.layers.items()]


@torch.no_grad()
def layer_sensitivity(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                      sparsities: Sequence[float] = DEFAULT_GRID, layers: Sequence[str] | None = None,
                      batch_size: int = 1024) -> SensitivityScan:
    """Prune each layer alone by weight magnitude (no retraining) and measure the error.

    Args:
        model: a trained model; left as it was (each layer's weight is restored after its scan).
        x: held-out inputs ``(N, *input_shape)`` (validation data: the choice must not see the test set).
        y: labels ``(N,)``.
        sparsities: fractions of each layer's weights to remove, each in [0, 1).
        layers: module names; default every Linear/Conv layer.

    Raises:
        ConfigError: a sparsity outside [0, 1), an unknown layer, or a model that is already masked.
    """
    available = prunable_layers(model)
    names = list(layers) if layers is not None else list(available)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ConfigError(f"no prunable layer named {unknown}; the model has {list(available)}")
    grid = sorted({float(s) for s in sparsities})
    if not grid or not all(0.0 <= s < 1.0 for s in grid):
        raise ConfigError(f"sparsities must be fractions in [0, 1); got {list(sparsities)}")
    if any(is_pruned(available[n]) for n in names):
        raise ConfigError("scan an ordinary model: make its pruning masks permanent first (make_permanent_)")

    def error() -> float:
        return 100.0 * (1.0 - evaluate_accuracy(model, x, y, batch_size=batch_size).accuracy)

    reference = error()
    errors: dict[str, dict[float, float]] = {}
    for name in names:
        weight = available[name].weight
        original = effective_weight(available[name]).clone()
        errors[name] = {}
        try:
            for s in grid:
                weight.copy_(original * magnitude_mask(original, s))
                errors[name][s] = error()
        finally:
            weight.copy_(original)
    return SensitivityScan(reference, {n: available[n].weight.numel() for n in names}, errors)


def allocate_sparsity(scan: SensitivityScan, kept_weights: int) -> dict[str, float]:
    """Per-layer sparsities from the scan that keep at most ``kept_weights`` weights in all.

    Treats the one-layer error increases (interpolated linearly between the scanned sparsities) as
    additive and minimises their sum under the budget by
    Lagrangian relaxation: for a price ``lam`` per kept weight each layer independently takes the
    sparsity on its grid minimising ``error increase + lam * weights kept``; ``lam`` is bisected to the
    smallest price that meets the budget. A weight is thus kept where it buys the most accuracy: a
    small, sensitive layer (LeNet-5's conv1, 500 weights) stays dense, a large tolerant one (its
    400,000-weight fc1) is pruned hard.

    Args:
        scan: from :func:`layer_sensitivity`.
        kept_weights: the budget of non-zero weights over the scanned layers.

    Returns:
        layer name -> sparsity (0.0 for a layer left dense), ready for ``PruneConfig(layer_sparsity=...)``.

    Raises:
        ConfigError: the budget is below what the grid's highest sparsities keep.
    """
    # between the scanned sparsities the error is interpolated linearly, on a grid fine enough that one
    # step of even a large layer is a small part of the budget
    options = {}
    for name, curve in scan.errors.items():
        known = sorted({0.0: scan.reference_error, **curve}.items())
        fine = np.union1d([s for s, _ in known], np.arange(0.0, known[-1][0], 0.0025))
        options[name] = dict(zip(fine.round(4).tolist(), np.interp(fine, *zip(*known)).tolist()))

    def at(price: float) -> dict[str, float]:
        chosen = {}
        for name, errors in options.items():
            chosen[name] = min(errors, key=lambda s: (errors[s] - scan.reference_error
                                                      + price * scan.layers[name] * (1.0 - s), -s))
        return chosen

    def kept(sparsity: dict[str, float]) -> int:
        return sum(round(scan.layers[n] * (1.0 - s)) for n, s in sparsity.items())

    if sum(scan.layers.values()) <= kept_weights:
        return {name: 0.0 for name in scan.errors}
    sparsest = {name: max(curve) for name, curve in scan.errors.items()}
    if kept(sparsest) > kept_weights:
        raise ConfigError(f"even the scan's highest sparsities keep {kept(sparsest):,} weights, above the "
                          f"budget of {kept_weights:,}; scan sparsities closer to 1")
    low, high = 0.0, 1.0
    while kept(at(high)) > kept_weights:  # an error of 100 points outweighs every weight at price 100 / n
        high *= 2.0
    for _ in range(100):
        middle = (low + high) / 2
        if kept(at(middle)) > kept_weights:
            low = middle
        else:
            high = middle
    return _fill(at(high), options, scan.layers, kept_weights - kept(at(high)))


def _fill(chosen: dict[str, float], options: dict[str, dict[float, float]], sizes: dict[str, int],
          spare: int) -> dict[str, float]:
    """Spend the weights the price left over: at the critical price a whole linear segment of the error
    curve flips at once, so step the layers back, best error reduction per weight first, while it fits."""
    chosen = dict(chosen)
    while True:
        best, best_ratio = None, 0.0
        for name, s in chosen.items():
            lower = [t for t in options[name] if t < s]
            if not lower:
                continue
            step = max(lower)
            extra = round(sizes[name] * (1.0 - step)) - round(sizes[name] * (1.0 - s))
            gain = options[name][s] - options[name][step]
            if 0 < extra <= spare and gain > 0 and gain / extra > best_ratio:
                best, best_ratio = (name, step, extra), gain / extra
        if best is None:
            return chosen
        name, step, extra = best
        chosen[name] = step
        spare -= extra


def sensitivity_sparsity(model: nn.Module, x: torch.Tensor, y: torch.Tensor, sparsity: float) -> dict[str, float]:
    """Per-layer sparsities that remove ``sparsity`` of all prunable weights together, spread by a scan.

    :func:`layer_sensitivity` on ``(x, y)`` (held-out data), then :func:`allocate_sparsity` with a
    budget of ``1 - sparsity`` of the weights of every Linear/Conv layer.

    Raises:
        ConfigError: no examples to scan on, or ``sparsity`` outside [0, 1).
    """
    if x.shape[0] == 0:
        raise ConfigError("the sensitivity scan needs held-out examples, and the validation split is empty")
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"sparsity must be in [0, 1); got {sparsity}")
    total = sum(m.weight.numel() for m in prunable_layers(model).values())
    return allocate_sparsity(layer_sensitivity(model, x, y), round((1.0 - sparsity) * total))
