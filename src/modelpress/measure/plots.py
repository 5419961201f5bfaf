"""Figures for reports (PNG, via matplotlib's non-interactive Agg backend)."""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    return plt


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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_accuracy_vs_rate(curves: Mapping[str, Sequence[tuple[float, float]]], path: str | os.PathLike[str], *,
                          reference_accuracy: float | None = None, title: str = "") -> None:
    """Han et al.'s Figure 6: accuracy loss against compression rate, one line per method.

    Args:
        curves: label -> ``[(compression rate, accuracy), ...]``.
        reference_accuracy: drawn as a dashed line (the uncompressed model).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for label, points in curves.items():
        rates, accuracies = zip(*sorted(points)) if points else ((), ())
        ax.plot(rates, [100 * a for a in accuracies], marker="o", label=label)
    if reference_accuracy is not None:
        ax.axhline(100 * reference_accuracy, color="gray", linestyle="--", linewidth=0.8, label="uncompressed")
    ax.set_xscale("log")
    ax.set_xlabel("compression rate (x, log scale)")
    ax.set_ylabel("test accuracy (%)")
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
