"""Figures of a whole run (PNG, matplotlib Agg): accuracy against size with its Pareto front, and
per-layer sparsity and bit-width bars."""

from __future__ import annotations

import os
from typing import Mapping, Sequence

from modelpress.measure.plots import _pyplot, _save


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: none is at most as large and at least as accurate,
    and strictly better in one of the two.

    Args:
        points: ``(size, accuracy)`` pairs (smaller size and higher accuracy are better).

    Returns:
        The indices on the front, by increasing size.
    """
    front = []
    for i, (size, acc) in enumerate(points):
        dominated = any(s <= size and a >= acc and (s < size or a > acc) for j, (s, a) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


def plot_accuracy_vs_size(points: Sequence[dict], path: str | os.PathLike[str], *, title: str = "") -> list[int]:
    """Test accuracy against file size (log scale), every point labelled, the Pareto front joined.

    Args:
        points: dicts with ``label``, ``bytes``, ``accuracy`` (in [0, 1]) and optionally ``group``
            (points of a group share a colour, e.g. the stages of one trial).
        path: PNG file to write.

    Returns:
        The indices of the points on the Pareto front.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    groups = list(dict.fromkeys(p.get("group", "") for p in points))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for g, group in enumerate(groups):
        members = [p for p in points if p.get("group", "") == group]
        ax.scatter([p["bytes"] for p in members], [100 * p["accuracy"] for p in members], s=28, zorder=3,
                   color=colours[g % len(colours)], label=group or None, alpha=0.85)
    for p in points:
        if p.get("annotate", True):
            ax.annotate(p["label"], (p["bytes"], 100 * p["accuracy"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    front = pareto_front([(p["bytes"], p["accuracy"]) for p in points])
    ax.step([points[i]["bytes"] for i in front], [100 * points[i]["accuracy"] for i in front], where="post",
            color="#cc3311", linewidth=1.2, zorder=2, label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("file size (bytes, log scale)")
    ax.set_ylabel("test accuracy (%)")
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    _save(fig, path)
    return front


def plot_layer_bars(stages: Mapping[str, Sequence[dict]], path: str | os.PathLike[str]) -> None:
    """Per-layer sparsity (%) and bits per stored weight, one bar per stage in each layer's group.

    Args:
        stages: stage label -> rows with ``layer``, ``sparsity`` (fraction of zeros) and ``bits``.
        path: PNG file to write.
    """
    plt = _pyplot()
    layers = list(dict.fromkeys(row["layer"] for rows in stages.values() for row in rows))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6.0, 0.9 * len(layers) * max(len(stages), 1) ** 0.5 + 3), 5.5),
                                      sharex=True)
    width = 0.8 / max(len(stages), 1)
    for s, (label, rows) in enumerate(stages.items()):
        by_layer = {row["layer"]: row for row in rows}
        xs = [i + (s - (len(stages) - 1) / 2) * width for i, name in enumerate(layers) if name in by_layer]
        present = [name for name in layers if name in by_layer]
        top.bar(xs, [100 * by_layer[n]["sparsity"] for n in present], width, label=label)
        bottom.bar(xs, [by_layer[n]["bits"] for n in present], width, label=label)
    top.set_ylabel("sparsity (% zeros)")
    top.set_ylim(0, 100)
    bottom.set_ylabel("bits per weight")
    bottom.set_xticks(range(len(layers)))
    bottom.set_xticklabels(layers, rotation=30, ha="right", fontsize=8)
    top.legend(fontsize=7, ncol=min(len(stages), 4))
    for ax in (top, bottom):
        ax.grid(True, axis="y", alpha=0.3)
    _save(fig, path)
