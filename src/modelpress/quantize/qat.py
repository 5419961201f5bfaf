"""Quantization-aware training (Jacob et al. 2018, "Quantization and Training of Neural Networks for
Efficient Integer-Arithmetic-Only Inference"): fake quantization in training, then the static int8 ONNX
file of :mod:`modelpress.quantize.int8` with the observers' ranges.

Weights are fake-quantized symmetric per output channel on ``[-127, 127]`` (exactly ORT's int8 grid),
the input of every Linear/Conv per tensor as affine uint8 with moving-average min/max observers, and
gradients pass straight through where values were not clipped.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from modelpress.core.errors import ConfigError
from modelpress.prune.magnitude import LayerFilter, prunable_layers
from modelpress.quantize.int8 import (Int8Config, Int8Mode, Int8Report, _reference_inputs, _report, preprocess_onnx,
                                      quantize_static_onnx)

class _FakeQuantize(torch.autograd.Function):
    """``S (clamp(round(x / S) + Z, qmin, qmax) - Z)`` forward; straight-through backward that passes
    the gradient where ``x`` lies inside the representable range and zeroes it where clamped
    (Jacob et al. 2018, Sec. 3)."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin: int, qmax: int):
        q = torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax)
        ctx.save_for_backward((x >= (qmin - zero_point) * scale) & (x <= (qmax - zero_point) * scale))
        return (q - zero_point) * scale

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Round ``x`` to the grid ``scale * (q - zero_point)``, ``q`` in ``[qmin, qmax]``, with an STE gradient.

    ``scale``/``zero_point`` broadcast against ``x`` (per-channel: shape ``(C, 1, ...)``).
    """
    return _FakeQuantize.apply(x, scale, zero_point, qmin, qmax)


def quantize_weight(weight: torch.Tensor, per_channel: bool = True) -> torch.Tensor:
    """``W -> S clamp(round(W / S), -127, 127)``, ``S = max|W_c| / 127`` per output channel ``c`` (or per
    tensor), with an STE gradient: exactly the grid of ORT's symmetric int8 weights, so trained weights
    convert without rounding error. BatchNorm folding scales each output channel, which maps this
    per-channel grid onto itself."""
    dims = tuple(range(1, weight.dim())) if per_channel else tuple(range(weight.dim()))
    scale = (weight.detach().abs().amax(dim=dims, keepdim=True) / 127.0).clamp_min(1e-12)  # (C, 1, ..) or (1, ..)
    return fake_quantize(weight, scale, torch.zeros_like(scale), -127, 127)


def _input_qparams(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 affine ``(S, Z)`` from the observed range, widened to contain 0 so that 0 is exact."""
    lo, hi = module.input_min.clamp(max=0.0), module.input_max.clamp(min=0.0)
    scale = ((hi - lo) / 255.0).clamp_min(1e-8)
    return scale, torch.clamp(torch.round(-lo / scale), 0, 255)


def _fake_quantize_layer(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: quantize the weight; update the EMA min/max observer of the input (training
    only) and fake-quantize the input with it."""
    module.weight = quantize_weight(module.weight_float, module._qat_per_channel)
    x = args[0]
    if module.training:
        with torch.no_grad():
            lo, hi = x.detach().min(), x.detach().max()
            m = module._qat_momentum if bool(module.input_observed) else 1.0  # the first batch sets the range
            module.input_min.mul_(1 - m).add_(m * lo)
            module.input_max.mul_(1 - m).add_(m * hi)
            module.input_observed.fill_(True)
    scale, zero_point = _input_qparams(module)
    return (fake_quantize(x, scale, zero_point, 0, 255), *args[1:])


def is_qat_prepared(model: nn.Module) -> bool:
    """Whether any layer of ``model`` carries QAT fake quantization."""
    return any(hasattr(m, "weight_float") for m in model.modules())


def prepare_qat_(model: nn.Module, config: Int8Config = Int8Config(mode=Int8Mode.QAT), *,
                 filter_fn: LayerFilter | None = None) -> nn.Module:
    """Insert fake quantization into every selected Linear/Conv layer, in place (Jacob et al. 2018).

    Reparametrized like :mod:`modelpress.quantize.sharing`: the float weight moves to the Parameter
    ``weight_float`` and a forward pre-hook sets ``weight = quantize_weight(weight_float)`` (symmetric
    int8, per output channel when ``config.per_channel``) and fake-quantizes the layer's input as uint8
    with a per-tensor moving-average min/max observer (buffers ``input_min``, ``input_max``,
    ``input_observed``, saved in checkpoints). Parameter objects change, so build the optimizer after
    this call (``modelpress.train.train`` does). Then :func:`convert_qat`.

    Raises:
        ConfigError: a layer is already prepared, pruned or weight-shared (fold those first with
        ``prune.make_permanent_`` / ``quantize.finalize_``), or no layer was selected.
    """
    layers = prunable_layers(model, filter_fn)
    if not layers:
        raise ConfigError("prepare_qat_ found no Linear/Conv layer to quantize (check filter_fn)")
    for name, module in layers.items():
        if "weight" not in module._parameters:
            raise ConfigError(f"layer {name} ({type(module).__name__}) is already QAT-prepared, pruned or otherwise "
                              "reparametrized; fold it first (make_permanent_, finalize_, strip_qat_)")
    for module in layers.values():
        weight = module._parameters.pop("weight")
        module.register_parameter("weight_float", weight)
        module.register_buffer("input_min", torch.zeros((), dtype=weight.dtype))
        module.register_buffer("input_max", torch.zeros((), dtype=weight.dtype))
        module.register_buffer("input_observed", torch.zeros((), dtype=torch.bool))
        module._qat_momentum, module._qat_per_channel = float(config.ema_momentum), bool(config.per_channel)
        module.weight = quantize_weight(weight.detach(), module._qat_per_channel)
        module._qat_hook = module.register_forward_pre_hook(_fake_quantize_layer)
    return model


def qat_ranges(model: nn.Module) -> dict[str, tuple[float, float]]:
    """Observed input range ``(min, max)`` of every QAT layer that has seen data, by module name."""
    return {name: (float(m.input_min), float(m.input_max)) for name, m in model.named_modules()
            if hasattr(m, "weight_float") and bool(m.input_observed)}


def strip_qat_(model: nn.Module) -> nn.Module:
    """Remove fake quantization in place; each weight keeps its quantized (on-grid) value, so an int8
    export with the same symmetric per-channel scheme reproduces it exactly."""
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "weight_float"):
                weight = quantize_weight(module.weight_float, module._qat_per_channel).detach().clone()
                module._qat_hook.remove()
                del module._qat_hook, module._qat_momentum, module._qat_per_channel, module.weight
                del module._parameters["weight_float"]
                for buffer in ("input_min", "input_max", "input_observed"):
                    del module._buffers[buffer]
                module.register_parameter("weight", nn.Parameter(weight))
    return model


def _execution_order(model: nn.Module, shape: tuple[int, ...]) -> list[tuple[str, tuple[int, ...]]]:
    """(name, weight shape) of each Linear/Conv in the order a forward pass calls them."""
    order, handles = [], []
    for name, module in prunable_layers(model).items():
        handles.append(module.register_forward_hook(lambda m, i, o, n=name: order.append((n, tuple(m.weight.shape)))))
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *shape))  # eval: observers must not move
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return order


def _onnx_weight_nodes(onnx_path) -> list[tuple[str, tuple[int, ...]]]:
    """(activation input name, weight shape in PyTorch's layout) of each Conv/Gemm/MatMul with a constant weight."""
    import onnx

    graph = onnx.load(str(onnx_path)).graph
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    nodes = []
    for node in graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1 and node.input[1] in shapes:
            shape = shapes[node.input[1]]
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            if node.op_type == "MatMul" or (node.op_type == "Gemm" and not trans_b):
                shape = shape[::-1]  # stored (in, out); nn.Linear keeps (out, in)
            nodes.append((node.input[0], shape))
    return nodes


def qat_tensor_ranges(model: nn.Module, onnx_path, shape: tuple[int, ...]) -> tuple[dict, str | None]:
    """Map QAT observer ranges onto the ONNX tensors feeding each Conv/Gemm/MatMul.

    Layers and ONNX nodes are paired in execution order and every pair must agree on the weight
    shape; otherwise nothing is mapped and the reason is returned (conversion then calibrates).
    A tensor feeding several layers gets the union of their ranges.
    """
    ranges = qat_ranges(model)
    layers, nodes = _execution_order(model, shape), _onnx_weight_nodes(onnx_path)
    if len(layers) != len(nodes) or any(ls != ns for (_, ls), (_, ns) in zip(layers, nodes)):
        return {}, f"QAT ranges not used: {len(layers)} layers do not pair with {len(nodes)} ONNX weight nodes"
    mapped: dict[str, tuple[float, float]] = {}
    for (name, _), (tensor, _) in zip(layers, nodes):
        if name in ranges:
            lo, hi = ranges[name]
            old = mapped.get(tensor, (lo, hi))
            mapped[tensor] = (min(lo, old[0]), max(hi, old[1]))
    return mapped, None


def convert_qat(model: nn.Module, path: str | os.PathLike[str], calibration, *,
                config: Int8Config = Int8Config(mode=Int8Mode.QAT), input_shape: tuple[int, ...] | None = None) -> Int8Report:
    """Turn a QAT-trained model into a static int8 ONNX file; ``model`` itself is left unchanged.

    Fake quantization is removed on a copy (weights keep their on-grid values, which ORT's symmetric
    per-channel int8 reproduces exactly), the copy is exported and checked, and ORT quantizes it
    statically. With ``config.use_qat_ranges`` the input range of every layer is the observers'
    moving-average range (Jacob et al. 2018, Sec. 3); the calibration set still supplies the ranges
    of the other tensors (layer outputs), and all of them when the layers cannot be paired with the
    ONNX nodes (the report's ``notes`` say so).

    Raises:
        ConfigError: the model is not QAT-prepared, or ``calibration`` is None.
    """
    from modelpress.export.onnx import deployable_copy, export_onnx, resolve_input_shape

    if not is_qat_prepared(model):
        raise ConfigError("convert_qat needs a model prepared with prepare_qat_ (and trained); this one has no fake quantization")
    shape = resolve_input_shape(model, input_shape)
    x_ref = _reference_inputs(calibration, shape, config)  # refuses calibration=None before any work
    with tempfile.TemporaryDirectory() as scratch:
        float_file = export_onnx(model, Path(scratch) / "float.onnx", input_shape=shape, opset=config.opset)
        prepared = preprocess_onnx(float_file.path, Path(scratch) / "prepared.onnx")
        ranges, note = qat_tensor_ranges(model, prepared, shape) if config.use_qat_ranges else ({}, "QAT ranges not used (use_qat_ranges=False)")
        quantize_static_onnx(prepared, path, calibration, method=config.method, per_channel=config.per_channel,
                             quant_format=config.quant_format, batch_size=config.calibration_batch,
                             max_examples=config.max_calibration, tensor_ranges=ranges, preprocess=False)
    reference, _ = deployable_copy(model)
    return _report(path, Int8Mode.QAT, reference, x_ref, float_file.bytes, len(ranges), (note,) if note else ())
