"""``modelpress mimic``: a CSV in, a tree file, rules, an ONNX MLP and a comparison out; clear errors."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from sklearn.datasets import make_classification

from modelpress.cli import main
from modelpress.export import load_onnx
from modelpress.tabular.trees import load_tree


@pytest.fixture
def csv_file(tmp_path):
    x, y = make_classification(160, 4, n_informative=3, n_redundant=0, random_state=0)
    path = tmp_path / "rows.csv"
    with path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["id", "f0", "f1", "f2", "f3", "shop", "bought"])
        for i, (row, label) in enumerate(zip(x, y)):
            out.writerow([i, *row, ["north", "south"][i % 2], ["no", "yes"][label]])
    return path


FAST = ["--n-synthetic", "300", "--epochs", "10", "--hidden", "16"]


@pytest.mark.slow
def test_mimic_writes_students_and_a_comparison(csv_file, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["mimic", str(csv_file), "--label", "bought", "--categorical", "shop", "--drop", "id",
                 "--teacher", "random_forest", *FAST, "-o", str(out), "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    models = [row["model"] for row in report["rows"]]
    assert models == ["teacher", "CART (CV-pruned)", "born-again tree", "mimic MLP"]
    assert all(0.0 <= row["error"] <= 1.0 and row["ms_1_row"] > 0 for row in report["rows"])
    tree = load_tree(out / "tree.json")
    assert tree.feature_names == ["f0", "f1", "f2", "f3", "shop"] and tree.categories == {4: ["north", "south"]}
    assert set(tree.classes.tolist()) <= {"no", "yes"}
    assert "|---" in (out / "tree.rules.txt").read_text()
    onnx = load_onnx(out / "mlp.onnx")
    assert onnx(torch.zeros(3, 5)).shape == (3, 2)
    assert json.loads((out / "mlp.classes.json").read_text()) == ["no", "yes"]
    assert (out / "report.md").read_text().startswith("# modelpress mimic")


def test_a_module_teacher_with_the_wrong_class_count_is_named(csv_file, tmp_path, capsys):
    from modelpress.models import build_model, save_model

    teacher = tmp_path / "teacher.mpk"
    save_model(build_model("mlp:8", (5,), 3), teacher)
    code = main(["mimic", str(csv_file), "--label", "bought", "--categorical", "shop", "--drop", "id",
                 "--teacher", str(teacher), "--student", "tree", *FAST, "-o", str(tmp_path / "o")])
    assert code == 2
    assert "expected" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--label", "nope"], "no column 'nope'"),
    (["--label", "bought"], "column 'shop' holds 'north'"),
    (["--label", "bought", "--categorical", "shop", "--student", "forest"], "--student takes tree, mlp"),
    (["--label", "bought", "--categorical", "shop", "--teacher", "xgboost"], "neither random_forest nor"),
])
def test_bad_input_is_one_line(csv_file, tmp_path, capsys, extra, message):
    assert main(["mimic", str(csv_file), *extra, "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_pickles_need_explicit_trust(csv_file, tmp_path, capsys):
    pickle_file = tmp_path / "model.joblib"
    pickle_file.write_bytes(b"not even a pickle")
    assert main(["mimic", str(csv_file), "--label", "bought", "--categorical", "shop", "--teacher", str(pickle_file),
                 "-o", str(tmp_path / "o")]) == 2
    assert "--trust-pickle" in capsys.readouterr().err
