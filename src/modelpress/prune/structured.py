"""Structured pruning: remove whole neurons and channels so the model is really smaller and faster.

Unstructured masks (:mod:`modelpress.prune.magnitude`) leave dense tensors full of zeros that a CPU
multiplies all the same. Here the lowest-scoring channels of each channel group (see
:mod:`modelpress.prune.graph`) are cut out of every tensor that holds them: the producers' output
filters, BatchNorm entries, depthwise filters and the consumers' input slices, so every layer keeps
doing dense work, on fewer channels. Scores: :mod:`modelpress.prune.channel_scores`.

Example:
    >>> report = structured_prune(model, StructuredConfig(amount=0.5, criterion="l1"), x[:1])
    >>> train(model, data, TrainConfig(epochs=5, lr=0.01))  # fine-tune what is left
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch
from torch import nn

from modelpress.core.config import coerce_enum
from modelpress.core.errors import ConfigError
from modelpress.core.options import check_declared, opt
from modelpress.measure.metrics import count_flops, count_params
from modelpress.models.surgery import record_surgery
from modelpress.prune import channel_scores as cs
from modelpress.prune.graph import CONVS, NORMS, ChannelGraph, ChannelGroup, trace_channels


class ChannelCriterion(str, Enum):
    L1 = "l1"  # Li et al. 2017: L1 norm of each filter / neuron
    L2 = "l2"  # the same with the L2 norm
    APOZ = "apoz"  # Hu et al. 2016: average percentage of zeros after the ReLU (needs data)
    TAYLOR = "taylor"  # Molchanov et al. 2017: |activation x gradient| (needs labelled data)


@dataclass(frozen=True)
class StructuredConfig:
    """What structured pruning removes.

    Args:
        amount: fraction of each prunable group's channels to remove, in [0, 1).
        criterion: see :class:`ChannelCriterion`.
        layers: producer module names (or their parents, e.g. ``"features"``) whose groups are pruned;
            ``None`` prunes every prunable group. Naming a layer that cannot be pruned is an error
            (one reached through a parent name is skipped with its reason).
        ignore: module names (or parents) whose groups are left alone.
        round_to: keep a multiple of this many channels (SIMD-friendly widths); rounds the survivors up.
        min_channels: never keep fewer channels in a group.
        global_ranking: rank channels of all groups together (scores divided by their group's mean),
            so ``amount`` is the fraction of all channels and redundant layers lose more.
        data_examples: examples the ``apoz`` and ``taylor`` criteria look at.
    """

    amount: float = opt(0.5, lo=0, hi=1, hi_open=True, tunable=True, metavar="FRACTION",
                        help="fraction of every prunable layer's channels/neurons removed")
    criterion: ChannelCriterion = opt(ChannelCriterion.L1, "choice", choices=ChannelCriterion, tunable=True,
                                      help="channel importance: filter norm, average percentage of zeros, "
                                           "or first-order Taylor")
    layers: tuple[str, ...] | None = opt(None, "texts", optional=True, expose=False)
    ignore: tuple[str, ...] = opt((), "texts", expose=False)
    round_to: int = opt(1, "integer", lo=1, expose=False)
    min_channels: int = opt(1, "integer", lo=1, expose=False)
    global_ranking: bool = opt(False, "bool", expose=False)
    data_examples: int = opt(1024, "integer", lo=1, expose=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "criterion", coerce_enum(ChannelCriterion, self.criterion, "criterion"))
        if not 0.0 <= float(self.amount) < 1.0:
            raise ConfigError(f"amount must be in [0, 1) (the fraction of channels removed); got {self.amount!r}")
        for name in ("round_to", "min_channels", "data_examples"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1; got {value!r}")
        for name in ("layers", "ignore"):
            value = getattr(self, name)
            if value is None and name == "layers":
                continue
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{name} must be a list of module names such as ['features.0.0']; got {value!r}")
            object.__setattr__(self, name, tuple(value))
        check_declared(self)

    @property
    def needs_data(self) -> bool:
        """Whether the criterion measures activations (``apoz``, ``taylor``)."""
        return self.criterion in (ChannelCriterion.APOZ, ChannelCriterion.TAYLOR)


@dataclass(frozen=True)
class StructuredReport:
    """What structured pruning changed.

    Attributes:
        layers: one row per changed module: ``{"layer", "group", "dim", "before", "after"}`` where
            ``dim`` is ``out`` (producer), ``in`` (consumer; channels, not flattened features) or
            ``channels`` (BatchNorm, depthwise conv).
        skipped: ``{"group", "reason"}`` for each group left whole.
        params_before, params_after: parameter counts.
        flops_before, flops_after: FLOPs of one example (a multiply-add counts 2).
    """

    layers: tuple[dict, ...]
    skipped: tuple[dict, ...]
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int

    @property
    def params_ratio(self) -> float:
        """``params_after / params_before``."""
        return self.params_after / max(self.params_before, 1)

    @property
    def flops_ratio(self) -> float:
        """``flops_after / flops_before``."""
        return self.flops_after / max(self.flops_before, 1)

    def to_json(self) -> dict:
        """The report as plain JSON-ready data."""
        return {"layers": [dict(r) for r in self.layers], "skipped": [dict(r) for r in self.skipped],
                "params_before": self.params_before, "params_after": self.params_after,
                "flops_before": self.flops_before, "flops_after": self.flops_after}


def structured_prune(model: nn.Module, config: StructuredConfig, example_input: torch.Tensor, data=None) -> StructuredReport:
    """Remove the least important channels of every selected group, in place, fixing every layer that holds them.

    The model stays the same ``nn.Module``; its layers get smaller weights (and updated
    ``out_channels`` / ``in_features`` / ``num_features`` / ``groups``). The change is recorded with
    :func:`modelpress.models.surgery.record_surgery` so the model saves and loads. Fine-tune it
    afterwards with :func:`modelpress.train.train`.

    Args:
        model: an fx-traceable module of Conv, Linear, BatchNorm, activations, pooling and adds.
        config: how much and by which criterion.
        example_input: ``(B, *input_shape)``, one run to learn the shapes (and FLOPs).
        data: for ``apoz`` / ``taylor``: a :class:`DataSplits`, a tensor, ``(x, y)`` or a loader.

    Returns:
        A :class:`StructuredReport`.

    Raises:
        ConfigError: the model cannot be traced, still carries masks or weight sharing from another method,
            a name in ``layers`` / ``ignore`` is unknown or names a group that cannot be pruned, or
            the criterion needs data that were not given.
        ShapeError: ``example_input`` does not fit the model.
    """
    _check_plain(model)
    if config.needs_data and data is None:
        raise ConfigError(f"criterion {config.criterion.value!r} measures activations: pass data (a DataSplits, x or (x, y))")
    graph = trace_channels(model, example_input)
    selected, skipped = _select(graph, config, model)
    scores = _scores(model, graph, selected, config, data)
    keeps = _plan(selected, scores, config)
    input_shape = tuple(example_input.shape[1:])
    params_before, flops_before = count_params(model), count_flops(model, input_shape)
    modules = dict(model.named_modules())
    rows = [row for group, keep in zip(selected, keeps) if len(keep) < group.channels
            for row in _shrink_group_(modules, group, keep)]
    if rows:
        record_surgery(model, "resize", shapes={r["layer"]: _shape_of(modules[r["layer"]]) for r in rows})
    return StructuredReport(tuple(rows), tuple(skipped), params_before, count_params(model),
                            flops_before, count_flops(model, input_shape))


def _check_plain(model: nn.Module) -> None:
    for name, module in model.named_modules():
        if any(hasattr(module, attr) for attr in ("weight_orig", "weight_centroids", "weight_latent", "parametrizations")):
            raise ConfigError(f"layer {name or type(model).__name__} still carries a pruning mask or weight sharing; "
                              "make it permanent (prune.make_permanent_ / the quantizer's finalize) before structured pruning")


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in patterns)


def _select(graph: ChannelGraph, config: StructuredConfig, model: nn.Module) -> tuple[list[ChannelGroup], list[dict]]:
    """The groups to prune, and those left whole with the reason why."""
    names = {n for n, _ in model.named_modules() if n}
    for field, patterns in (("layers", config.layers or ()), ("ignore", config.ignore)):
        unknown = [p for p in patterns if not any(_matches(n, (p,)) for n in names)]
        if unknown:
            producers = sorted(n for g in graph.groups for n in g.producers)
            raise ConfigError(f"{field} names unknown modules {unknown}; the model's Conv/Linear layers are {producers}")
    selected, skipped = [], []
    for group in (g for g in graph.groups if g.producers):
        wanted = config.layers is None or any(_matches(p, config.layers) for p in group.producers)
        named = sorted(set(group.producers) & set(config.layers or ()))
        if group.reasons and named:
            # named exactly (not just through a parent such as "classifier"): the user must hear why not
            raise ConfigError(f"layer {named[0]} cannot be pruned safely: {'; '.join(group.reasons)}")
        reason = "; ".join(group.reasons) or (
            "not named in layers" if not wanted else
            "ignored" if any(_matches(m, config.ignore) for m in group.producers) else "")
        if reason:
            skipped.append({"group": group.name, "reason": reason})
        else:
            selected.append(group)
    return selected, skipped


def _scores(model: nn.Module, graph: ChannelGraph, groups: list[ChannelGroup], config: StructuredConfig, data) -> list[torch.Tensor]:
    """One ``(C,)`` score tensor per group: higher = more important."""
    if config.criterion in (ChannelCriterion.L1, ChannelCriterion.L2):
        modules = dict(model.named_modules())
        return [cs.norm_scores(modules, g, 1 if config.criterion is ChannelCriterion.L1 else 2) for g in groups]
    if not groups:
        return []
    was_training = model.training
    model.eval()  # measure the model as it is used: BatchNorm statistics fixed, no dropout
    try:
        return cs.activation_scores(graph.graph_module, groups, data, taylor=config.criterion is ChannelCriterion.TAYLOR,
                                    limit=config.data_examples)
    finally:
        model.train(was_training)


def _plan(groups: list[ChannelGroup], scores: list[torch.Tensor], config: StructuredConfig) -> list[torch.Tensor]:
    """Indices of the channels each group keeps (ascending)."""
    if config.global_ranking and groups:
        # scores of different layers live on different scales: divide by the group's mean first
        normed = torch.cat([s / s.mean() if s.mean() > 0 else s for s in scores])
        owner = torch.cat([torch.full((len(s),), i) for i, s in enumerate(scores)])
        n_remove = int(round(config.amount * len(normed)))
        lowest = owner[torch.sort(normed, stable=True).indices[:n_remove]]
        removes = [int((lowest == i).sum()) for i in range(len(groups))]
    else:
        removes = [int(round(config.amount * g.channels)) for g in groups]
    return [cs.keep_indices(s, cs.keep_count(g.channels, r, config.round_to, config.min_channels))
            for g, s, r in zip(groups, scores, removes)]


def _take(tensor: torch.Tensor | None, dim: int, index: torch.Tensor):
    if tensor is None:
        return None
    sliced = tensor.detach().index_select(dim, index).clone()
    return nn.Parameter(sliced, requires_grad=tensor.requires_grad) if isinstance(tensor, nn.Parameter) else sliced


@torch.no_grad()
def _shrink_group_(modules: dict[str, nn.Module], group: ChannelGroup, keep: torch.Tensor) -> list[dict]:
    """Cut every tensor of the group down to the ``keep`` channels; one report row per module changed."""
    before, after = group.channels, len(keep)
    rows = []
    for name in group.producers + group.carriers:
        m = modules[name]
        m.weight, m.bias = _take(m.weight, 0, keep), _take(m.bias, 0, keep)
        if isinstance(m, nn.Linear):
            m.out_features = after
        else:
            m.out_channels = after
            if name in group.carriers:  # depthwise: one filter per channel, so groups follow the channels
                m.in_channels = m.groups = after
        rows.append({"layer": name, "group": group.name, "dim": "channels" if name in group.carriers else "out",
                     "before": before, "after": after})
    for name in group.norms:
        m = modules[name]
        m.weight, m.bias = _take(m.weight, 0, keep), _take(m.bias, 0, keep)
        m.running_mean, m.running_var = _take(m.running_mean, 0, keep), _take(m.running_var, 0, keep)
        m.num_features = after
        rows.append({"layer": name, "group": group.name, "dim": "channels", "before": before, "after": after})
    for name, factor in group.consumers:
        m = modules[name]
        # flattened input: channel c is features [c * factor, (c + 1) * factor)
        features = (keep[:, None] * factor + torch.arange(factor)).flatten()  # (after * factor,)
        m.weight = _take(m.weight, 1, features)
        if isinstance(m, nn.Linear):
            m.in_features = after * factor
        else:
            m.in_channels = after
        rows.append({"layer": name, "group": group.name, "dim": "in", "before": before, "after": after})
    return rows


def _shape_of(module: nn.Module) -> dict:
    """The size attributes :func:`replay_resize` needs to rebuild ``module``."""
    if isinstance(module, nn.Linear):
        return {"in_features": module.in_features, "out_features": module.out_features}
    if isinstance(module, CONVS):
        return {"in_channels": module.in_channels, "out_channels": module.out_channels, "groups": module.groups}
    return {"num_features": module.num_features}


@torch.no_grad()
def replay_resize(model: nn.Module, shapes: dict) -> None:
    """Give the named modules of a freshly built model the recorded sizes (placeholder zero weights,
    which the saved state dict then fills). The replay of a ``"resize"`` surgery record.

    Args:
        model: the original architecture (with earlier records already replayed).
        shapes: module name -> ``{"in_channels", "out_channels", "groups"}`` (Conv),
            ``{"in_features", "out_features"}`` (Linear) or ``{"num_features"}`` (BatchNorm).

    Raises:
        ValueError: a record that does not fit the module it names.
    """
    for name, sizes in shapes.items():
        module = model.get_submodule(name)
        if set(sizes) != set(_shape_of(module)) or not isinstance(module, (nn.Linear, *CONVS, *NORMS)):
            raise ValueError(f"recorded sizes {sizes} do not fit layer {name} ({type(module).__name__})")
        for attr, value in sizes.items():
            setattr(module, attr, int(value))
        _reallocate_(module)


def _reallocate_(module: nn.Module) -> None:
    def fresh(old, *shape):
        return None if old is None else nn.Parameter(torch.zeros(*shape, dtype=old.dtype), requires_grad=old.requires_grad)

    if isinstance(module, nn.Linear):
        out, shape = module.out_features, (module.out_features, module.in_features)
    elif isinstance(module, CONVS):
        out, shape = module.out_channels, (module.out_channels, module.in_channels // module.groups, *module.kernel_size)
    else:
        out, shape = module.num_features, (module.num_features,)
        if module.running_mean is not None:
            module.running_mean, module.running_var = torch.zeros(out), torch.ones(out)
    module.weight, module.bias = fresh(module.weight, *shape), fresh(module.bias, out)
