"""Recipes: a YAML file of stages (train or load -> distil -> prune -> quantize -> encode -> export), run into a
resumable run folder (:func:`run_recipe`), searched with Optuna (:func:`tune_recipe`) and reported as one
self-contained HTML page (:func:`write_report`)."""

from modelpress.recipes.fields import Opt, Tunable
from modelpress.recipes.recipe import Recipe, StageSpec, load_recipe, parse_recipe
from modelpress.recipes.report import write_report
from modelpress.recipes.runner import RunResult, read_index, run_recipe, stage_hashes
from modelpress.recipes.schema import STAGE_KINDS
from modelpress.recipes.tune import TuneResult, objective_value, tune_recipe

__all__ = [
    "Opt",
    "Recipe",
    "RunResult",
    "STAGE_KINDS",
    "StageSpec",
    "TuneResult",
    "Tunable",
    "load_recipe",
    "objective_value",
    "parse_recipe",
    "read_index",
    "run_recipe",
    "stage_hashes",
    "tune_recipe",
    "write_report",
]
