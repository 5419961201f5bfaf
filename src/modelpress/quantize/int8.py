"""Int8 quantization that is really faster on x86 CPUs: ONNX Runtime's dynamic and static quantization,
and quantization-aware training (QAT) ending in the same static int8 file.

Affine quantization (Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference", Eq. 1): ``r = S (q - Z)``; int8 kernels multiply the integers
``q`` and rescale once per output. Why ONNX Runtime and not ``torch.ao.quantization`` (deprecated):
measured on an x86 CPU (AVX-512 VNNI, 1 thread, batch 256), ORT's int8 ran an MLP 1200-1200 6x
faster than PyTorch fp32 (3.4 vs 21 ms), and only ORT's static path sped up convolutions.

* dynamic: weights int8 ahead of time, activations quantized per batch at run time
  (``DynamicQuantizeLinear`` + ``MatMulInteger``). Only MatMul/Gemm by default: ORT's ``ConvInteger``
  ran LeNet-5 and vgg_mini 2-5x *slower* than float ORT, so convolutions stay float unless ``dynamic_convs``.
* static: activation ranges from a calibration set; ``QLinearConv``/``QGemm`` (QOperator) or QDQ pairs
  that ORT fuses into the same kernels: LeNet-5 and vgg_mini ran 2-2.4x faster than float ORT and
  5x faster than PyTorch. The int8 path that speeds up convolutions.
* qat: fake quantization in training (weights symmetric per-channel int8 on ``[-127, 127]``, inputs of
  each Linear/Conv per-tensor affine uint8 with moving-average min/max observers, straight-through
  gradients), then a static file whose input ranges are the observers' (see :func:`convert_qat`).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np
import torch
from torch import nn

from modelpress.core.config import coerce_enum
from modelpress.core.errors import ConfigError, ModelFileError, ShapeError
from modelpress.core.io import atomic_write
from modelpress.core.options import check_declared, opt


class Int8Mode(str, Enum):
    DYNAMIC = "dynamic"
    STATIC = "static"
    QAT = "qat"


class CalibrationMethod(str, Enum):
    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"


class QuantFormat(str, Enum):
    QDQ = "qdq"
    QOPERATOR = "qoperator"


class WeightType(str, Enum):
    QINT8 = "qint8"
    QUINT8 = "quint8"


@dataclass(frozen=True)
class Int8Config:
    """How to quantize to int8.

    Args:
        mode: ``dynamic``, ``static`` or ``qat`` (see the module docstring).
        per_channel: one weight scale per output channel (static/qat; dynamic uses it too).
        weight_type: dynamic mode's weight type, ``qint8`` or ``quint8``.
        dynamic_convs: let dynamic mode quantize convolutions too (slower on ORT's CPU kernels).
        method: calibration of activation ranges: ``minmax``, ``entropy`` or ``percentile``.
        quant_format: ``qdq`` (QuantizeLinear/DequantizeLinear pairs, ORT fuses them) or ``qoperator``.
        calibration_batch: examples per calibration batch.
        max_calibration: calibration examples used at most.
        ema_momentum: QAT observers: ``range <- (1 - m) range + m batch_range`` (Jacob et al.'s EMA).
        use_qat_ranges: QAT conversion takes layer input ranges from the observers, not calibration.
        opset: ONNX opset of the float export.
        calibration: calibration examples a command or recipe draws (seeded) from the training split.
        epochs, lr: QAT fine-tuning of a model not yet prepared (SGD, see :meth:`qat_train_config`).
    """

    mode: Int8Mode = opt(Int8Mode.DYNAMIC, "choice", choices=Int8Mode, tunable=True,
                         help="dynamic (no data needed), static (calibrated), qat (fine-tuned with fake quantization)")
    per_channel: bool = opt(True, "bool", expose=False)
    weight_type: WeightType = opt(WeightType.QINT8, "choice", choices=WeightType, expose=False)
    dynamic_convs: bool = opt(False, "bool", expose=False)
    method: CalibrationMethod = opt(CalibrationMethod.MINMAX, "choice", choices=CalibrationMethod, expose=False)
    quant_format: QuantFormat = opt(QuantFormat.QDQ, "choice", choices=QuantFormat, expose=False)
    calibration_batch: int = opt(64, "integer", lo=1, expose=False)
    max_calibration: int = opt(1024, "integer", lo=1, expose=False)
    ema_momentum: float = opt(0.01, lo=0, hi=1, lo_open=True, expose=False)
    use_qat_ranges: bool = opt(True, "bool", expose=False)
    opset: int = opt(17, "integer", lo=7, help="ONNX opset")
    calibration: int = opt(512, "integer", lo=1, metavar="N", help="calibration examples from the training split")
    epochs: int = opt(2, "integer", lo=1, help="qat: fine-tuning epochs")
    lr: float = opt(0.005, lo=0, lo_open=True, help="qat: SGD learning rate")

    def __post_init__(self) -> None:
        for name, cls in (("mode", Int8Mode), ("weight_type", WeightType), ("method", CalibrationMethod),
                          ("quant_format", QuantFormat)):
            object.__setattr__(self, name, coerce_enum(cls, getattr(self, name), name))
        for name in ("calibration_batch", "max_calibration"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ConfigError(f"{name} must be a positive integer; got {getattr(self, name)!r}")
        if not 0.0 < self.ema_momentum <= 1.0:
            raise ConfigError(f"ema_momentum must be in (0, 1]; got {self.ema_momentum!r}")
        check_declared(self)

    def qat_train_config(self, seed: int = 0):
        """The QAT fine-tuning run (``epochs``, ``lr``, seeded) as the training loop's config."""
        from modelpress.train import TrainConfig  # imported here as quantize_int8 does

        return TrainConfig(epochs=self.epochs, lr=self.lr, seed=seed)


# ---------------------------------------------------------------- ONNX Runtime quantization


def _ort_quant():
    from onnxruntime import quantization  # imported on use: ~0.5 s that plain users should not pay

    return quantization


def preprocess_onnx(onnx_in: str | os.PathLike[str], onnx_out: str | os.PathLike[str]) -> Path:
    """ORT's recommended pre-quantization pass (graph optimization + shape inference), to ``onnx_out``.

    Falls back to ONNX shape inference alone when ORT's symbolic shape inference fails on a graph.
    """
    quant = _ort_quant()
    try:
        quant.quant_pre_process(str(onnx_in), str(onnx_out))
    except Exception:  # symbolic shape inference is the fragile part; the rest is optional
        quant.quant_pre_process(str(onnx_in), str(onnx_out), skip_symbolic_shape=True)
    return Path(onnx_out)


def quantize_dynamic_onnx(onnx_in: str | os.PathLike[str], onnx_out: str | os.PathLike[str], *,
                          per_channel: bool = False, weight_type: str | WeightType = "qint8",
                          op_types: tuple[str, ...] = ("MatMul", "Gemm")) -> Path:
    """Dynamic int8 quantization of an ONNX file (``onnxruntime.quantization.quantize_dynamic``), atomically.

    Weights become int8 with ``S = max|W| / 127`` (symmetric); activations are quantized per batch
    at run time from their own min/max (Jacob et al. 2018, Eq. 1), so no calibration data is needed.

    Args:
        op_types: ONNX operators to quantize; add ``"Conv"`` for ``ConvInteger`` (slower on CPU).

    Returns:
        ``Path(onnx_out)``.

    Raises:
        ModelFileError: ``onnx_in`` is missing or not an ONNX model. ConfigError: bad ``weight_type``.
    """
    quant = _ort_quant()
    kind = coerce_enum(WeightType, weight_type, "weight_type")
    _onnx_input(onnx_in)  # a clear ModelFileError for a missing or corrupt file
    qtype = quant.QuantType.QInt8 if kind is WeightType.QINT8 else quant.QuantType.QUInt8
    with tempfile.TemporaryDirectory() as scratch, atomic_write(onnx_out) as tmp:
        prepared = preprocess_onnx(onnx_in, Path(scratch) / "prepared.onnx")
        quant.quantize_dynamic(str(prepared), str(tmp), op_types_to_quantize=list(op_types),
                               per_channel=per_channel, weight_type=qtype)
    return Path(onnx_out)


class TensorCalibrationReader:
    """ORT ``CalibrationDataReader`` (duck-typed) over a tensor ``(N, *input_shape)`` or a DataLoader.

    Raises:
        ConfigError: no calibration data. ShapeError: examples of the wrong shape.
    """

    def __init__(self, calibration, input_name: str, input_shape: tuple, batch_size: int = 64,
                 max_examples: int = 1024) -> None:
        self.input_name = input_name
        self.batches = calibration_batches(calibration, input_shape, batch_size, max_examples)
        self._next = 0

    def get_next(self) -> dict | None:
        if self._next >= len(self.batches):
            return None
        self._next += 1
        return {self.input_name: self.batches[self._next - 1]}

    def rewind(self) -> None:
        self._next = 0


def calibration_batches(calibration, input_shape: tuple, batch_size: int = 64, max_examples: int = 1024) -> list[np.ndarray]:
    """Float32 numpy batches ``(b, *input_shape)`` from a tensor or an iterable of ``x``/``(x, y, ...)`` batches.

    ``input_shape`` entries that are not ints (symbolic ONNX dimensions) match anything.
    """
    if calibration is None:
        raise ConfigError("calibration data are required for static and QAT int8 (a tensor (N, *input_shape) "
                          "or a DataLoader); got calibration=None")
    if isinstance(calibration, torch.Tensor):
        source = (calibration[i : i + batch_size] for i in range(0, calibration.shape[0], batch_size))
    else:
        source = (b[0] if isinstance(b, (list, tuple)) else b for b in calibration)
    batches, seen = [], 0
    for x in source:
        x = torch.as_tensor(x)[: max_examples - seen]
        fits = x.dim() == len(input_shape) + 1 and all(not isinstance(d, int) or d == n for d, n in zip(input_shape, x.shape[1:]))
        if not fits:
            raise ShapeError(f"calibration examples have shape {tuple(x.shape[1:])}; the model takes {tuple(input_shape)}")
        batches.append(x.detach().float().contiguous().numpy())
        seen += x.shape[0]
        if seen >= max_examples:
            break
    if not batches or seen == 0:
        raise ConfigError("calibration holds no examples; give at least one (N >= 1)")
    return batches


def _onnx_input(onnx_path) -> tuple[str, tuple]:
    """Name and per-example shape (ints, or names of symbolic dimensions) of the file's first input.

    Raises:
        ModelFileError: the file is missing, corrupt or has no input.
    """
    import onnx

    try:
        graph_input = onnx.load(str(onnx_path), load_external_data=False).graph.input[0]
    except Exception as err:  # DecodeError, FileNotFoundError, IndexError: all mean "not a usable model"
        raise ModelFileError(f"{onnx_path} is not a readable ONNX model with an input: {err}") from None
    dims = graph_input.type.tensor_type.shape.dim
    return graph_input.name, tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims[1:])


def quantize_static_onnx(onnx_in: str | os.PathLike[str], onnx_out: str | os.PathLike[str], calibration, *,
                         method: str | CalibrationMethod = "minmax", per_channel: bool = True,
                         quant_format: str | QuantFormat = "qdq", batch_size: int = 64, max_examples: int = 1024,
                         tensor_ranges: dict[str, tuple[float, float]] | None = None, preprocess: bool = True) -> Path:
    """Static int8 quantization (``onnxruntime.quantization.quantize_static``) calibrated on ``calibration``.

    Activations are uint8 affine, ``S = (max - min) / 255``, ``Z = round(-min / S)`` (Jacob et al.
    2018, Sec. 2.1), ranges observed on the calibration set by ``method``; weights are int8 symmetric
    ``S = max|W| / 127`` (per output channel when ``per_channel``). uint8 activations x int8 weights
    is the combination ORT's x86 kernels (VNNI) run fastest; on pre-VNNI AVX2 CPUs ORT documents
    possible saturation of this combination (its ``reduce_range`` remedy is not exposed here).

    Args:
        onnx_in: a float ONNX file, pre-processed here with :func:`preprocess_onnx` unless ``preprocess``
            is False (it was already, and ``tensor_ranges`` name its tensors).
        calibration: tensor ``(N, *input_shape)`` or DataLoader of representative inputs.
        tensor_ranges: ``{tensor name: (min, max)}`` that replace calibrated ranges (QAT's observers).

    Returns:
        ``Path(onnx_out)``.

    Raises:
        ConfigError: missing calibration or a bad option. ShapeError: calibration of the wrong shape.
        ModelFileError: ``onnx_in`` is missing or not an ONNX model.
    """
    quant = _ort_quant()
    method = coerce_enum(CalibrationMethod, method, "method")
    fmt = coerce_enum(QuantFormat, quant_format, "quant_format")
    input_name, input_shape = _onnx_input(onnx_in)
    reader = TensorCalibrationReader(calibration, input_name, input_shape, batch_size, max_examples)
    calibrate = {CalibrationMethod.MINMAX: quant.CalibrationMethod.MinMax, CalibrationMethod.ENTROPY:
                 quant.CalibrationMethod.Entropy, CalibrationMethod.PERCENTILE: quant.CalibrationMethod.Percentile}[method]
    overrides = {name: [{"rmin": np.float32(lo), "rmax": np.float32(hi)}] for name, (lo, hi) in (tensor_ranges or {}).items()}
    with tempfile.TemporaryDirectory() as scratch, atomic_write(onnx_out) as tmp:
        prepared = preprocess_onnx(onnx_in, Path(scratch) / "prepared.onnx") if preprocess else onnx_in
        quant.quantize_static(
            str(prepared), str(tmp), reader, calibrate_method=calibrate, per_channel=per_channel,
            quant_format=quant.QuantFormat.QDQ if fmt is QuantFormat.QDQ else quant.QuantFormat.QOperator,
            activation_type=quant.QuantType.QUInt8, weight_type=quant.QuantType.QInt8,
            extra_options={"TensorQuantOverrides": overrides} if overrides else None)
    return Path(onnx_out)


# ---------------------------------------------------------------- conversion, the one entry point and its report


@dataclass(frozen=True)
class Int8Report:
    """What :func:`quantize_int8` / :func:`convert_qat` wrote and how close it stays to float.

    ``max_abs_diff`` is ``max |int8 logit - float logit|`` and ``argmax_agreement`` the share of
    ``n_compared`` inputs (the calibration set, else seeded random inputs) where both predict the same
    class; the float model is the folded PyTorch model (QAT: with its quantized weights, float activations).
    ``quantized_weights`` counts 8-bit weight tensors in the file, ``qat_ranges_used`` the layer inputs
    whose ranges came from QAT observers.
    """

    path: str
    mode: str
    bytes: int
    float_bytes: int
    max_abs_diff: float
    argmax_agreement: float
    n_compared: int
    quantized_weights: int
    qat_ranges_used: int = 0
    notes: tuple[str, ...] = ()


def _count_int8_weights(path) -> int:
    import onnx

    eight_bit = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    return sum(1 for t in onnx.load(str(path)).graph.initializer if t.data_type in eight_bit and len(t.dims) >= 2)


def _report(path, mode: Int8Mode, reference: nn.Module, x: torch.Tensor, float_bytes: int,
            qat_used: int = 0, notes: tuple[str, ...] = ()) -> Int8Report:
    from modelpress.export.onnx import OnnxModel
    from modelpress.measure.metrics import predict_logits

    ours = predict_logits(OnnxModel(path, threads=1), x)  # (N, C); also proves the file runs
    theirs = predict_logits(reference, x)
    agreement = float((ours.argmax(1) == theirs.argmax(1)).float().mean())
    return Int8Report(str(path), mode.value, Path(path).stat().st_size, float_bytes, float((ours - theirs).abs().max()),
                      agreement, int(x.shape[0]), _count_int8_weights(path), qat_used, notes)


def _reference_inputs(calibration, shape: tuple[int, ...], config: Int8Config) -> torch.Tensor:
    if calibration is None:
        return torch.randn(64, *shape, generator=torch.Generator().manual_seed(0))
    return torch.from_numpy(np.concatenate(calibration_batches(calibration, shape, config.calibration_batch,
                                                               config.max_calibration)))


def quantize_int8(model: nn.Module, path: str | os.PathLike[str], config: Int8Config = Int8Config(), calibration=None, *,
                  input_shape: tuple[int, ...] | None = None, data=None, train_config=None) -> Int8Report:
    """Write ``model`` as an int8 ONNX file for ONNX Runtime on CPU, by ``config.mode``; ``model`` is not changed.

    Affine int8 ``r = S (q - Z)`` throughout (Jacob et al. 2018, see the module docstring).

    Args:
        model: any exportable model; pruned or weight-shared layers are folded first.
        path: the int8 ``.onnx`` file to write (atomically).
        config: an :class:`Int8Config`.
        calibration: representative inputs, tensor ``(N, *input_shape)`` or DataLoader; required for
            ``static`` and ``qat``, optional for ``dynamic`` (then only used to compare outputs).
        input_shape: defaults to ``model.modelpress_spec.input_shape``.
        data, train_config: QAT only, for a model not yet prepared: a copy is prepared and trained on
            ``data`` with ``modelpress.train.train`` (default ``TrainConfig(epochs=3, lr=0.01)``).
            A model already prepared with :func:`prepare_qat_` (and trained) is converted as it is.

    Returns:
        An :class:`Int8Report`.

    Raises:
        ConfigError: ``calibration`` missing for static/qat, ``data`` missing for an unprepared QAT model.
        ShapeError: calibration of the wrong shape. ExportError: the model cannot be exported.
    """
    from modelpress.export.onnx import deployable_copy, export_onnx, resolve_input_shape

    if config.mode is not Int8Mode.DYNAMIC and calibration is None:
        raise ConfigError(f"calibration data are required for mode={config.mode.value} (a tensor (N, *input_shape) "
                          "or a DataLoader); got calibration=None")
    shape = resolve_input_shape(model, input_shape)
    if config.mode is Int8Mode.QAT:
        from modelpress.quantize.qat import convert_qat, is_qat_prepared, prepare_qat_  # qat builds on this module

        if not is_qat_prepared(model):
            if data is None:
                raise ConfigError("data is required to train an unprepared model with QAT (or pass a model prepared "
                                  "with prepare_qat_ and trained); got data=None")
            from modelpress.train import TrainConfig, train

            model = prepare_qat_(deployable_copy(model)[0].train(), config)
            train(model, data, train_config or TrainConfig(epochs=3, lr=0.01), progress=False)
        return convert_qat(model, path, calibration, config=config, input_shape=shape)
    x_ref = _reference_inputs(calibration, shape, config)
    with tempfile.TemporaryDirectory() as scratch:
        float_file = export_onnx(model, Path(scratch) / "float.onnx", input_shape=shape, opset=config.opset)
        if config.mode is Int8Mode.DYNAMIC:
            op_types = ("MatMul", "Gemm", "Conv") if config.dynamic_convs else ("MatMul", "Gemm")
            quantize_dynamic_onnx(float_file.path, path, per_channel=config.per_channel,
                                  weight_type=config.weight_type, op_types=op_types)
        else:
            quantize_static_onnx(float_file.path, path, calibration, method=config.method, per_channel=config.per_channel,
                                 quant_format=config.quant_format, batch_size=config.calibration_batch,
                                 max_examples=config.max_calibration)
    reference, _ = deployable_copy(model)
    return _report(path, config.mode, reference, x_ref, float_file.bytes)
