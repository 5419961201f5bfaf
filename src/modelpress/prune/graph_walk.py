"""The walk behind :func:`modelpress.prune.graph.trace_channels`: one pass over a shape-propagated fx
graph that gives every tensor a channel space (its dim 1), merges the spaces that must shrink together
(union-find) and records, per space, its producers, BatchNorms, depthwise carriers, consumers and the
reasons it must stay whole. Which ops carry, tie or block channels: see the tables below."""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import TensorMetadata

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
RECTIFIER_MODULES = (nn.ReLU, nn.ReLU6)
# element-wise per entry (never mixing channels): softmax and PReLU with per-channel slopes are not
ELEMENTWISE_MODULES = RECTIFIER_MODULES + (
    nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh,
    nn.Mish, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
)
POOL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
)
RECTIFIER_CALLS = {F.relu, F.relu6, torch.relu, torch.relu_, "relu", "relu_"}
ELEMENTWISE_CALLS = RECTIFIER_CALLS | {
    F.leaky_relu, F.elu, F.gelu, F.silu, F.hardswish, F.hardsigmoid, F.hardtanh, F.mish, F.dropout, F.dropout2d,
    torch.sigmoid, torch.tanh, F.sigmoid, F.tanh, "sigmoid", "tanh", "contiguous", "clone", "detach", "float", "to",
}
POOL_CALLS = {
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
}
BINARY_CALLS = {operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, torch.add, torch.sub,
                torch.mul, torch.div, "add", "sub", "mul", "div", "add_", "mul_"}
FLATTEN_CALLS = {torch.flatten, torch.reshape, "flatten", "view", "reshape"}
REDUCE_CALLS = {torch.mean, torch.sum, torch.amax, "mean", "sum", "amax"}


@dataclass
class ChannelGroup:
    """Channel dimensions that must be pruned together (keeping the same channel indices everywhere).

    Attributes:
        channels: number of channels ``C`` of the group.
        producers: Conv/Linear modules whose output channels (weight dim 0) are the group.
        norms: BatchNorm modules over the group.
        carriers: depthwise convs carrying the group through (``in == out == groups == C``).
        consumers: ``(module, factor)``: Conv/Linear whose input dim holds the group; each channel is
            ``factor`` consecutive input features (``H*W`` after a flatten, else 1).
        nodes: fx nodes whose output's dim 1 is the group (activation points for data criteria).
        rectified: those of ``nodes`` that are ReLU/ReLU6 outputs.
        reasons: why the group must not be pruned; empty when it may be.
    """

    channels: int
    producers: list[str] = field(default_factory=list)
    norms: list[str] = field(default_factory=list)
    carriers: list[str] = field(default_factory=list)
    consumers: list[tuple[str, int]] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    rectified: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The first producer's module name (or the first node's name when nothing produces it)."""
        return self.producers[0] if self.producers else self.nodes[0]

    @property
    def prunable(self) -> bool:
        """True when something produces the group and nothing forbids shrinking it."""
        return bool(self.producers) and not self.reasons

    def modules(self) -> list[str]:
        """Every module whose shape changes when the group shrinks."""
        return self.producers + self.norms + self.carriers + [name for name, _ in self.consumers]


class _Chan(NamedTuple):
    space: int  # union-find id of the channel space of dim 1
    factor: int  # 1, or features per channel once flattened (only Linear may consume those)


def _shape(node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if isinstance(meta, TensorMetadata) else None


def _describe(node: fx.Node) -> str:
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return f"{target} (node {node.name})"


class Walker:
    """One pass over a shape-propagated fx graph, in order, assigning channel spaces and recording facts
    about them; :meth:`run` returns the :class:`ChannelGroup` of every space that has nodes or producers."""

    def __init__(self, graph_module: fx.GraphModule) -> None:
        self.gm = graph_module
        self.modules = dict(graph_module.named_modules())
        self.parent: list[int] = []
        self.sizes: list[int] = []
        self.facts: list[tuple[int, str, object]] = []  # (space, ChannelGroup field, item)
        self.values: dict[fx.Node, _Chan] = {}
        self.calls: dict[str, int] = {}
        for node in graph_module.graph.nodes:
            if node.op == "call_module":
                self.calls[node.target] = self.calls.get(node.target, 0) + 1

    # union-find over channel spaces
    def find(self, space: int) -> int:
        while self.parent[space] != space:
            self.parent[space] = self.parent[self.parent[space]]
            space = self.parent[space]
        return space

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)  # the earlier space is the root: groups keep graph order

    def new(self, node: fx.Node, reason: str | None = None) -> _Chan | None:
        shape = _shape(node)
        if shape is None or len(shape) < 2:
            return None
        self.parent.append(len(self.parent))
        self.sizes.append(shape[1])
        chan = _Chan(len(self.parent) - 1, 1)
        if reason:
            self.add(chan, "reasons", reason)
        return chan

    def add(self, chan: _Chan | None, what: str, item) -> None:
        if chan is not None:
            self.facts.append((chan.space, what, item))

    def inputs(self, node: fx.Node) -> list[_Chan]:
        return [self.values[a] for a in node.all_input_nodes if a in self.values]

    def refuse(self, node: fx.Node, reason: str) -> _Chan | None:
        """Nothing on either side of ``node`` may be pruned: mark its inputs, give it a refused output."""
        for chan in self.inputs(node):
            self.add(chan, "reasons", reason)
        return self.new(node, reason)

    def run(self) -> list[ChannelGroup]:
        """Visit every node once; return the groups in order of first appearance."""
        for node in self.gm.graph.nodes:
            out = self.visit(node)
            if out is not None:
                self.values[node] = out
                if out.factor == 1:
                    self.add(out, "nodes", node.name)
        return self.groups()

    def visit(self, node: fx.Node) -> _Chan | None:
        if node.op == "placeholder":
            return self.new(node, "it is the model's input")
        if node.op == "get_attr":
            return self.new(node, f"the tensor attribute {node.target} is used directly in forward")
        if node.op == "output":
            for chan in self.inputs(node):
                self.add(chan, "reasons", "it is the model's output (the class count)")
            return None
        if node.op == "call_module":
            return self.visit_module(node, node.target, self.modules[node.target])
        return self.visit_call(node, node.target)

    def visit_module(self, node: fx.Node, name: str, module: nn.Module) -> _Chan | None:
        x = self.values.get(node.args[0]) if node.args else None
        if self.calls[name] > 1:
            return self.refuse(node, f"module {name} is called {self.calls[name]} times (shared weights)")
        if isinstance(module, CONVS):
            return self.conv(node, name, module, x)
        if isinstance(module, nn.Linear):
            if _shape(node.args[0]) is None or len(_shape(node.args[0])) != 2:
                return self.refuse(node, f"Linear {name} is applied to a tensor that is not (batch, features)")
            self.add(x, "consumers", (name, x.factor))
            return self.produce(node, name)
        if isinstance(module, NORMS) and x is not None and x.factor == 1:
            self.add(x, "norms", name)
            return x
        if isinstance(module, ELEMENTWISE_MODULES) and x is not None:
            if isinstance(module, RECTIFIER_MODULES):
                self.add(x, "rectified", node.name)
            return x
        if isinstance(module, POOL_MODULES) and x is not None and x.factor == 1:
            return x
        if isinstance(module, nn.Flatten):
            return self.flatten(node, x)
        return self.refuse(node, f"module {name} ({type(module).__name__}) is not a layer structured pruning understands")

    def conv(self, node: fx.Node, name: str, conv: nn.Module, x: _Chan | None) -> _Chan | None:
        if conv.groups == 1:
            self.add(x, "consumers", (name, 1))
            return self.produce(node, name)
        if conv.groups == conv.in_channels == conv.out_channels and x is not None:
            self.add(x, "carriers", name)  # depthwise: channel k in -> channel k out
            return x
        out = self.refuse(node, f"{name} is a grouped convolution ({conv.groups} groups over {conv.in_channels} "
                                f"-> {conv.out_channels} channels), which structured pruning does not slice")
        self.add(out, "producers", name)  # listed, so the report says why it stayed whole
        return out

    def produce(self, node: fx.Node, name: str) -> _Chan | None:
        out = self.new(node)
        self.add(out, "producers", name)
        return out

    def visit_call(self, node: fx.Node, target) -> _Chan | None:
        chans = self.inputs(node)
        x = self.values.get(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else None
        out_shape = _shape(node)
        if out_shape is None:
            return None  # size(), dim() and the like: no tensor, nothing to tie
        if target in ELEMENTWISE_CALLS and x is not None and len(chans) == 1 and out_shape == _shape(node.args[0]):
            if target in RECTIFIER_CALLS:
                self.add(x, "rectified", node.name)
            return x
        if target in POOL_CALLS and x is not None and x.factor == 1:
            return x
        if target in BINARY_CALLS:
            return self.binary(node, chans, out_shape)
        if target in FLATTEN_CALLS:
            return self.flatten(node, x)
        if target in REDUCE_CALLS and x is not None and x.factor == 1 and self.spatial_reduce(node):
            return x
        return self.refuse(node, f"the channels reach {_describe(node)}, which structured pruning does not follow")

    def binary(self, node: fx.Node, chans: list[_Chan], out_shape) -> _Chan | None:
        tensors = [a for a in node.all_input_nodes if _shape(a) is not None]
        if not chans or any(_shape(a) != out_shape for a in tensors):
            return self.refuse(node, f"{_describe(node)} broadcasts tensors of different shapes together")
        if any(c.factor != 1 for c in chans):
            return self.refuse(node, f"{_describe(node)} combines flattened features")
        for chan in chans[1:]:
            self.union(chans[0].space, chan.space)  # e.g. a residual skip: both summands share channels
        return chans[0]

    def flatten(self, node: fx.Node, x: _Chan | None) -> _Chan | None:
        shape_in, shape_out = _shape(node.args[0]), _shape(node)
        if x is None or shape_in is None:
            return self.refuse(node, f"{_describe(node)} reshapes a tensor without channels")
        if shape_out == shape_in:
            return x
        if len(shape_out) == 2 and shape_out[0] == shape_in[0] and shape_out[1] == math.prod(shape_in[1:]):
            return _Chan(x.space, x.factor * math.prod(shape_in[2:]))  # channel c -> features [c*HW, (c+1)*HW)
        return self.refuse(node, f"{_describe(node)} reshapes {list(shape_in)} to {list(shape_out)}, "
                                 "which is not a flatten into a Linear layer")

    def spatial_reduce(self, node: fx.Node) -> bool:
        """``x.mean((2, 3))`` and the like: reducing positions only keeps channels apart."""
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        ndim = len(_shape(node.args[0]))
        if dims is None:
            return False
        dims = [dims] if isinstance(dims, int) else list(dims)
        return all(isinstance(d, int) and d % ndim >= 2 for d in dims)

    def groups(self) -> list[ChannelGroup]:
        by_root: dict[int, ChannelGroup] = {}
        for space in range(len(self.parent)):
            root = self.find(space)
            if root not in by_root:
                by_root[root] = ChannelGroup(self.sizes[root])
        for space, what, item in self.facts:
            items = getattr(by_root[self.find(space)], what)
            if item not in items:
                items.append(item)
        groups = [g for g in by_root.values() if g.nodes or g.producers]
        for group in groups:
            group.reasons.extend(self.shape_conflicts(group))
        return groups

    def shape_conflicts(self, group: ChannelGroup) -> list[str]:
        """Modules whose stored sizes disagree with the traced channel count (never expected; guards slicing)."""
        def size(name: str, attrs: tuple[str, str]) -> int:
            module = self.modules[name]
            return getattr(module, attrs[0], getattr(module, attrs[1], None))

        c = group.channels
        bad = [n for n in group.producers if size(n, ("out_channels", "out_features")) != c]
        bad += [n for n in group.norms if self.modules[n].num_features != c]
        bad += [n for n, f in group.consumers if size(n, ("in_channels", "in_features")) != c * f]
        return [f"the sizes of {', '.join(bad)} do not match the traced shapes"] if bad else []
