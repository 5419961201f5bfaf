"""``modelpress shrink``: the model on disk is really smaller, and the report compares it with the original."""

import json

import pytest

from modelpress.cli import main
from modelpress.models import build_model, read_model_file, save_model
from modelpress.measure import count_params

FAST = ["--finetune-epochs", "1", "--batch-size", "64", "--quiet", "--val-size", "50", "--json"]


@pytest.mark.parametrize("how", [["--channels", "0.5"], ["--low-rank", "tucker", "--flop-budget", "0.6", "--no-latency"],
                                 ["--separable", "--no-latency"],
                                 ["--channels", "0.5", "--low-rank", "svd", "--energy", "0.8", "--no-latency"]])
def test_shrink_writes_a_smaller_model_that_loads(how, tiny_mnist_dir, tmp_path, capsys):
    source = tmp_path / "vgg.mpk"
    save_model(build_model("vgg_mini:4", (1, 28, 28), 10), source)
    assert main(["shrink", str(source), "--data", str(tiny_mnist_dir), *how, *FAST, "-o", str(tmp_path / "out.mpk")]) == 0
    out = json.loads(capsys.readouterr().out)
    original, shrunk = out["comparison"]["rows"]
    assert shrunk["flops"] < original["flops"] and out["comparison"]["flop_reduction"] > 1
    loaded = read_model_file(tmp_path / "out.mpk")  # the new shapes are rebuilt from the file alone
    assert count_params(loaded.model) == shrunk["params"] and loaded.extra["method"] == "shrink"
    assert "faster" in out["comparison"]["verdict"]
    assert (out["comparison"]["speedup_b256"] is None) == ("--no-latency" in how)


def test_shrink_without_a_method_is_one_clear_line(tiny_mnist_dir, tmp_path, capsys):
    save_model(build_model("mlp:8", (1, 28, 28), 10), tmp_path / "m.mpk")
    assert main(["shrink", str(tmp_path / "m.mpk"), "--data", str(tiny_mnist_dir), "-o", str(tmp_path / "o.mpk")]) == 2
    assert "--channels" in capsys.readouterr().err
