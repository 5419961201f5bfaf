"""1-D k-means for weight sharing (Han et al. 2016, Deep Compression, Sec. 3): pure tensor functions."""

from __future__ import annotations

from enum import Enum

import torch

from modelpress.core.config import coerce_enum
from modelpress.core.errors import ConfigError


class CentroidInit(str, Enum):
    LINEAR = "linear"  # evenly spaced over [min, max]: keeps the rare large weights (best in the paper)
    DENSITY = "density"  # evenly spaced in the CDF: crowds centroids where weights are dense
    RANDOM = "random"  # Forgy: k weights drawn at random


def init_centroids(values: torch.Tensor, k: int, method: CentroidInit | str = CentroidInit.LINEAR,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Initial centroids ``(k,)`` for 1-D ``values`` ``(n,)``.

    Raises:
        ConfigError: ``k < 1`` or an unknown method.
    """
    method = coerce_enum(CentroidInit, method, "centroid init")
    if k < 1:
        raise ConfigError(f"need at least one cluster; got k={k}")
    values = values.detach().float().flatten()
    if method is CentroidInit.LINEAR:
        return torch.linspace(float(values.min()), float(values.max()), k)
    if method is CentroidInit.DENSITY:
        return torch.quantile(values, torch.linspace(0, 1, k + 2)[1:-1]) if values.numel() > 1 else values.repeat(k)
    index = torch.randperm(values.numel(), generator=generator)[:k]
    picked = values[index]
    return torch.cat([picked, picked[:1].repeat(k - picked.numel())]) if picked.numel() < k else picked


def assign(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index ``(n,)`` of the nearest centroid for each value, by binary search on sorted midpoints."""
    order = torch.argsort(centroids)
    sorted_c = centroids[order]
    midpoints = (sorted_c[1:] + sorted_c[:-1]) / 2  # (k-1,)
    return order[torch.bucketize(values, midpoints)]


def kmeans_1d(values: torch.Tensor, k: int, *, init: CentroidInit | str = CentroidInit.LINEAR, iters: int = 50,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's algorithm on scalars: minimise ``sum (w - c[label(w)])^2``.

    Args:
        values: ``(n,)`` the weights to share.
        k: number of clusters (``2**bits``).
        init: centroid initialisation (:class:`CentroidInit`).
        iters: maximum Lloyd iterations (stops early when assignments no longer change).

    Returns:
        ``(centroids (k,), labels (n,) int64)``. An empty cluster keeps its previous centroid.
    """
    values = values.detach().float().flatten()
    centroids = init_centroids(values, k, init, generator)
    labels = assign(values, centroids)
    for _ in range(iters):
        sums = torch.zeros(k).index_add_(0, labels, values)
        counts = torch.zeros(k).index_add_(0, labels, torch.ones_like(values))
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        new_labels = assign(values, centroids)
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
    return centroids, labels
