"""The CLI end to end on tiny data, and its one-line errors for bad input."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from modelpress.cli import main
from modelpress.models import build_model, save_model

FAST = ["--epochs", "2", "--batch-size", "64", "--quiet"]
REQUIRED_KEYS = {"accuracy", "errors", "n", "params", "bytes", "flops", "latency_ms_b1", "latency_ms_b256"}


def run_json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_train_distill_evaluate_on_a_users_own_mnist_folder(tiny_mnist_dir, tmp_path, capsys):
    data = str(tiny_mnist_dir)
    teacher = tmp_path / "teacher.mpk"
    out = run_json(capsys, ["train", "--model", "mlp:64-64", "--dropout", "0.2", "--jitter", "1", "--data", data,
                            "--val-size", "50", *FAST, "-o", str(teacher), "--json"])
    assert teacher.exists() and not (tmp_path / "teacher.mpk.ckpt").exists()
    assert REQUIRED_KEYS <= set(out) and out["n"] == 100

    student = tmp_path / "student.mpk"
    out = run_json(capsys, ["distill", "--teacher", str(teacher), "--student", "mlp:16", "--method", "hinton",
                            "--temperature", "4", "--alpha", "0.9", "--data", data, "--val-size", "50", *FAST,
                            "-o", str(student), "--json", "--save-store", str(tmp_path / "store.st")])
    assert out["params"] < 784 * 64

    out = run_json(capsys, ["evaluate", str(student), "--data", data, "--json"])
    assert REQUIRED_KEYS <= set(out)
    assert out["bytes"] == student.stat().st_size and out["n"] == 100 and 0 <= out["accuracy"] <= 1
    assert out["errors"] == round((1 - out["accuracy"]) * out["n"])

    # the same data seen through a stored teacher, an ensemble, and logit regression
    run_json(capsys, ["distill", "--teacher-store", str(tmp_path / "store.st"), "--student", "mlp:16", "--data", data,
                      "--val-size", "50", *FAST, "-o", str(tmp_path / "s2.mpk"), "--json"])
    run_json(capsys, ["distill", "--teacher", str(teacher), "--teacher", str(teacher), "--teacher-weights", "0.3,0.7",
                      "--student", "mlp:16", "--method", "logits", "--optimizer", "adam", "--lr", "0.001", "--data", data, "--val-size", "50",
                      "--store-mass", "0.99", "--store-max-classes", "3", *FAST, "-o", str(tmp_path / "s3.mpk"), "--json"])


def test_evaluate_reads_compressed_files_and_reports_their_size_on_disk(tiny_mnist_dir, tmp_path, capsys):
    from modelpress.encode import save_compressed
    from modelpress.prune import PruneConfig, prune_
    from modelpress.quantize import quantize_

    model = build_model("mlp:32", (1, 28, 28), 10)
    prune_(model, PruneConfig(sparsity=0.9))
    quantize_(model)
    save_compressed(model, tmp_path / "m.mpz")
    out = run_json(capsys, ["evaluate", str(tmp_path / "m.mpz"), "--data", str(tiny_mnist_dir), "--json", "--no-latency"])
    assert out["bytes"] == (tmp_path / "m.mpz").stat().st_size and out["nonzero_params"] < out["params"] * 0.2


def test_evaluate_prints_a_table_without_json(tiny_mnist_dir, tmp_path, capsys):
    model = build_model("mlp:8", (1, 28, 28), 10)
    save_model(model, tmp_path / "m.mpk")
    assert main(["evaluate", str(tmp_path / "m.mpk"), "--data", str(tiny_mnist_dir), "--no-latency"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| model |") and "errors" in out
    from modelpress.distill import build_teacher_store

    build_teacher_store(torch.randn(5, 10)).save(tmp_path / "store.st")
    assert main(["evaluate", str(tmp_path / "store.st"), "--data", str(tiny_mnist_dir)]) == 2
    assert "stored teacher outputs, not a model" in capsys.readouterr().err


def one_error_line(capsys, argv) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("modelpress: error: "), captured.err
    assert "Traceback" not in captured.err
    return lines[0]


def test_bad_inputs_give_one_clear_line(tiny_mnist_dir, tmp_path, capsys, monkeypatch):
    data = str(tiny_mnist_dir)
    line = one_error_line(capsys, ["train", "--model", "resnet9000", "--data", data, *FAST, "-o", str(tmp_path / "x.mpk")])
    assert "unknown model 'resnet9000'" in line and "mlp" in line

    line = one_error_line(capsys, ["train", "--model", "mlp:8", "--data", str(tmp_path / "nowhere"), *FAST, "-o", str(tmp_path / "x.mpk")])
    assert "nowhere" in line

    five_class = tmp_path / "five.mpk"
    save_model(build_model("mlp:8", (1, 28, 28), 5), five_class)
    line = one_error_line(capsys, ["distill", "--teacher", str(five_class), "--student", "mlp:8", "--data", data, *FAST,
                                   "-o", str(tmp_path / "s.mpk")])
    assert "class-count mismatch" in line and "5" in line and "10" in line

    line = one_error_line(capsys, ["evaluate", str(five_class), "--data", data])
    assert "class-count mismatch" in line

    corrupt = tmp_path / "corrupt.mpk"
    corrupt.write_bytes(five_class.read_bytes()[:100])
    line = one_error_line(capsys, ["evaluate", str(corrupt), "--data", data])
    assert "corrupt.mpk" in line

    line = one_error_line(capsys, ["train", "--model", "mlp:8", "--data", data, "--epochs", "0", "-o", str(tmp_path / "x.mpk")])
    assert "epochs must be positive" in line

    teacher = tmp_path / "t.mpk"
    save_model(build_model("mlp:8", (1, 28, 28), 10), teacher)
    line = one_error_line(capsys, ["distill", "--teacher", str(teacher), "--student", "mlp:8", "--data", data,
                                   "--jitter", "2", *FAST, "-o", str(tmp_path / "s.mpk")])
    assert "--no-precompute" in line


def test_missing_registered_data_names_every_place_searched(tmp_path, capsys, monkeypatch):
    import modelpress.data.mnist as mnist

    monkeypatch.setenv("MODELPRESS_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(mnist, "SYSTEM_DATA_DIRS", (tmp_path / "system",))
    assert main(["train", "--model", "mlp:8", "--data", "mnist", *FAST, "-o", str(tmp_path / "x.mpk")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("modelpress: error: could not find the mnist data set") and "Traceback" not in err
    for place in (tmp_path / "env", tmp_path / "home" / ".cache" / "modelpress" / "mnist", tmp_path / "system" / "mnist"):
        assert str(place) in err
    assert "MODELPRESS_DATA" in err and "download_mnist" in err


def test_interrupted_training_resumes_from_the_checkpoint(tiny_mnist_dir, tmp_path, capsys, monkeypatch):
    import modelpress.train.loop as loop

    args = ["train", "--model", "mlp:32", "--data", str(tiny_mnist_dir), "--val-size", "50", "--epochs", "3",
            "--batch-size", "64", "--quiet", "-o", str(tmp_path / "m.mpk"), "--json"]
    real_validate = loop._validate
    calls = {"n": 0}

    def crash_on_second_epoch(model, loader, device):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_validate(model, loader, device)

    monkeypatch.setattr(loop, "_validate", crash_on_second_epoch)
    assert main(args) == 130
    assert "--resume" in capsys.readouterr().err
    assert (tmp_path / "m.mpk.ckpt").exists() and not (tmp_path / "m.mpk").exists()
    # a checkpoint is itself a file `evaluate` understands
    partial = run_json(capsys, ["evaluate", str(tmp_path / "m.mpk.ckpt"), "--data", str(tiny_mnist_dir), "--no-latency", "--json"])
    assert partial["arch"] == "mlp:32" and partial["n"] == 100
    monkeypatch.setattr(loop, "_validate", real_validate)
    resumed = run_json(capsys, args + ["--resume"])
    uninterrupted = run_json(capsys, args[:-3] + ["-o", str(tmp_path / "u.mpk"), "--json"])
    assert resumed["errors"] == uninterrupted["errors"] and resumed["loss"] == pytest.approx(uninterrupted["loss"])


def test_help_is_available_from_the_installed_command():
    exe = shutil.which("modelpress") or str(__import__("pathlib").Path(sys.executable).parent / "modelpress")
    out = subprocess.run([exe, "distill", "--help"], capture_output=True, text=True, check=True).stdout
    assert "--temperature" in out and "examples:" in out


def test_demo_quick_runs_on_digits(tmp_path, capsys):
    # the demo's fallback data set; Fashion-MNIST runs are covered by the benchmark
    result = run_demo_quick(tmp_path, capsys)
    names = [row["model"] for row in result["rows"]]
    assert names == ["teacher", "student alone", "student distilled"]
    assert all(row["accuracy"] > 0.5 for row in result["rows"])
    assert (tmp_path / "demo" / "results.md").read_text().startswith("| model |")


def run_demo_quick(tmp_path, capsys):
    from modelpress.demo import run_demo

    return run_demo(data="digits", quick=True, output_dir=str(tmp_path / "demo"), progress=False)


FASHION = __import__("pathlib").Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not FASHION.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_demo_quick_on_fashion_mnist_prints_the_seeds_table(tmp_path, capsys):
    assert main(["demo", "--quick", "--quiet", "--output-dir", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "| teacher |" in out and "| student distilled |" in out and "seeds_mnist_errors" in out
    result = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert [row["seeds_mnist_errors"] for row in result["rows"]] == [67, 146, 74]
    assert all(row["n"] == 2000 and row["accuracy"] > 0.6 for row in result["rows"])


def test_compress_inspect_evaluate_on_tiny_data(tiny_mnist_dir, tmp_path, capsys):
    data = str(tiny_mnist_dir)
    model = tmp_path / "lenet.mpk"
    run_json(capsys, ["train", "--model", "mlp:64-32", "--data", data, "--val-size", "50", *FAST, "-o", str(model), "--json"])
    out = run_json(capsys, ["compress", str(model), "--data", data, "--val-size", "50", "--sparsity", "0.9",
                            "--bits", "fc=4", "--retrain-epochs", "1", "--finetune-epochs", "1", "--batch-size", "64",
                            "--quiet", "-o", str(tmp_path / "lenet.mpz"), "--json"])
    assert out["bytes"] == (tmp_path / "lenet.mpz").stat().st_size and out["rate"] > 15
    for suffix in (".report.md", ".report.json", ".hist.png"):
        assert (tmp_path / f"lenet{suffix}").stat().st_size > 100
    assert "Compress rate" in (tmp_path / "lenet.report.md").read_text()

    info = run_json(capsys, ["inspect", str(tmp_path / "lenet.mpz"), "--json"])
    assert info["arch"] == "mlp:64-32" and info["bytes"] == out["bytes"] and len(info["layers"]) >= 3
    assert main(["inspect", str(tmp_path / "lenet.mpz")]) == 0
    assert "checksum OK" in capsys.readouterr().out

    evaluated = run_json(capsys, ["evaluate", str(tmp_path / "lenet.mpz"), "--data", data, "--json", "--no-latency"])
    assert evaluated["bytes"] == out["bytes"]
    assert evaluated["errors"] == round(out["compressed_error_percent"] * evaluated["n"] / 100)


def test_compress_rejects_malformed_bit_specs(tiny_mnist_dir, tmp_path, capsys):
    model = tmp_path / "m.mpk"
    save_model(build_model("mlp:8", (1, 28, 28), 10), model)
    line = one_error_line(capsys, ["compress", str(model), "--data", str(tiny_mnist_dir), "--bits", "fc=five",
                                   "-o", str(tmp_path / "m.mpz")])
    assert "--bits" in line and "fc=5,conv=8" in line
    corrupt = tmp_path / "bad.mpz"
    corrupt.write_bytes(b"MPZ\x00" + b"\x01" * 40)
    assert "bad.mpz" in one_error_line(capsys, ["inspect", str(corrupt)])


def test_model_option_reaches_the_architecture(tmp_path):
    from modelpress.models import load_model

    out = tmp_path / "gru.mpk"
    assert main(["train", "--model", "gru:8", "--model-option", "bidirectional=true", "--model-option", "readout=last",
                 "--data", "mnist1d", "--limit", "64", "--limit-test", "32", "--epochs", "1", "--quiet", "-o", str(out)]) == 0
    model = load_model(out)
    assert model.modelpress_spec.options["bidirectional"] is True and model.modelpress_spec.options["readout"] == "last"
    assert main(["train", "--model", "gru:8", "--model-option", "bidirectional", "--data", "mnist1d", "--limit", "64",
                 "--epochs", "1", "-o", str(tmp_path / "x.mpk")]) == 2


def test_compress_gradually_and_without_context_masks(tiny_mnist_dir, tmp_path, capsys):
    from modelpress.encode import read_manifest
    from modelpress.encode.container import _HEADER

    data = str(tiny_mnist_dir)
    model = tmp_path / "m.mpk"
    run_json(capsys, ["train", "--model", "mlp:64-32", "--data", data, "--val-size", "50", *FAST, "-o", str(model), "--json"])
    common = ["--data", data, "--val-size", "50", "--sparsity", "0.9", "--bits", "fc=4", "--retrain-epochs", "2",
              "--finetune-epochs", "0", "--batch-size", "64", "--quiet", "--json"]
    gradual = run_json(capsys, ["compress", str(model), *common, "--gradual", "0.5", "-o", str(tmp_path / "g.mpz")])
    assert gradual["rate"] > 5
    half = run_json(capsys, ["compress", str(model), *common, "--gradual", "0.5", "--float16",
                             "-o", str(tmp_path / "h.mpz")])
    centroids = sum(e["centroids"] for e in read_manifest(tmp_path / "h.mpz")[0]["tensors"] if e["kind"] == "shared")
    assert gradual["bytes"] - half["bytes"] >= 2 * (64 + 32 + 10 + centroids) - 24  # 2 bytes a float instead of 4
    run_json(capsys, ["compress", str(model), *common, "--no-context-masks", "-o", str(tmp_path / "plain.mpz")])
    _, version, _, _ = _HEADER.unpack_from((tmp_path / "plain.mpz").read_bytes())
    assert version == 1  # no context-coded masks: the first format, readable by older modelpress
    assert "gradual" in one_error_line(capsys, ["compress", str(model), *common, "--gradual", "1.5",
                                                "-o", str(tmp_path / "x.mpz")])


def test_compress_learns_from_an_ensemble_of_teachers(tiny_mnist_dir, tmp_path, capsys):
    data = str(tiny_mnist_dir)
    model, other = tmp_path / "m.mpk", tmp_path / "other.mpk"
    for path, seed in ((model, "0"), (other, "1")):
        run_json(capsys, ["train", "--model", "mlp:64-32", "--data", data, "--val-size", "50", *FAST, "--seed", seed,
                          "-o", str(path), "--json"])
    # gradual pruning: the unretrained pruned weights are no candidate for the best epoch, so the teachers show
    common = ["--data", data, "--val-size", "50", "--sparsity", "0.8", "--bits", "fc=4", "--retrain-epochs", "2",
              "--gradual", "0.5", "--finetune-epochs", "0", "--batch-size", "64", "--quiet", "--json"]
    alone = run_json(capsys, ["compress", str(model), *common, "--self-distill", "-o", str(tmp_path / "a.mpz")])
    taught = run_json(capsys, ["compress", str(model), *common, "--self-distill", "--teacher", str(other),
                               "-o", str(tmp_path / "t.mpz")])
    assert taught["rate"] > 5 and (tmp_path / "a.mpz").read_bytes() != (tmp_path / "t.mpz").read_bytes()
    assert alone["reference_error_percent"] == taught["reference_error_percent"]  # judged against MODEL alone
    assert "give --self-distill too" in one_error_line(
        capsys, ["compress", str(model), *common, "--teacher", str(other), "-o", str(tmp_path / "x.mpz")])
    wrong = tmp_path / "wrong.mpk"
    save_model(build_model("mlp:8", (1, 28, 28), 3), wrong)
    line = one_error_line(capsys, ["compress", str(model), *common, "--self-distill", "--teacher", str(wrong),
                                   "-o", str(tmp_path / "x.mpz")])
    assert "class-count mismatch" in line and "wrong.mpk" in line


def test_compress_spreads_the_kept_weights_by_a_sensitivity_scan(tiny_mnist_dir, tmp_path, capsys):
    from modelpress.encode import load_compressed

    data = str(tiny_mnist_dir)
    model = tmp_path / "m.mpk"
    run_json(capsys, ["train", "--model", "mlp:64-32", "--data", data, "--val-size", "50", *FAST, "-o", str(model), "--json"])
    common = ["--data", data, "--sparsity", "0.9", "--criterion", "sensitivity", "--bits", "fc=4", "--retrain-epochs",
              "1", "--finetune-epochs", "0", "--batch-size", "64", "--quiet", "--json"]
    out = run_json(capsys, ["compress", str(model), "--val-size", "50", *common, "-o", str(tmp_path / "s.mpz")])
    allocation = out["allocation"]
    assert set(allocation) == {"net.1", "net.3", "net.5"}
    loaded, _, _ = load_compressed(tmp_path / "s.mpz")
    layers = {name: m.weight for name, m in loaded.named_modules() if name in allocation}
    kept = sum(int((w != 0).sum()) for w in layers.values())
    assert kept <= round(0.1 * sum(w.numel() for w in layers.values()))  # the budget holds over all layers
    for name, w in layers.items():
        assert float((w == 0).float().mean()) >= allocation[name] - 0.01
    with_quality = [a for a in common if a not in ("--sparsity", "0.9")] + ["--quality", "1.0"]
    assert "--criterion sensitivity goes with --sparsity" in one_error_line(
        capsys, ["compress", str(model), *with_quality, "-o", str(tmp_path / "x.mpz")])
