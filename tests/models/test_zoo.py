import pytest
import torch

from modelpress.core.errors import ConfigError, ModelFileError, ShapeError
from modelpress.models import MODELS, build_model, load_model, read_model_file, save_model
from modelpress.measure import count_params

ZOO = ["mlp:64-32", "lenet300_100", "lenet5", "vgg_mini:8", "mobilenetv2_tiny", "cnn:8-16", "shallow_cnn:8-32"]


@pytest.mark.parametrize("arch", ZOO)
def test_every_zoo_model_maps_images_to_logits_and_round_trips_through_a_file(arch, tmp_path):
    torch.manual_seed(0)
    model = build_model(arch, (1, 28, 28), 10).eval()
    x = torch.randn(3, 1, 28, 28)
    assert model(x).shape == (3, 10)
    path = save_model(model, tmp_path / "m.mpk", extra={"note": "hi"})
    loaded = read_model_file(path)
    assert loaded.extra == {"note": "hi"} and loaded.spec == model.modelpress_spec
    assert torch.equal(loaded.model(x), model(x))


def test_paper_parameter_counts():
    # Han et al., Table 1: LeNet-300-100 is 1070 KB and LeNet-5 1720 KB of float32 weights
    assert count_params(build_model("lenet300_100", (1, 28, 28), 10)) == 266_610
    assert count_params(build_model("lenet5", (1, 28, 28), 10)) == 431_080
    # Hinton et al.'s nets: 784-1200-1200-10 and 784-800-800-10
    assert count_params(build_model("mlp:1200-1200", (1, 28, 28), 10)) == 2_395_210
    assert count_params(build_model("mlp:800-800", (1, 28, 28), 10)) == 1_276_810


def test_vgg_mini_has_eight_convs_and_two_fc():
    model = build_model("vgg_mini", (1, 28, 28), 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    fcs = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert (len(convs), len(fcs)) == (8, 2)


def test_mobilenet_uses_depthwise_convs_and_skips():
    model = build_model("mobilenetv2_tiny", (1, 28, 28), 10)
    depthwise = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups == m.in_channels > 1]
    assert len(depthwise) >= 8
    assert any(getattr(m, "use_skip", False) for m in model.modules())


def test_cnn_stages_line_up_with_vgg_mini_and_shallow_cnn_has_one_conv():
    x = torch.randn(2, 1, 28, 28)
    student = build_model("cnn:16-32-64", (1, 28, 28), 10, hidden=32).eval()
    teacher = build_model("vgg_mini:8", (1, 28, 28), 10).eval()
    student_sizes = [tuple(t.shape[-2:]) for t in _stage_outputs(student.features, x)]
    teacher_sizes = {tuple(t.shape[-2:]) for t in _stage_outputs(teacher.features, x)}
    assert student_sizes[-1] == (3, 3) and set(student_sizes) <= teacher_sizes
    assert sum(isinstance(m, torch.nn.Linear) for m in student.modules()) == 2
    shallow = build_model("shallow_cnn:8-64", (1, 28, 28), 10)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in shallow.modules()) == 1
    with pytest.raises(ConfigError, match="CHANNELS-HIDDEN"):
        build_model("shallow_cnn:8", (1, 28, 28), 10)
    with pytest.raises(ShapeError, match="at least 32 pixels"):
        build_model("cnn:4-4-4-4-4", (1, 28, 28), 10)


def _stage_outputs(features, x):
    outputs = []
    for layer in features:
        x = layer(x)
        outputs.append(x)
    return outputs


def test_mlp_dropout_option_and_tabular_input():
    model = build_model("mlp:16", (30,), 2, dropout=0.5)
    assert any(isinstance(m, torch.nn.Dropout) for m in model.modules())
    assert model(torch.randn(4, 30)).shape == (4, 2)


def test_bad_model_requests_give_clear_errors():
    with pytest.raises(ConfigError, match="unknown model 'resnet9000'; known: .*lenet5.*mlp"):
        build_model("resnet9000", (1, 28, 28), 10)
    with pytest.raises(ConfigError, match="hidden sizes"):
        build_model("mlp:12-x", (1, 28, 28), 10)
    with pytest.raises(ConfigError, match="unknown option"):
        build_model("lenet5", (1, 28, 28), 10, dropout=0.5)
    with pytest.raises(ShapeError, match="needs image inputs"):
        build_model("lenet5", (30,), 2)
    assert set(MODELS.names()) >= {"mlp", "lenet300_100", "lenet5", "vgg_mini", "mobilenetv2_tiny", "cnn", "shallow_cnn"}


def test_damaged_or_foreign_model_files_are_rejected(tmp_path):
    model = build_model("mlp:8", (4,), 3)
    path = save_model(model, tmp_path / "m.mpk")
    data = path.read_bytes()
    truncated = tmp_path / "trunc.mpk"
    truncated.write_bytes(data[: len(data) - 20])
    with pytest.raises(ModelFileError, match="corrupt or truncated"):
        load_model(truncated)
    foreign = tmp_path / "foreign.mpk"
    foreign.write_bytes(b"PK\x03\x04 definitely a zip file, not ours")
    with pytest.raises(ModelFileError, match="not a modelpress"):
        load_model(foreign)
    (tmp_path / "text.mpk").write_text("hello, I am a text file")
    with pytest.raises(ModelFileError, match="not a modelpress model file"):
        load_model(tmp_path / "text.mpk")
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "missing.mpk")
    with pytest.raises(ModelFileError, match="no architecture spec"):
        save_model(torch.nn.Linear(2, 2), tmp_path / "x.mpk")


def test_built_in_models_are_listed_in_one_table():
    """Every built-in architecture is in ``BUILT_IN_MODELS`` and registered from it (no import side effect)."""
    from modelpress.models import sequence
    from modelpress.models.zoo import BUILT_IN_MODELS

    assert set(BUILT_IN_MODELS) <= set(MODELS.names())
    assert {"lstm", "gru", "cnn1d", "mlp", "lenet5"} <= set(BUILT_IN_MODELS)
    assert all(MODELS.get(name) is builder for name, builder in BUILT_IN_MODELS.items())
    assert not hasattr(sequence, "MODELS")  # sequence.py no longer reaches back into the zoo
