"""Pruning: magnitude (per layer, threshold, global), activation-based units, and schedules
(one-shot, iterative, gradual, lottery-ticket rewinding), as masks over ordinary modules; and
structured pruning, which removes whole channels and neurons so the model really shrinks."""

from modelpress.prune.magnitude import (
    Criterion,
    PruneConfig,
    SparsityReport,
    activation_frequency,
    apply_masks_,
    compute_masks,
    effective_weight,
    is_pruned,
    make_permanent_,
    prunable_layers,
    prune_,
    sparsity_report,
)
from modelpress.prune.graph import ChannelGraph, ChannelGroup, trace_channels
from modelpress.prune.sensitivity import SensitivityScan, allocate_sparsity, layer_sensitivity, sensitivity_sparsity
from modelpress.prune.schedules import GradualPruning, capture_state, iterative_prune, lottery_ticket, rewind_
from modelpress.prune.scores import global_magnitude_masks, magnitude_mask, polynomial_sparsity, threshold_mask, unit_mask
from modelpress.prune.structured import ChannelCriterion, StructuredConfig, StructuredReport, replay_resize, structured_prune

__all__ = [
    "ChannelCriterion",
    "ChannelGraph",
    "ChannelGroup",
    "Criterion",
    "GradualPruning",
    "PruneConfig",
    "SensitivityScan",
    "SparsityReport",
    "activation_frequency",
    "allocate_sparsity",
    "apply_masks_",
    "capture_state",
    "compute_masks",
    "effective_weight",
    "global_magnitude_masks",
    "is_pruned",
    "iterative_prune",
    "layer_sensitivity",
    "lottery_ticket",
    "magnitude_mask",
    "make_permanent_",
    "polynomial_sparsity",
    "prunable_layers",
    "prune_",
    "replay_resize",
    "rewind_",
    "sensitivity_sparsity",
    "sparsity_report",
    "StructuredConfig",
    "StructuredReport",
    "structured_prune",
    "threshold_mask",
    "trace_channels",
    "unit_mask",
]
