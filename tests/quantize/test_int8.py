"""Int8 for ONNX Runtime: dynamic, static (QDQ and QOperator) and QAT files run and stay close to float;
QAT fake quantization lies on the int8 grid with straight-through gradients; configs and errors."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from modelpress.core.errors import ConfigError, ModelFileError, ShapeError
from modelpress.export import export_onnx, load_onnx
from modelpress.measure import evaluate_accuracy
from modelpress.models import build_model
from modelpress.prune import PruneConfig, prune_
from modelpress.quantize import (
    Int8Config,
    convert_qat,
    fake_quantize,
    is_qat_prepared,
    prepare_qat_,
    qat_ranges,
    quantize_dynamic_onnx,
    quantize_int8,
    quantize_static_onnx,
)
from modelpress.quantize.qat import quantize_weight
from modelpress.train import TrainConfig, train

FAST = TrainConfig(epochs=2, batch_size=32, lr=0.05, restore_best=False)


def _trained(arch: str, splits, **options):
    torch.manual_seed(0)
    model = build_model(arch, splits.input_shape, splits.num_classes, **options)
    train(model, splits, FAST, progress=False)
    return model.eval()


def _ops(path) -> Counter:
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def _agreement(path, model, x) -> float:
    with torch.no_grad():
        return float((load_onnx(path, threads=1)(x).argmax(1) == model(x).argmax(1)).float().mean())


def test_dynamic_int8_mlp_is_smaller_and_agrees_with_float(tiny_splits, tmp_path):
    model = _trained("mlp:64-32", tiny_splits)
    report = quantize_int8(model, tmp_path / "d.onnx", Int8Config(mode="dynamic"), tiny_splits.x_train)
    assert report.mode == "dynamic" and report.quantized_weights == 3 and report.n_compared == 256
    assert report.bytes < 0.5 * report.float_bytes and report.argmax_agreement >= 0.9
    assert _ops(tmp_path / "d.onnx")["MatMulInteger"] == 3
    assert _agreement(tmp_path / "d.onnx", model, tiny_splits.x_test) >= 0.9  # on data calibration never saw
    float_acc = evaluate_accuracy(model, tiny_splits.x_test, tiny_splits.y_test).accuracy
    int8_acc = evaluate_accuracy(load_onnx(tmp_path / "d.onnx"), tiny_splits.x_test, tiny_splits.y_test).accuracy
    assert abs(float_acc - int8_acc) <= 0.05


def test_dynamic_leaves_convolutions_float_unless_asked(tiny_splits, tmp_path):
    model = _trained("cnn:8-16", tiny_splits, hidden=16)
    quantize_int8(model, tmp_path / "a.onnx", Int8Config(mode="dynamic"))  # no calibration: fine for dynamic
    quantize_int8(model, tmp_path / "b.onnx", Int8Config(mode="dynamic", dynamic_convs=True))
    assert _ops(tmp_path / "a.onnx")["ConvInteger"] == 0 and _ops(tmp_path / "a.onnx")["MatMulInteger"] == 2
    assert _ops(tmp_path / "b.onnx")["ConvInteger"] == 2


@pytest.mark.parametrize("fmt, marker", [("qdq", "QuantizeLinear"), ("qoperator", "QLinearConv")])
def test_static_int8_cnn_runs_and_agrees_with_float(fmt, marker, tiny_splits, tmp_path):
    model = _trained("cnn:16-32", tiny_splits, hidden=128)  # ~21k weights: big enough for file overheads not to dominate
    report = quantize_int8(model, tmp_path / "s.onnx", Int8Config(mode="static", quant_format=fmt), tiny_splits.x_train)
    assert report.quantized_weights == 4  # 2 conv + 2 linear, all 8-bit
    assert _ops(tmp_path / "s.onnx")[marker] >= 1
    assert report.argmax_agreement >= 0.9 and _agreement(tmp_path / "s.onnx", model, tiny_splits.x_test) >= 0.9
    assert report.bytes < 0.5 * report.float_bytes, (report.bytes, report.float_bytes)


def test_static_calibrates_from_a_dataloader_with_other_methods(tiny_splits, tmp_path):
    model = _trained("mlp:64-32", tiny_splits)
    export_onnx(model, tmp_path / "f.onnx")
    loader = tiny_splits.loader("train", 32)
    for method in ("entropy", "percentile"):
        quantize_static_onnx(tmp_path / "f.onnx", tmp_path / f"{method}.onnx", loader, method=method, max_examples=96)
        assert _agreement(tmp_path / f"{method}.onnx", model, tiny_splits.x_test) >= 0.85


def test_static_and_qat_refuse_missing_calibration(tiny_splits, tmp_path):
    model = build_model("mlp:64-32", tiny_splits.input_shape, tiny_splits.num_classes)
    for mode in ("static", "qat"):
        with pytest.raises(ConfigError, match="calibration"):
            quantize_int8(model, tmp_path / "x.onnx", Int8Config(mode=mode))
    export_onnx(model, tmp_path / "f.onnx")
    with pytest.raises(ConfigError, match="calibration"):
        quantize_static_onnx(tmp_path / "f.onnx", tmp_path / "x.onnx", None)
    assert not (tmp_path / "x.onnx").exists()


def test_calibration_of_the_wrong_shape_writes_nothing(tiny_splits, tmp_path):
    model = build_model("mlp:64-32", tiny_splits.input_shape, tiny_splits.num_classes)
    (tmp_path / "x.onnx").write_bytes(b"old")
    with pytest.raises(ShapeError, match="calibration examples have shape"):
        quantize_int8(model, tmp_path / "x.onnx", Int8Config(mode="static"), torch.randn(10, 3, 8, 8))
    assert (tmp_path / "x.onnx").read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["x.onnx"]


@pytest.mark.parametrize("kwargs, field", [({"mode": "int4"}, "mode"), ({"method": "mse"}, "method"),
                                           ({"quant_format": "fp8"}, "quant_format"), ({"weight_type": "int16"}, "weight_type"),
                                           ({"calibration_batch": 0}, "calibration_batch"), ({"ema_momentum": 0.0}, "ema_momentum")])
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        Int8Config(**kwargs)


def test_fake_quantize_rounds_to_the_grid_and_passes_gradients_inside_the_range():
    x = torch.tensor([-3.0, -0.26, 0.0, 0.24, 0.9, 5.0], requires_grad=True)
    scale, zero = torch.tensor(0.1), torch.tensor(10.0)  # representable: [-1.0, 2.0]
    y = fake_quantize(x, scale, zero, 0, 30)
    torch.testing.assert_close(y, torch.tensor([-1.0, -0.3, 0.0, 0.2, 0.9, 2.0]))
    y.backward(torch.ones_like(y))
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]  # straight through, zero where clamped


def test_qat_weights_and_inputs_lie_on_the_int8_grid_and_gradients_flow(tiny_splits):
    model = prepare_qat_(build_model("cnn:8-16", tiny_splits.input_shape, tiny_splits.num_classes, hidden=16))
    seen = {}
    conv = model.features[0][0]
    conv.register_forward_hook(lambda m, args, out: seen.update(x=args[0]))  # sees the pre-hook's output
    model.train()
    loss = torch.nn.functional.cross_entropy(model(tiny_splits.x_train[:32]), tiny_splits.y_train[:32])
    loss.backward()
    w = conv.weight.detach()  # (C, 1, 3, 3)
    steps = w / (w.abs().amax(dim=(1, 2, 3), keepdim=True) / 127)
    assert torch.allclose(steps, steps.round(), atol=1e-3) and steps.abs().max() <= 127 + 1e-3
    lo, hi = conv.input_min.clamp(max=0), conv.input_max.clamp(min=0)
    assert float(lo) < 0 < float(hi)  # the first batch set the range
    scale = (hi - lo) / 255
    levels = seen["x"] / scale + torch.round(-lo / scale)  # the uint8 code q of x = S (q - Z)
    assert torch.allclose(levels, levels.round(), atol=1e-3) and levels.min() >= -1e-3 and levels.max() <= 255 + 1e-3
    assert all(m.weight_float.grad is not None and m.weight_float.grad.abs().sum() > 0
               for m in model.modules() if hasattr(m, "weight_float"))


def test_qat_trains_and_converts_to_a_working_int8_file(tiny_splits, tmp_path):
    model = _trained("mlp:64-32", tiny_splits)
    prepare_qat_(model)
    train(model, tiny_splits, FAST, progress=False)
    assert len(qat_ranges(model)) == 3
    report = convert_qat(model, tmp_path / "q.onnx", tiny_splits.x_train)
    assert report.mode == "qat" and report.qat_ranges_used == 3 and report.notes == ()
    assert report.argmax_agreement >= 0.9 and is_qat_prepared(model)  # the model itself is left as it was
    calibrated = convert_qat(model, tmp_path / "c.onnx", tiny_splits.x_train, config=Int8Config(mode="qat", use_qat_ranges=False))
    assert calibrated.qat_ranges_used == 0 and "not used" in calibrated.notes[0] and calibrated.argmax_agreement >= 0.9
    # QAT's per-channel weight grid is ORT's: the file's int8 weights x scales give the QAT weights exactly
    initializers = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "q.onnx")).graph.initializer}
    for name in ("net.1", "net.3", "net.5"):
        layer = model.get_submodule(name)
        q, scale = initializers[f"{name}.weight_quantized"], initializers[f"{name}.weight_scale"]  # (out, in), (out,)
        assert q.dtype == np.int8
        expected = quantize_weight(layer.weight_float.detach()).numpy()
        np.testing.assert_allclose(q.astype(np.float32) * scale[:, None], expected, rtol=1e-6, atol=1e-8)


def test_quantize_int8_qat_trains_a_copy_and_needs_data(tiny_splits, tmp_path):
    model = _trained("mlp:64-32", tiny_splits)
    config = Int8Config(mode="qat")
    with pytest.raises(ConfigError, match="data"):
        quantize_int8(model, tmp_path / "q.onnx", config, tiny_splits.x_train)
    report = quantize_int8(model, tmp_path / "q.onnx", config, tiny_splits.x_train, data=tiny_splits, train_config=FAST)
    assert report.mode == "qat" and report.qat_ranges_used == 3 and not is_qat_prepared(model)
    assert _agreement(tmp_path / "q.onnx", model, tiny_splits.x_test) >= 0.85


def test_export_of_a_qat_model_folds_the_fake_quantization(tiny_splits, tmp_path):
    model = prepare_qat_(build_model("mlp:64-32", tiny_splits.input_shape, tiny_splits.num_classes))
    model.train()(tiny_splits.x_train[:16])
    report = export_onnx(model, tmp_path / "f.onnx")
    assert report.folded == ("qat fake quantization",) and report.max_abs_diff <= 1e-4
    assert _ops(tmp_path / "f.onnx") == Counter({"Gemm": 3, "Relu": 2, "Flatten": 1})  # no rounding ops left
    assert is_qat_prepared(model) and len(model.net[1]._forward_pre_hooks) == 1  # the copy's hooks were its own
    model(tiny_splits.x_train[:4]).sum().backward()  # the caller's QAT model still trains
    assert model.net[1].weight_float.grad.abs().sum() > 0


def test_prepare_qat_refuses_prepared_or_pruned_layers():
    model = prepare_qat_(build_model("mlp:64-32", (1, 8, 8), 4))
    with pytest.raises(ConfigError, match="net.1"):
        prepare_qat_(model)
    pruned = build_model("mlp:64-32", (1, 8, 8), 4)
    prune_(pruned, PruneConfig(sparsity=0.5))
    with pytest.raises(ConfigError, match="reparametrized"):
        prepare_qat_(pruned)
    assert not is_qat_prepared(pruned)  # refused before touching any layer


def test_dynamic_onnx_function_quantizes_a_file(tiny_splits, tmp_path):
    model = _trained("mlp:64-32", tiny_splits)
    export_onnx(model, tmp_path / "f.onnx")
    out = quantize_dynamic_onnx(tmp_path / "f.onnx", tmp_path / "d.onnx", per_channel=True, weight_type="quint8")
    assert out == tmp_path / "d.onnx" and _ops(out)["MatMulInteger"] == 3
    assert _agreement(out, model, tiny_splits.x_test) >= 0.9


def test_corrupt_onnx_input_is_a_clear_error(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07garbage")
    with pytest.raises(ModelFileError, match="junk.onnx"):
        quantize_dynamic_onnx(tmp_path / "junk.onnx", tmp_path / "d.onnx")
    with pytest.raises(ModelFileError, match="missing.onnx"):
        quantize_static_onnx(tmp_path / "missing.onnx", tmp_path / "s.onnx", torch.randn(4, 1, 8, 8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.onnx"]
