"""Channel importance for structured pruning: pure tensor functions, and the data passes that feed them.

Every score is "higher = more important"; a group's lowest-scoring channels are removed first.

- ``l1`` / ``l2``: Li et al. (2017), "Pruning Filters for Efficient ConvNets": the norm
  ``s_k = ||W[k]||_p`` of each output filter (Conv) or neuron (Linear) of the producer.
- ``apoz``: Hu et al. (2016), "Network Trimming: A Data-Driven Neuron Pruning Approach towards
  Efficient Deep Architectures": ``APoZ_k = mean over examples and positions of [a_k <= 0]`` of the
  channel's post-ReLU activation; the score is ``1 - APoZ_k`` (mostly-zero channels go first).
- ``taylor``: Molchanov et al. (2017), "Pruning Convolutional Neural Networks for Resource Efficient
  Inference": first-order Taylor estimate of the loss change when a channel is zeroed,
  ``s_k = | sum over batch and positions of a_k * dL/da_k |`` with ``L`` the batch's mean
  cross-entropy, averaged over batches.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import fx, nn

from modelpress.core.errors import ConfigError
from modelpress.data.base import DataSplits
from modelpress.prune.graph import ChannelGroup


def filter_norms(weight: torch.Tensor, p: int) -> torch.Tensor:
    """``||W[k]||_p`` of each output unit of a Conv ``(out, in/groups, *k)`` or Linear ``(out, in)`` weight -> ``(out,)``."""
    return weight.detach().flatten(1).norm(p=p, dim=1)


def zero_fraction(activation: torch.Tensor) -> torch.Tensor:
    """Fraction of entries ``<= 0`` per channel of ``(B, C, *positions)`` -> ``(C,)`` (APoZ after a ReLU)."""
    per_channel = activation.detach().transpose(0, 1).reshape(activation.shape[1], -1)  # (C, B * positions)
    return (per_channel <= 0).float().mean(dim=1)


def taylor_importance(activation: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``|sum over batch and positions of a * dL/da|`` per channel of ``(B, C, *positions)`` -> ``(C,)``."""
    product = (activation.detach() * grad.detach()).transpose(0, 1).reshape(activation.shape[1], -1)  # (C, B * positions)
    return product.sum(dim=1).abs()


def keep_count(channels: int, remove: int, round_to: int = 1, min_channels: int = 1) -> int:
    """How many of ``channels`` survive when ``remove`` are asked to go.

    The survivors are rounded UP to a multiple of ``round_to`` (never above ``channels``: pruning
    removes, it never adds) and never fewer than ``min_channels`` (nor than ``channels``).
    """
    keep = max(channels - remove, min(min_channels, channels))
    keep = min(channels, math.ceil(keep / round_to) * round_to)
    return keep


def keep_indices(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the ``keep`` highest scores, in ascending channel order (ties keep the earlier channel)."""
    order = torch.sort(-scores.float(), stable=True).indices  # (C,) most important first
    return torch.sort(order[:keep]).values


def norm_scores(modules: dict[str, nn.Module], group: ChannelGroup, p: int) -> torch.Tensor:
    """Sum over the group's producers of ``||W[k]||_p``: coupled producers (both sides of a residual add)
    feed the same channel, so each contributes its filter's norm. -> ``(C,)``."""
    return sum(filter_norms(modules[name].weight, p) for name in group.producers)


def activation_points(group: ChannelGroup) -> list[str]:
    """The fx nodes a data criterion measures: the group's ReLU outputs, or, in a group with no
    rectifier (a linear bottleneck), every node of the group."""
    return group.rectified or group.nodes


def batches(data, limit: int, need_labels: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """``(x, y)`` batches from ``data`` until ``limit`` examples are seen.

    ``data``: a :class:`DataSplits` (its train split), a tensor ``x``, a pair ``(x, y)`` of tensors,
    or an iterable of batches (a DataLoader of ``(x, y[, index])`` or of tensors).

    Raises:
        ConfigError: no data, or no labels where the criterion needs them.
    """
    if isinstance(data, DataSplits):
        data = (data.x_train, data.y_train)
    if isinstance(data, torch.Tensor):
        data = (data, None)
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        x, y = data
        data = [(x[i : i + 256], None if y is None else y[i : i + 256]) for i in range(0, min(len(x), limit), 256)]
    seen = 0
    for batch in data:
        x, y = (batch, None) if isinstance(batch, torch.Tensor) else (batch[0], batch[1] if len(batch) > 1 else None)
        if need_labels and y is None:
            raise ConfigError("criterion 'taylor' needs labelled data: pass (x, y), a DataSplits or a loader of (x, y) batches")
        take = min(len(x), limit - seen)
        yield x[:take], None if y is None else y[:take]
        seen += take
        if seen >= limit:
            return
    if seen == 0:
        raise ConfigError("the data for the activation criterion are empty")


def _grads(loss: torch.Tensor, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    grads = torch.autograd.grad(loss, list(values.values()), allow_unused=True)
    return {n: torch.zeros_like(v) if g is None else g for (n, v), g in zip(values.items(), grads)}


class _Recorder(fx.Interpreter):
    """Runs the traced model and keeps the outputs of the named nodes."""

    def __init__(self, graph_module: fx.GraphModule, names: set[str]) -> None:
        super().__init__(graph_module)
        self.names, self.seen = names, {}

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if n.name in self.names:
            self.seen[n.name] = out
        return out


def activation_scores(graph_module: fx.GraphModule, groups: list[ChannelGroup], data, *, taylor: bool,
                      limit: int) -> list[torch.Tensor]:
    """APoZ-based (``taylor=False``) or Taylor scores ``(C,)`` per group, measured in eval mode on ``data``.

    A group measured at several nodes averages (APoZ) or sums (Taylor) over them.
    """
    points = [activation_points(g) for g in groups]
    totals = [torch.zeros(g.channels) for g in groups]
    count = 0
    for x, y in batches(data, limit, need_labels=taylor):
        recorder = _Recorder(graph_module, {n for p in points for n in p})
        with torch.set_grad_enabled(taylor):
            logits = recorder.run(x.detach().requires_grad_(taylor))  # (B, classes)
        values = recorder.seen
        grads = _grads(F.cross_entropy(logits, y), values) if taylor else {}
        for total, names in zip(totals, points):
            if taylor:
                total += sum(taylor_importance(values[n], grads[n]) for n in names)
            else:  # weight each batch by its size so the APoZ is over examples
                total += len(x) * sum(zero_fraction(values[n]) for n in names) / len(names)
        count += 1 if taylor else len(x)
    if taylor:
        return [t / count for t in totals]
    return [1.0 - t / count for t in totals]  # high APoZ = mostly zero = least important
