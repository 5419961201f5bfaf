"""``tune_recipe``: search a recipe's tunable options with Optuna (TPE sampler, median pruning).

Urban et al. ("Do Deep Convolutional Nets Really Need to be Deep and Convolutional?", 2017) found that
shallow students only approached deep teachers once their hyperparameters were found by Bayesian
optimisation; this is that search over any recipe. Each trial is a full :func:`run_recipe` into
``RUNDIR/trials/<n>/``; stages whose options and inputs a trial shares with an earlier one (say, the
teacher) are copied from ``RUNDIR/cache/`` instead of being redone. Every epoch's validation accuracy
is reported to the trial, so the median pruner stops trials that fall behind the others at the same
stage and epoch. The study lives in an Optuna storage (default ``sqlite:///RUNDIR/study.db``); several
machines given the same storage URL and study name work on one study.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from modelpress.core.errors import ConfigError, ModelpressError
from modelpress.core.io import atomic_write
from modelpress.measure import write_json
from modelpress.recipes.fields import Tunable
from modelpress.recipes.recipe import Recipe, StageSpec
from modelpress.recipes.runner import run_recipe

# the k-th validated epoch of stage i is reported at step i * STEPS_PER_STAGE + k, so trials that skip a
# cached stage still compare like with like
STEPS_PER_STAGE = 10_000


@dataclass
class TuneResult:
    """The outcome: best trial number, value and options, the best recipe file, and every trial's summary."""

    best_trial: int | None
    best_value: float | None
    best_params: dict
    best_recipe: Path | None
    trials: list[dict]
    storage: str
    study_name: str


def objective_value(recipe: Recipe, metrics: dict) -> float:
    """What the study maximises: the validation accuracy in ``metrics`` (those of ``objective.stage``, by
    default the last stage), less ``objective.penalty`` times the fraction by which its file exceeds
    ``objective.max_bytes`` (no penalty within the budget).

    Raises:
        ConfigError: the data set has no validation split.
    """
    if metrics.get("val_accuracy") is None:
        raise ConfigError("tuning needs a validation split: set data.val_size in the recipe")
    value = float(metrics["val_accuracy"])
    budget = recipe.objective.max_bytes
    if budget is not None and metrics["bytes"] > budget:
        value -= recipe.objective.penalty * (metrics["bytes"] / budget - 1)
    return value


def suggest(trial, key: str, tunable: Tunable) -> Any:
    """Draw one option from an Optuna trial: integers and floats over their range, or one of the choices."""
    if not tunable.is_range:
        return trial.suggest_categorical(key, list(tunable.choices))
    if isinstance(tunable.low, int) and isinstance(tunable.high, int):
        return trial.suggest_int(key, tunable.low, tunable.high, log=tunable.log)
    return trial.suggest_float(key, float(tunable.low), float(tunable.high), log=tunable.log)


class TrialReporter:
    """A training callback that reports each epoch's validation accuracy to an Optuna trial and stops
    the trial (``optuna.TrialPruned``) when the pruner says so."""

    def __init__(self, trial) -> None:
        self.trial = trial
        self.stage = 1
        self.reports = 0  # in this stage: a stage may train more than once (pruning steps, FitNets' two stages)

    def on_epoch_end(self, epoch: int, model, metrics: dict) -> None:
        import optuna

        if metrics.get("val_accuracy") is None:
            return
        self.trial.report(float(metrics["val_accuracy"]), self.stage * STEPS_PER_STAGE + self.reports)
        self.reports += 1
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"stage {self.stage}, epoch {epoch + 1}: validation accuracy "
                                     f"{metrics['val_accuracy']:.4f} is below the median of earlier trials")

    def stage_done(self, stage: StageSpec, metrics: dict) -> None:
        self.stage, self.reports = stage.index + 1, 0


def tune_recipe(recipe: Recipe, rundir: str | Path, *, trials: int, storage: str | None = None,
                study_name: str | None = None, timeout: float | None = None, progress: bool | None = False,
                log: Callable[[str], None] | None = None) -> TuneResult:
    """Search ``recipe``'s tunable options for ``trials`` more trials (or until ``timeout`` seconds).

    Args:
        recipe: a recipe with at least one ``{tune: ...}`` option.
        rundir: holds ``study.db`` (default storage), ``trials/<n>/``, ``cache/``, ``best_recipe.yaml`` and ``tune.json``.
        trials: trials this call runs (added to any the study already has).
        storage: any Optuna storage URL (``sqlite:///...``, ``postgresql://...``); default ``sqlite:///RUNDIR/study.db``.
        study_name: default the recipe's name; an existing study of that name is continued.
        timeout: stop starting trials after this many seconds.

    Returns:
        A :class:`TuneResult`; ``best_recipe.yaml`` is the recipe with the best trial's values as defaults.

    Raises:
        ConfigError: no tunable options, or ``trials < 1``.
    """
    import optuna

    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    space = recipe.tunables()
    if not space:
        raise ConfigError("this recipe has no tunable options: mark some, e.g. temperature: {tune: [1, 8], log: true}")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"trials must be an integer >= 1; got {trials!r}")
    rundir = Path(rundir)
    rundir.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{(rundir / 'study.db').resolve()}"
    study_name = study_name or recipe.name
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize", load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(seed=recipe.seed),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=3))

    def objective(trial) -> float:
        values = {key: suggest(trial, key, tunable) for key, (_, _, tunable) in space.items()}
        concrete = recipe.with_values(values)
        reporter = TrialReporter(trial)
        result = run_recipe(concrete, rundir / "trials" / str(trial.number), progress=progress, callbacks=(reporter,),
                            cache_dir=rundir / "cache", on_stage_end=reporter.stage_done, log=lambda line: None)
        counted = recipe.objective.stage or recipe.stages[-1].name
        final = next(e["metrics"] for e in result.stages if e["name"] == counted)
        for key in ("accuracy", "val_accuracy", "bytes", "params", "nonzero_params", "flops"):
            trial.set_user_attr(key, final[key])
        value = objective_value(recipe, final)
        log(f"trial {trial.number}: {_fmt(values)} -> objective {value:.4f} (val accuracy {final['val_accuracy']:.4f}, "
            f"test accuracy {final['accuracy']:.4f}, {final['bytes']:,} bytes)")
        return value

    def announce(study, trial) -> None:
        if trial.state != optuna.trial.TrialState.COMPLETE:
            log(f"trial {trial.number}: {trial.state.name.lower()} {_fmt(trial.params)}")

    study.optimize(objective, n_trials=trials, timeout=timeout, catch=(ModelpressError,), callbacks=[announce])
    return _summarise(study, recipe, rundir, storage, study_name, log)


def _fmt(values: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def _fits(recipe: Recipe, params: dict) -> bool:
    try:
        recipe.with_values(params)
    except ConfigError:
        return False
    return True


def _summarise(study, recipe: Recipe, rundir: Path, storage: str, study_name: str, log) -> TuneResult:
    import optuna

    rows = [{"trial": t.number, "state": t.state.name.lower(), "value": t.value, "params": t.params, **t.user_attrs}
            for t in study.trials]
    space = set(recipe.tunables())
    # A continued study may hold trials of an older search space; only those of this one can be written back.
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and set(t.params) == space
                and _fits(recipe, t.params)]
    best = max(complete, key=lambda t: t.value) if complete else None
    best_path = None
    if best is not None:
        best_recipe = recipe.with_values(best.params)
        raw = best_recipe.raw
        for key, (stage, name, tunable) in recipe.tunables().items():  # keep the search space, best value as default
            raw["stages"][stage.index - 1][name] = tunable.to_json() | {"default": best.params[key]}
        best_path = rundir / "best_recipe.yaml"
        with atomic_write(best_path) as tmp:
            tmp.write_text(f"# best of study {study_name!r}: trial {best.number}, objective {best.value:.6g}\n"
                           + yaml.safe_dump(raw, sort_keys=False))
        log(f"best: trial {best.number}, objective {best.value:.4f}: {_fmt(best.params)}; wrote {best_path}")
    else:
        log("no trial finished: nothing to recommend")
    result = TuneResult(best.number if best else None, best.value if best else None, dict(best.params) if best else {},
                        best_path, rows, storage, study_name)
    write_json(rundir / "tune.json", {"study": study_name, "storage": storage, "best_trial": result.best_trial,
                                      "best_value": result.best_value, "best_params": result.best_params, "trials": rows})
    return result
