"""The channel dependency graph of structured pruning: which channel dimensions must shrink together.

In the manner of Torch-Pruning's ``DependencyGraph`` (Fang et al. 2023, "DepGraph: Towards Any
Structural Pruning"), but small: the model is traced with ``torch.fx``, every tensor is given a
*channel space* (its dim 1), and the ops that tie spaces together merge them (union-find):

- Conv (``groups == 1``) and Linear *consume* their input's space and *produce* a new one;
- BatchNorm, element-wise activations, dropout and pooling carry the space through; so does a
  depthwise conv (``groups == in == out``), which must shrink its groups with it;
- ``a + b`` (and ``-``, ``*``, ``/`` of equal shapes) merges the spaces of ``a`` and ``b``: a residual
  skip ties a block's output to its input's producer;
- flatten (or a view/reshape that flattens) of ``(B, C, H, W)`` feeds ``H*W`` consecutive features per
  channel to the next Linear (the factor comes from a shape-propagation run on an example input).

Anything else on a channel path (``torch.cat``, another reshape, indexing, a grouped conv with
``1 < groups < channels``, an unknown module, the model's input or output) makes the space NOT
prunable and records why. A :class:`ChannelGroup` is one merged space: the unit that is pruned.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from modelpress.core.errors import ConfigError, ShapeError
from modelpress.prune.graph_walk import CONVS, NORMS, ChannelGroup, Walker

__all__ = ["CONVS", "NORMS", "ChannelGraph", "ChannelGroup", "trace_channels"]


@dataclass
class ChannelGraph:
    """The traced model (``graph_module`` shares the model's submodules) and its channel groups."""

    graph_module: fx.GraphModule
    groups: list[ChannelGroup]

    def prunable(self) -> list[ChannelGroup]:
        """The groups that may be pruned."""
        return [g for g in self.groups if g.prunable]


class _Tracer(fx.Tracer):
    """The default tracer, remembering the innermost submodule a tracing error came from."""

    def __init__(self) -> None:
        super().__init__()
        self.failed_in: str | None = None

    def call_module(self, m, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = self.path_of_module(m)
            raise


def trace_channels(model: nn.Module, example_input: torch.Tensor) -> ChannelGraph:
    """Trace ``model`` and find its channel groups.

    Args:
        model: any module ``torch.fx.symbolic_trace`` can trace (standard ``torch.nn`` layers are leaves).
        example_input: ``(B, *input_shape)``, run once (eval mode, no grad) to learn every tensor's shape.

    Returns:
        A :class:`ChannelGraph`; groups are in order of first appearance.

    Raises:
        ConfigError: the forward cannot be traced (data-dependent control flow and the like); the
            message names the model class, the submodule and the source line that broke it.
        ShapeError: ``example_input`` does not fit the model.
    """
    graph_module = _trace(model)
    was_training = model.training
    model.eval()  # a training-mode run would update BatchNorm statistics
    try:
        with torch.no_grad():
            ShapeProp(graph_module).propagate(example_input)
    except Exception as err:
        raise ShapeError(f"an example input of shape {tuple(example_input.shape)} does not fit "
                         f"{type(model).__name__}: {err}") from None
    finally:
        model.train(was_training)
    return ChannelGraph(graph_module, Walker(graph_module).run())


def _trace(model: nn.Module) -> fx.GraphModule:
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as err:
        frames = [f for f in traceback.extract_tb(err.__traceback__) if os.sep + "torch" + os.sep not in f.filename]
        where = f" at {frames[-1].filename}:{frames[-1].lineno} ({frames[-1].line})" if frames else ""
        inside = f"submodule {tracer.failed_in!r}" if tracer.failed_in else "its own forward"
        raise ConfigError(
            f"structured pruning cannot trace {type(model).__name__} with torch.fx: {inside}{where} failed with "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. The forward must not branch or "
            "loop on tensor values; rewrite that layer without data-dependent control flow"
        ) from None
    return fx.GraphModule(tracer.root, graph, type(model).__name__)
