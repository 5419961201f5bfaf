"""Recipe validation: every bad field is refused before any work, with the stage, the field and what was expected."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from modelpress.core.errors import ConfigError
from modelpress.recipes import load_recipe, parse_recipe

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def _with_stage(raw: dict, stage: dict, index: int = 1) -> dict:
    raw["stages"][index] = stage
    return raw


def test_the_design_notes_error_message(tiny_raw):
    """The message names the stage number and name, the field, what it must be and what it got."""
    _with_stage(tiny_raw, {"kind": "prune", "sparsity": "lots"})
    with pytest.raises(ConfigError) as err:
        parse_recipe(tiny_raw)
    assert str(err.value) == "recipe stage 2 'prune': field 'sparsity' must be a number in [0, 1), got 'lots'"


@pytest.mark.parametrize("stage, expected", [
    ({"kind": "prune", "sparsity": 1.0}, "field 'sparsity' must be a number in [0, 1), got 1.0"),
    ({"kind": "prune", "sparsty": 0.5}, "unknown field 'sparsty'; known fields:"),
    ({"kind": "prune", "mode": "structured", "criterion": "global"}, "field 'criterion' must be one of: l1, l2, apoz, taylor"),
    ({"kind": "quantize", "bits": 40}, "field 'bits' must be an integer in [1, 16] or null, got 40"),
    ({"kind": "quantize", "bits": True}, "field 'bits' must be an integer"),
    ({"kind": "distill", "method": "hinton"}, "field 'student' is required for method hinton"),
    ({"kind": "distill", "method": "born-again", "student": "mlp:8"}, "born-again trains the teacher's own architecture"),
    ({"kind": "distill", "student": "resnet:9"}, "unknown architecture 'resnet:9'"),
    ({"kind": "distill", "student": "mlp:8", "teacher": "nobody"}, "field 'teacher' must name an earlier stage"),
    ({"kind": "train"}, "field 'model' is required"),
    ({"kind": "train", "name": "teacher", "model": "mlp:8"}, "the name 'teacher' is already used"),
    ({"kind": "shrink"}, "field 'kind' must be one of: train, load, distill"),
    ({"kind": "load", "path": "no/such/file.mpk"}, "field 'path' must be an existing model file"),
    ({"kind": "prune", "input": "later"}, "field 'input' must name an earlier stage"),
    ({"kind": "train", "model": "mlp:8", "epochs": 0}, "field 'epochs' must be an integer >= 1, got 0"),
    ({"kind": "train", "model": "mlp:8", "lr": {"tune": [0.1, 0.01]}}, "needs lo < hi"),
    ({"kind": "train", "model": "mlp:8", "lr": {"tune": [0.0, 0.1], "log": True}}, "must be a number > 0"),
    ({"kind": "train", "model": "mlp:8", "lr": {"tune": [0.01, 0.1], "default": 1.0}}, "default must be"),
    ({"kind": "train", "model": "mlp:8", "patience": {"tune": [1, 3]}}, "is not tunable"),
    ({"kind": "train", "model": "mlp:8", "grad_compression": "zip"}, "must be one of: terngrad, powersgd or null"),
    ({"kind": "train", "model": "mlp:8", "lr": {"choices": [0.1, 0.2, 0.3], "default": "x"}}, "default must be one of"),
    ({"kind": "train", "model": "mlp:8", "lr": {"choices": [0.1, 0.2], "default": [1]}}, "default must be one of"),
    ({"kind": "train", "model": "mlp:8", "grad_clip": {"tune": [None, 1.0]}}, "to include null, list it with choices"),
    ({"kind": "train", "model": "mlp:8", "grad_clip": {"tune": [0.5, 1.0], "default": None}}, "takes two numbers"),
    ({"kind": ["train"], "name": "x"}, "field 'kind' must be one of"),
])
def test_bad_stages_name_stage_and_field(tiny_raw, stage, expected):
    stage.setdefault("name", "second")
    _with_stage(tiny_raw, stage)
    with pytest.raises(ConfigError) as err:
        parse_recipe(tiny_raw)
    assert str(err.value).startswith("recipe stage 2 '")
    assert expected in str(err.value)


def test_a_stage_after_an_onnx_stage_must_read_an_earlier_model(tiny_raw):
    tiny_raw["stages"][3] = {"kind": "export"}
    tiny_raw["stages"].append({"kind": "encode"})
    with pytest.raises(ConfigError, match="writes a file no later stage can read as a model"):
        parse_recipe(tiny_raw)
    tiny_raw["stages"][-1]["input"] = "quantize"
    assert parse_recipe(tiny_raw).stages[-1].input == "quantize"


@pytest.mark.parametrize("section, expected", [
    ({"data": {"name": "no-such-set"}}, "recipe data: field 'name' must be one of"),
    ({"data": {"name": "digits", "limit": -3}}, "recipe data: field 'limit' must be an integer >= 1"),
    ({"seed": -1}, "'seed' must be an integer >= 0"),
    ({"stages": []}, "'stages' must be a non-empty list"),
    ({"objective": {"stage": "nowhere"}}, "field 'stage' must name a stage"),
    ({"steps": []}, "unknown top-level key 'steps'"),
])
def test_bad_top_level_sections(tiny_raw, section, expected):
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace("[", r"\[")):
        parse_recipe(tiny_raw | section)


def test_first_stage_needs_no_input_but_a_compression_stage_does(tiny_raw):
    tiny_raw["stages"] = [{"kind": "prune"}]
    with pytest.raises(ConfigError, match="recipe stage 1 'prune': needs a model to work on"):
        parse_recipe(tiny_raw)


def test_tunable_defaults_ranges_and_choices(tiny_raw):
    """run uses the middle of a range (geometric with log), the middle choice, or an explicit default."""
    tiny_raw["stages"][0]["lr"] = {"tune": [0.001, 0.1], "log": True}
    tiny_raw["stages"][0]["epochs"] = {"tune": [2, 5]}
    tiny_raw["stages"][1]["sparsity"] = {"tune": [0.5, 0.9], "default": 0.6}
    tiny_raw["stages"][2]["bits"] = {"tune": [3, 4, 5, 6]}
    tiny_raw["stages"][2]["init"] = {"choices": ["linear", "density"], "default": "density"}
    recipe = parse_recipe(tiny_raw)
    teacher, prune, quantize = recipe.stages[:3]
    assert math.isclose(teacher.options.lr, 0.01) and teacher.options.epochs == 4  # round(3.5)
    assert prune.options.sparsity == 0.6
    assert quantize.options.bits_fc == quantize.options.bits_conv == 4
    assert quantize.options.init == "density"
    assert sorted(recipe.tunables()) == ["prune.sparsity", "quantize.bits", "quantize.init", "teacher.epochs", "teacher.lr"]
    fixed = recipe.with_values({"quantize.bits": 6, "teacher.lr": 0.05})
    assert fixed.stages[2].options.bits_fc == 6 and fixed.stages[0].options.lr == 0.05 and not fixed.tunables().get("teacher.lr")
    with pytest.raises(ConfigError, match="not tunable options"):
        recipe.with_values({"encode.index_bits_fc": 3})


def test_yaml_errors_and_tags_that_would_run_code_are_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [kind: train\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(bad)
    bad.write_text("data: !!python/object/apply:os.system ['echo hacked']\nstages: []\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")
    bad.write_bytes(b"\x00\xff\xfe not text")
    with pytest.raises(ConfigError, match="not a UTF-8 text file"):
        load_recipe(bad)


def test_name_defaults_to_the_file_name(tiny_raw, write_recipe):
    del tiny_raw["name"]
    assert load_recipe(write_recipe(tiny_raw, "my_recipe.yaml")).name == "my_recipe"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_recipe_validates_and_says_what_it_reproduces(path):
    recipe = load_recipe(path)
    assert path.read_text().startswith("# ")  # a comment header naming the paper and the claim
    assert recipe.tunables(), "each example marks what `modelpress tune` may search"


def test_a_relative_data_folder_is_read_from_the_recipe_folder_and_val_size_is_a_count_or_fraction(tiny_raw, tmp_path,
                                                                                                     monkeypatch):
    (tmp_path / "recipes" / "mydata").mkdir(parents=True)
    tiny_raw["data"] = {"name": "mydata"}
    recipe = parse_recipe(tiny_raw, base_dir=tmp_path / "recipes")
    assert recipe.data.name == str((tmp_path / "recipes" / "mydata").resolve())
    monkeypatch.chdir(tmp_path)  # another working directory loads the same folder
    assert parse_recipe(tiny_raw, base_dir=tmp_path / "recipes").data.name == recipe.data.name
    tiny_raw["data"] = {"name": "digits", "val_size": 1.5}
    with pytest.raises(ConfigError, match="'val_size' must be a count"):
        parse_recipe(tiny_raw)


@pytest.mark.parametrize("arch, data, message", [
    ("mlp:abc", "digits", "field 'model': mlp hidden sizes must look like"),
    ("lenet5:3", "fashion-mnist", "lenet5 takes no arguments"),
    ("lstm:8", "digits", "lstm needs 1-D sequence inputs"),
])
def test_architectures_are_built_on_the_data_shape_before_any_work(arch, data, message):
    raw = {"name": "x", "data": {"name": data}, "stages": [{"kind": "train", "model": arch}]}
    with pytest.raises(ConfigError, match=message):
        parse_recipe(raw)
