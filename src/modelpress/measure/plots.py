"""Figures for reports (PNG, via matplotlib's non-interactive Agg backend)."""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

from modelpress.core.io import atomic_write


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike[str]) -> None:
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    _pyplot().close(fig)


def plot_weight_histograms(layers: Mapping[str, tuple[np.ndarray, np.ndarray | None]], path: str | os.PathLike[str]) -> None:
    """Han et al.'s Figures 3 and 5: the distribution of each layer's non-zero weights, centroids marked.

    Args:
        layers: layer name -> ``(weights, centroids or None)``.
        path: PNG file to write.
    """
    plt = _pyplot()
    n = max(len(layers), 1)
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3), squeeze=False)
    for ax, (name, (weights, centroids)) in zip(axes[0], layers.items()):
        values = np.asarray(weights).ravel()
        values = values[values != 0]
        ax.hist(values, bins=100, color="#4477aa")
        if centroids is not None:
            for c in np.asarray(centroids).ravel():
                ax.axvline(float(c), color="#cc3311", linewidth=0.6)
        ax.set_title(f"{name} ({values.size:,} non-zero)", fontsize=9)
        ax.set_xlabel("weight value")
    axes[0][0].set_ylabel("count")
    _save(fig, path)


def plot_accuracy_vs_rate(curves: Mapping[str, Sequence[tuple[float, float]]], path: str | os.PathLike[str], *,
                          reference_accuracy: float, title: str = "", lowest_change: float = -6.0) -> None:
    """Han et al.'s Figure 6: accuracy change against compression rate, one line per method.

    Args:
        curves: label -> ``[(compression rate, accuracy in [0, 1]), ...]``.
        reference_accuracy: the uncompressed model's accuracy; the y axis is the change from it in
            percentage points, cut at ``lowest_change`` so that a method that collapses leaves the
            plot instead of squashing the interesting range (as in the paper's figure).
    """
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    all_rates = []
    for label, points in curves.items():
        rates, accuracies = zip(*sorted(points)) if points else ((), ())
        all_rates += rates
        ax.plot(rates, [100 * (a - reference_accuracy) for a in accuracies], marker="o", label=label)
    ax.axhline(0.0, color="gray", linestyle="--", linewidth=0.8, label="uncompressed")
    ax.set_xscale("log")
    ticks = [t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500) if all_rates and min(all_rates) / 2 <= t <= max(all_rates) * 2]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_ylim(bottom=lowest_change, top=1.0)
    ax.set_xlabel("compression rate (x, log scale)")
    ax.set_ylabel("accuracy change (points)")
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    _save(fig, path)
