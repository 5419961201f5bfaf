"""tune_recipe: an Optuna study (TPE, median pruning) over a recipe's tunable options, stored in SQLite."""

from __future__ import annotations

import json

import optuna
import pytest
import yaml

from modelpress.core.errors import ConfigError
from modelpress.recipes import load_recipe, objective_value, parse_recipe, tune_recipe
from modelpress.recipes.tune import STEPS_PER_STAGE, TrialReporter


def _tunable(raw: dict) -> dict:
    raw["stages"] = raw["stages"][:2]
    raw["stages"][1]["sparsity"] = {"tune": [0.3, 0.9]}
    raw["stages"][1]["retrain_lr"] = {"tune": [0.001, 0.1], "log": True}
    return raw


@pytest.mark.slow
def test_a_study_runs_trials_stores_them_and_writes_the_best_recipe(tiny_raw, tmp_path, write_recipe):
    recipe = parse_recipe(_tunable(tiny_raw), base_dir=tmp_path)
    lines = []
    result = tune_recipe(recipe, tmp_path / "tune", trials=3, log=lines.append)
    assert (tmp_path / "tune" / "study.db").is_file() and result.storage.startswith("sqlite:///")
    study = optuna.load_study(study_name="tiny", storage=result.storage)
    assert len(study.trials) == 3 and all(t.state.name == "COMPLETE" for t in study.trials)
    sparsities = {t.params["prune.sparsity"] for t in study.trials}
    assert len(sparsities) == 3 and all(0.3 <= s <= 0.9 for s in sparsities)
    best = max(study.trials, key=lambda t: t.value)
    assert result.best_trial == best.number and result.best_params == best.params
    for trial in study.trials:  # the objective is the last stage's validation accuracy, measured in its own folder
        metrics = json.loads((tmp_path / "tune" / "trials" / str(trial.number) / "run.json").read_text())["stages"][-1]["metrics"]
        assert trial.value == metrics["val_accuracy"]
    # the teacher is the same in every trial: trained once, then taken from the cache
    assert len(list((tmp_path / "tune" / "cache").iterdir())) == 1 + 3
    best_recipe = load_recipe(result.best_recipe)
    assert best_recipe.stages[1].options.sparsity == pytest.approx(best.params["prune.sparsity"])
    assert set(best_recipe.tunables()) == {"prune.sparsity", "prune.retrain_lr"}  # the search space is kept
    assert json.loads((tmp_path / "tune" / "tune.json").read_text())["best_trial"] == best.number
    assert any(line.startswith("best: trial") for line in lines)

    again = tune_recipe(recipe, tmp_path / "tune", trials=1, log=lines.append)  # the same study continues
    assert len(again.trials) == 4


def test_any_storage_url_and_study_name(tiny_raw, tmp_path):
    recipe = parse_recipe(_tunable(tiny_raw))
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    tune_recipe(recipe, tmp_path / "tune", trials=1, storage=url, study_name="shared", log=lambda line: None)
    assert not (tmp_path / "tune" / "study.db").exists()
    assert len(optuna.load_study(study_name="shared", storage=url).trials) == 1


def test_a_recipe_without_tunables_is_refused(tiny_raw, tmp_path):
    with pytest.raises(ConfigError, match="no tunable options"):
        tune_recipe(parse_recipe(tiny_raw), tmp_path, trials=2)
    with pytest.raises(ConfigError, match="trials must be an integer >= 1"):
        tune_recipe(parse_recipe(_tunable(tiny_raw)), tmp_path, trials=0)


def test_objective_penalises_bytes_over_the_budget(tiny_raw):
    tiny_raw["objective"] = {"max_bytes": 1000, "penalty": 0.5}
    recipe = parse_recipe(tiny_raw)
    assert objective_value(recipe, {"val_accuracy": 0.9, "bytes": 800}) == 0.9
    assert objective_value(recipe, {"val_accuracy": 0.9, "bytes": 1200}) == pytest.approx(0.9 - 0.5 * 0.2)
    with pytest.raises(ConfigError, match="validation split"):
        objective_value(recipe, {"val_accuracy": None, "bytes": 1})


class _FakeTrial:
    def __init__(self, prune_at: int) -> None:
        self.reported, self.prune_at = [], prune_at

    def report(self, value, step):
        self.reported.append((step, value))

    def should_prune(self):
        return len(self.reported) >= self.prune_at


def test_reporter_reports_each_epoch_by_stage_and_prunes():
    trial = _FakeTrial(prune_at=3)
    reporter = TrialReporter(trial)
    reporter.on_epoch_end(0, None, {"val_accuracy": 0.5})
    reporter.on_epoch_end(1, None, {"train_loss": 1.0})  # no validation: nothing to report
    reporter.stage_done(parse_recipe({"data": {"name": "digits"}, "stages": [{"kind": "train", "model": "mlp:8"}]}).stages[0], {})
    reporter.on_epoch_end(0, None, {"val_accuracy": 0.6})
    assert trial.reported == [(STEPS_PER_STAGE, 0.5), (2 * STEPS_PER_STAGE, 0.6)]
    trial.prune_at = 4
    reporter.on_epoch_end(0, None, {"val_accuracy": 0.7})  # a second training run in the stage: the next step, not epoch 0 again
    assert trial.reported[-1] == (2 * STEPS_PER_STAGE + 1, 0.7)
    with pytest.raises(optuna.TrialPruned):
        reporter.on_epoch_end(1, None, {"val_accuracy": 0.1})
    assert trial.reported[-1] == (2 * STEPS_PER_STAGE + 2, 0.1)


@pytest.mark.slow
def test_median_pruner_stops_a_trial_that_falls_behind(tiny_raw, tmp_path):
    """With the learning rate tuned over a range where the low end cannot learn, some trials get pruned."""
    tiny_raw["stages"] = [{"kind": "train", "name": "net", "model": "mlp:48", "epochs": 4,
                           "lr": {"tune": [1e-6, 0.3], "log": True}}]
    result = tune_recipe(parse_recipe(tiny_raw), tmp_path / "tune", trials=8, log=lambda line: None)
    states = [t["state"] for t in result.trials]
    assert "pruned" in states and "complete" in states
    assert yaml.safe_load(result.best_recipe.read_text())["stages"][0]["lr"]["default"] == result.best_params["net.lr"]


def test_a_continued_study_with_an_older_search_space_recommends_only_trials_of_this_one(tiny_raw, tmp_path):
    from optuna.distributions import FloatDistribution

    from modelpress.recipes.tune import _summarise

    recipe = parse_recipe(_tunable(tiny_raw))
    keys = list(recipe.tunables())  # [prune.sparsity, prune.retrain_lr]
    study = optuna.create_study(direction="maximize")
    old = optuna.trial.create_trial(params={keys[0]: 0.5}, distributions={keys[0]: FloatDistribution(0.3, 0.9)}, value=0.99)
    current = optuna.trial.create_trial(
        params={keys[0]: 0.6, keys[1]: 0.01},
        distributions={keys[0]: FloatDistribution(0.3, 0.9), keys[1]: FloatDistribution(0.001, 0.1, log=True)}, value=0.8)
    study.add_trial(old)
    study.add_trial(current)
    result = _summarise(study, recipe, tmp_path, "sqlite://", "s", lambda line: None)
    assert result.best_params == {keys[0]: 0.6, keys[1]: 0.01}  # the better old trial lacks retrain_lr
    assert (tmp_path / "best_recipe.yaml").is_file()
