"""``modelpress distill --method NAME`` for every method of the family, and ``modelpress layers``, on tiny data."""

import json

import pytest

from modelpress.cli import main
from modelpress.models import build_model, read_model_file, save_model

FAST = ["--epochs", "2", "--batch-size", "64", "--quiet", "--val-size", "50"]


@pytest.fixture
def cnn_teacher(tmp_path):
    path = tmp_path / "teacher.mpk"
    save_model(build_model("vgg_mini:4", (1, 28, 28), 10), path)
    return path


def run_json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def one_error_line(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


@pytest.mark.parametrize("method,extra", [
    ("fitnets", []),
    ("fitnets", ["--layers", "features.2:features.4", "--no-anneal"]),
    ("attention", []),
    ("fsp", ["--fsp-pair", "features.1,features.2:features.2,features.4"]),
    ("early-stopped", ["--kd-epochs", "1"]),
])
def test_single_student_methods_write_a_model_that_records_its_method(method, extra, tiny_mnist_dir, cnn_teacher, tmp_path, capsys):
    out_path = tmp_path / f"{method}.mpk"
    out = run_json(capsys, ["distill", "--teacher", str(cnn_teacher), "--student", "cnn:4-8-16", "--method", method, *extra,
                            "--data", str(tiny_mnist_dir), "--stage1-epochs", "1", *FAST, "-o", str(out_path), "--json"])
    loaded = read_model_file(out_path)
    assert loaded.extra["method"] == f"distill:{method}" and loaded.spec.arch == "cnn:4-8-16"
    assert out["n"] == 100 and 0 <= out["accuracy"] <= 1
    assert not (tmp_path / f"{method}.mpk.ckpt").exists()


def test_born_again_assistant_and_mutual_write_every_model(tiny_mnist_dir, cnn_teacher, tmp_path, capsys):
    data = ["--data", str(tiny_mnist_dir), *FAST]
    small = tmp_path / "small.mpk"
    save_model(build_model("cnn:4-8-16", (1, 28, 28), 10), small)
    out = run_json(capsys, ["distill", "--teacher", str(small), "--method", "born-again", "--generations", "2", *data,
                            "-o", str(tmp_path / "ban.mpk"), "--json"])
    assert (tmp_path / "ban.gen1.mpk").exists() and read_model_file(tmp_path / "ban.mpk").spec.arch == "cnn:4-8-16"
    assert 0 <= out["ensemble_gen1-2"] <= 1 and not (tmp_path / "ban.mpk.generations").exists()

    out = run_json(capsys, ["distill", "--teacher", str(cnn_teacher), "--student", "cnn:4-8-16", "--method", "assistant",
                            "--assistant", "cnn:8-8-16", *data, "-o", str(tmp_path / "ta.mpk"), "--json"])
    assert read_model_file(tmp_path / "ta.assistant1.mpk").spec.arch == "cnn:8-8-16"

    out = run_json(capsys, ["distill", "--student", "mlp:16", "--method", "mutual", "--peers", "3", *data,
                            "-o", str(tmp_path / "peer.mpk"), "--json"])
    assert len(out["other_peers"]) == 2 and (tmp_path / "peer.peer3.mpk").exists() and 0 <= out["cohort_accuracy"] <= 1


def test_specialists_write_a_manifest_of_their_class_sets(tiny_mnist_dir, tmp_path, capsys):
    generalist = tmp_path / "g.mpk"
    save_model(build_model("mlp:16", (1, 28, 28), 10), generalist)
    out = run_json(capsys, ["distill", "--teacher", str(generalist), "--student", "mlp:8", "--method", "specialists",
                            "--specialists", "3", "--data", str(tiny_mnist_dir), *FAST, "-o", str(tmp_path / "spec.json"), "--json"])
    manifest = json.loads((tmp_path / "spec.json").read_text())
    assert manifest["format"] == "modelpress-specialists" and manifest == {k: out[k] for k in manifest}
    for item in manifest["specialists"]:
        assert read_model_file(item["file"]).spec.num_classes == len(item["classes"]) + 1  # its classes + dustbin


def test_omit_class_distils_without_it_and_fits_its_bias(tiny_mnist_dir, cnn_teacher, tmp_path, capsys):
    out = run_json(capsys, ["distill", "--teacher", str(cnn_teacher), "--student", "mlp:16", "--omit-class", "3",
                            "--data", str(tiny_mnist_dir), *FAST, "-o", str(tmp_path / "o.mpk"), "--json"])
    before, after = out["omitted_class"]["before"], out["omitted_class"]["after"]
    assert before["n_class"] == after["n_class"] > 0 and out["omitted_class"]["bias_offset"] >= 0
    assert read_model_file(tmp_path / "o.mpk").extra["omitted_class"] == 3


def test_layers_lists_names_and_output_shapes(cnn_teacher, capsys):
    out = run_json(capsys, ["layers", str(cnn_teacher), "--json"])
    shapes = {row["layer"]: row["output"] for row in out["layers"]}
    assert shapes["features.4"] == "8x14x14" and shapes["classifier"] == "10"


def test_bad_method_options_give_one_clear_line(tiny_mnist_dir, cnn_teacher, tmp_path, capsys):
    base = ["--data", str(tiny_mnist_dir), *FAST, "-o", str(tmp_path / "x.mpk")]
    teacher = ["--teacher", str(cnn_teacher)]
    assert "exactly one --teacher" in one_error_line(capsys, ["distill", *teacher, *teacher, "--student", "cnn:4-8-16",
                                                               "--method", "attention", *base])
    assert "STUDENT_LAYER:TEACHER_LAYER" in one_error_line(capsys, ["distill", *teacher, "--student", "cnn:4-8-16",
                                                                     "--method", "fitnets", "--layers", "features.2", *base])
    assert "nosuch" in one_error_line(capsys, ["distill", *teacher, "--student", "cnn:4-8-16", "--method", "attention",
                                               "--layers", "nosuch:features.4", *base])
    assert "--fsp-pair" in one_error_line(capsys, ["distill", *teacher, "--student", "cnn:4-8-16", "--method", "fsp", *base])
    assert "drop --student" in one_error_line(capsys, ["distill", *teacher, "--student", "mlp:8", "--method", "born-again", *base])
    assert "--assistant" in one_error_line(capsys, ["distill", *teacher, "--student", "mlp:8", "--method", "assistant", *base])
    assert "drop --teacher" in one_error_line(capsys, ["distill", *teacher, "--student", "mlp:8", "--method", "mutual", *base])
    assert "--kd-epochs" in one_error_line(capsys, ["distill", *teacher, "--student", "mlp:8", "--kd-epochs", "1", *base])
