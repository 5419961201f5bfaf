"""``modelpress export``: float and int8 ONNX files that ONNX Runtime runs, and its one-line errors."""

import json

import torch

from modelpress.cli import main
from modelpress.export import load_onnx
from modelpress.models import build_model, save_model
from modelpress.prune import PruneConfig, prune_


def run_json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_export_float_and_int8_files_that_run(tiny_mnist_dir, tmp_path, capsys):
    model = build_model("cnn:4-8", (1, 28, 28), 10)
    prune_(model, PruneConfig(sparsity=0.5))  # masks are folded on the way out
    save_model(model, tmp_path / "m.mpk")
    out = run_json(capsys, ["export", str(tmp_path / "m.mpk"), "--onnx", str(tmp_path / "m.onnx"), "--json"])
    assert out["bytes"] == (tmp_path / "m.onnx").stat().st_size and out["max_abs_diff"] < 1e-4
    assert load_onnx(tmp_path / "m.onnx")(torch.zeros(2, 1, 28, 28)).shape == (2, 10)

    out = run_json(capsys, ["export", str(tmp_path / "m.mpk"), "--onnx", str(tmp_path / "s.onnx"), "--int8", "static",
                            "--data", str(tiny_mnist_dir), "--calibration", "64", "--latency", "--json"])
    assert out["mode"] == "static" and out["int8_weight_tensors"] >= 2 and out["bytes"] < out["float_onnx_bytes"]
    assert 0 <= out["accuracy_onnx"] <= 1 and out["onnx_latency_ms_b1"] > 0 and out["pytorch_ms_b256"] > 0

    out = run_json(capsys, ["export", str(tmp_path / "m.mpk"), "--onnx", str(tmp_path / "d.onnx"), "--int8", "dynamic", "--json"])
    assert out["mode"] == "dynamic" and (tmp_path / "d.onnx").exists()


def test_export_errors_are_one_line(tmp_path, capsys):
    save_model(build_model("mlp:8", (1, 28, 28), 10), tmp_path / "m.mpk")
    assert main(["export", str(tmp_path / "m.mpk"), "--onnx", str(tmp_path / "x.onnx"), "--int8", "static"]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs --data" in err and "\n" not in err and not (tmp_path / "x.onnx").exists()
    (tmp_path / "bad.mpk").write_bytes(b"junk" * 10)
    assert main(["export", str(tmp_path / "bad.mpk"), "--onnx", str(tmp_path / "x.onnx")]) == 2
    assert "bad.mpk" in capsys.readouterr().err
