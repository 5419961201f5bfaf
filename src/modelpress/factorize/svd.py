"""Truncated SVD of a Linear layer into two thinner Linear layers.

Denton et al. 2014 ("Exploiting Linear Structure Within Convolutional Networks for Efficient
Evaluation") and Xue et al. 2013 ("Restructuring of Deep Neural Network Acoustic Models with Singular
Value Decomposition"): a weight ``W`` ``(out, in)`` with SVD ``W = U S V^T`` is replaced by its best
rank-r approximation (Eckart & Young 1936)

    W_r = U_r S_r V_r^T = (U_r S_r^1/2) (S_r^1/2 V_r^T),

i.e. ``Linear(in, r, bias=False)`` with weight ``S_r^1/2 V_r^T`` followed by ``Linear(r, out)`` with
weight ``U_r S_r^1/2`` and the original bias. Multiply-adds per example drop from ``in*out`` to
``r*(in+out)``, so it pays only when ``r < in*out / (in+out)``. Splitting ``S`` evenly keeps both
factors on the same scale, which fine-tuning with one learning rate likes.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from modelpress.core.errors import ConfigError, ShapeError
from modelpress.models.surgery import replace_module

KIND = "svd"


def energy_rank(s: torch.Tensor, energy: float) -> int:
    """The smallest rank whose leading singular values keep ``energy`` of the squared spectrum.

    ``r = min { r >= 1 : sum_{i<r} s_i^2 >= energy * sum_i s_i^2 }`` over ``s`` sorted in descending
    order; by Eckart-Young the rank-r truncation then has relative error
    ``||W - W_r||_F / ||W||_F = sqrt(1 - kept) <= sqrt(1 - energy)``.

    Args:
        s: singular values ``(n,)`` (any order; non-negative).
        energy: fraction in (0, 1] of ``sum s_i^2`` to keep.

    Returns:
        A rank in ``[1, n]`` (1 for an all-zero spectrum).

    Raises:
        ConfigError: ``energy`` outside (0, 1].
        ShapeError: ``s`` is not a non-empty vector.
    """
    if not 0.0 < float(energy) <= 1.0:
        raise ConfigError(f"energy must be in (0, 1]; got {energy!r}")
    if s.dim() != 1 or s.numel() == 0:
        raise ShapeError(f"energy_rank needs a non-empty vector of singular values; got shape {tuple(s.shape)}")
    power = torch.sort(s.detach().double().abs(), descending=True).values ** 2  # (n,)
    kept = torch.cumsum(power, 0)  # kept[r-1] = energy of the leading r values
    total = float(kept[-1])
    if total == 0.0:
        return 1
    # a relative tolerance so that energy = 1 gives the full rank despite rounding in the cumulative sum
    short = kept < float(energy) * total * (1.0 - 1e-12)
    return min(int(short.sum()) + 1, s.numel())


def linear_spectrum(layer: nn.Linear) -> torch.Tensor:
    """Singular values ``(min(out, in),)`` of the layer's weight, descending, float64."""
    return torch.linalg.svdvals(layer.weight.detach().double())


def _check_rank(layer: nn.Module, rank: int) -> int:
    if not isinstance(layer, nn.Linear):
        raise ConfigError(f"SVD factorization applies to nn.Linear layers; got {type(layer).__name__}")
    full = min(layer.in_features, layer.out_features)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= full:
        raise ConfigError(f"rank must be an integer in [1, {full}] for Linear({layer.in_features}, {layer.out_features}); got {rank!r}")
    return rank


def svd_modules(layer: nn.Linear, rank: int) -> nn.Sequential:
    """The two-layer shape of a rank-``rank`` factorization of ``layer``, weights uninitialised (for replay)."""
    rank = _check_rank(layer, rank)
    factory = {"device": layer.weight.device, "dtype": layer.weight.dtype}
    seq = nn.Sequential(
        nn.Linear(layer.in_features, rank, bias=False, **factory),  # (.., in) -> (.., r)
        nn.Linear(rank, layer.out_features, bias=layer.bias is not None, **factory),  # (.., r) -> (.., out)
    )
    seq.factorized_kind = KIND  # marks the block so a second pass does not factorize its parts
    return seq


@torch.no_grad()
def svd_linear(layer: nn.Linear, rank: int) -> nn.Sequential:
    """Replace ``W ~ (U_r S_r^1/2)(S_r^1/2 V_r^T)``: two thinner Linear layers (Denton et al. 2014).

    Args:
        layer: ``nn.Linear(in, out)`` with weight ``(out, in)``.
        rank: r in ``[1, min(in, out)]``; ``min(in, out)`` reproduces the layer exactly (up to rounding).

    Returns:
        ``nn.Sequential(Linear(in, r, bias=False), Linear(r, out))`` mapping ``(..., in) -> (..., out)``;
        the second layer carries the original bias.

    Raises:
        ConfigError: ``layer`` is not a Linear layer, or ``rank`` is out of range.
    """
    seq = svd_modules(layer, rank)
    u, s, vh = torch.linalg.svd(layer.weight.double(), full_matrices=False)  # (out, k), (k,), (k, in)
    root = s[:rank].sqrt()
    seq[0].weight.copy_(root[:, None] * vh[:rank])  # (r, in) = S^1/2 V^T
    seq[1].weight.copy_(u[:, :rank] * root[None, :])  # (out, r) = U S^1/2
    if layer.bias is not None:
        seq[1].bias.copy_(layer.bias)
    return seq


def svd_weight(seq: nn.Sequential) -> torch.Tensor:
    """The ``(out, in)`` weight the two factors compose to: ``W_r = W_2 W_1``."""
    return (seq[1].weight.detach().double() @ seq[0].weight.detach().double())


def svd_cost(layer: nn.Linear, rank: int, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """Parameters and FLOPs (a multiply-add counts 2, as in ``measure.count_flops``) of the factorized layer.

    ``input_shape`` is one example's input to the layer, ``(..., in)``; every leading position is one
    matrix-vector product: FLOPs ``= 2 r (in + out) * positions``.
    """
    positions = math.prod(input_shape[:-1])
    params = rank * (layer.in_features + layer.out_features) + (layer.out_features if layer.bias is not None else 0)
    return params, 2 * rank * (layer.in_features + layer.out_features) * positions


def replay_svd(model: nn.Module, layer: str, rank: int) -> None:
    """Surgery replay: give ``model``'s Linear ``layer`` the rank-``rank`` two-layer shape (placeholder weights)."""
    replace_module(model, layer, svd_modules(model.get_submodule(layer), int(rank)))
