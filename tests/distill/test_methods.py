"""One API suite over every registered distillation method (as scikit-learn's ``parametrize_with_checks``).

For each method: its config round-trips through JSON; a bad value is refused naming the field; the config
built from Python defaults, from CLI flags and from a recipe mapping is the same object; and a tiny run
through Python, the CLI and a recipe gives bit-identical weights.
"""

from __future__ import annotations

import copy

import pytest
import torch

from modelpress.cli import main
from modelpress.cli.distill import method_config
from modelpress.cli.main import build_parser
from modelpress.core.errors import ConfigError
from modelpress.core.options import from_dict, to_dict
from modelpress.data import load_dataset
from modelpress.distill import StoredTeacher, precompute_teacher
from modelpress.distill.methods import METHODS, student_builder
from modelpress.models import build_model, read_model_file, save_model
from modelpress.recipes import parse_recipe, run_recipe

NAMES = METHODS.names()
TEACHER, STUDENT = "cnn:4-8", "cnn:4-4"
DATA = {"name": "digits", "limit": 300, "val_size": 60}
FAST = {"epochs": 1, "batch_size": 64}
# the options a method needs beyond its defaults (besides FAST)
NEEDS = {"fsp": {"fsp_pairs": ["features.0,features.1:features.0,features.1"], "stage1_epochs": 1},
         "fitnets": {"stage1_epochs": 1}, "assistant": {"assistants": ["cnn:4-8"]}, "omitted-class": {"omit_class": 3},
         "born-again": {"generations": 2}, "specialists": {"n_specialists": 2}}


def _values(name: str, **more) -> dict:
    return {**FAST, **NEEDS.get(name, {}), **more}


def _argv(name: str, values: dict) -> list[str]:
    """The command-line flags of ``values``, spelled as the method's config declares them."""
    flags = {item.name: item for item in METHODS.get(name).fields()}
    argv = []
    for key, value in values.items():
        item = flags[key]
        if item.opt.type == "texts":
            argv += [x for v in value for x in (item.flag, v)]
        elif item.opt.type == "bool":
            argv.append(item.flag if value else "--no-" + item.flag[2:])
        else:
            argv += [item.flag, str(value)]
    return argv


def _cli_config(name: str, values: dict, seed: int = 0):
    argv = ["distill", "--method", name, "--data", "digits", "--seed", str(seed), "-o", "x.mpk", *_argv(name, values)]
    return method_config(build_parser().parse_args(argv), METHODS.get(name))


def _stage(name: str, values: dict) -> dict:
    student = {} if METHODS.get(name).student == "teacher" else {"student": STUDENT}
    return {"kind": "distill", "name": "student", "method": name, **student, **values}


def _recipe_config(name: str, values: dict, seed: int = 0, teacher_path: str = "teacher.mpk", base_dir="."):
    raw = {"name": "parity", "seed": seed, "data": dict(DATA), "measure": {"latency": False},
           "stages": [{"kind": "load", "name": "teacher", "path": str(teacher_path)}, _stage(name, values)]}
    return parse_recipe(raw, base_dir=base_dir), raw


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "teacher.mpk"
    save_model(build_model(TEACHER, (1, 8, 8), 10), path)
    return path


# ----- configs ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_config_round_trips_through_json(name):
    config = METHODS.get(name).build(_values(name, seed=3))
    assert from_dict(METHODS.get(name).config, to_dict(config)) == config


@pytest.mark.parametrize("name", NAMES)
def test_a_value_out_of_bounds_is_refused_naming_its_field(name):
    entry = METHODS.get(name)
    bounded = [item for item in entry.fields() if item.opt.type in ("number", "integer") and item.opt.lo is not None]
    assert bounded
    for item in bounded:
        bad = item.opt.lo if item.opt.lo_open else item.opt.lo - 1
        with pytest.raises(ConfigError, match=item.name.split("_")[-1]):
            entry.build(_values(name) | {item.name: bad})


@pytest.mark.parametrize("name", NAMES)
def test_python_cli_and_recipe_build_the_same_config(name, teacher_file):
    entry = METHODS.get(name)
    python = entry.build(_values(name, seed=5))
    recipe, _ = _recipe_config(name, _values(name), seed=5, teacher_path=teacher_file)
    assert _cli_config(name, _values(name), seed=5) == python
    assert recipe.stages[1].options.method_config(5) == python


@pytest.mark.parametrize("name, path, expected", [
    ("mutual", ("temperature",), 1.0),  # the CLI trained at 4 while MutualConfig said 1
    ("specialists", ("n_specialists",), 3),  # the CLI said 3, the library 2
    ("hinton", ("alpha",), 0.9), ("logits", ("alpha",), 0.9), ("attention", ("kd", "alpha"), 0.0),
    ("born-again", ("kd", "alpha"), 1.0), ("self", ("kd", "alpha"), 0.5), ("specialists", ("alpha",), 0.5),
])
def test_formerly_drifted_defaults_agree_everywhere(name, path, expected, teacher_file):
    def read(config):
        for part in path:
            config = getattr(config, part)
        return config

    given = {k: v for k, v in _values(name).items() if k != path[-1]}  # the default under test left out
    recipe, _ = _recipe_config(name, given, teacher_path=teacher_file)
    values = [read(METHODS.get(name).build(given | {"seed": 0})), read(_cli_config(name, given)),
              read(recipe.stages[1].options.method_config(0))]
    assert values == [expected] * 3


def test_fitnets_first_stage_never_early_stops_from_any_entry(teacher_file):
    """Recipes alone gave FitNets' hint stage ``patience=None``; now the config derives it, for every caller."""
    values = _values("fitnets", patience=2)
    recipe, _ = _recipe_config("fitnets", values, teacher_path=teacher_file)
    configs = [METHODS.get("fitnets").build(values | {"seed": 0}), _cli_config("fitnets", values),
               recipe.stages[1].options.method_config(0)]
    assert {c.stage1_config().patience for c in configs} == {None}
    assert {c.kd.train.patience for c in configs} == {2}
    assert {c.stage1_config().optimizer.value for c in configs} == {"adam"}


def test_a_logit_method_refuses_an_option_of_early_stopped():
    with pytest.raises(ConfigError, match="kd_epochs is not an option of method hinton"):
        METHODS.get("hinton").build({"kd_epochs": 1})


def test_every_logit_loss_is_a_method():
    from modelpress.distill.methods import logit_method_names

    assert set(logit_method_names()) <= set(NAMES) and {"hinton", "logits"} <= set(logit_method_names())


# ----- one tiny run three ways ----------------------------------------------------------------------------

def _python_run(name: str, teacher_file, tmp_path):
    entry = METHODS.get(name)
    splits = load_dataset("digits", seed=0, val_size=DATA["val_size"], limit=DATA["limit"])
    teacher = None if entry.teacher == "none" else read_model_file(teacher_file).model.eval()
    if entry.teacher == "outputs":
        teacher = StoredTeacher(precompute_teacher(teacher, splits.x_train))
    builder = student_builder(STUDENT, splits.input_shape, splits.num_classes, 0)
    outcome = entry.handler(builder if entry.student == "architecture" else None, teacher, splits,
                            entry.build(_values(name, seed=0)), checkpoint_path=tmp_path / "py.ckpt", progress=False)
    return outcome.side_models[0].model if name == "specialists" else outcome.model


def _cli_run(name: str, teacher_file, tmp_path):
    entry = METHODS.get(name)
    out = tmp_path / ("cli.json" if name == "specialists" else "cli.mpk")
    teacher = [] if entry.teacher == "none" else ["--teacher", str(teacher_file)]
    student = [] if entry.student == "teacher" else ["--student", STUDENT]
    argv = ["distill", "--method", name, *teacher, *student, "--data", "digits", "--limit", str(DATA["limit"]),
            "--val-size", str(DATA["val_size"]), "--quiet", *_argv(name, _values(name)), "-o", str(out)]
    assert main(argv) == 0
    return read_model_file(tmp_path / "cli.specialist1.json" if name == "specialists" else out).model


def _recipe_run(name: str, teacher_file, tmp_path):
    recipe, _ = _recipe_config(name, _values(name), teacher_path=teacher_file)
    run_recipe(recipe, tmp_path / "run", progress=False)
    folder = next((tmp_path / "run").glob("stage_2_*"))
    return read_model_file(folder / ("specialist1.mpk" if name == "specialists" else "model.mpk")).model


@pytest.mark.parametrize("name", NAMES)
def test_python_cli_and_recipe_runs_give_bit_identical_weights(name, teacher_file, tmp_path):
    models = [run(name, teacher_file, tmp_path) for run in (_python_run, _cli_run, _recipe_run)]
    reference = copy.deepcopy(models[0].state_dict())
    start = build_model(STUDENT if METHODS.get(name).student == "architecture" else TEACHER, (1, 8, 8),
                        models[0].state_dict()[next(reversed(reference))].shape[0]).state_dict()
    assert any(not torch.equal(reference[k], start[k]) for k in reference if start[k].shape == reference[k].shape)
    for other in models[1:]:
        state = other.state_dict()
        assert state.keys() == reference.keys()
        for key, value in reference.items():
            assert torch.equal(value, state[key]), (name, key)
