"""ONNX export: every zoo model, every compressed form, checked in ONNX Runtime; atomic writes; errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from modelpress.core.errors import ConfigError, ModelFileError, ShapeError
from modelpress.export import ExportCheckError, ExportError, OnnxModel, export_onnx, load_onnx
from modelpress.measure import evaluate_accuracy
from modelpress.measure.onnx_latency import measure_onnx_latency
from modelpress.models import build_model
from modelpress.models.surgery import replace_module
from modelpress.prune import PruneConfig, is_pruned, prune_
from modelpress.quantize import QuantizeConfig, is_shared, quantize_

SHAPE = (1, 16, 16)  # the smallest size every zoo architecture accepts (lenet5 needs 16)
ZOO = ["mlp:64-32", "lenet300_100", "lenet5", "vgg_mini:8", "mobilenetv2_tiny", "cnn:8-16", "shallow_cnn:8-32"]


def _settle_batchnorm(model: nn.Module) -> nn.Module:
    """Give BatchNorm non-trivial running statistics so that outputs depend on the input (fresh BN
    statistics make deep random nets output a near-constant, which would hide export errors)."""
    model.train()
    with torch.no_grad():
        for seed in range(3):
            model(torch.randn(16, *SHAPE, generator=torch.Generator().manual_seed(seed)))
    return model.eval()


def _onnx_weights(path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer if len(t.dims) >= 2}


@pytest.mark.parametrize("arch", ZOO)
def test_every_zoo_model_exports_and_matches_pytorch_at_batch_1_and_7(arch, tmp_path):
    torch.manual_seed(0)
    model = _settle_batchnorm(build_model(arch, SHAPE, 10))
    report = export_onnx(model, tmp_path / "m.onnx")
    assert report.checked and report.check_batches == (1, 7) and report.opset == 17
    assert report.max_abs_diff <= 1e-4 and report.bytes == (tmp_path / "m.onnx").stat().st_size
    # an independent look, on inputs and a batch size the check did not use
    x = torch.randn(5, *SHAPE, generator=torch.Generator().manual_seed(42))
    with torch.no_grad():
        expected = model(x)
    got = load_onnx(tmp_path / "m.onnx", threads=1)(x)
    assert got.shape == (5, 10) and expected.abs().max() > 0
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-3)


def test_pruned_model_exports_with_its_zeros_and_stays_pruned(tmp_path):
    model = build_model("mlp:64-32", SHAPE, 10)
    prune_(model, PruneConfig(sparsity=0.8))
    x = torch.randn(4, *SHAPE)
    before = model(x).detach()
    report = export_onnx(model, tmp_path / "p.onnx")
    assert report.folded == ("pruning masks",)
    weights = _onnx_weights(tmp_path / "p.onnx")
    assert len(weights) == 3
    assert all(abs(float((w == 0).mean()) - 0.8) < 0.02 for w in weights.values())  # the masks, folded
    torch.testing.assert_close(load_onnx(tmp_path / "p.onnx")(x), before, atol=1e-4, rtol=1e-3)
    # the caller's model is untouched: still masked, same outputs, still trainable
    assert is_pruned(model.net[1]) and torch.equal(model(x).detach(), before)
    model(x).sum().backward()
    assert model.net[1].weight_orig.grad is not None


def test_weight_shared_model_exports_at_most_2_to_the_bits_values_per_layer(tmp_path):
    model = build_model("lenet5", SHAPE, 10)
    quantize_(model, QuantizeConfig(bits_fc=3, bits_conv=4, iters=5))
    x = torch.randn(3, *SHAPE)
    before = model(x).detach()
    report = export_onnx(model, tmp_path / "s.onnx")
    assert report.folded == ("weight sharing",)
    weights = _onnx_weights(tmp_path / "s.onnx").values()
    assert sorted(len(np.unique(w)) <= (16 if w.ndim == 4 else 8) for w in weights) == [True] * 4  # 2 conv, 2 fc
    torch.testing.assert_close(load_onnx(tmp_path / "s.onnx")(x), before, atol=1e-4, rtol=1e-3)
    assert is_shared(model.classifier[1]) and len(model.classifier[1]._forward_pre_hooks) == 1
    assert torch.equal(model(x).detach(), before)


def test_structurally_changed_model_is_just_a_module(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))
    replace_module(model, "1", nn.Sequential(nn.Linear(64, 8, bias=False), nn.Linear(8, 32)))  # a factorized layer
    with pytest.raises(ConfigError, match="input_shape"):
        export_onnx(model, tmp_path / "f.onnx")  # no spec: the shape must be given
    report = export_onnx(model, tmp_path / "f.onnx", input_shape=(1, 8, 8))
    assert report.folded == () and len(_onnx_weights(tmp_path / "f.onnx")) == 3
    x = torch.randn(6, 1, 8, 8)
    torch.testing.assert_close(load_onnx(tmp_path / "f.onnx")(x), model(x).detach(), atol=1e-4, rtol=1e-3)


def test_fixed_batch_export_takes_batch_1_only(tmp_path):
    report = export_onnx(build_model("cnn:8-16", SHAPE, 10), tmp_path / "b1.onnx", dynamic_batch=False)
    assert report.check_batches == (1,)
    runner = load_onnx(tmp_path / "b1.onnx")
    assert runner(torch.randn(1, *SHAPE)).shape == (1, 10)
    with pytest.raises(ShapeError, match="cannot run"):
        runner(torch.randn(2, *SHAPE))


def test_onnx_model_evaluates_like_the_pytorch_model(tiny_splits, tmp_path):
    model = build_model("cnn:8-16", tiny_splits.input_shape, tiny_splits.num_classes)
    with torch.no_grad():
        model.train()(tiny_splits.x_train[:64])  # BatchNorm statistics from data
    export_onnx(model.eval(), tmp_path / "c.onnx")
    ours = evaluate_accuracy(OnnxModel(tmp_path / "c.onnx", threads=1), tiny_splits.x_test, tiny_splits.y_test, batch_size=50)
    theirs = evaluate_accuracy(model, tiny_splits.x_test, tiny_splits.y_test, batch_size=50)
    assert ours.errors == theirs.errors and ours.n == 128 and abs(ours.loss - theirs.loss) < 1e-4


class _Drift(nn.Module):
    """Traced once, run again: the graph bakes the first call's factor, eager PyTorch moves on."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x.flatten(1) * float(self.calls)


def test_failed_check_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.onnx"
    target.write_bytes(b"old")
    with pytest.raises(ExportCheckError, match="differ"):
        export_onnx(_Drift(), target, input_shape=(4,))
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]


def test_unexportable_layer_raises_export_error_and_writes_nothing(tmp_path):
    class Svd(nn.Module):
        def forward(self, x):
            return torch.linalg.svd(x.reshape(-1, 4, 4))[1]

    with pytest.raises(ExportError, match="linalg_svd"):
        export_onnx(Svd(), tmp_path / "svd.onnx", input_shape=(16,))
    assert list(tmp_path.iterdir()) == []


def test_corrupt_or_missing_onnx_file_is_a_clear_error(tmp_path):
    export_onnx(build_model("mlp:64-32", SHAPE, 10), tmp_path / "ok.onnx")
    raw = (tmp_path / "ok.onnx").read_bytes()
    (tmp_path / "cut.onnx").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "junk.onnx").write_bytes(b"not an onnx model at all")
    for name in ("cut.onnx", "junk.onnx", "missing.onnx"):
        with pytest.raises(ModelFileError, match=name):
            load_onnx(tmp_path / name)


@pytest.mark.parametrize("kwargs, field", [({"opset": 7}, "opset"), ({"atol": -1.0}, "atol"), ({"rtol": "x"}, "rtol"),
                                           ({"exporter": "tflite"}, "exporter"), ({"input_shape": (0, 4)}, "input_shape")])
def test_bad_arguments_name_the_field(kwargs, field, tmp_path):
    with pytest.raises(ConfigError, match=field):
        export_onnx(build_model("mlp:64-32", SHAPE, 10), tmp_path / "x.onnx", **kwargs)


def test_wrong_input_shape_is_a_shape_error(tmp_path):
    with pytest.raises(ShapeError, match="inputs of shape"):
        export_onnx(build_model("mlp:64-32", SHAPE, 10), tmp_path / "x.onnx", input_shape=(3, 5))


@pytest.mark.slow  # ~6 s: the torch.export-based exporter is slow to start
def test_dynamo_exporter_also_works(tmp_path):
    report = export_onnx(build_model("mlp:64-32", SHAPE, 10), tmp_path / "d.onnx", exporter="dynamo")
    assert report.exporter == "dynamo" and report.max_abs_diff <= 1e-4 and report.opset >= 17


def test_measure_onnx_latency_reports_median_ms_per_batch(tmp_path):
    export_onnx(build_model("mlp:64-32", SHAPE, 10), tmp_path / "m.onnx", check=False)
    result = measure_onnx_latency(tmp_path / "m.onnx", SHAPE, batch_sizes=(1, 4), threads=1, repeats=3)
    assert set(result) == {"latency_ms_b1", "latency_ms_b4", "repeats_b1", "repeats_b4", "threads"}
    assert result["threads"] == 1 and result["repeats_b4"] == 3 and 0 < result["latency_ms_b1"] < 1000
    with pytest.raises(ShapeError):
        measure_onnx_latency(tmp_path / "m.onnx", (3, 3), batch_sizes=(1,), threads=1, repeats=3)
