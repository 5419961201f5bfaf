"""modelpress run / report / tune from the command line, and every example recipe run in a shrunken form."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from modelpress.cli import main
from modelpress.recipes import load_recipe, read_index

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))
EPOCH_FIELDS = ("epochs", "retrain_epochs", "finetune_epochs", "stage1_epochs")


def shrink(raw: dict) -> dict:
    """The same stages on a slice of digits, with tiny models and one or two epochs."""
    raw["data"] = {"name": "digits", "limit": 200, "limit_test": 100}
    raw["measure"] = {"latency": False}
    for stage in raw["stages"]:
        for key in EPOCH_FIELDS:
            if key in stage:
                stage[key] = 1
        for key in ("model", "student"):
            if key in stage:
                stage[key] = "mlp:32"
        if "generations" in stage:
            stage["generations"] = 2
        if "n_synthetic" in stage:
            stage["n_synthetic"] = 300
        stage.pop("max_norm", None)
    return raw


@pytest.mark.slow
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_runs_shrunken_end_to_end(path, tmp_path, capsys):
    recipe = tmp_path / path.name
    recipe.write_text(yaml.safe_dump(shrink(yaml.safe_load(path.read_text())), sort_keys=False))
    assert main(["run", str(recipe), "-o", str(tmp_path / "run"), "--quiet", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    stages = load_recipe(path).stages
    assert [s["stage"] for s in printed["stages"]] == [s.name for s in stages]
    assert all(0.0 <= s["accuracy"] <= 1.0 for s in printed["stages"])


def test_a_bad_recipe_is_one_line_and_no_work(tmp_path, capsys, tiny_raw, write_recipe):
    tiny_raw["stages"][1]["sparsity"] = "lots"
    path = write_recipe(tiny_raw)
    assert main(["run", str(path), "-o", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err == "modelpress: error: recipe stage 2 'prune': field 'sparsity' must be a number in [0, 1), got 'lots'\n"
    assert not (tmp_path / "run").exists()
    assert main(["report", str(tmp_path)]) == 2
    assert "not a modelpress run folder" in capsys.readouterr().err
    assert main(["tune", str(path), "--trials", "2", "-o", str(tmp_path / "t")]) == 2


@pytest.mark.slow
def test_run_interrupt_resume_report_and_tune(tmp_path, capsys, tiny_raw, write_recipe, monkeypatch):
    from modelpress.recipes import runner

    tiny_raw["stages"] = tiny_raw["stages"][:2]
    path = write_recipe(tiny_raw)
    rundir = tmp_path / "run"

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setitem(runner.STAGE_RUNNERS, "prune", interrupt)
        assert main(["run", str(path), "-o", str(rundir), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("modelpress: error: interrupted; run `modelpress run") and err.count("\n") == 1
    assert main(["run", str(path), "-o", str(rundir)]) == 0
    out = capsys.readouterr()
    assert "'teacher' (train): finished earlier, kept" in out.err and "| prune | prune |" in out.out
    assert [e["status"] for e in read_index(rundir)["stages"]] == ["done", "done"]

    assert main(["report", str(rundir), "-o", str(tmp_path / "page.html")]) == 0
    assert (tmp_path / "page.html").is_file() and (tmp_path / "page.md").is_file()
    assert capsys.readouterr().out == f"wrote {tmp_path / 'page.html'} and {tmp_path / 'page.md'}\n"

    tiny_raw["stages"][1]["sparsity"] = {"tune": [0.4, 0.8]}
    path = write_recipe(tiny_raw, "tunable.yaml")
    assert main(["tune", str(path), "--trials", "2", "-o", str(tmp_path / "t"), "--study", "s", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["study"] == "s" and len(result["trials"]) == 2 and "prune.sparsity" in result["best_params"]
    assert Path(result["best_recipe"]).is_file()
