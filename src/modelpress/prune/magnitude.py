"""Unstructured pruning of any ``nn.Module``: decide masks (``scores``), apply them as a
reparametrization (``torch.nn.utils.prune``: ``weight = weight_orig * weight_mask`` through a forward
pre-hook), retrain with the masks in place, and make them permanent when done.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Callable

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from modelpress.core.config import coerce_enum
from modelpress.core.errors import ConfigError
from modelpress.core.options import check_declared, opt
from modelpress.prune.scores import global_magnitude_masks, magnitude_mask, threshold_mask, unit_mask

LayerFilter = Callable[[nn.Module, str], bool]
PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


class Criterion(str, Enum):
    MAGNITUDE = "magnitude"  # per-layer target sparsity, smallest |w| first
    THRESHOLD = "threshold"  # Han et al.: |w| <= quality x std(w) is removed
    GLOBAL = "global"  # one |w| threshold across all selected layers
    ACTIVATION = "activation"  # whole units that are rarely active on data (needs activation scores)


@dataclass(frozen=True)
class PruneConfig:
    """What to prune and how much.

    Args:
        criterion: see :class:`Criterion`.
        sparsity: fraction of weights removed (per layer, or over all layers for ``global``); for
            ``activation`` the fraction of units removed per layer.
        quality: for ``threshold``: the multiple of each layer's weight std below which weights go.
        layer_sparsity: per-layer overrides ``{"net.1": 0.95}`` (module names), e.g. to spare the first
            layer as Han et al. did for conv1.
    """

    criterion: Criterion = opt(Criterion.MAGNITUDE, "choice", choices=Criterion,
                               help="per-layer (magnitude), Han's threshold, one threshold for all layers (global), "
                                    "or rarely active units (activation)")
    sparsity: float = opt(0.9, lo=0, hi=1, hi_open=True, tunable=True, help="fraction of weights removed")
    quality: float = opt(1.0, lo=0, tunable=True, help="Han et al.'s threshold: remove |w| <= quality x std")
    layer_sparsity: dict = field(default_factory=dict)  # set from Python (module names), not a flag or recipe field

    def __post_init__(self) -> None:
        object.__setattr__(self, "criterion", coerce_enum(Criterion, self.criterion, "criterion"))
        named = {"sparsity": self.sparsity, **{f"layer_sparsity[{k!r}]": v for k, v in self.layer_sparsity.items()}}
        for name, value in named.items():
            if not 0.0 <= float(value) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1); got {value}")
        if self.quality < 0:
            raise ConfigError(f"quality must be >= 0; got {self.quality}")
        check_declared(self)


def prunable_layers(model: nn.Module, filter_fn: LayerFilter | None = None) -> dict[str, nn.Module]:
    """Linear and convolution layers of ``model`` by module name, optionally filtered by ``filter_fn(module, name)``."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, PRUNABLE) and (filter_fn is None or filter_fn(m, name))}


def compute_masks(model: nn.Module, config: PruneConfig, *, filter_fn: LayerFilter | None = None,
                  unit_scores: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Masks for the current (effective) weights of the selected layers; nothing is changed.

    ``unit_scores`` (layer name -> ``(out,)``) is required by the ``activation`` criterion, e.g. from
    :func:`activation_frequency`.
    """
    layers = prunable_layers(model, filter_fn)
    unknown = set(config.layer_sparsity) - set(layers)
    if unknown:
        raise ConfigError(f"layer_sparsity names unknown layers {sorted(unknown)}; prunable layers: {sorted(layers)}")
    weights = {name: effective_weight(m) for name, m in layers.items()}
    if config.criterion is Criterion.GLOBAL:
        return global_magnitude_masks(weights, config.sparsity)
    masks = {}
    for name, w in weights.items():
        sparsity = float(config.layer_sparsity.get(name, config.sparsity))
        if config.criterion is Criterion.THRESHOLD:
            masks[name] = threshold_mask(w, config.quality)
        elif config.criterion is Criterion.ACTIVATION:
            if unit_scores is None or name not in unit_scores:
                raise ConfigError(f"the activation criterion needs unit scores for layer {name!r} (see activation_frequency)")
            masks[name] = unit_mask(w, unit_scores[name], sparsity) * (w != 0)
        else:
            masks[name] = magnitude_mask(w, sparsity)
    return masks


def apply_masks_(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Reparametrize each named layer's weight as ``weight_orig * weight_mask`` (in place).

    Applying again multiplies the new mask into the old one, as ``torch.nn.utils.prune`` does, so a
    weight once pruned stays pruned. The original Parameter object survives (as ``weight_orig``), so
    an optimizer built before pruning keeps working.
    """
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        module = modules[name]
        if mask.shape != module.weight.shape:
            raise ConfigError(f"mask for {name} has shape {tuple(mask.shape)}, weight has {tuple(module.weight.shape)}")
        torch_prune.custom_from_mask(module, "weight", mask.to(module.weight.dtype))


def prune_(model: nn.Module, config: PruneConfig = PruneConfig(), *, filter_fn: LayerFilter | None = None,
           unit_scores: dict[str, torch.Tensor] | None = None) -> "SparsityReport":
    """Prune ``model`` in place by ``config`` and return its per-layer sparsity.

    Example:
        >>> report = prune_(model, PruneConfig(criterion="global", sparsity=0.9))
        >>> report.kept_fraction
        0.1
    """
    apply_masks_(model, compute_masks(model, config, filter_fn=filter_fn, unit_scores=unit_scores))
    return sparsity_report(model, filter_fn)


def is_pruned(module: nn.Module) -> bool:
    return hasattr(module, "weight_mask")


def effective_weight(module: nn.Module) -> torch.Tensor:
    """``weight_orig * weight_mask`` computed now: ``module.weight`` is only refreshed by a forward pass,
    so after an optimizer step or a rewind it can be stale."""
    if is_pruned(module):
        return (module.weight_orig * module.weight_mask).detach()
    return module.weight.detach()


def make_permanent_(model: nn.Module) -> nn.Module:
    """Fold every mask into its weight (``weight = weight_orig * weight_mask``) and drop the hooks.

    The result is an ordinary module with zeros in it: it saves, loads and exports like any other.
    """
    for module in model.modules():
        if is_pruned(module):
            torch_prune.remove(module, "weight")
    return model


@dataclass
class SparsityReport:
    """Per-layer counts: ``rows`` of ``{"layer", "weights", "kept", "kept_percent"}``."""

    rows: list[dict]

    @property
    def total_weights(self) -> int:
        return sum(r["weights"] for r in self.rows)

    @property
    def kept_fraction(self) -> float:
        return sum(r["kept"] for r in self.rows) / max(self.total_weights, 1)


def sparsity_report(model: nn.Module, filter_fn: LayerFilter | None = None) -> SparsityReport:
    """Weights and surviving (non-zero) weights of each prunable layer."""
    rows = []
    for name, module in prunable_layers(model, filter_fn).items():
        w = effective_weight(module)
        kept = int((w != 0).sum())
        rows.append({"layer": name, "weights": w.numel(), "kept": kept, "kept_percent": 100.0 * kept / w.numel()})
    return SparsityReport(rows)


@torch.no_grad()
def activation_frequency(model: nn.Module, x: torch.Tensor, *, filter_fn: LayerFilter | None = None,
                         batch_size: int = 512) -> dict[str, torch.Tensor]:
    """How often each output unit of each prunable layer is positive (i.e. non-zero after a ReLU).

    The neuron-importance criterion of the seeds' pruning notes: units that are almost never active
    on a data set contribute little. Returns layer name -> ``(out_units,)`` frequencies in [0, 1].
    """
    layers = prunable_layers(model, filter_fn)
    counts = {name: None for name in layers}
    total = 0

    def hook(name):
        def record(module, inputs, output):
            active = (output > 0).float()  # (B, out, ...) -> per unit, averaged over positions
            per_unit = active.transpose(0, 1).reshape(active.shape[1], -1).sum(1) / max(active[0, 0].numel(), 1)
            counts[name] = per_unit if counts[name] is None else counts[name] + per_unit
        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in layers.items()]
    was_training = model.training
    model.eval()
    try:
        for i in range(0, x.shape[0], batch_size):
            model(x[i : i + batch_size])
            total += min(batch_size, x.shape[0] - i)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {name: c / max(total, 1) for name, c in counts.items()}
