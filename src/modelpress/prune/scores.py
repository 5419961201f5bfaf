"""Pure tensor functions that decide which weights to keep. No modules, no side effects.

Each returns a float mask of 0s and 1s with the weight's shape (1 = keep), so deciding is separate
from applying, and every criterion is unit-testable on plain tensors.
"""

from __future__ import annotations

import torch

from modelpress.core.errors import ConfigError


def _check_sparsity(sparsity: float) -> None:
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"sparsity must be in [0, 1) (the fraction of weights removed); got {sparsity}")


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep the ``1 - sparsity`` fraction of entries with the largest ``|w|`` (ties broken by position).

    Already-zero entries count as the smallest, so pruning an already-pruned tensor to a higher
    sparsity only removes more: masks compose.

    Args:
        weight: any shape.
        sparsity: fraction of entries to zero, in [0, 1).

    Returns:
        Mask of ``weight``'s shape and dtype.
    """
    _check_sparsity(sparsity)
    n_prune = int(round(sparsity * weight.numel()))
    mask = torch.ones_like(weight)
    if n_prune:
        # stable sort on |w| so equal magnitudes (e.g. many zeros) are resolved the same way every run
        order = torch.sort(weight.detach().abs().flatten(), stable=True).indices
        mask.view(-1)[order[:n_prune]] = 0
    return mask


def threshold_mask(weight: torch.Tensor, quality: float) -> torch.Tensor:
    """Han et al. (2015), "Learning both Weights and Connections": keep ``|w| > quality * std(w)``.

    The standard deviation is that of the surviving (non-zero) entries, so a second pass with the same
    quality prunes relative to what is left, as in their iterative prune-retrain loop.
    """
    if quality < 0:
        raise ConfigError(f"quality must be >= 0 (threshold = quality x std of the layer's weights); got {quality}")
    w = weight.detach()
    alive = w[w != 0]
    if alive.numel() < 2:
        return (w != 0).to(weight.dtype)
    return (w.abs() > quality * alive.std()).to(weight.dtype)


def global_magnitude_masks(weights: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """One magnitude threshold across all tensors: layers with small weights lose more of them.

    Args:
        weights: name -> tensor.
        sparsity: fraction of all entries (summed over tensors) to zero.

    Returns:
        name -> mask.
    """
    _check_sparsity(sparsity)
    flat = torch.cat([w.detach().abs().flatten() for w in weights.values()])
    global_mask = magnitude_mask(flat, sparsity)
    masks, offset = {}, 0
    for name, w in weights.items():
        masks[name] = global_mask[offset : offset + w.numel()].view_as(w).to(w.dtype)
        offset += w.numel()
    return masks


def unit_mask(weight: torch.Tensor, unit_scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Remove whole output units (rows of a Linear weight, filters of a Conv) with the lowest scores.

    Args:
        weight: ``(out, ...)``.
        unit_scores: ``(out,)`` importance per output unit, e.g. how often it is active on a data set.
        sparsity: fraction of units to remove.

    Returns:
        Mask of ``weight``'s shape, constant along every row.
    """
    if unit_scores.shape != weight.shape[:1]:
        raise ConfigError(f"need one score per output unit: weight has {weight.shape[0]} units, got {tuple(unit_scores.shape)} scores")
    keep_units = magnitude_mask(unit_scores.float(), sparsity)  # (out,)
    return keep_units.view(-1, *([1] * (weight.dim() - 1))).expand_as(weight).to(weight.dtype).clone()


def polynomial_sparsity(step: int, *, initial: float, final: float, start: int, end: int, power: float = 3.0) -> float:
    """Zhu & Gupta (2017), "To prune, or not to prune": ``s_t = s_f + (s_i - s_f)(1 - (t - t0)/(t1 - t0))^3``.

    Prunes fast while the network is redundant, then slows down; constant outside ``[start, end]``.
    """
    if end <= start:
        raise ConfigError(f"gradual pruning needs end > start; got start={start}, end={end}")
    progress = min(max((step - start) / (end - start), 0.0), 1.0)
    return final + (initial - final) * (1.0 - progress) ** power
