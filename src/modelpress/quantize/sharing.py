"""Trained quantization by weight sharing (Han et al. 2016, Deep Compression, Sec. 3).

Each selected layer's weights are clustered into ``2**bits`` shared values. The layer is then
reparametrized like ``torch.nn.utils.prune``: the dense ``weight`` Parameter is replaced by
``weight_centroids`` (Parameter, ``(k,)``), ``weight_labels`` (buffer, the cluster of each weight) and
``weight_keep`` (buffer, 0 where pruned), and a forward pre-hook sets
``weight = weight_centroids[weight_labels] * weight_keep``. Back-propagation through the indexing sums
the gradients of all weights in a cluster into its centroid: exactly the paper's centroid fine-tuning,
done by the ordinary training loop. Pruned weights get no gradient and stay zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from modelpress.core.config import coerce_enum
from modelpress.core.errors import ConfigError
from modelpress.core.options import check_declared, opt
from modelpress.prune.magnitude import LayerFilter, effective_weight, is_pruned, prunable_layers
from modelpress.quantize.kmeans import CentroidInit, kmeans_1d


@dataclass(frozen=True)
class QuantizeConfig:
    """Bits per shared weight and how clusters start.

    Args:
        bits_fc: bits of fully connected layers (the paper: 5).
        bits_conv: bits of convolution layers (the paper: 8).
        layer_bits: per-layer overrides by module name.
        init: centroid initialisation: ``linear`` (the paper's best), ``density`` or ``random``.
        iters: k-means iterations.
        seed: seeds the ``random`` initialisation.
    """

    bits_fc: int = opt(5, "integer", lo=1, hi=16, tunable=True, help="bits per shared weight of fully connected layers")
    bits_conv: int = opt(8, "integer", lo=1, hi=16, tunable=True, help="bits per shared weight of convolutions")
    layer_bits: dict = field(default_factory=dict)  # set from Python (module names), not a flag or recipe field
    init: CentroidInit = opt(CentroidInit.LINEAR, "choice", choices=CentroidInit, tunable=True,
                             help="centroid initialisation")
    iters: int = opt(50, "integer", lo=1, expose=False)
    seed: int = opt(0, "integer", lo=0, shared=True, help="seeds the random initialisation")

    def __post_init__(self) -> None:
        object.__setattr__(self, "init", coerce_enum(CentroidInit, self.init, "init"))
        for name, bits in {"bits_fc": self.bits_fc, "bits_conv": self.bits_conv, **self.layer_bits}.items():
            if not (isinstance(bits, int) and 1 <= bits <= 16):
                raise ConfigError(f"bits for {name} must be an integer in [1, 16]; got {bits!r}")
        check_declared(self)

    def bits_for(self, name: str, module: nn.Module) -> int:
        if name in self.layer_bits:
            return int(self.layer_bits[name])
        return self.bits_fc if isinstance(module, nn.Linear) else self.bits_conv


def is_shared(module: nn.Module) -> bool:
    return hasattr(module, "weight_centroids")


def _shared_weight(module: nn.Module) -> torch.Tensor:
    return module.weight_centroids[module.weight_labels] * module.weight_keep


def _refresh_weight(module: nn.Module, inputs) -> None:
    module.weight = _shared_weight(module)


def share_weights_(module: nn.Module, centroids: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor) -> None:
    """Reparametrize ``module.weight`` as ``centroids[labels] * keep`` (see the module docstring)."""
    if labels.shape != module.weight.shape or keep.shape != module.weight.shape:
        raise ConfigError(f"labels/keep must have the weight's shape {tuple(module.weight.shape)}")
    dtype = module.weight.dtype
    del module._parameters["weight"]
    module.register_parameter("weight_centroids", nn.Parameter(centroids.to(dtype)))
    module.register_buffer("weight_labels", labels.long())
    module.register_buffer("weight_keep", keep.to(dtype))
    module.weight = _shared_weight(module)
    module._weight_sharing_hook = module.register_forward_pre_hook(_refresh_weight)


@dataclass
class QuantizationReport:
    """Per-layer rows ``{"layer", "weights", "nonzero", "bits", "clusters_used", "mse"}``."""

    rows: list[dict]


def quantize_(model: nn.Module, config: QuantizeConfig = QuantizeConfig(), *,
              filter_fn: LayerFilter | None = None) -> QuantizationReport:
    """Cluster each selected layer's non-zero weights into ``2**bits`` shared values, in place.

    A pruned layer's masks are folded in first; its zeros stay zero (they are not clustered). Train the
    model afterwards (``modelpress.train.train``) to fine-tune the centroids; :func:`finalize_` turns the
    layers back into ordinary ones.
    """
    generator = torch.Generator().manual_seed(config.seed)
    rows = []
    for name, module in prunable_layers(model, filter_fn).items():
        if is_shared(module):
            raise ConfigError(f"layer {name} is already quantized; call finalize_ first to quantize again")
        w = effective_weight(module)
        if is_pruned(module):
            torch_prune.remove(module, "weight")
        keep = w != 0
        bits = config.bits_for(name, module)
        centroids, labels_kept = kmeans_1d(w[keep], 2**bits, init=config.init, iters=config.iters, generator=generator)
        labels = torch.zeros(w.shape, dtype=torch.long)
        labels[keep] = labels_kept
        share_weights_(module, centroids, labels, keep)
        rows.append({
            "layer": name, "weights": w.numel(), "nonzero": int(keep.sum()), "bits": bits,
            "clusters_used": int(labels_kept.unique().numel()),
            "mse": float(((centroids[labels_kept] - w[keep]) ** 2).mean()) if keep.any() else 0.0,
        })
    return QuantizationReport(rows)


@torch.no_grad()
def finalize_(model: nn.Module) -> nn.Module:
    """Replace every shared layer by an ordinary ``weight`` Parameter holding ``centroids[labels] * keep``."""
    for module in model.modules():
        if is_shared(module):
            weight = _shared_weight(module).detach().clone()
            module._weight_sharing_hook.remove()
            del module._weight_sharing_hook, module.weight
            del module._parameters["weight_centroids"], module._buffers["weight_labels"], module._buffers["weight_keep"]
            module.register_parameter("weight", nn.Parameter(weight))
    return model
